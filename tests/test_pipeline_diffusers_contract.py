"""The parts of diffusers' pipeline contract that LLM4GEN's two extra components could break (issue 43): the call
signature, ``from_pipe``, ``prompt_embeds`` without a negative, ``variant``, and pipelines built without the LLM parts.
The full diffusers test classes run in test_diffusers_conformance.py (opt-in)."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from llm4gen import LLM4GenPipeline, LLM4GenXLPipeline, LLMEncoder
from llm4gen.tiny import build_tiny_pipeline

PROMPT = "a red circle to the left of a blue square on a grey floor"
OURS = {"prompt_attention_mask", "negative_prompt_attention_mask", "regions", "region_guidance_scale",
        "region_guidance_steps", "region_tokens", "region_mask", "region_mask_steps", "region_mask_tokens"}
PAIRS = [(LLM4GenPipeline, StableDiffusionPipeline), (LLM4GenXLPipeline, StableDiffusionXLPipeline)]


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return LLM4GenPipeline.from_pretrained(tiny_sd_dir)


@pytest.fixture(scope="module")
def xl(tiny_xl_dir):
    return LLM4GenXLPipeline.from_pretrained(tiny_xl_dir)


def _seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


# ------------------------------------------------------------------ 1. the call signature
@pytest.mark.parametrize("cls, base", PAIRS, ids=["sd", "sdxl"])
def test_call_signature_is_the_base_pipelines_plus_ours(cls, base):
    ours = inspect.signature(cls.__call__).parameters
    theirs = inspect.signature(base.__call__).parameters
    plain = [name for name, p in theirs.items() if p.kind is not p.VAR_KEYWORD]
    assert list(ours)[: len(plain)] == plain  # same order: positional calls mean what they mean in diffusers
    for name in plain:
        assert (ours[name].kind, ours[name].default) == (theirs[name].kind, theirs[name].default), name
    assert {name for name, p in ours.items() if p.kind is p.KEYWORD_ONLY} == OURS
    assert ours["region_guidance_scale"].default == 0.05 and ours["regions"].default is None
    # what diffusers' tests and UIs look for
    for name in ("prompt", "height", "width", "guidance_scale", "negative_prompt", "prompt_embeds",
                 "negative_prompt_embeds", "num_images_per_prompt", "callback_on_step_end",
                 "callback_on_step_end_tensor_inputs", "output_type", "return_dict", "latents", "generator"):
        assert name in ours, name


def test_call_binds_arguments_as_the_base_pipeline_does(sd, monkeypatch):
    seen = {}
    monkeypatch.setattr(sd, "_generate", lambda call_kwargs, **options: seen.update(call=call_kwargs, opts=options))
    sd(PROMPT, 24, 40, 3, regions="auto", guidance_scale=2.0, region_mask=False, legacy_option=1)
    want = inspect.signature(StableDiffusionPipeline.__call__).bind(
        sd, PROMPT, 24, 40, 3, guidance_scale=2.0, legacy_option=1
    ).arguments
    assert seen["call"] == {**{k: v for k, v in want.items() if k not in ("self", "kwargs")}, "legacy_option": 1}
    assert seen["opts"] == {"regions": "auto", "region_mask": False}
    with pytest.raises(TypeError, match="multiple values"):
        sd(PROMPT, prompt=PROMPT)


# ------------------------------------------------------------------ 2. from_pipe
@pytest.mark.parametrize("which, base", [("sd", StableDiffusionPipeline), ("xl", StableDiffusionXLPipeline)])
def test_from_pipe_of_a_plain_diffusers_pipeline(which, base, request):
    ours = request.getfixturevalue(which)
    plain = base(**{k: v for k, v in ours.components.items() if k not in ("llm_encoder", "adapter")})
    again = type(ours).from_pipe(plain, llm_encoder=ours.llm_encoder, adapter=ours.adapter)
    assert type(again) is type(ours)
    for name, component in plain.components.items():
        assert again.components[name] is component, name  # shared, not reloaded or dropped
    assert again.llm_encoder is ours.llm_encoder and again.adapter is ours.adapter
    back = base.from_pipe(again)
    assert back.unet is ours.unet and back.vae is ours.vae


# ------------------------------------------------------------------ 3. prompt_embeds without a negative
def test_missing_negative_is_the_empty_prompt_fused_at_the_given_length(tiny_llm_dirs, tmp_path):
    """Independent computation: CLIP of "" straight from the text encoder, the LLM's "" zero-padded to the LLM
    length of the given embeddings (``padding="longest"``: shorter than the prompt's), then the CAM."""
    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding="longest")
    pipe = build_tiny_pipeline(llm=llm, work_dir=tmp_path)
    given = pipe.encode_fused_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False).prompt_embeds
    t = given.shape[1] - 77
    ids = pipe.tokenizer([""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        clip = pipe.text_encoder(ids)[0]
        empty = llm.encode([""])
        n = int(empty.attention_mask.sum())
        assert n < t
        feats = torch.zeros(1, t, llm.hidden_size)
        feats[:, :n] = empty.embeds[:, :n]
        mask = torch.zeros(1, t, dtype=torch.long)
        mask[:, :n] = 1
        want, _ = pipe.adapter(clip, feats, mask)
    pos, neg = pipe.encode_prompt(None, "cpu", 2, True, prompt_embeds=given)
    torch.testing.assert_close(pos, given.repeat(2, 1, 1))
    torch.testing.assert_close(neg, want.repeat(2, 1, 1))
    with pytest.raises(ValueError, match="fused embeddings of 77 \\+ 1 to 64 tokens"):
        pipe.encode_prompt(None, "cpu", 1, True, prompt_embeds=clip)  # raw CLIP embeddings, no LLM tokens


def test_given_embeddings_must_have_the_fused_length(sd):
    clip_only = torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match="77 \\+ 64 tokens.*encode_fused_prompt"):
        sd.encode_prompt(None, "cpu", 1, True, prompt_embeds=clip_only, negative_prompt_embeds=clip_only)
    with pytest.raises(ValueError, match="77 \\+ 64"):
        sd.encode_prompt(None, "cpu", 1, False, prompt_embeds=torch.zeros(1, 77 + 10, 32))
    with pytest.raises(ValueError, match="16-d"):
        sd.encode_prompt(None, "cpu", 1, False, prompt_embeds=torch.zeros(1, 77 + 64, 16))
    with pytest.raises(ValueError, match="shape of prompt_embeds"):
        sd.encode_prompt(None, "cpu", 1, True, prompt_embeds=torch.zeros(1, 141, 32),
                         negative_prompt_embeds=torch.zeros(2, 141, 32))


def test_sd_call_with_prompt_embeds_alone(sd):
    fused = sd.encode_fused_prompt(PROMPT, device="cpu")
    kw = dict(num_inference_steps=2, output_type="np")
    alone = sd(prompt_embeds=fused.prompt_embeds, generator=_seed(), **kw).images
    np.testing.assert_allclose(alone, sd(PROMPT, generator=_seed(), **kw).images, atol=1e-6)


def test_xl_missing_negative_follows_force_zeros(xl):
    fused = xl.encode_fused_prompt(PROMPT, device="cpu")
    pos, neg, pooled, neg_pooled = xl.encode_prompt(
        None, device="cpu", prompt_embeds=fused.prompt_embeds, pooled_prompt_embeds=fused.pooled_prompt_embeds
    )
    assert torch.equal(neg, torch.zeros_like(pos)) and torch.equal(neg_pooled, torch.zeros_like(pooled))
    xl.register_to_config(force_zeros_for_empty_prompt=False)
    try:  # then the empty prompt's embeddings, as with negative_prompt=""
        empty = xl.encode_fused_prompt(PROMPT, negative_prompt="", device="cpu")
        _, neg, _, neg_pooled = xl.encode_prompt(
            None, device="cpu", prompt_embeds=fused.prompt_embeds, pooled_prompt_embeds=fused.pooled_prompt_embeds
        )
    finally:
        xl.register_to_config(force_zeros_for_empty_prompt=True)
    torch.testing.assert_close(neg, empty.negative_prompt_embeds)
    torch.testing.assert_close(neg_pooled, empty.negative_pooled_prompt_embeds)
    assert neg.abs().max() > 0


# ------------------------------------------------------------------ 4. variant
def test_variant_names_the_llm_weights_too(sd, tmp_path):
    sd.save_pretrained(tmp_path, variant="fp16", save_llm_weights=True)
    files = os.listdir(tmp_path / "llm_encoder")
    assert "model.fp16.safetensors" in files and "model.safetensors" not in files
    again = LLM4GenPipeline.from_pretrained(tmp_path, variant="fp16")
    want = sd.llm_encoder.model.state_dict()
    got = again.llm_encoder.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(Exception, match="model.fp16.safetensors|variant"):
        LLMEncoder.from_pretrained(tmp_path / "llm_encoder", variant="bf16")


# ------------------------------------------------------------------ 5. built without the LLM parts
def test_pipelines_without_llm_parts_work_where_they_are_not_needed(sd):
    parts = dict(sd.components)
    text_side = ("text_encoder", "tokenizer", "llm_encoder", "adapter")
    # only the text side, as diffusers' encode_prompt-in-isolation test builds it
    text_only = LLM4GenPipeline(**{k: (v if k in text_side else None) for k, v in parts.items()})
    fused = sd.encode_fused_prompt(PROMPT, device="cpu")
    pos, neg = text_only.encode_prompt(PROMPT, "cpu", 1, True)
    torch.testing.assert_close(pos, fused.prompt_embeds)
    torch.testing.assert_close(neg, fused.negative_prompt_embeds)
    # no text side at all: fed fused embeddings, it draws what the full pipeline draws
    bare = LLM4GenPipeline(**{k: (None if k in text_side else v) for k, v in parts.items()})
    kw = dict(num_inference_steps=2, output_type="np")
    image = bare(prompt_embeds=fused.prompt_embeds, negative_prompt_embeds=fused.negative_prompt_embeds,
                 generator=_seed(), **kw).images
    np.testing.assert_allclose(image, sd(PROMPT, generator=_seed(), **kw).images, atol=1e-6)
    with pytest.raises(ValueError, match="built without text_encoder, tokenizer, llm_encoder, adapter.*prompt_embeds"):
        bare(PROMPT, num_inference_steps=1)
    with pytest.raises(ValueError, match="built without llm_encoder, adapter"):  # the negative "" needs them too
        LLM4GenPipeline(**{**parts, "llm_encoder": None, "adapter": None})(
            prompt_embeds=fused.prompt_embeds, num_inference_steps=1)
    with pytest.raises(ValueError, match="built without adapter"):
        bare.set_adapter_scale(0.5)
    with pytest.raises(ValueError, match="built without llm_encoder"):
        bare.save_pretrained("unused", save_llm_weights=True)


def test_xl_without_llm_parts_is_built_and_names_them(xl):
    parts = dict(xl.components)
    bare = LLM4GenXLPipeline(**{**parts, "llm_encoder": None, "adapter": None})
    with pytest.raises(ValueError, match="built without llm_encoder, adapter"):
        bare.encode_prompt(PROMPT, device="cpu")
