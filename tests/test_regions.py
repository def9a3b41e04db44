"""Region guidance (llm4gen.regions): boxes, phrases, tokens, the loss, and guided sampling on tiny pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm4gen.regions import Region, RegionGuidance, box_cover, region_loss, region_spans, span_tokens

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- boxes and regions
def test_box_cover_counts_each_cells_area_inside_the_box():
    # the upper left quarter of a 4 x 4 grid: the four cells of rows 0-1, columns 0-1, fully
    want = np.zeros((4, 4), dtype=np.float32)
    want[:2, :2] = 1
    assert torch.equal(box_cover((0, 0, 0.5, 0.5), 4), torch.from_numpy(want.reshape(-1)))
    # x from 1/8 to 3/8 and y from 0 to 1/4: half of cell (0, 0) and half of cell (0, 1)
    cover = box_cover((0.125, 0, 0.375, 0.25), 4).reshape(4, 4)
    assert cover[0, 0] == pytest.approx(0.5) and cover[0, 1] == pytest.approx(0.5)
    assert float(cover.sum()) == pytest.approx(1.0)
    # any box: the covers sum to its area in cells (an independent identity), and every value lies in [0, 1]
    for box in [(0.1, 0.2, 0.73, 0.9), (0.0, 0.0, 1.0, 1.0), (0.36, 0.64, 0.64, 1.0)]:
        c = box_cover(box, 7)
        area = (box[2] - box[0]) * (box[3] - box[1])
        assert float(c.sum()) == pytest.approx(area * 49, rel=1e-5)
        assert float(c.min()) >= 0 and float(c.max()) <= 1 + 1e-6


@pytest.mark.parametrize("kwargs, match", [
    (dict(text="a", box=(0.5, 0, 0.4, 1)), "x0 < x1"),
    (dict(text="a", box=(0, 0, 1, 1.5)), "y1 <= 1"),
    (dict(text="a", box=(0, 0, 1)), "four numbers"),
    (dict(text="a", box="abcd"), "four numbers"),
    (dict(text=None, box=(0, 0, 1, 1)), "either a phrase"),
    (dict(text="a", box=(0, 0, 1, 1), spans=((0, 1),)), "not both"),
    (dict(text=None, box=(0, 0, 1, 1), spans=((3, 3),)), "start < end"),
])
def test_region_rejects_bad_boxes_and_phrases(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Region(**kwargs)


def test_region_spans_finds_every_occurrence_on_word_boundaries():
    prompt = "A red circle, a reddish square and another Red Circle."
    assert region_spans(prompt, Region("red circle", (0, 0, 1, 1))) == [(2, 12), (43, 53)]
    assert region_spans(prompt, Region("red", (0, 0, 1, 1))) == [(2, 5), (43, 46)]  # not "reddish"
    assert region_spans(prompt, Region(None, (0, 0, 1, 1), spans=((16, 23),))) == [(16, 23)]
    with pytest.raises(ValueError, match="'blue star' does not occur in the prompt"):
        region_spans(prompt, Region("blue star", (0, 0, 1, 1)))
    with pytest.raises(ValueError, match="run past the end"):
        region_spans("short", Region(None, (0, 0, 1, 1), spans=((2, 9),)))


def test_span_tokens_maps_characters_to_tokens():
    # offsets of "<s> a red circle </s>" as a fast tokenizer gives them (special tokens have empty offsets)
    offsets = [(0, 0), (0, 1), (2, 5), (6, 12), (0, 0)]
    assert span_tokens(offsets, [(2, 12)]) == [2, 3]
    assert span_tokens(offsets, [(3, 4)]) == [2]  # a span inside a token takes the token
    assert span_tokens(offsets, [(2, 12)], limit=3) == [2]  # the window ends before "circle"
    # the same text after a 4-character prefix: offsets shift, the spans do not
    shifted = [(0, 0), (4, 5), (6, 9), (10, 16), (0, 0)]
    assert span_tokens(shifted, [(2, 5)], prefix_len=4) == [2]


def test_region_loss_against_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, 4, 5, generator=gen).softmax(-1), torch.rand(2, 16, 5, generator=gen).softmax(-1)]
    boxes = [(0, 0, 0.5, 0.5), (0.5, 0, 1, 1)]
    covers = {s * s: torch.stack([box_cover(b, s) for b in boxes]) for s in (2, 4)}
    rows = [(0, 1, 0), (0, 3, 0), (0, 4, 1), (1, 2, 1)]
    got = region_loss(maps, rows, covers, batch=3)

    def by_hand(b: int) -> float:
        per_layer = []
        for m in maps:
            side = int(m.shape[1] ** 0.5)
            vals = []
            for bb, t, r in rows:
                if bb != b:
                    continue
                p = m[bb, :, t].numpy() / m[bb, :, t].numpy().sum()
                inside = sum(p[y * side + x] * covers[side * side][r][y * side + x].item()
                             for y in range(side) for x in range(side))
                vals.append(1 - inside)
            per_layer.append(np.mean(vals))
        return float(np.mean(per_layer))

    assert got[0].item() == pytest.approx(by_hand(0), rel=1e-5)
    assert got[1].item() == pytest.approx(by_hand(1), rel=1e-5)
    assert got[2].item() == 0  # an image without regions


def test_region_loss_identities():
    side = 4
    cover = box_cover((0, 0, 0.5, 0.5), side)
    inside = torch.zeros(1, side * side, 2)
    inside[0, :, 0] = cover  # attends only inside the box
    inside[0, :, 1] = 1.0  # attends everywhere alike
    got = region_loss([inside], [(0, 0, 0)], {16: cover[None]}, batch=1)
    assert got.item() == pytest.approx(0.0, abs=1e-6)
    got = region_loss([inside], [(0, 1, 0)], {16: cover[None]}, batch=1)
    assert got.item() == pytest.approx(0.75)  # 1 - the box's share of the image
    with pytest.raises(ValueError, match="no box covers for a layer of 6 positions"):
        region_loss([torch.ones(1, 6, 2)], [(0, 0, 0)], {16: cover[None]}, batch=1)


def test_rectangular_grids():
    from llm4gen.regions import attention_grid

    # 2 rows x 4 columns; the box is the right half: the two right columns of both rows
    want = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32).reshape(-1)
    assert torch.equal(box_cover((0.5, 0, 1, 1), 2, 4), want)
    assert float(box_cover((0.1, 0.2, 0.7, 0.9), 3, 5).sum()) == pytest.approx(0.6 * 0.7 * 15, rel=1e-5)
    # a layer's grid keeps the latents' aspect: 64 x 96 latents, a layer of 24 positions -> 4 x 6
    assert attention_grid(24, 64, 96) == (4, 6) and attention_grid(16, 16, 16) == (4, 4)
    with pytest.raises(ValueError, match="Cannot lay 7 attention positions"):
        attention_grid(7, 16, 16)


# ---------------------------------------------------------------------- guided sampling (tiny pipelines)
PROMPT = "a red circle on the left and a blue square on the right"
REGIONS = [Region("red circle", (0, 0, 0.5, 1)), Region("blue square", (0.5, 0, 1, 1))]


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd_dir):
    from llm4gen import LLM4GenPipeline

    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, **kwargs):
    return pipe(PROMPT, num_inference_steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                output_type="np", **kwargs).images


@pytest.mark.parametrize("tokens", ["llm", "clip", "both"])
def test_a_step_against_the_gradient_lowers_the_loss(tiny_pipe, tokens):
    """The update direction is right: the loss of the moved latents is below that of the latents before."""
    guide = RegionGuidance(tiny_pipe, [PROMPT], [REGIONS], tokens=tokens)
    embeds = tiny_pipe.encode_fused_prompt(PROMPT, do_classifier_free_guidance=False).prompt_embeds
    tiny_pipe.scheduler.set_timesteps(4)
    t = tiny_pipe.scheduler.timesteps[1]
    latents = torch.randn(1, tiny_pipe.unet.config.in_channels, 4, 4, generator=torch.Generator().manual_seed(1))
    with guide.attached():
        before = guide.loss(latents, t, embeds).item()
        x = latents.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(guide.loss(x, t, embeds).sum(), x)
        after = guide.loss(latents - 0.05 * grad / grad.pow(2).mean().sqrt(), t, embeds).item()
    assert 0 < before <= 1 and after < before
    # the rows are the phrases' tokens, in the windows asked for
    clip_len = tiny_pipe.tokenizer.model_max_length
    positions = {t for _, t, _ in guide._rows}
    assert (min(positions) < clip_len) == (tokens in ("clip", "both"))
    assert (max(positions) >= clip_len) == (tokens in ("llm", "both"))


def test_pipeline_regions_guide_the_latents_and_restore_the_unet(tiny_pipe):
    processors = {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()}
    plain = _sample(tiny_pipe)
    guided = _sample(tiny_pipe, regions=REGIONS, region_guidance_scale=0.5, region_guidance_steps=3,
                     region_mask=False)
    assert not np.allclose(plain, guided)
    assert {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()} == processors
    # without the mask, scale 0 or no guided step: exactly the unguided images
    assert np.array_equal(_sample(tiny_pipe, regions=REGIONS, region_guidance_scale=0.0, region_mask=False), plain)
    assert np.array_equal(_sample(tiny_pipe, regions=REGIONS, region_guidance_steps=0, region_mask=False), plain)
    # regions= without the mask is the RegionGuidance callback, chained before the caller's own callback
    seen = []

    def mine(pipe, step, timestep, kw):
        seen.append(step)
        return {}

    guide = RegionGuidance(tiny_pipe, [PROMPT], [REGIONS], scale=0.5, steps=3)
    with guide.attached():
        by_hand = _sample(tiny_pipe, callback_on_step_end=guide, callback_on_step_end_tensor_inputs=guide.tensor_inputs)
    chained = _sample(tiny_pipe, regions=REGIONS, region_guidance_scale=0.5, region_guidance_steps=3,
                      region_mask=False, callback_on_step_end=mine)
    assert np.allclose(by_hand, guided) and np.allclose(chained, guided) and seen == [0, 1, 2, 3]
    assert [s for s, _ in guide.losses] == [0, 1, 2]  # the last step has no next step to guide

    class WantsNegatives:  # like diffusers' PipelineCallback objects, it names the tensors it reads
        tensor_inputs = ["negative_prompt_embeds"]
        keys: list = []

        def __call__(self, pipe, step, timestep, kw):
            self.keys.append(sorted(kw))
            return {}

    wants = WantsNegatives()
    _sample(tiny_pipe, regions=REGIONS, region_guidance_steps=1, callback_on_step_end=wants)
    assert "negative_prompt_embeds" in wants.keys[0] and "prompt_embeds" in wants.keys[0]
    # one Region alone is one prompt's list of one
    assert np.array_equal(_sample(tiny_pipe, regions=REGIONS[0], region_guidance_scale=0.5),
                          _sample(tiny_pipe, regions=[REGIONS[0]], region_guidance_scale=0.5))


def test_pipeline_regions_on_a_wide_image(tiny_pipe):
    """Non-square images: each layer's grid keeps the latents' aspect ratio, and the guidance runs and steers."""
    kwargs = dict(height=32, width=64, num_inference_steps=3, output_type="np")
    plain = tiny_pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    guided = tiny_pipe(PROMPT, regions=REGIONS, region_guidance_scale=0.5, generator=torch.Generator().manual_seed(0),
                       **kwargs).images
    assert plain.shape == guided.shape == (1, 32, 64, 3) and not np.allclose(plain, guided)


def test_pipeline_regions_per_prompt_and_per_image(tiny_pipe):
    prompts = [PROMPT, "a green star"]
    out = tiny_pipe(prompts, regions=[REGIONS, []], num_images_per_prompt=2, num_inference_steps=2,
                    region_guidance_scale=0.5, generator=torch.Generator().manual_seed(0), output_type="np").images
    plain = tiny_pipe(prompts, num_images_per_prompt=2, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == plain.shape == (4, 32, 32, 3)
    # the two images of the first prompt are guided; the second prompt has no regions, so its images are unchanged
    assert not np.allclose(out[:2], plain[:2]) and np.allclose(out[2:], plain[2:], atol=1e-6)


@pytest.mark.parametrize("call, error, match", [
    (dict(regions=[Region("green star", (0, 0, 1, 1))]), ValueError, "'green star' does not occur"),
    (dict(regions=[[Region("red circle", (0, 0, 1, 1))], []]), ValueError, "one such list per prompt"),
    (dict(regions=["red circle"]), ValueError, "list of Region"),
    (dict(regions=REGIONS, region_tokens="t5"), ValueError, "one of"),
    (dict(regions=REGIONS, region_guidance_scale=-1), ValueError, ">= 0"),
])
def test_pipeline_regions_bad_input(tiny_pipe, call, error, match):
    with pytest.raises(error, match=match):
        _sample(tiny_pipe, **call)


def test_regions_need_the_prompt_text_and_llm_tokens(tiny_pipe):
    fused = tiny_pipe.encode_fused_prompt(PROMPT)
    embeds, negative = fused.prompt_embeds, fused.negative_prompt_embeds
    with pytest.raises(ValueError, match="needs the prompt text"):
        tiny_pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, regions=REGIONS, num_inference_steps=2)
    # a plain SD pipeline has no LLM tokens to guide
    from llm4gen.shapesworld.arms import clip_only_pipeline

    base = clip_only_pipeline(tiny_pipe)
    with pytest.raises(ValueError, match="no LLM encoder"):
        RegionGuidance(base, [PROMPT], [REGIONS], tokens="llm")


def test_sdxl_region_guidance(tiny_xl_dir):
    """SDXL: the UNet pass gets the pooled embeddings and time ids, a step against the gradient lowers the loss, and
    the pipeline's regions= change the images (scale 0 without the mask: exactly the unguided ones)."""
    from llm4gen import LLM4GenXLPipeline

    xl = LLM4GenXLPipeline.from_pretrained(tiny_xl_dir)
    xl.set_progress_bar_config(disable=True)
    guide = RegionGuidance(xl, [PROMPT], [REGIONS], tokens="both")
    assert guide.tensor_inputs == ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]
    assert guide.store.max_tokens == 32 * 32
    seen = {}

    def record(pipe, step, timestep, kw):
        if step == 0:
            seen.update({k: v.clone() for k, v in kw.items()})
        return {}

    def sample(**kwargs):
        return xl(PROMPT, num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                  output_type="np", **kwargs).images

    plain = sample(callback_on_step_end=record, callback_on_step_end_tensor_inputs=guide.tensor_inputs)
    n = seen["latents"].shape[0]
    added = {"text_embeds": seen["add_text_embeds"][-n:], "time_ids": seen["add_time_ids"][-n:]}
    t = xl.scheduler.timesteps[1]
    with guide.attached():
        x = seen["latents"].clone().requires_grad_(True)
        before = guide.loss(x, t, seen["prompt_embeds"][-n:], added)
        (grad,) = torch.autograd.grad(before.sum(), x)
        after = guide.loss(seen["latents"] - 0.05 * grad / grad.pow(2).mean().sqrt(), t, seen["prompt_embeds"][-n:],
                           added)
    assert after.item() < before.item()
    assert not np.allclose(sample(regions=REGIONS, region_guidance_scale=0.5), plain)
    assert np.array_equal(sample(regions=REGIONS, region_guidance_scale=0.0, region_mask=False), plain)
    with pytest.raises(ValueError, match="add_text_embeds"):  # a hand-made callback must ask for the SDXL inputs
        with guide.attached():
            sample(callback_on_step_end=guide, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])


def test_a_region_beyond_the_guided_window_warns(tiny_pipe):
    far = "x " * 80 + PROMPT  # the character-level CLIP window (77) ends long before the phrase
    guide = RegionGuidance(tiny_pipe, [far], [[Region("red circle", (0, 0, 1, 1))]], tokens="clip")
    embeds = tiny_pipe.encode_fused_prompt(far, do_classifier_free_guidance=False).prompt_embeds
    with pytest.warns(UserWarning, match="no token inside the guided window"):
        guide._build_rows(embeds.shape[1])
    assert guide._rows == []


# ---------------------------------------------------------------------- masked cross-attention
def _phrase_tokens(pipe, prompt, phrase):
    """The fused-sequence indices of ``phrase``'s tokens, from each tokenizer's own offsets (CLIP first, then LLM)."""
    start = prompt.index(phrase)
    clip_len = pipe.tokenizer.model_max_length
    out = []
    for tok, prefix, shift in [(pipe.tokenizer, "", 0), (pipe.llm_encoder.tokenizer, pipe.llm_encoder.config.prefix,
                                                        clip_len)]:
        enc = tok(prefix + prompt, return_offsets_mapping=True)
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and a < start + len(phrase) + len(prefix) and b > start + len(prefix):
                out.append(i + shift)
    return out


def _masked_maps(pipe, mask, key_mask=None):
    """Every cross-attention layer's probabilities ``[2, HW, T]`` (negative, positive) of one UNet pass with ``mask``
    attached; ``key_mask`` ``[2, T]`` is passed as the UNet's ``encoder_attention_mask``."""
    from llm4gen.attention import AttentionStore, install_attention_store

    fused = pipe.encode_fused_prompt(PROMPT)
    embeds = torch.cat([fused.negative_prompt_embeds, fused.prompt_embeds])
    latents = torch.randn(2, pipe.unet.config.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    store, original = AttentionStore(64), pipe.unet.attn_processors
    install_attention_store(pipe.unet, store)  # inside the mask: it records the masked probabilities
    try:
        with mask.attached(), torch.no_grad():
            store.active = True
            out = pipe.unet(latents, 500, encoder_hidden_states=embeds, encoder_attention_mask=key_mask).sample
    finally:
        pipe.unet.set_attn_processor(original)
    return store.maps, out, embeds.shape[1]


def test_region_mask_keeps_each_phrases_attention_inside_its_box(tiny_pipe):
    from llm4gen.regions import RegionMask

    mask = RegionMask(tiny_pipe, [PROMPT], [REGIONS])  # red circle: left half; blue square: right half
    maps, _, fused_len = _masked_maps(tiny_pipe, mask)
    red, blue = (_phrase_tokens(tiny_pipe, PROMPT, p) for p in ("red circle", "blue square"))
    assert red and blue and min(red) < tiny_pipe.tokenizer.model_max_length <= max(red)  # both windows ("both")
    assert len(maps) >= 1
    for m in maps:
        side = int(m.shape[1] ** 0.5)
        col = torch.arange(m.shape[1]) % side
        left, right = col < side // 2, col >= side // 2
        pos, neg = m[1], m[0]
        assert float(pos[right][:, red].max()) < 1e-6 and float(pos[left][:, red].min()) > 0
        assert float(pos[left][:, blue].max()) < 1e-6 and float(pos[right][:, blue].min()) > 0
        # the other tokens and the negative prompt's image are not masked
        others = [t for t in range(fused_len) if t not in red + blue]
        assert float(pos[:, others].min()) > 0 and float(neg.min()) > 0
        assert torch.allclose(pos.sum(-1), torch.ones(m.shape[1]))
    # the bias by hand: -1e4 exactly where a phrase's token meets a position outside its box
    bias = mask.bias(2, 16, fused_len, torch.float32, torch.device("cpu"))
    want = torch.zeros(2, 16, fused_len)
    col = torch.arange(16) % 4
    for tokens, outside in ((red, col >= 2), (blue, col < 2)):
        for t in tokens:
            want[1, outside, t] = -1e4
    assert torch.equal(bias, want)


def test_region_mask_adds_to_the_unets_own_key_mask(tiny_pipe):
    from llm4gen.regions import RegionMask

    fused_len = tiny_pipe.encode_fused_prompt(PROMPT).prompt_embeds.shape[1]
    key_mask = torch.ones(2, fused_len)
    key_mask[:, -5:] = 0  # five padding tokens of both prompts
    maps, _, _ = _masked_maps(tiny_pipe, RegionMask(tiny_pipe, [PROMPT], [REGIONS]), key_mask)
    red = _phrase_tokens(tiny_pipe, PROMPT, "red circle")
    for m in maps:
        side = int(m.shape[1] ** 0.5)
        right = torch.arange(m.shape[1]) % side >= side // 2
        assert float(m[:, :, -5:].max()) < 1e-6 and float(m[1][right][:, red].max()) < 1e-6
    # the whole mask a layer gets: bias + key mask, repeated per head (image-major, as diffusers repeats), built once
    # per key mask object (the UNet passes one object to all its layers in a pass)
    mask = RegionMask(tiny_pipe, [PROMPT], [REGIONS])
    mask._latent_hw = (4, 4)
    keys = (1 - key_mask)[:, None, :] * -10000.0
    full = mask.per_head(2, 16, fused_len, 3, keys, torch.float32, torch.device("cpu"))
    bias = mask.bias(2, 16, fused_len, torch.float32, torch.device("cpu"))
    assert full.shape == (6, 16, fused_len)
    for b in range(2):
        for h in range(3):
            assert torch.equal(full[3 * b + h], bias[b] + keys[b])
    assert mask.per_head(2, 16, fused_len, 3, keys, torch.float32, torch.device("cpu")) is full
    other = mask.per_head(2, 16, fused_len, 3, keys.clone(), torch.float32, torch.device("cpu"))
    assert other is not full and torch.equal(other, full)
    assert torch.equal(mask.per_head(2, 16, fused_len, 3, None, torch.float32, torch.device("cpu")),
                       bias.repeat_interleave(3, dim=0))


def test_region_mask_whole_image_boxes_change_nothing_and_small_boxes_do(tiny_pipe):
    """An invariance: boxes over the whole image mask nothing, so the UNet's output is exactly the unmasked one."""
    from llm4gen.regions import RegionMask

    whole = [Region("red circle", (0, 0, 1, 1)), Region("blue square", (0, 0, 1, 1))]
    processors = {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()}
    _, plain, _ = _masked_maps(tiny_pipe, RegionMask(tiny_pipe, [PROMPT], [[]]))
    _, out_whole, _ = _masked_maps(tiny_pipe, RegionMask(tiny_pipe, [PROMPT], [whole]))
    _, out_boxes, _ = _masked_maps(tiny_pipe, RegionMask(tiny_pipe, [PROMPT], [REGIONS]))
    assert torch.equal(plain, out_whole) and not torch.allclose(plain[1], out_boxes[1])
    assert torch.equal(plain[0], out_boxes[0])  # the negative prompt's half is never masked
    assert {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()} == processors


def test_region_mask_steps_and_bad_input(tiny_pipe):
    from llm4gen.regions import RegionMask

    def sample(mask=None):
        kwargs = {} if mask is None else {"callback_on_step_end": mask}
        if mask is None:
            return _sample(tiny_pipe)
        with mask.attached():
            return _sample(tiny_pipe, **kwargs)

    plain = sample()
    every = sample(RegionMask(tiny_pipe, [PROMPT], [REGIONS]))
    first = sample(RegionMask(tiny_pipe, [PROMPT], [REGIONS], steps=1))
    assert np.array_equal(sample(RegionMask(tiny_pipe, [PROMPT], [REGIONS], steps=0)), plain)
    assert not np.allclose(every, plain) and not np.allclose(first, plain) and not np.allclose(first, every)
    with pytest.raises(ValueError, match="built for 1 images"):
        with RegionMask(tiny_pipe, [PROMPT], [REGIONS]).attached():
            tiny_pipe([PROMPT, PROMPT], num_inference_steps=1)
    with pytest.raises(ValueError, match="one of"):
        RegionMask(tiny_pipe, [PROMPT], [REGIONS], tokens="t5")
    with pytest.raises(ValueError, match="whole number"):
        RegionMask(tiny_pipe, [PROMPT], [REGIONS], steps=-1)
    with pytest.raises(ValueError, match="one list of regions per prompt"):
        RegionMask(tiny_pipe, [PROMPT], [REGIONS, REGIONS])
    with pytest.raises(ValueError, match="min_regions"):
        RegionMask(tiny_pipe, [PROMPT], [REGIONS], min_regions=0)
    # a prompt with fewer than min_regions regions (default 2) is not masked: one object has nothing to be kept from
    lone = [REGIONS[0]]
    assert np.array_equal(sample(RegionMask(tiny_pipe, [PROMPT], [lone])), plain)
    assert not np.allclose(sample(RegionMask(tiny_pipe, [PROMPT], [lone], min_regions=1)), plain)
    assert np.array_equal(sample(RegionMask(tiny_pipe, [PROMPT], [REGIONS], min_regions=3)), plain)
    # per image in a batch: the second prompt's image (one region) is left as it is
    two = RegionMask(tiny_pipe, [PROMPT, PROMPT], [REGIONS, lone])
    two._latent_hw = (4, 4)
    fused_len = tiny_pipe.encode_fused_prompt(PROMPT).prompt_embeds.shape[1]
    bias = two.bias(4, 16, fused_len, torch.float32, torch.device("cpu"))
    assert bias[2].min() < 0 and bool((bias[3] == 0).all()) and bool((bias[:2] == 0).all())


def test_region_mask_on_a_plain_diffusers_pipeline(tiny_pipe):
    """Any diffusers SD pipeline: without an LLM, "both" masks CLIP's tokens (the only ones); "llm" is an error."""
    from llm4gen.regions import RegionMask
    from llm4gen.shapesworld.arms import clip_only_pipeline

    base = clip_only_pipeline(tiny_pipe)
    base.set_progress_bar_config(disable=True)
    plain = _sample(base)
    processors = {k: type(v) for k, v in base.unet.attn_processors.items()}
    mask = RegionMask(base, [PROMPT], [REGIONS])
    assert mask.tokens == "clip"
    with mask.attached():
        masked = _sample(base, callback_on_step_end=mask)
    assert not np.allclose(masked, plain)
    assert all(t < base.tokenizer.model_max_length for _, t, _ in mask._rows) and mask._rows
    assert {k: type(v) for k, v in base.unet.attn_processors.items()} == processors
    with pytest.raises(ValueError, match="no LLM encoder"):
        RegionMask(base, [PROMPT], [REGIONS], tokens="llm")


def test_pipeline_region_mask_is_the_mask_by_hand_and_chains_callbacks(tiny_pipe):
    from llm4gen.regions import RegionMask

    plain = _sample(tiny_pipe)
    mask = RegionMask(tiny_pipe, [PROMPT], [REGIONS], steps=2)
    with mask.attached():
        by_hand = _sample(tiny_pipe, callback_on_step_end=mask)
    seen = []

    def mine(pipe, step, timestep, kw):
        seen.append(step)
        return {}

    masked = _sample(tiny_pipe, regions=REGIONS, region_guidance_scale=0.0, region_mask=True, region_mask_steps=2,
                     callback_on_step_end=mine)
    assert np.array_equal(masked, by_hand) and not np.allclose(masked, plain) and seen == [0, 1, 2, 3]
    # with guidance too: neither the guidance alone nor the mask alone
    guided = _sample(tiny_pipe, regions=REGIONS, region_guidance_scale=0.5, region_mask=False)
    both = _sample(tiny_pipe, regions=REGIONS, region_guidance_scale=0.5, region_mask_steps=2)  # the mask: default
    assert not np.allclose(both, guided) and not np.allclose(both, masked)
    assert np.array_equal(_sample(tiny_pipe, regions=REGIONS, region_guidance_scale=0.5, region_mask=True,
                                  region_mask_steps=0), guided)
    with pytest.raises(ValueError, match="one of"):
        _sample(tiny_pipe, regions=REGIONS, region_mask=True, region_mask_tokens="t5")


def test_region_guidance_under_the_mask_reads_the_unmasked_attention(tiny_pipe):
    """The guidance reads each layer's attention before the mask's bias: attached inside the mask (as region_control
    does), its loss stays the unmasked one up to the masked features that deeper layers get, far from the ~0 that
    the masked maps would give (these boxes align with the 4x4 grid: no partly covered cells)."""
    from llm4gen.regions import RegionMask

    guide = RegionGuidance(tiny_pipe, [PROMPT], [REGIONS], tokens="both")
    embeds = tiny_pipe.encode_fused_prompt(PROMPT, do_classifier_free_guidance=False).prompt_embeds
    tiny_pipe.scheduler.set_timesteps(4)
    t = tiny_pipe.scheduler.timesteps[1]
    latents = torch.randn(1, tiny_pipe.unet.config.in_channels, 4, 4, generator=torch.Generator().manual_seed(1))
    with guide.attached():
        free = guide.loss(latents, t, embeds)
    mask = RegionMask(tiny_pipe, [PROMPT], [REGIONS])
    with mask.attached(), guide.attached():
        under = guide.loss(latents, t, embeds)
        with torch.no_grad():
            masked_out = tiny_pipe.unet(latents, t, encoder_hidden_states=embeds).sample
    with torch.no_grad():
        free_out = tiny_pipe.unet(latents, t, encoder_hidden_states=embeds).sample
    assert abs(free.item() - under.item()) < 0.01 and under.item() > 0.2
    assert not torch.allclose(masked_out, free_out)


def test_sdxl_region_mask(tiny_xl_dir):
    from llm4gen import LLM4GenXLPipeline

    xl = LLM4GenXLPipeline.from_pretrained(tiny_xl_dir)
    xl.set_progress_bar_config(disable=True)

    def sample(**kwargs):
        return xl(PROMPT, num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                  output_type="np", **kwargs).images

    plain = sample()
    whole = [Region("red circle", (0, 0, 1, 1)), Region("blue square", (0, 0, 1, 1))]
    assert np.array_equal(sample(regions=whole, region_guidance_scale=0.0, region_mask=True), plain)
    assert not np.allclose(sample(regions=REGIONS, region_guidance_scale=0.0, region_mask=True), plain)


# ---------------------------------------------------------------------- ShapesWorld
def test_scene_regions_box_each_named_object_in_its_cell():
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts, scene_regions
    from llm4gen.shapesworld.scorer import cell_box
    from llm4gen.shapesworld.world import REGION_EDGES

    lo, hi = REGION_EDGES
    for text, scene in benchmark_prompts(QualityConfig(num_prompts=20)):
        regions = scene_regions(text, scene)
        assert regions
        boxes = []
        for o in scene.objects:
            xs = (0.0, lo) if o.x < lo else (hi, 1.0) if o.x > hi else (lo, hi)
            ys = (0.0, lo) if o.y < lo else (hi, 1.0) if o.y > hi else (lo, hi)
            boxes.append((xs[0], ys[0], xs[1], ys[1]))
        for r in regions:
            words = " ".join(text[s:e].lower() for s, e in r.spans)
            owners = [k for k, o in enumerate(scene.objects) if o.colour in words and r.box == boxes[k]]
            assert owners, (text, words, r.box)  # the region's words name an object whose cell is its box
    assert cell_box(("left", "top")) == (0.0, 0.0, lo, lo)
    with pytest.raises(ValueError, match="left|centre|right"):
        cell_box(("up", "top"))


def test_region_arm_guides_only_prompts_with_regions(tiny_pipe):
    from llm4gen.shapesworld.bench import RegionArm

    arm = RegionArm(tiny_pipe, {PROMPT: REGIONS}, scale=0.5, steps=2)
    kwargs = dict(num_inference_steps=3, generator=[torch.Generator().manual_seed(k) for k in range(2)],
                  output_type="np")
    plain = tiny_pipe(prompt=[PROMPT, "a green star"], **kwargs).images
    kwargs["generator"] = [torch.Generator().manual_seed(k) for k in range(2)]
    guided = arm(prompt=[PROMPT, "a green star"], **kwargs).images
    assert not np.allclose(guided[0], plain[0]) and np.allclose(guided[1], plain[1], atol=1e-6)
    arm.scheduler = type(tiny_pipe.scheduler).from_config(tiny_pipe.scheduler.config)  # reaches the pipeline
    assert arm.scheduler is tiny_pipe.scheduler


def test_region_guidance_moves_the_bundled_models_objects_into_their_boxes():
    """On the bundled model, boxes for the demo's first prompt put each object in its corner in every one of four
    images; without them the same noise misses at least once (the scorer finds objects by colour and shape)."""
    from llm4gen import LLM4GenPipeline
    from llm4gen.examples import DEMO_PROMPTS
    from llm4gen.shapesworld.scorer import detect_objects

    model = ROOT / "models" / "default"
    if not (model / "model_index.json").is_file():
        pytest.skip("models/default is missing")
    pipe = LLM4GenPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    boxes = {"red": (0, 0, 0.36, 0.36), "blue": (0.64, 0.64, 1, 1)}
    regions = [Region("large red circle", boxes["red"]), Region("small blue square", boxes["blue"])]

    def placed(**kwargs) -> int:
        out = pipe(DEMO_PROMPTS[0], num_inference_steps=25, guidance_scale=5.0, num_images_per_prompt=4,
                   generator=torch.Generator().manual_seed(0), height=64, width=64, **kwargs).images
        hits = 0
        for img in out:
            found = detect_objects(img)
            hits += all(any(d.colour == c and x0 - 0.05 <= d.x <= x1 + 0.05 and y0 - 0.05 <= d.y <= y1 + 0.05
                            for d in found) for c, (x0, y0, x1, y1) in boxes.items())
        return hits

    guided, plain = placed(regions=regions), placed()
    assert guided == 4 and plain < guided


def test_region_overhead_benchmark_times_each_mode_with_what_it_names(tmp_path, monkeypatch, capsys):
    """benchmarks/region_overhead.py: per batch size a row per mode; each call builds the mask only in "mask" and
    "both" and runs region guidance's steps only in "guide" and "both" (seen where they happen, call by call), each
    guided mode changes the image from the same seed, and unguided is the 1x reference."""
    import json

    import llm4gen.regions
    from llm4gen import LLM4GenPipeline
    from scripts import run_script

    calls: list[list[str]] = []

    class CountedMask(llm4gen.regions.RegionMask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            calls[-1].append("mask")

    class CountedGuidance(llm4gen.regions.RegionGuidance):
        def loss(self, *args, **kwargs):
            calls[-1].append("guide")
            return super().loss(*args, **kwargs)

    original = LLM4GenPipeline.__call__

    def call(self, *args, **kwargs):
        calls.append([])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(llm4gen.regions, "RegionMask", CountedMask)
    monkeypatch.setattr(llm4gen.regions, "RegionGuidance", CountedGuidance)
    monkeypatch.setattr(LLM4GenPipeline, "__call__", call)
    out = tmp_path / "ro.json"
    run_script("benchmarks/region_overhead", monkeypatch, "--sizes", "tiny", "--resolution", "32", "--steps", "3",
                "--guide-steps", "2", "--batch", "1", "2", "--repeats", "1", "--json", str(out))
    # per batch size: a warm-up call and one timed round, each mode in turn
    per_mode = [[], ["guide", "guide"], ["mask"], ["mask", "guide", "guide"]]
    assert calls == per_mode * 4
    report = json.loads(out.read_text())
    tiny = report["models"]["tiny"]
    assert tiny["regions"] == 4 and set(tiny["batches"]) == {"1", "2"}
    for rows in tiny["batches"].values():
        assert list(rows) == ["unguided", "guide", "mask", "both"]
        assert rows["unguided"]["vs_unguided"] == pytest.approx(1.0)
        assert rows["unguided"]["mean_abs_change_vs_unguided"] == 0.0
        for mode in ("guide", "mask", "both"):
            assert rows[mode]["mean_abs_change_vs_unguided"] > 1e-4
            assert rows[mode]["s_per_image"] > 0 and rows[mode]["peak_gib"] is None  # CPU: no CUDA peak
            ratio = rows[mode]["s_per_image"] / rows["unguided"]["s_per_image"]
            assert rows[mode]["vs_unguided"] == pytest.approx(ratio)
    assert "vs unguided" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--dtype", "fp16"], "for CUDA"),
    (["--model", "no/such/folder"], "not a pipeline folder"),
    (["--llm", "no/such/llm"], "no such folder"),
    (["--model", "models/default", "--llm", "x"], "brings its own LLM"),
    (["--batch", "0"], "must be >= 1"),
])
def test_region_overhead_benchmark_names_bad_settings(args, match, tmp_path, monkeypatch):
    from scripts import run_script

    with pytest.raises(SystemExit, match=match):
        run_script("benchmarks/region_overhead", monkeypatch, "--steps", "2", "--json", str(tmp_path / "x.json"), *args)


def test_every_entry_point_defaults_to_the_same_region_guidance_step():
    """The measured default (RMS 0.05, chosen with the mask on: research/shapesworld/region-guidance.md) is what each
    way in uses when not told."""
    import inspect
    import re
    from pathlib import Path

    from llm4gen import LLM4GenPipeline, LLM4GenXLPipeline
    from llm4gen.cli.generate import generate
    from llm4gen.regions import RegionGuidance, region_control
    from llm4gen.shapesworld.bench import RegionArm

    defaults = {
        "LLM4GenPipeline": inspect.signature(LLM4GenPipeline.__call__).parameters["region_guidance_scale"].default,
        "LLM4GenXLPipeline": inspect.signature(LLM4GenXLPipeline.__call__).parameters["region_guidance_scale"].default,
        "RegionGuidance": inspect.signature(RegionGuidance).parameters["scale"].default,
        "region_control": inspect.signature(region_control).parameters["scale"].default,
        "RegionArm": inspect.signature(RegionArm).parameters["scale"].default,
        "llm4gen generate": inspect.signature(generate).parameters["region_scale"].default.default,
    }
    script = (Path(__file__).parents[1] / "research" / "shapesworld" / "region_guidance.py").read_text()
    defaults["region_guidance.py"] = float(re.search(r'"--scale", type=float, default=([0-9.]+)', script).group(1))
    assert defaults == {name: 0.05 for name in defaults}
