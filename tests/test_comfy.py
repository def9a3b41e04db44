"""ComfyUI nodes, tested without ComfyUI: the node contracts ComfyUI reads, and the conditioning they produce against
the pipeline's own embeddings for the same prompt and negative prompt."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm4gen.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, LLM4GenEncode, LLM4GenLoader

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
    (loaded,) = LLM4GenLoader().load(tiny_sd_dir, device="cpu", dtype="float32")
    return loaded


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
    (model,) = LLM4GenLoader().load(str(tmp_path / "masked"), device="cpu", dtype="float32")
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
