"""The authors' release, as their script runs it: long prompts sliced to 256 SentencePiece pieces, no safety checker,
RankGen's remote-code wrapper (refused without trust_remote_code, its `t5_encoder` picked explicitly), and the
command line (`llm4gen generate --official`, `llm4gen convert-official`).

Everything is tiny and built here: a SentencePiece model with T5's special ids, a T5 encoder wrapped the way
RankGen's hub code wraps it, a base SD folder with a safety checker, a separate `unet/` and a random `projector.pth`
with the authors' keys."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from llm4gen import LLM4GenPipeline, LLMEncoder
from llm4gen.cli import app
from llm4gen.encoders import PromptTruncationWarning

runner = CliRunner()
WORDS = ("a the red blue green yellow cube ball sphere cone left right of to above below large small tiny shiny metal "
         "wooden glass on under next behind in front sky ground moon sun tree house dog cat bird pyramid astronaut "
         "earth looms").split()
_rng = random.Random(0)
LONG_PROMPT = " ".join(_rng.choice(WORDS) for _ in range(220))  # > 256 pieces with "pre " and </s>
SHORT_PROMPT = "a red cube to the left of a blue ball"

# RankGen's hub code wraps T5 like this (written for these tests, not downloaded); unlike transformers' T5 encoder
# constructor, it leaves the wrapper's config encoder-decoder, so nothing but the attribute name finds the encoder
RANKGEN_CODE = '''
import copy

import torch
from transformers import T5EncoderModel, T5PreTrainedModel


class T5EncoderWithProjection(T5PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.t5_encoder = T5EncoderModel(copy.deepcopy(config))
        self.projection = torch.nn.Linear(config.d_model, config.d_model, bias=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        states = self.t5_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.projection(states[:, 0])
'''


def _train_spiece(path: Path) -> None:
    """A small unigram SentencePiece model with T5's special-token layout: pad 0, eos 1, unk 2, no bos."""
    import sentencepiece as spm

    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=64, model_type="unigram", pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc", minloglevel=2,
    )
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def rankgen(tmp_path_factory):
    """A tiny RankGen-style folder (remote code, `auto_map`, `is_encoder_decoder: true`) and a T5 tokenizer."""
    from transformers import T5Config, T5Tokenizer

    root = tmp_path_factory.mktemp("rankgen")
    sp_dir = root / "spiece"
    sp_dir.mkdir()
    _train_spiece(sp_dir / "spiece.model")
    tokenizer = T5Tokenizer.from_pretrained(sp_dir, extra_ids=0)
    tokenizer.save_pretrained(root / "t5-tokenizer")

    code = root / "modeling_rankgen.py"
    code.write_text(RANKGEN_CODE)
    spec = importlib.util.spec_from_file_location("modeling_rankgen_under_test", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                      is_encoder_decoder=True, auto_map={"AutoModel": "modeling_rankgen.T5EncoderWithProjection"})
    torch.manual_seed(0)
    wrapper = module.T5EncoderWithProjection(config).eval()
    model_dir = root / "rankgen-t5-tiny"
    wrapper.save_pretrained(model_dir)
    shutil.copy(code, model_dir / "modeling_rankgen.py")
    return SimpleNamespace(dir=str(model_dir), tokenizer=str(root / "t5-tokenizer"),
                           spiece=str(sp_dir / "spiece.model"), wrapper=wrapper)


def authors_ids(spiece: str, text: str, length: int = 256) -> tuple[list[int], list[int]]:
    """The authors' script, by hand: ``"pre " + prompt`` tokenized whole (``</s>`` appended), the first ``length``
    ids kept, shorter rows padded with id 0 and mask 0."""
    import sentencepiece as spm

    ids = (spm.SentencePieceProcessor(model_file=spiece).encode("pre " + text) + [1])[:length]
    pad = length - len(ids)
    return ids + [0] * pad, [1] * len(ids) + [0] * pad


def _t5_features(rankgen, texts: list[str]) -> torch.Tensor:
    rows = [authors_ids(rankgen.spiece, t) for t in texts]
    ids = torch.tensor([r[0] for r in rows])
    mask = torch.tensor([r[1] for r in rows])
    with torch.no_grad():
        return rankgen.wrapper.t5_encoder(input_ids=ids, attention_mask=mask).last_hidden_state


# ---------------------------------------------------------------------- 1. long prompts
def test_slice_truncation_is_the_authors_rule_and_is_saved(rankgen, tmp_path):
    import sentencepiece as spm

    assert len(spm.SentencePieceProcessor(model_file=rankgen.spiece).encode("pre " + LONG_PROMPT)) > 256
    enc = LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer, prefix="pre ", truncation="slice",
                                     trust_remote_code=True)
    with pytest.warns(PromptTruncationWarning, match="1 prompt"):
        batch, _ = enc.tokenize([LONG_PROMPT, SHORT_PROMPT])
    for row, text in enumerate([LONG_PROMPT, SHORT_PROMPT]):
        ids, mask = authors_ids(rankgen.spiece, text)
        assert batch["input_ids"][row].tolist() == ids
        assert batch["attention_mask"][row].tolist() == mask
    assert batch["input_ids"][0, -1].item() != 1  # the long prompt lost its </s>, kept its 256th piece
    with pytest.warns(PromptTruncationWarning):
        out = enc.encode([LONG_PROMPT, SHORT_PROMPT])
    torch.testing.assert_close(out.embeds, _t5_features(rankgen, [LONG_PROMPT, SHORT_PROMPT]))

    # the default rule keeps </s> at the end, so every row of a bidirectional T5 differs
    default = LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer, prefix="pre ",
                                         trust_remote_code=True)
    with pytest.warns(PromptTruncationWarning):
        assert default.tokenize([LONG_PROMPT])[0]["input_ids"][0, -1].item() == 1

    from llm4gen.feature_cache import encoder_namespace

    assert encoder_namespace(enc) != encoder_namespace(default)  # the prompt cache keeps the two rules apart

    enc.save_pretrained(tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / "llm4gen_encoder.json").read_text())["truncation"] == "slice"
    again = LLMEncoder.from_pretrained(tmp_path / "enc", trust_remote_code=True)
    assert again.config.truncation == "slice"
    with pytest.raises(ValueError, match="truncation must be one of"):
        LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer, truncation="cut", trust_remote_code=True)


def test_slice_with_longest_padding_cuts_but_does_not_pad(rankgen):
    enc = LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer, prefix="pre ", truncation="slice",
                                     padding="longest", max_length=8, trust_remote_code=True)
    batch, _ = enc.tokenize(["a", "a red cube to the left of a blue ball under the sky"])
    assert batch["input_ids"].shape == (2, 8)
    for row, text in enumerate(["a", "a red cube to the left of a blue ball under the sky"]):
        assert batch["input_ids"][row].tolist() == authors_ids(rankgen.spiece, text, 8)[0]
    short = enc.tokenize(["a"])[0]["input_ids"]
    assert short.tolist() == [authors_ids(rankgen.spiece, "a", 8)[0][:short.shape[1]]] and short.shape[1] < 8


# ---------------------------------------------------------------------- 3. and 4. RankGen's wrapper
def test_rankgen_without_remote_code_says_so(rankgen):
    with pytest.raises(ValueError, match="trust_remote_code=True") as err:
        LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer)
    message = str(err.value)
    assert "auto_map" in message and "T5EncoderWithProjection" in message and "corrupt" not in message


def test_rankgen_encoder_is_its_t5_encoder_even_if_config_stays_encoder_decoder(rankgen):
    assert json.loads((Path(rankgen.dir) / "config.json").read_text())["is_encoder_decoder"] is True
    enc = LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer, prefix="pre ", truncation="slice",
                                     trust_remote_code=True)
    assert type(enc.model).__name__ == "T5EncoderModel"
    torch.testing.assert_close(enc.encode([SHORT_PROMPT]).embeds, _t5_features(rankgen, [SHORT_PROMPT]))


def test_an_encoder_decoder_model_without_a_findable_encoder_is_named(rankgen, monkeypatch):
    """A wrapper whose encoder sits under an unknown name: transformers' get_encoder() gives the wrapper back."""
    from llm4gen import encoders

    monkeypatch.setattr(encoders, "_KNOWN_ENCODER_SUBMODULES", ())
    with pytest.raises(ValueError, match="submodule='<attribute holding the text encoder>'"):
        LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer, trust_remote_code=True)
    enc = LLMEncoder.from_pretrained(rankgen.dir, tokenizer=rankgen.tokenizer, trust_remote_code=True,
                                     submodule="t5_encoder")
    assert type(enc.model).__name__ == "T5EncoderModel"


# ---------------------------------------------------------------------- the release layout
@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_sd_dir, rankgen):
    """A tiny copy of the authors' release: a base SD folder (with a safety checker, as SD1.5 has), a separate
    `unet/` and a random `projector.pth` with the authors' keys."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from test_adapter import AuthorsLLMFusionModule

    root = tmp_path_factory.mktemp("release")
    parts = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=small, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=8))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    base = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=parts.scheduler, safety_checker=checker, feature_extractor=processor,
    )
    base.save_pretrained(root / "sd15")
    shutil.copytree(Path(tiny_sd_dir) / "unet", root / "LLM4GEN-models" / "unet")
    torch.manual_seed(1)
    projector = AuthorsLLMFusionModule(clip_dim=32, llm_dim=32, num_heads=8).eval()
    torch.save(projector.state_dict(), root / "LLM4GEN-models" / "projector.pth")
    return SimpleNamespace(base=str(root / "sd15"), release=str(root / "LLM4GEN-models"), projector=projector,
                           llm=rankgen.dir, tokenizer=rankgen.tokenizer)


def _official(release, **kwargs):
    return LLM4GenPipeline.from_official(base_model=release.base, unet=release.release, projector=release.release,
                                         llm=release.llm, llm_tokenizer=release.tokenizer, trust_remote_code=True,
                                         **kwargs)


def _authors_fused(pipe, release, rankgen, prompt: str) -> torch.Tensor:
    """The authors' script's fused embeddings: CLIP at 77 tokens, their LLMFusionModule on the sliced T5 rows."""
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return release.projector(pipe.text_encoder(ids.input_ids)[0], _t5_features(rankgen, [prompt]))


def test_from_official_fuses_a_long_prompt_as_the_authors_script(release, rankgen):
    pipe = _official(release)
    assert pipe.llm_encoder.config.truncation == "slice"
    with pytest.warns(PromptTruncationWarning):
        fused = pipe.encode_fused_prompt(LONG_PROMPT, device="cpu")
    torch.testing.assert_close(fused.prompt_embeds, _authors_fused(pipe, release, rankgen, LONG_PROMPT),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.negative_prompt_embeds, _authors_fused(pipe, release, rankgen, ""),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- 2. safety checker
def test_from_official_has_no_safety_checker_unless_asked(release):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    assert json.loads((Path(release.base) / "model_index.json").read_text())["safety_checker"][0] is not None
    assert _official(release).safety_checker is None
    assert isinstance(_official(release, load_safety_checker=True).safety_checker, StableDiffusionSafetyChecker)


# ---------------------------------------------------------------------- the command line
def _official_args(release) -> list[str]:
    return ["--official-base", release.base, "--official-release", release.release, "--official-llm", release.llm,
            "--official-llm-tokenizer", release.tokenizer]


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def test_generate_official_runs_the_release_as_the_api(release, tmp_path):
    result = runner.invoke(app, ["generate", SHORT_PROMPT, "--official", *_official_args(release),
                                 "--trust-remote-code", "--steps", "2", "--seed", "4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pipe = _official(release)
    want = pipe(SHORT_PROMPT, num_inference_steps=2, guidance_scale=7.5, output_type="np",
                generator=torch.Generator().manual_seed(4)).images[0]
    np.testing.assert_array_equal(_png(tmp_path / "seed4_0000.png"), (want * 255).round().astype(np.uint8))

    refused = runner.invoke(app, ["generate", SHORT_PROMPT, "--official", *_official_args(release),
                                  "--out", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "--trust-remote-code" in refused.output
    both = runner.invoke(app, ["generate", SHORT_PROMPT, "--official", "--model", release.base])
    assert both.exit_code == 2 and "not both" in both.output


def test_official_fp16_keeps_the_t5_in_bf16(release, rankgen):
    from llm4gen.cli.official import load_official

    pipe = load_official(release.base, release.release, release.llm, release.tokenizer, True, "cpu", torch.float16)
    assert (pipe.unet.dtype, pipe.adapter.dtype, pipe.text_encoder.dtype) == (torch.float16,) * 3
    assert pipe.llm_encoder.model.dtype == torch.bfloat16  # T5 overflows in fp16
    fused = pipe.encode_fused_prompt(SHORT_PROMPT, device="cpu").prompt_embeds
    assert fused.dtype == torch.float16
    want = _authors_fused(_official(release), release, rankgen, SHORT_PROMPT)
    torch.testing.assert_close(fused.float(), want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("command", [["generate", "a prompt", "--official", "--trust-remote-code"],
                                     ["convert-official", "OUT", "--trust-remote-code"]])
def test_official_offline_says_what_was_looked_for_and_where(command, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    command = [str(tmp_path / "out") if c == "OUT" else c for c in command]
    result = runner.invoke(app, [*command, "--official-llm-tokenizer", str(tmp_path / "no-tokenizer")])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    for ref in ("sd-legacy/stable-diffusion-v1-5", "Shui-VL/LLM4GEN-models", "kalpeshk2011/rankgen-t5-xl-all"):
        assert ref in text
    assert "Hugging Face cache" in text and "HF_HUB_OFFLINE=1" in text
    assert "no-tokenizer' - local path: does not exist" in text


def test_convert_official_writes_a_folder_every_loader_reads(release, rankgen, tmp_path):
    from llm4gen import app as web
    from llm4gen.comfy.nodes import LLM4GenTextModel

    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert-official", str(out), *_official_args(release), "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".pth", ".bin", ".pt", ".ckpt", ".pkl"}]
    assert {p.parent.name for p in files if p.suffix == ".safetensors"} >= {"unet", "vae", "text_encoder", "adapter"}
    saved = json.loads((out / "llm_encoder" / "llm4gen_encoder.json").read_text())
    assert (saved["model_name_or_path"], saved["prefix"], saved["truncation"]) == (release.llm, "pre ", "slice")
    assert not list((out / "llm_encoder").glob("*.safetensors"))  # referenced, not copied

    loaded = LLM4GenPipeline.from_pretrained(out, trust_remote_code=True)
    assert loaded.safety_checker is None
    with pytest.warns(PromptTruncationWarning):
        fused = loaded.encode_fused_prompt(LONG_PROMPT, device="cpu").prompt_embeds
    torch.testing.assert_close(fused, _authors_fused(loaded, release, rankgen, LONG_PROMPT), rtol=1e-5, atol=1e-5)

    by_model = runner.invoke(app, ["generate", SHORT_PROMPT, "--model", str(out), "--trust-remote-code", "--steps", "2",
                                   "--seed", "4", "--out", str(tmp_path / "a")])
    assert by_model.exit_code == 0, by_model.output
    want = _official(release)(SHORT_PROMPT, num_inference_steps=2, guidance_scale=7.5, output_type="np",
                              generator=torch.Generator().manual_seed(4)).images[0]
    np.testing.assert_array_equal(_png(tmp_path / "a" / "seed4_0000.png"), (want * 255).round().astype(np.uint8))

    served = web.load_model(str(out), trust_remote_code=True)
    assert served.pipe.llm_encoder.config.truncation == "slice"
    text_side = LLM4GenTextModel.from_pretrained(str(out), "cpu", "auto", trust_remote_code=True)  # ComfyUI's loader
    assert type(text_side.llm_encoder.model).__name__ == "T5EncoderModel"

    again = runner.invoke(app, ["convert-official", str(out), *_official_args(release), "--trust-remote-code"])
    assert again.exit_code == 2 and "not an empty folder" in again.output


def test_convert_official_can_copy_the_llm_as_a_plain_t5_encoder(release, rankgen, tmp_path):
    out = tmp_path / "with-llm"
    result = runner.invoke(app, ["convert-official", str(out), *_official_args(release), "--trust-remote-code",
                                 "--save-llm-weights"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "llm_encoder" / "config.json").read_text())
    assert "auto_map" not in config
    loaded = LLM4GenPipeline.from_pretrained(out)  # no remote code needed any more
    assert type(loaded.llm_encoder.model).__name__ == "T5EncoderModel"
    torch.testing.assert_close(loaded.llm_encoder.encode([SHORT_PROMPT]).embeds, _t5_features(rankgen, [SHORT_PROMPT]))


# ---------------------------------------------------------------------- 5. docs
def test_readme_names_every_local_path_argument_and_the_commands():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for arg in ("base_model=", "unet=", "projector=", "llm=", "llm_tokenizer="):
        assert f"`{arg}`" in readme
    assert "llm4gen generate" in readme and "--official" in readme and "llm4gen convert-official" in readme
