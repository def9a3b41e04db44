"""ComfyUI nodes, tested without ComfyUI: the node contracts ComfyUI reads, and the conditioning they produce against
the pipeline's own embeddings for the same prompt and negative prompt."""

from __future__ import annotations

import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm4gen.comfy import (
    NODE_CLASS_MAPPINGS,
    NODE_DISPLAY_NAME_MAPPINGS,
    LLM4GenEncode,
    LLM4GenLoader,
    LLM4GenTextModel,
)

ROOT = Path(__file__).resolve().parents[1]
LONG = ("a small red circle in the upper left corner, a large blue square in the lower right, a green triangle "
        "below the centre pointing up, and a yellow star floating just above the triangle")
COMFY_TYPES = {"STRING", "BOOLEAN", "INT", "FLOAT", "CLIP", "CONDITIONING", "LLM4GEN"}


class ComfyStyleClip:
    """The two methods of ComfyUI's ``CLIP`` object that the encode node calls, with ComfyUI's SD 1.x conventions
    (chunks of 75 tokens between BOS and EOS, padded with EOS; one [1, 77 * chunks, D] tensor; pooled from the first
    chunk), over a transformers CLIP text encoder."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    def tokenize(self, text):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        chunks = [ids[i : i + 75] for i in range(0, max(len(ids), 1), 75)]
        return {"l": [[(t, 1.0) for t in [bos, *c, eos] + [eos] * (75 - len(c))] for c in chunks]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        with torch.no_grad():
            outs = [self.text_encoder(torch.tensor([[t for t, _ in chunk]])) for chunk in tokens["l"]]
        cond = torch.cat([o[0] for o in outs], dim=1)
        return (cond, outs[0][1]) if return_pooled else cond


@pytest.fixture(scope="module")
def pipe(tiny_sd_dir):
    from llm4gen import LLM4GenPipeline

    return LLM4GenPipeline.from_pretrained(tiny_sd_dir)


@pytest.fixture(scope="module")
def model(tiny_sd_dir):
    # the text side of the tiny folder (the loader node refuses it: its UNet is not SD 1.x-shaped)
    return LLM4GenTextModel.from_pretrained(tiny_sd_dir, device="cpu", dtype="float32")


def test_node_contracts_follow_comfyui_conventions():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS) == {"LLM4GenLoader", "LLM4GenEncode"}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional"} and spec["required"], name
        inputs = {**spec["required"], **spec.get("optional", {})}
        for key, value in inputs.items():
            assert isinstance(value, tuple) and 1 <= len(value) <= 2, (name, key)
            kind = value[0]
            assert (isinstance(kind, list) and all(isinstance(c, str) for c in kind)) or kind in COMFY_TYPES
            if len(value) == 2:
                assert isinstance(value[1], dict)
                if isinstance(kind, list) and "default" in value[1]:
                    assert value[1]["default"] in kind
        assert isinstance(cls.RETURN_TYPES, tuple) and all(t in COMFY_TYPES for t in cls.RETURN_TYPES)
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert isinstance(cls.CATEGORY, str) and cls.CATEGORY
        params = inspect.signature(getattr(cls(), cls.FUNCTION)).parameters
        assert set(inputs) == set(params), name  # ComfyUI calls FUNCTION with the inputs as keywords
        for key in spec.get("optional", {}):
            assert params[key].default is not inspect.Parameter.empty
    assert LLM4GenLoader.RETURN_TYPES == ("LLM4GEN",)
    assert LLM4GenEncode.RETURN_TYPES == ("CONDITIONING", "CONDITIONING")
    assert LLM4GenEncode.INPUT_TYPES()["required"]["llm4gen"] == ("LLM4GEN",)


def test_custom_nodes_package_and_no_comfy_import():
    path = ROOT / "comfyui" / "__init__.py"
    spec = importlib.util.spec_from_file_location("llm4gen_custom_nodes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert module.NODE_DISPLAY_NAME_MAPPINGS is NODE_DISPLAY_NAME_MAPPINGS
    # a whole clone in custom_nodes/: ComfyUI imports the repository root as a package through its __init__.py
    spec = importlib.util.spec_from_file_location("llm4gen_clone", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    clone = importlib.util.module_from_spec(spec)
    sys.modules["llm4gen_clone"] = clone
    try:
        spec.loader.exec_module(clone)
    finally:
        del sys.modules["llm4gen_clone"]
    assert clone.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    code = "import sys, llm4gen.comfy; print(sorted(m for m in ('comfy', 'gradio', 'nodes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_workflow_json_uses_the_nodes_as_declared():
    graph = json.loads((ROOT / "comfyui" / "workflow_api.json").read_text())
    ours = {k: v for k, v in graph.items() if v["class_type"] in NODE_CLASS_MAPPINGS}
    assert {v["class_type"] for v in ours.values()} == set(NODE_CLASS_MAPPINGS)
    for node in ours.values():
        spec = NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()
        assert set(spec["required"]) <= set(node["inputs"]) <= set(spec["required"]) | set(spec.get("optional", {}))
    sampler = next(v for v in graph.values() if v["class_type"] == "KSampler")
    encode_id = next(k for k, v in ours.items() if v["class_type"] == "LLM4GenEncode")
    assert sampler["inputs"]["positive"] == [encode_id, 0] and sampler["inputs"]["negative"] == [encode_id, 1]


def _check_pair(cond, want: torch.Tensor):
    assert isinstance(cond, list) and len(cond) == 1 and len(cond[0]) == 2
    tensor, extra = cond[0]
    assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.dim() == 3
    assert tensor.shape == want.shape
    torch.testing.assert_close(tensor, want, rtol=0, atol=1e-6)
    return extra


def test_conditioning_equals_the_pipeline_embeddings(pipe, model):
    fused = pipe.encode_fused_prompt(LONG, "blurry, dark")
    pos, neg = LLM4GenEncode().encode(model, LONG, "blurry, dark")
    assert fused.prompt_embeds.shape == (1, 77 + 64, 32)
    extra = _check_pair(pos, fused.prompt_embeds)
    _check_pair(neg, fused.negative_prompt_embeds)
    ids = pipe.tokenizer(LONG, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = pipe.text_encoder(ids).pooler_output
    torch.testing.assert_close(extra["pooled_output"], pooled, rtol=0, atol=1e-6)
    # the empty negative prompt is handled as the pipeline's default negative
    default = pipe.encode_fused_prompt(LONG)
    _, neg_default = LLM4GenEncode().encode(model, LONG)
    _check_pair(neg_default, default.negative_prompt_embeds)
    # the CLIP part is CLIP's, the rest is the CAM's output for the LLM tokens
    torch.testing.assert_close(pos[0][0][:, :77], pipe.text_encoder(ids)[0].detach(), rtol=0, atol=1e-6)


def test_conditioning_with_a_comfyui_clip(pipe, model):
    clip = ComfyStyleClip(pipe.tokenizer, pipe.text_encoder)
    assert clip.encode_from_tokens(clip.tokenize(LONG)).shape[1] == 2 * 77  # two chunks for this long prompt
    pos, neg = LLM4GenEncode().encode(model, LONG, "blurry", clip=clip)
    fused = pipe.encode_fused_prompt(LONG, "blurry")
    _check_pair(pos, fused.prompt_embeds)
    _check_pair(neg, fused.negative_prompt_embeds)

    class WideClip(ComfyStyleClip):
        def encode_from_tokens(self, tokens, return_pooled=False):
            return torch.zeros(1, 77, 768), torch.zeros(1, 768)

    with pytest.raises(ValueError, match="768-d tokens but this LLM4GEN adapter expects 32-d"):
        LLM4GenEncode().encode(model, LONG, "", clip=WideClip(pipe.tokenizer, pipe.text_encoder))


def test_masked_model_drops_padding_equivalently(tmp_path, tiny_llm_dirs):
    from llm4gen import LLM4GenPipeline, LLMEncoder
    from llm4gen.tiny import build_tiny_pipeline

    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding="longest")
    build_tiny_pipeline(llm=llm, use_llm_attention_mask=True, work_dir=tmp_path / "parts").save_pretrained(
        tmp_path / "masked")
    pipe = LLM4GenPipeline.from_pretrained(tmp_path / "masked")
    model = LLM4GenTextModel.from_pretrained(str(tmp_path / "masked"), device="cpu", dtype="float32")
    negative = "blurry"
    pos, neg = LLM4GenEncode().encode(model, LONG, negative)
    fused = pipe.encode_fused_prompt(LONG, negative)
    n_pos = len(llm.tokenizer(LONG)["input_ids"])
    n_neg = len(llm.tokenizer(negative)["input_ids"])
    assert pos[0][0].shape == (1, 77 + n_pos, 32) and neg[0][0].shape == (1, 77 + n_neg, 32)
    keep = fused.negative_prompt_attention_mask[0].bool()
    assert int(keep.sum()) == 77 + n_neg < fused.negative_prompt_embeds.shape[1]
    torch.testing.assert_close(neg[0][0], fused.negative_prompt_embeds[:, keep], rtol=0, atol=1e-6)
    # dropping the padding is what masking it does for the UNet, and ComfyUI's repeat-to-a-common-length is harmless
    unet = pipe.unet
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        masked = unet(x, t, encoder_hidden_states=fused.negative_prompt_embeds,
                      encoder_attention_mask=fused.negative_prompt_attention_mask).sample
        dropped = unet(x, t, encoder_hidden_states=neg[0][0]).sample
        repeated = unet(x, t, encoder_hidden_states=neg[0][0].repeat(1, 3, 1)).sample
        padded = unet(x, t, encoder_hidden_states=fused.negative_prompt_embeds).sample
    torch.testing.assert_close(dropped, masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(repeated, dropped, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(padded, masked, atol=1e-5)  # the padding does matter when it is not dropped


def test_loader_errors(tmp_path, tiny_xl_dir, model):
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        LLM4GenLoader().load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="empty"):
        LLM4GenLoader().load("  ")
    with pytest.raises(NotImplementedError, match="SDXL"):
        LLM4GenLoader().load(tiny_xl_dir)
    with pytest.raises(ValueError, match="empty"):
        LLM4GenEncode().encode(model, "   ")


# ---------------------------------------------------------------------------------------------- ComfyUI's CLIP loader
# ComfyUI 0.8.0 (comfy/diffusers_load.py, comfy/sd.py, comfy/sd1_clip.py), for an SD 1.x folder: DiffusersLoader reads
# the first of these files in text_encoder/, load_clip keeps its keys as they are (only OpenCLIP's
# "transformer.resblocks." layout is converted), and the CLIP-L wrapper loads them with strict=False into a model whose
# weights are named "text_model.<transformers name>" plus "text_projection.weight": whatever the file lacks stays
# uninitialised (NaN here) and is only logged ("clip missing: ...").
COMFY_TEXT_ENCODER_FILES = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin",
                            "pytorch_model.bin")


class ComfyLoadedClip(ComfyStyleClip):
    """A CLIP as ComfyUI's DiffusersLoader builds it from ``folder/text_encoder``, exposing ComfyUI's
    ``cond_stage_model`` (weights named ``clip_l.transformer.text_model.…``)."""

    def __init__(self, folder, tokenizer):
        from safetensors.torch import load_file
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        te_dir = Path(folder) / "text_encoder"
        path = next(te_dir / n for n in COMFY_TEXT_ENCODER_FILES if (te_dir / n).exists())
        state = load_file(path)
        assert "transformer.resblocks.0.ln_1.weight" not in state  # not the OpenCLIP layout
        config = CLIPTextConfig.from_pretrained(te_dir)
        config.projection_dim = config.hidden_size
        transformer = CLIPTextModelWithProjection(config)  # names its weights as ComfyUI's CLIPTextModel does
        self.missing = []
        with torch.no_grad():  # torch's load_state_dict(strict=False), by name (transformers' own hooks left out)
            for name, param in transformer.named_parameters():
                if name in state:
                    param.copy_(state[name])
                else:
                    param.fill_(float("nan"))
                    self.missing += [name] if name.startswith("text_model.") else []
        self.cond_stage_model = torch.nn.Module()
        self.cond_stage_model.clip_l = torch.nn.Module()
        self.cond_stage_model.clip_l.transformer = transformer
        super().__init__(tokenizer, transformer.text_model)


def test_a_saved_folder_s_clip_loads_in_comfyui(tiny_sd_dir, pipe, model):
    clip = ComfyLoadedClip(tiny_sd_dir, pipe.tokenizer)
    assert clip.missing == []
    for key, param in pipe.text_encoder.named_parameters():
        name = key if key.startswith("text_model.") else "text_model." + key
        torch.testing.assert_close(clip.cond_stage_model.clip_l.transformer.get_parameter(name), param, rtol=0, atol=0)
    pos, neg = LLM4GenEncode().encode(model, LONG, "blurry", clip=clip)
    fused = pipe.encode_fused_prompt(LONG, "blurry")
    _check_pair(pos, fused.prompt_embeds)
    _check_pair(neg, fused.negative_prompt_embeds)


def test_encode_refuses_a_comfyui_clip_with_missing_weights(tmp_path, tiny_sd_dir, pipe, model):
    from transformers import CLIPTextModel

    from llm4gen.clip_checkpoint import write_prefixed_clip

    # a folder whose text_encoder/ is what transformers 5 writes for a CLIPTextModel built in memory (the layout of
    # the folders saved before: keys at the root)
    old = tmp_path / "old"
    shutil.copytree(tiny_sd_dir, old)
    shutil.rmtree(old / "text_encoder")
    fresh = CLIPTextModel(pipe.text_encoder.config)
    fresh.load_state_dict(pipe.text_encoder.state_dict())
    fresh.save_pretrained(old / "text_encoder")
    clip = ComfyLoadedClip(old, pipe.tokenizer)
    assert len(clip.missing) == len(list(pipe.text_encoder.parameters()))  # ComfyUI finds none of its weights
    with pytest.raises(ValueError, match=r"(?s)does not hold the CLIP weights.*'text_model\.'.*write_prefixed_clip"):
        LLM4GenEncode().encode(model, LONG, "", clip=clip)
    # without ComfyUI's model object to compare, the NaN tokens are refused
    with pytest.raises(ValueError, match="NaN"):
        LLM4GenEncode().encode(model, LONG, "", clip=ComfyStyleClip(pipe.tokenizer, clip.text_encoder))
    # the fix the message names: the folder then loads in ComfyUI, and in transformers as before
    assert write_prefixed_clip(old / "text_encoder") and not write_prefixed_clip(old / "text_encoder")
    assert ComfyLoadedClip(old, pipe.tokenizer).missing == []
    reloaded = CLIPTextModel.from_pretrained(old / "text_encoder")
    for (k1, p1), (k2, p2) in zip(reloaded.named_parameters(), pipe.text_encoder.named_parameters()):
        assert k1 == k2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    pos, _ = LLM4GenEncode().encode(model, LONG, "", clip=ComfyLoadedClip(old, pipe.tokenizer))
    torch.testing.assert_close(pos[0][0], pipe.encode_fused_prompt(LONG).prompt_embeds, rtol=0, atol=1e-6)


# Stable Diffusion 1.5's unet/config.json (runwayml/stable-diffusion-v1-5), the layout ComfyUI detects as SD 1.x
SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def test_loader_refuses_a_unet_comfyui_cannot_load(tmp_path, tiny_sd_dir):
    from llm4gen.comfy.nodes import comfy_unet_problems

    bundled = ROOT / "models" / "default"
    with pytest.raises(ValueError, match=r"(?s)in_channels 8.*Could not detect model type.*SD 1.x-shaped"):
        LLM4GenLoader().load(str(bundled), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="cross_attention_dim 32 .SD 1.x: 768"):
        LLM4GenLoader().load(tiny_sd_dir, device="cpu", dtype="float32")
    assert comfy_unet_problems(SD15_UNET_CONFIG) == []
    # a folder with an SD 1.5-shaped UNet passes (the node loads the text side only)
    folder = tmp_path / "sd15-shaped"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "unet" / "config.json").write_text(json.dumps(SD15_UNET_CONFIG))
    (loaded,) = LLM4GenLoader().load(str(folder), device="cpu", dtype="float32")
    assert isinstance(loaded, LLM4GenTextModel)


def test_readme_says_what_comfyui_needs():
    text = (ROOT / "comfyui" / "README.md").read_text()
    assert "torch==2.13.0" in text and "torchvision==0.28.0" in text  # the pair ComfyUI starts with
    assert "advanced/loaders/deprecated" in text  # where DiffusersLoader sits
    assert "Could not detect model type" in text and "ShapesWorld" in text
