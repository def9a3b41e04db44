"""LLM4GenPipeline / LLM4GenXLPipeline on tiny models saved to disk and loaded back like a user would."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from llm4gen import CrossAdapter, LLM4GenPipeline, LLM4GenXLPipeline, LLMEncoder

PROMPT = "a red circle to the left of a blue square on a grey floor"
# Two prompts that agree on their first 100 characters, beyond the tiny CLIP's 75-character window.
HEAD = "a large red circle, a small blue square and a green triangle lie on a plain grey floor, seen from above; "
LONG_A = HEAD + "the triangle is on the left."
LONG_B = HEAD + "the triangle is on the right."


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return LLM4GenPipeline.from_pretrained(tiny_sd_dir)


def _gen(pipe, prompt=PROMPT, seed=0, **kw):
    kw.setdefault("num_inference_steps", 3)
    kw.setdefault("output_type", "np")
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kw).images


def test_same_seed_same_image_and_roundtrip(sd, tiny_sd_dir, tmp_path):
    a, b, c = _gen(sd, seed=0), _gen(sd, seed=0), _gen(sd, seed=1)
    assert a.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    sd.save_pretrained(tmp_path / "again")
    again = LLM4GenPipeline.from_pretrained(tmp_path / "again")
    np.testing.assert_array_equal(_gen(again, seed=0), a)


def test_fused_embeddings_are_clip_then_cam_of_llm(sd):
    """Independent computation: CLIP straight from the text encoder, LLM straight from the encoder, then the CAM."""
    fused = sd.encode_fused_prompt([LONG_A, LONG_B], device="cpu")
    ids = sd.tokenizer([LONG_A, LONG_B], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        clip = sd.text_encoder(ids.input_ids)[0]
        llm = sd.llm_encoder.encode([LONG_A, LONG_B, "", ""])
        want, want_mask = sd.adapter(clip, llm.embeds[:2], llm.attention_mask[:2])
    torch.testing.assert_close(fused.prompt_embeds, want)
    torch.testing.assert_close(fused.prompt_attention_mask, want_mask)
    assert fused.prompt_embeds.shape == (2, 77 + 64, 32)
    assert fused.negative_prompt_embeds.shape == fused.prompt_embeds.shape
    # the prompts differ only beyond CLIP's window: CLIP tokens agree, the LLM branch tells them apart
    torch.testing.assert_close(fused.prompt_embeds[0, :77], fused.prompt_embeds[1, :77])
    assert (fused.prompt_embeds[0, 77:] - fused.prompt_embeds[1, 77:]).abs().max() > 1e-4


def test_set_adapter_scale_scales_only_the_llm_tokens(tiny_sd_dir):
    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    one = pipe.encode_fused_prompt(LONG_A, device="cpu").prompt_embeds
    image = _gen(pipe, LONG_A)
    pipe.set_adapter_scale(0.25)
    quarter = pipe.encode_fused_prompt(LONG_A, device="cpu").prompt_embeds
    torch.testing.assert_close(quarter[:, :77], one[:, :77])
    torch.testing.assert_close(quarter[:, 77:], 0.25 * one[:, 77:])
    assert np.abs(_gen(pipe, LONG_A) - image).max() > 1e-4
    pipe.set_adapter_scale(0)  # the prompts differ beyond CLIP's window only: now the UNet cannot tell them apart
    np.testing.assert_array_equal(_gen(pipe, LONG_A), _gen(pipe, LONG_B))
    pipe.set_adapter_scale(1.0)
    np.testing.assert_array_equal(_gen(pipe, LONG_A), image)
    with pytest.raises(ValueError, match="balance factor"):
        pipe.set_adapter_scale(-1)


def test_llm_changes_the_image_beyond_clip_window(sd):
    assert np.abs(_gen(sd, LONG_A) - _gen(sd, LONG_B)).max() > 1e-4


def test_batches_negatives_and_images_per_prompt(sd):
    imgs = _gen(sd, [PROMPT, LONG_A], negative_prompt=["blurry", "dark"], num_images_per_prompt=2)
    assert imgs.shape == (4, 32, 32, 3)
    # batching does not change an image: row 2 (prompt 2, image 1) equals LONG_A alone with the same latents
    one = _gen(sd, PROMPT, negative_prompt="blurry", guidance_scale=1.0)
    assert one.shape == (1, 32, 32, 3)


def test_precomputed_embeddings_give_the_same_image(sd):
    fused = sd.encode_fused_prompt(PROMPT, device="cpu")
    direct = _gen(sd, PROMPT)
    pre = sd(
        prompt_embeds=fused.prompt_embeds, negative_prompt_embeds=fused.negative_prompt_embeds,
        generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np",
    ).images
    np.testing.assert_allclose(pre, direct, atol=1e-6)
    # no negative given: the pipeline encodes "" itself, as diffusers does (and as `direct` did)
    alone = sd(
        prompt_embeds=fused.prompt_embeds, generator=torch.Generator().manual_seed(0), num_inference_steps=3,
        output_type="np",
    ).images
    np.testing.assert_allclose(alone, direct, atol=1e-6)


def test_scheduler_swap_and_output_types(sd):
    sched = sd.scheduler
    try:
        sd.scheduler = EulerDiscreteScheduler.from_config(sched.config)
        assert _gen(sd).shape == (1, 32, 32, 3)
    finally:
        sd.scheduler = sched
    latents = _gen(sd, output_type="latent")
    assert tuple(latents.shape) == (1, 4, 16, 16)
    pil = sd(PROMPT, num_inference_steps=2).images[0]
    assert pil.size == (32, 32)


def test_attention_mask_makes_padding_irrelevant(tiny_llm_dirs, tmp_path):
    """With use_llm_attention_mask the UNet ignores LLM padding: 64-token and longest padding give one image."""
    from llm4gen.tiny import build_tiny_pipeline

    def pipe_with(padding, use_mask):
        llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding=padding)
        return build_tiny_pipeline(llm=llm, work_dir=tmp_path / f"{padding}{use_mask}", use_llm_attention_mask=use_mask)

    masked_fixed, masked_longest = _gen(pipe_with("max_length", True)), _gen(pipe_with("longest", True))
    np.testing.assert_allclose(masked_fixed, masked_longest, atol=1e-5)
    plain_fixed, plain_longest = _gen(pipe_with("max_length", False)), _gen(pipe_with("longest", False))
    assert np.abs(plain_fixed - plain_longest).max() > 1e-4  # without the mask, padding tokens do act


def test_mask_reaches_the_unet(tiny_llm_dirs, tmp_path):
    from llm4gen.tiny import build_tiny_pipeline

    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding="max_length")
    pipe = build_tiny_pipeline(llm=llm, work_dir=tmp_path, use_llm_attention_mask=True)
    seen = []
    handle = pipe.unet.register_forward_hook(
        lambda m, a, kw, out: seen.append(kw.get("encoder_attention_mask")), with_kwargs=True
    )
    try:
        _gen(pipe, [PROMPT, "a star"], num_inference_steps=1, num_images_per_prompt=2)
    finally:
        handle.remove()
    mask = seen[0]
    n_tokens = len(pipe.llm_encoder.tokenizer(PROMPT)["input_ids"])
    n_neg = len(pipe.llm_encoder.tokenizer("")["input_ids"])
    assert mask.shape == (8, 77 + 64)
    assert mask[:4, 77:].sum(1).tolist() == [n_neg] * 4  # negatives first, as diffusers stacks them
    assert mask[4:6, 77:].sum(1).tolist() == [n_tokens] * 2
    assert mask[:, :77].all()
    assert pipe._llm4gen_masks is None  # nothing left behind after the call


def test_bad_inputs(sd):
    with pytest.raises(ValueError, match="empty"):
        sd("   ", num_inference_steps=1)
    with pytest.raises(TypeError, match="string"):
        sd(42, num_inference_steps=1)
    with pytest.raises(ValueError, match="2 prompt"):
        sd([PROMPT, PROMPT], negative_prompt=["a", "b", "c"], num_inference_steps=1)
    with pytest.raises(ValueError, match="prompt"):
        sd(num_inference_steps=1)


def test_mismatched_components_are_named(sd):
    parts = dict(sd.components)
    wrong_llm = CrossAdapter(clip_dim=32, llm_dim=48, num_heads=2)
    with pytest.raises(ValueError, match="llm_dim=48"):
        LLM4GenPipeline(**{**parts, "adapter": wrong_llm})
    wrong_clip = CrossAdapter(clip_dim=16, llm_dim=32, num_heads=2)
    with pytest.raises(ValueError, match="clip_dim=16"):
        LLM4GenPipeline(**{**parts, "adapter": wrong_clip})
    without_llm = LLM4GenPipeline(**{**parts, "llm_encoder": None})  # fine until a prompt needs the LLM
    with pytest.raises(ValueError, match="built without llm_encoder"):
        without_llm(PROMPT, num_inference_steps=1)


def test_bad_folders(tiny_sd_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        LLM4GenPipeline.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match="unet"):
        LLM4GenPipeline.from_pretrained(broken)
    base = tmp_path / "base"
    shutil.copytree(tiny_sd_dir, base)
    index = json.loads((base / "model_index.json").read_text())
    del index["adapter"], index["llm_encoder"]
    (base / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="adapter"):
        LLM4GenPipeline.from_pretrained(base)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_sd_dir, corrupt)
    weights = next(p for p in (corrupt / "adapter").iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(b"garbage" * 10)
    with pytest.raises(Exception, match="adapter|safetensors|header|corrupt") as err:
        LLM4GenPipeline.from_pretrained(corrupt)
    assert "adapter" in str(err.value) or "diffusion_pytorch_model" in str(err.value)


def test_base_pipeline_plus_components(tiny_sd_dir, tmp_path, tiny_llm_dirs):
    """A plain SD folder (no LLM parts) + an LLMEncoder and a CrossAdapter passed in, as for a hub base model."""
    base = tmp_path / "base"
    shutil.copytree(tiny_sd_dir, base)
    index = json.loads((base / "model_index.json").read_text())
    del index["adapter"], index["llm_encoder"]
    index["_class_name"] = "StableDiffusionPipeline"
    (base / "model_index.json").write_text(json.dumps(index))
    adapter = CrossAdapter.from_pretrained(os.path.join(tiny_sd_dir, "adapter"))
    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64)
    pipe = LLM4GenPipeline.from_pretrained(base, llm_encoder=llm, adapter=adapter, use_llm_attention_mask=True)
    assert pipe.config.use_llm_attention_mask is True
    assert _gen(pipe).shape == (1, 32, 32, 3)


def test_minilm_end_to_end(tmp_path, minilm_path):
    """The real MiniLM (from its pip package) as the LLM, saved as a package reference and loaded back."""
    from llm4gen.tiny import MINILM_REF, build_tiny_pipeline

    pipe = build_tiny_pipeline(llm=MINILM_REF, llm_max_length=128, llm_padding="longest", work_dir=tmp_path / "w",
                               use_llm_attention_mask=True)
    assert pipe.adapter.config.llm_dim == 384
    first = _gen(pipe, LONG_A)
    pipe.save_pretrained(tmp_path / "p")
    stored = json.loads((tmp_path / "p" / "llm_encoder" / "llm4gen_encoder.json").read_text())
    assert stored["model_name_or_path"] == MINILM_REF
    loaded = LLM4GenPipeline.from_pretrained(tmp_path / "p")
    np.testing.assert_array_equal(_gen(loaded, LONG_A), first)


def test_save_llm_weights(sd, tmp_path):
    sd.save_pretrained(tmp_path / "p", save_llm_weights=True)
    assert list((tmp_path / "p" / "llm_encoder").glob("*.safetensors"))
    loaded = LLM4GenPipeline.from_pretrained(tmp_path / "p")
    np.testing.assert_array_equal(_gen(loaded), _gen(sd))


def test_push_to_hub_uploads_the_folder_once_everything_is_written(sd, tmp_path, monkeypatch):
    """diffusers uploads at the end of its own save_pretrained; the folder must hold what llm4gen writes after it too
    (CLIP with `text_model.` keys, the LLM's weights, the sampling settings) when it is uploaded, and be uploaded
    once."""
    import diffusers.utils.hub_utils as hub_utils
    import huggingface_hub
    from safetensors import safe_open

    from llm4gen.sampling import SamplingDefaults

    class Card:
        def save(self, path):
            open(path, "w").write("card")

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr(hub_utils, "load_or_create_model_card", lambda *a, **kw: Card())
    monkeypatch.setattr(hub_utils, "populate_model_card", lambda card, *a, **kw: card)
    uploads = []

    def upload(folder, repo_id, token=None, commit_message=None, create_pr=False):
        folder = tmp_path / "p"
        with safe_open(next((folder / "text_encoder").glob("*.safetensors")), framework="pt") as f:
            prefixed = all(k.startswith("text_model.") for k in f.keys() if "projection" not in k)
        uploads.append((repo_id, commit_message, prefixed, bool(list((folder / "llm_encoder").glob("*.safetensors"))),
                        (folder / "llm4gen_sampling.json").is_file(), (folder / "README.md").is_file()))

    monkeypatch.setattr(sd, "_upload_folder", upload)
    monkeypatch.setattr(sd, "sampling_defaults", SamplingDefaults(guidance_scale=4.0), raising=False)
    sd.save_pretrained(tmp_path / "p", save_llm_weights=True, push_to_hub=True, repo_id="me/llm4gen-tiny",
                       commit_message="tiny")
    assert uploads == [("me/llm4gen-tiny", "tiny", True, True, True, True)]


def test_from_official_layout(tmp_path, tiny_sd_dir, tiny_llm_dirs):
    """The authors' release layout: a base SD folder, a fine-tuned `unet/`, `projector.pth`, a T5 encoder."""
    from test_adapter import AuthorsLLMFusionModule

    base = tmp_path / "sd15"
    shutil.copytree(tiny_sd_dir, base)
    index = json.loads((base / "model_index.json").read_text())
    del index["adapter"], index["llm_encoder"]
    (base / "model_index.json").write_text(json.dumps(index))
    release = tmp_path / "release"
    shutil.copytree(os.path.join(tiny_sd_dir, "unet"), release / "unet")
    ref = AuthorsLLMFusionModule(clip_dim=32, llm_dim=32, num_heads=8)
    torch.save(ref.state_dict(), release / "projector.pth")
    pipe = LLM4GenPipeline.from_official(
        base_model=base, unet=release, projector=release, llm=tiny_llm_dirs["t5"], llm_tokenizer=None,
        safety_checker=None, requires_safety_checker=False,
    )
    enc = pipe.llm_encoder
    assert (enc.config.prefix, enc.config.max_length, enc.config.padding) == ("pre ", 256, "max_length")
    assert pipe.config.use_llm_attention_mask is False
    fused = pipe.encode_fused_prompt(PROMPT, device="cpu")
    assert fused.prompt_embeds.shape == (1, 77 + 256, 32) == fused.negative_prompt_embeds.shape
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = ref(pipe.text_encoder(ids.input_ids)[0], enc.encode(PROMPT).embeds)
    torch.testing.assert_close(fused.prompt_embeds, want, rtol=1e-5, atol=1e-5)
    assert _gen(pipe).shape == (1, 32, 32, 3)


# ---------------------------------------------------------------------- SDXL
@pytest.fixture(scope="module")
def xl(tiny_xl_dir):
    return LLM4GenXLPipeline.from_pretrained(tiny_xl_dir)


def test_xl_generates_deterministically_and_roundtrips(xl, tmp_path):
    a = _gen(xl)
    assert a.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(a, _gen(xl))
    xl.save_pretrained(tmp_path / "xl")
    np.testing.assert_array_equal(_gen(LLM4GenXLPipeline.from_pretrained(tmp_path / "xl")), a)
    assert _gen(xl, [PROMPT, LONG_A], num_images_per_prompt=2).shape == (4, 32, 32, 3)


def test_xl_fused_embeddings(xl):
    fused = xl.encode_fused_prompt([LONG_A, LONG_B], device="cpu")
    assert fused.prompt_embeds.shape == (2, 77 + 64, 32)
    assert fused.pooled_prompt_embeds.shape == (2, 16)
    # force_zeros_for_empty_prompt and no negative prompt: the fused negative is all zeros
    assert fused.negative_prompt_embeds.abs().max() == 0
    with_neg = xl.encode_fused_prompt(LONG_A, negative_prompt="blurry", device="cpu")
    assert with_neg.negative_prompt_embeds.abs().max() > 0
    torch.testing.assert_close(fused.prompt_embeds[0, :77], fused.prompt_embeds[1, :77])
    assert (fused.prompt_embeds[0, 77:] - fused.prompt_embeds[1, 77:]).abs().max() > 1e-4


def test_xl_component_check(xl):
    parts = dict(xl.components)
    with pytest.raises(ValueError, match="clip_dim=24"):
        LLM4GenXLPipeline(**{**parts, "adapter": CrossAdapter(clip_dim=24, llm_dim=32, num_heads=2)})


def test_model_cpu_offload_sequence_runs(tiny_sd_dir):
    """enable_model_cpu_offload hooks every component named in model_cpu_offload_seq (here onto the CPU)."""
    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    want = _gen(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.llm_encoder, "_hf_hook") and hasattr(pipe.adapter, "_hf_hook")
    np.testing.assert_allclose(_gen(pipe), want, atol=1e-6)


def test_lora_loading_keeps_working(tiny_sd_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    base = _gen(pipe)
    pipe.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    fresh = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    fresh.load_lora_weights(tmp_path)
    with_lora = _gen(fresh)
    assert np.abs(with_lora - base).max() > 1e-3
    fresh.unload_lora_weights()
    np.testing.assert_allclose(_gen(fresh), base, atol=1e-5)


def test_precomputed_embeddings_with_masks(tiny_llm_dirs, tmp_path):
    from llm4gen.tiny import build_tiny_pipeline

    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding="max_length")
    pipe = build_tiny_pipeline(llm=llm, work_dir=tmp_path, use_llm_attention_mask=True)
    fused = pipe.encode_fused_prompt([PROMPT, LONG_A], device="cpu")
    kwargs = dict(num_inference_steps=3, output_type="np", num_images_per_prompt=2)
    direct = pipe([PROMPT, LONG_A], generator=torch.Generator().manual_seed(0), **kwargs).images
    pre = pipe(
        prompt_embeds=fused.prompt_embeds, negative_prompt_embeds=fused.negative_prompt_embeds,
        prompt_attention_mask=fused.prompt_attention_mask,
        negative_prompt_attention_mask=fused.negative_prompt_attention_mask,
        generator=torch.Generator().manual_seed(0), **kwargs,
    ).images
    np.testing.assert_allclose(pre, direct, atol=1e-6)
    unmasked = pipe(
        prompt_embeds=fused.prompt_embeds, negative_prompt_embeds=fused.negative_prompt_embeds,
        generator=torch.Generator().manual_seed(0), **kwargs,
    ).images
    assert np.abs(unmasked - direct).max() > 1e-5  # the given masks were really used


def test_offline_hub_id_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="offline") as err:
        LLM4GenPipeline.from_pretrained("someone/not-cached-llm4gen")
    assert "someone/not-cached-llm4gen" in str(err.value)


def _count_llm_calls(pipe):
    calls = []
    handle = pipe.llm_encoder.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    return calls, handle


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_prompt_cache_skips_the_llm_and_keeps_the_image(tiny_llm_dirs, tmp_path, padding):
    from llm4gen.tiny import build_tiny_pipeline

    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding=padding)
    pipe = build_tiny_pipeline(llm=llm, work_dir=tmp_path / "w", use_llm_attention_mask=True)
    plain = _gen(pipe, [PROMPT, LONG_A])
    pipe.enable_prompt_cache(max_entries=8, cache_dir=tmp_path / "disk")
    calls, handle = _count_llm_calls(pipe)
    first = _gen(pipe, [PROMPT, LONG_A])
    again = _gen(pipe, [PROMPT, LONG_A])
    third = _gen(pipe, [LONG_A, LONG_B])  # one new prompt: only it (no negatives: "" is cached) goes to the LLM
    handle.remove()
    assert calls == [4, 1]  # 2 prompts + 2 negatives ("" twice) in the first call, then LONG_B alone
    np.testing.assert_allclose(first, plain, atol=1e-5)
    np.testing.assert_array_equal(again, first)
    assert third.shape == (2, 32, 32, 3)
    cache = pipe.prompt_cache
    assert cache.hits >= 7 and len(cache) == 4
    # a second pipeline with the same LLM finds the entries on disk
    other = build_tiny_pipeline(llm=LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding=padding),
                                work_dir=tmp_path / "w2", use_llm_attention_mask=True)
    other.enable_prompt_cache(cache_dir=tmp_path / "disk")
    calls, handle = _count_llm_calls(other)
    other.encode_fused_prompt([PROMPT, LONG_B], device="cpu")
    handle.remove()
    assert calls == []
    # other settings are other entries
    other.llm_encoder.register_to_config(max_length=32)
    calls, handle = _count_llm_calls(other)
    other.encode_fused_prompt([PROMPT], device="cpu")
    handle.remove()
    assert calls == [2]


def test_prompt_cache_lru():
    from llm4gen.feature_cache import PromptCache

    cache = PromptCache(max_entries=2)
    for t in ("a", "b", "c"):
        cache.put("ns", t, torch.ones(1, 2), torch.ones(1))
    assert cache.get("ns", "a") is None and cache.get("ns", "c") is not None and len(cache) == 2
    cache.get("ns", "b")
    cache.put("ns", "d", torch.ones(1, 2), torch.ones(1))
    assert cache.get("ns", "c") is None and cache.get("ns", "b") is not None  # b was used more recently than c
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(max_entries=0)


def test_trained_with_mask_padding_does_not_change_the_image(tiny_llm_dirs, tmp_path):
    """A model trained with use_llm_attention_mask gives the same image with 0 or many LLM padding tokens."""
    from llm4gen.tiny import build_tiny_pipeline
    from llm4gen.training.config import load_config
    from llm4gen.training.trainer import train

    build_tiny_pipeline(llm=tiny_llm_dirs["bert"], work_dir=tmp_path / "parts").save_pretrained(tmp_path / "base")
    cfg = load_config({"output_dir": str(tmp_path / "run"), "base_model": str(tmp_path / "base"),
                       "llm": tiny_llm_dirs["bert"], "llm_max_length": 160, "resolution": 32, "train_batch_size": 4,
                       "max_train_steps": 3, "learning_rate": 1e-3, "data": {"type": "shapesworld", "num_items": 32}})
    train(cfg, progress=False)
    pipe = LLM4GenPipeline.from_pretrained(tmp_path / "run")
    assert pipe.config.use_llm_attention_mask
    trimmed = _gen(pipe, PROMPT)
    pipe.llm_encoder.register_to_config(padding="max_length")  # 160 LLM tokens, most of them padding
    padded = _gen(pipe, PROMPT)
    np.testing.assert_allclose(padded, trimmed, atol=1e-5)


def test_encode_llm_prompt_and_disabling_the_cache(sd):
    out = sd.encode_llm_prompt(["a red circle", "a blue star"])
    direct = sd.llm_encoder.encode(["a red circle", "a blue star"])
    torch.testing.assert_close(out.embeds, direct.embeds)
    sd.enable_prompt_cache(max_entries=4)
    assert sd.prompt_cache is not None
    sd.disable_prompt_cache()
    assert sd.prompt_cache is None
