"""LLMEncoder on the real MiniLM and on tiny BERT / T5 / Llama models built from configs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from llm4gen import LLMEncoder, PromptTruncationWarning
from llm4gen.encoders import resolve_model_reference
from llm4gen.tiny import MINILM_REF

PROMPTS = ["a red cube and a blue ball", "three green stars above a large yellow ring on a grey floor"]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return LLMEncoder.from_pretrained(MINILM_REF, max_length=32, padding="max_length")


def test_minilm_features_match_direct_transformers_call(minilm, minilm_path):
    out = minilm.encode(PROMPTS)
    assert out.embeds.shape == (2, 32, 384) and out.attention_mask.shape == (2, 32)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    for i, p in enumerate(PROMPTS):
        ids = tok(p, return_tensors="pt")
        n = ids["input_ids"].shape[1]
        assert out.num_tokens[i] == n
        assert out.attention_mask[i].sum() == n
        with torch.no_grad():
            want = model(**ids).last_hidden_state[0]
        torch.testing.assert_close(out.embeds[i, :n], want, rtol=1e-4, atol=1e-4)


def test_padding_modes_agree_on_real_tokens(minilm):
    longest = LLMEncoder(model=minilm.model, tokenizer=minilm.tokenizer, model_name_or_path=MINILM_REF,
                         max_length=32, padding="longest").encode(PROMPTS)
    fixed = minilm.encode(PROMPTS)
    t = longest.embeds.shape[1]
    assert t == max(longest.num_tokens) < 32
    keep = longest.attention_mask.bool()
    torch.testing.assert_close(longest.embeds[keep], fixed.embeds[:, :t][keep], rtol=1e-4, atol=1e-4)
    assert fixed.attention_mask[:, t:].sum() == 0


def test_prefix_is_prepended(minilm):
    enc = LLMEncoder(model=minilm.model, tokenizer=minilm.tokenizer, model_name_or_path=MINILM_REF,
                     max_length=32, prefix="pre ")
    batch, _ = enc.tokenize(["a cat"])
    want = minilm.tokenizer("pre a cat", padding="max_length", max_length=32)["input_ids"]
    assert batch["input_ids"][0].tolist() == want


def test_truncation_warns_with_numbers(minilm):
    long_prompt = " ".join(["word"] * 40)  # 40 words + [CLS] + [SEP] = 42 tokens > 32
    with pytest.warns(PromptTruncationWarning, match=r"prompt 1: 42 tokens, 10 cut"):
        out = minilm.encode(["short", long_prompt])
    assert out.embeds.shape[1] == 32 and out.num_tokens == [3, 42]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncationWarning)
        minilm.encode(["short"])


def test_max_length_beyond_window_is_an_error(minilm_path):
    with pytest.raises(ValueError, match="position window of 512"):
        LLMEncoder.from_pretrained(minilm_path, max_length=600)


def test_bad_prompts(minilm):
    with pytest.raises(TypeError, match="string"):
        minilm.encode(123)
    with pytest.raises(TypeError, match=r"prompt\[1\]"):
        minilm.encode(["ok", None])
    with pytest.raises(ValueError, match="empty list"):
        minilm.encode([])
    assert minilm.encode("").embeds.shape[0] == 1  # the empty prompt is valid (unconditional / negative)


def test_t5_loads_only_the_encoder(tiny_llm_dirs):
    enc = LLMEncoder.from_pretrained(tiny_llm_dirs["t5"], max_length=16)
    assert "Encoder" in type(enc.model).__name__ or not hasattr(enc.model, "decoder")
    assert not any("decoder" in n for n, _ in enc.named_parameters())
    out = enc.encode(PROMPTS)
    assert out.embeds.shape == (2, 16, 32)
    from transformers import T5EncoderModel

    ref = T5EncoderModel.from_pretrained(tiny_llm_dirs["t5"]).eval()
    ids = enc.tokenizer(PROMPTS, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        want = ref(**ids).last_hidden_state
    torch.testing.assert_close(out.embeds, want)


def test_decoder_only_and_hidden_layer(tiny_llm_dirs):
    enc = LLMEncoder.from_pretrained(tiny_llm_dirs["llama"], max_length=24, padding="longest", hidden_layer=1)
    out = enc.encode(PROMPTS)
    ref = AutoModel.from_pretrained(tiny_llm_dirs["llama"]).eval()
    ids = enc.tokenizer(PROMPTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        want = ref(**ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(out.embeds, want)
    assert enc.tokenizer.padding_side == "right"


def test_save_reference_and_weights(tmp_path, tiny_llm_dirs):
    enc = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=20, prefix="pre ", padding="longest")
    enc.save_pretrained(tmp_path / "ref")
    stored = json.loads((tmp_path / "ref" / "llm4gen_encoder.json").read_text())
    assert stored["model_name_or_path"] == tiny_llm_dirs["bert"] and stored["prefix"] == "pre "
    assert not list((tmp_path / "ref").glob("*.safetensors"))
    enc.save_pretrained(tmp_path / "full", save_weights=True)
    assert list((tmp_path / "full").glob("*.safetensors"))
    assert enc.config.model_name_or_path == tiny_llm_dirs["bert"]  # saving did not change the live encoder
    want = enc.encode(PROMPTS).embeds
    for d in ("ref", "full"):
        loaded = LLMEncoder.from_pretrained(tmp_path / d)
        assert loaded.config.prefix == "pre " and loaded.config.padding == "longest" and loaded.max_length == 20
        torch.testing.assert_close(loaded.encode(PROMPTS).embeds, want)
    assert LLMEncoder.from_pretrained(tmp_path / "ref", max_length=10).max_length == 10  # override wins


def test_package_reference(minilm_path):
    assert resolve_model_reference(MINILM_REF) == minilm_path
    assert resolve_model_reference("org/name") == "org/name"
    with pytest.raises(OSError, match="not installed"):
        resolve_model_reference("package:no_such_module_xyz")


def test_missing_models_say_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"offline.*|HF_HUB_OFFLINE") as err:
        LLMEncoder.from_pretrained("some-org/not-a-cached-model")
    assert "some-org/not-a-cached-model" in str(err.value)
    with pytest.raises(OSError, match="does not exist"):
        LLMEncoder.from_pretrained(str(tmp_path / "missing" / "model"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "llm4gen_encoder.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        LLMEncoder.from_pretrained(tmp_path / "broken")


def test_remote_code_needs_explicit_flag(tmp_path, tiny_llm_dirs, monkeypatch):
    cfg = json.loads(open(f"{tiny_llm_dirs['bert']}/config.json").read())
    cfg["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    cfg["model_type"] = "my-custom-llm"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((OSError, ValueError), match="trust_remote_code"):
        LLMEncoder.from_pretrained(tmp_path)

    seen = []
    real = AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", spy)
    LLMEncoder.from_pretrained(tiny_llm_dirs["bert"])
    assert seen == [False]


def test_constructor_needs_model_and_tokenizer():
    with pytest.raises(ValueError, match="from_pretrained"):
        LLMEncoder()


def test_incomplete_checkpoint_is_refused(tmp_path, tiny_llm_dirs):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_llm_dirs["bert"], tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(weights)
    dropped = next(k for k in state if "encoder.layer.1" in k)
    del state[dropped]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 1 weights"):
        LLMEncoder.from_pretrained(tmp_path / "m")
