"""CrossAdapter against a hand-written computation of its equations and against the authors' published module."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

from llm4gen import CrossAdapter, CrossAdapterConfig


# ---------------------------------------------------------------------- independent references
def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _lin(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def reference_cam(sd, clip, llm, num_heads, num_layers, scale, concat_order):
    """The CAM equations written out by hand: explicit per-head softmax attention, LayerNorm and QuickGELU."""
    h = llm
    for i in range(num_layers):
        p = f"layers.{i}."
        h = _lin(h, sd, p + "llm_proj")
        q = _lin(_ln(h, sd[p + "llm_norm.weight"], sd[p + "llm_norm.bias"]), sd, p + "q_proj")
        c = _ln(clip, sd[p + "clip_norm.weight"], sd[p + "clip_norm.bias"])
        k, v = _lin(c, sd, p + "k_proj"), _lin(c, sd, p + "v_proj")
        d = q.shape[-1] // num_heads
        heads = []
        for j in range(num_heads):
            qj, kj, vj = (t[..., j * d : (j + 1) * d] for t in (q, k, v))
            logits = qj @ kj.transpose(-1, -2) / math.sqrt(d)
            w = torch.exp(logits - logits.max(-1, keepdim=True).values)
            heads.append((w / w.sum(-1, keepdim=True)) @ vj)
        h = h + _lin(torch.cat(heads, -1), sd, p + "out_proj")
        f = _lin(_ln(h, sd[p + "ffn_norm.weight"], sd[p + "ffn_norm.bias"]), sd, p + "ffn.0")
        f = f * (1 / (1 + torch.exp(-1.702 * f)))
        h = h + _lin(f, sd, p + "ffn.2")
    h = scale * h
    return torch.cat([clip, h] if concat_order == "clip_first" else [h, clip], dim=1)


class AuthorsQuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class AuthorsCrossFusion(nn.Module):
    """Follows the authors' published CrossFusion (infer_llm4gen_sd15.py), including their norm naming."""

    def __init__(self, llama_dim, dim, heads):
        super().__init__()
        self.num_heads, self.dim, self.head_dim = heads, dim, dim // heads
        self.scale = self.head_dim**-0.5
        self.llm_proj = nn.Linear(llama_dim, dim)
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_norm, self.kv_norm, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.FFN = nn.Sequential(nn.Linear(dim, dim * 4), AuthorsQuickGELU(), nn.Linear(dim * 4, dim))

    def forward(self, clip_embed, llm_embed):
        B = llm_embed.shape[0]
        llm_embed = self.llm_proj(llm_embed)
        clip_embed_norm = self.q_norm(clip_embed)
        llm_embed_norm = self.kv_norm(llm_embed)
        query = self.q_proj(llm_embed_norm).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(clip_embed_norm).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(clip_embed_norm).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attn = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ value).transpose(1, 2).reshape(B, -1, self.dim)
        llm_embed = self.out_proj(out) + llm_embed
        llm_embed = self.FFN(self.norm(llm_embed)) + llm_embed
        return torch.cat((clip_embed, llm_embed), dim=1)


class AuthorsLLMFusionModule(nn.Module):
    def __init__(self, clip_dim, llm_dim, num_heads):
        super().__init__()
        self.CrossFusionModule = nn.ModuleList([AuthorsCrossFusion(llm_dim, clip_dim, num_heads)])

    def forward(self, clip_text, llm_text):
        for module in self.CrossFusionModule:
            clip_text = module(clip_text, llm_text)
        return clip_text


def _randomize(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("concat_order", ["clip_first", "llm_first"])
@pytest.mark.parametrize("num_layers,scale", [(1, 1.0), (2, 0.5)])
def test_forward_matches_hand_written_equations(concat_order, num_layers, scale):
    torch.manual_seed(0)
    adapter = CrossAdapter(clip_dim=24, llm_dim=20, num_heads=3, num_layers=num_layers, scale=scale,
                           concat_order=concat_order).double()
    _randomize(adapter)  # LayerNorm weights away from 1/0 so that the norms are really tested
    clip = torch.randn(2, 7, 24, dtype=torch.float64)
    llm = torch.randn(2, 5, 20, dtype=torch.float64)
    got, mask = adapter(clip, llm)
    want = reference_cam(adapter.state_dict(), clip, llm, 3, num_layers, scale, concat_order)
    assert got.shape == (2, 12, 24)
    assert mask is None
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_branch_rms_measures_the_three_terms_over_real_tokens():
    torch.manual_seed(10)
    adapter = CrossAdapter(clip_dim=24, llm_dim=20, num_heads=3).double()
    _randomize(adapter, seed=11)
    sd = adapter.state_dict()
    clip = torch.randn(2, 7, 24, dtype=torch.float64)
    llm = torch.randn(2, 5, 20, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = mask.bool()
    (got,) = adapter.branch_rms(clip, llm, mask)
    proj = _lin(llm, sd, "layers.0.llm_proj")
    assert got["input"] == pytest.approx(proj[keep].pow(2).mean().sqrt().item(), rel=1e-12)
    # input + attention + ffn is the layer's output, so the ffn term is what remains after the attention-only module
    out = adapter(clip, llm)[0][:, 7:]
    no_ffn = {k: (v if not k.startswith("layers.0.ffn.2") else torch.zeros_like(v)) for k, v in sd.items()}
    before_ffn = reference_cam(no_ffn, clip, llm, 3, 1, 1.0, "clip_first")[:, 7:]
    attn, ffn = before_ffn - proj, out - before_ffn
    assert got["attention"] == pytest.approx(attn[keep].pow(2).mean().sqrt().item(), rel=1e-9)
    assert got["ffn"] == pytest.approx(ffn[keep].pow(2).mean().sqrt().item(), rel=1e-9)
    assert adapter.branch_rms(clip, llm)[0]["input"] == pytest.approx(proj.pow(2).mean().sqrt().item(), rel=1e-12)
    shut = {k: (torch.zeros_like(v) if k.startswith(("layers.0.out_proj", "layers.0.ffn.2")) else v)
            for k, v in sd.items()}  # both branches' last layers at zero: the two branches add nothing
    adapter.load_state_dict(shut)
    rms = adapter.branch_rms(clip, llm, mask)[0]
    assert rms["attention"] == rms["ffn"] == 0.0 and rms["input"] == pytest.approx(got["input"], rel=1e-12)
    with pytest.raises(ValueError, match="llm_mask must have shape"):
        adapter.branch_rms(clip, llm, mask[:, :3])


def test_queries_come_from_llm_and_keys_values_from_clip():
    """Permuting the CLIP tokens leaves the LLM branch unchanged (keys/values are a set); permuting LLM tokens
    permutes the output rows (they are queries)."""
    torch.manual_seed(1)
    adapter = CrossAdapter(clip_dim=16, llm_dim=8, num_heads=2)
    clip, llm = torch.randn(1, 6, 16), torch.randn(1, 4, 8)
    out, _ = adapter(clip, llm)
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    out_p, _ = adapter(clip[:, perm], llm)
    torch.testing.assert_close(out_p[:, 6:], out[:, 6:], rtol=1e-5, atol=1e-6)
    lperm = torch.tensor([2, 0, 3, 1])
    out_l, _ = adapter(clip, llm[:, lperm])
    torch.testing.assert_close(out_l[:, 6:], out[:, 6:][:, lperm], rtol=1e-5, atol=1e-6)


def test_mask_and_padding_invariance():
    torch.manual_seed(2)
    adapter = CrossAdapter(clip_dim=16, llm_dim=8, num_heads=4)
    clip = torch.randn(2, 5, 16)
    llm = torch.randn(2, 3, 8)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out, fused_mask = adapter(clip, llm, mask)
    assert fused_mask.tolist() == [[1] * 5 + [1, 1, 1], [1] * 5 + [1, 1, 0]]
    padded = torch.cat([llm, torch.randn(2, 4, 8) * 10], dim=1)
    pmask = torch.cat([mask, torch.zeros(2, 4, dtype=mask.dtype)], dim=1)
    out_p, fused_p = adapter(clip, padded, pmask)
    keep = fused_mask.bool()
    torch.testing.assert_close(out_p[:, :8][keep], out[keep], rtol=1e-5, atol=1e-6)
    assert fused_p[:, 8:].sum() == 0
    out_l, mask_l = CrossAdapter(clip_dim=16, llm_dim=8, num_heads=4, concat_order="llm_first")(clip, llm, mask)
    assert mask_l.tolist()[1] == [1, 1, 0] + [1] * 5


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(3)
    adapter = CrossAdapter(clip_dim=16, llm_dim=12, num_heads=2, num_layers=2, ffn_mult=2, scale=0.7)
    adapter.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["scale"] == 0.7 and cfg["num_layers"] == 2 and cfg["concat_order"] == "clip_first"
    loaded = CrossAdapter.from_pretrained(tmp_path)
    clip, llm = torch.randn(1, 5, 16), torch.randn(1, 3, 12)
    torch.testing.assert_close(loaded(clip, llm)[0], adapter(clip, llm)[0])
    assert loaded.adapter_config == adapter.adapter_config


def test_set_scale_matches_the_equations_and_is_saved(tmp_path):
    torch.manual_seed(4)
    adapter = CrossAdapter(clip_dim=24, llm_dim=20, num_heads=3).double()
    _randomize(adapter, seed=5)
    clip = torch.randn(2, 7, 24, dtype=torch.float64)
    llm = torch.randn(2, 5, 20, dtype=torch.float64)
    adapter.set_scale(0.4)
    want = reference_cam(adapter.state_dict(), clip, llm, 3, 1, 0.4, "clip_first")
    torch.testing.assert_close(adapter(clip, llm)[0], want, rtol=1e-10, atol=1e-10)
    adapter.set_scale(0)  # only CLIP's tokens carry information
    got = adapter(clip, llm)[0]
    torch.testing.assert_close(got[:, :7], clip)
    assert got[:, 7:].abs().max() == 0
    adapter.set_scale(1.5)
    adapter.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["scale"] == 1.5
    assert CrossAdapter.from_pretrained(tmp_path).adapter_config.scale == 1.5
    for bad in (-1.0, float("inf"), True):
        with pytest.raises(ValueError, match="finite number >= 0"):
            adapter.set_scale(bad)
    assert adapter.adapter_config.scale == adapter.config.scale == 1.5  # a refused value changes nothing


def test_from_adapter_config_and_return_dict():
    cfg = CrossAdapterConfig(clip_dim=8, llm_dim=4, num_heads=2)
    adapter = CrossAdapter.from_adapter_config(cfg)
    out = adapter(torch.randn(1, 3, 8), torch.randn(1, 2, 4), torch.ones(1, 2), return_dict=True)
    assert out.prompt_embeds.shape == (1, 5, 8) and out.attention_mask.shape == (1, 5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"clip_dim": 10, "num_heads": 4}, "divisible by num_heads"),
        ({"concat_order": "middle"}, "concat_order"),
        ({"num_layers": 0}, "num_layers"),
        ({"scale": -0.5}, "balance factor"),
        ({"scale": float("nan")}, "balance factor"),
        ({"scale": "1"}, "balance factor"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossAdapterConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        CrossAdapter(**kwargs)


def test_bad_inputs_name_the_problem():
    adapter = CrossAdapter(clip_dim=8, llm_dim=4, num_heads=2)
    with pytest.raises(ValueError, match="clip_dim=8"):
        adapter(torch.randn(1, 3, 6), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="llm_dim=4"):
        adapter(torch.randn(1, 3, 8), torch.randn(1, 2, 5))
    with pytest.raises(ValueError, match="batch"):
        adapter(torch.randn(2, 3, 8), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="llm_mask"):
        adapter(torch.randn(1, 3, 8), torch.randn(1, 2, 4), torch.ones(1, 3))
    with pytest.raises(ValueError, match="tensor"):
        adapter(torch.randn(3, 8), torch.randn(1, 2, 4))


# ---------------------------------------------------------------------- the authors' checkpoint
@pytest.mark.parametrize("prefix", ["", "module."])
def test_from_official_reproduces_authors_module(tmp_path, prefix):
    torch.manual_seed(4)
    ref = AuthorsLLMFusionModule(clip_dim=32, llm_dim=48, num_heads=8)
    _randomize(ref, seed=5)
    path = tmp_path / "projector.pth"
    torch.save({prefix + k: v for k, v in ref.state_dict().items()}, path)
    adapter = CrossAdapter.from_official(path)
    assert (adapter.config.clip_dim, adapter.config.llm_dim, adapter.config.num_heads) == (32, 48, 8)
    clip, llm = torch.randn(2, 77, 32), torch.randn(2, 20, 48)
    with torch.no_grad():
        want = ref(clip, llm)
        got, _ = adapter(clip, llm)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_from_official_sd15_sizes(tmp_path):
    ref = AuthorsLLMFusionModule(768, 2048, 8)
    torch.save(ref.state_dict(), tmp_path / "projector.pth")
    adapter = CrossAdapter.from_official(tmp_path / "projector.pth")
    assert (adapter.config.clip_dim, adapter.config.llm_dim, adapter.config.ffn_mult) == (768, 2048, 4)
    clip, llm = torch.randn(1, 77, 768), torch.randn(1, 256, 2048)
    with torch.no_grad():
        torch.testing.assert_close(adapter(clip, llm)[0], ref(clip, llm), rtol=1e-4, atol=1e-4)
        assert adapter(clip, llm)[0].shape == (1, 333, 768)


def test_from_official_lists_missing_and_unexpected_keys(tmp_path):
    sd = AuthorsLLMFusionModule(16, 8, 2).state_dict()
    sd.pop("CrossFusionModule.0.kv_norm.weight")
    sd["CrossFusionModule.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "p.pth")
    with pytest.raises(ValueError) as err:
        CrossAdapter.from_official(tmp_path / "p.pth")
    assert "CrossFusionModule.0.kv_norm.weight" in str(err.value)
    assert "CrossFusionModule.0.extra.weight" in str(err.value)


def test_from_official_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CrossAdapter.from_official(tmp_path / "nope.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02this is not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        CrossAdapter.from_official(tmp_path / "corrupt.pth")
    torch.save({"weights": AuthorsQuickGELU()}, tmp_path / "code.pth")  # a pickled object: refused, not executed
    with pytest.raises(ValueError, match="weights_only"):
        CrossAdapter.from_official(tmp_path / "code.pth")


def test_a_saved_gated_adapter_of_0_1_is_refused_by_name_and_gated_false_loads(tmp_path):
    """0.1 wrote ``gated`` into every adapter's config; 0.2 dropped the gated variant. ``gated: false`` is this CAM,
    ``gated: true`` would lose its gates silently, so it is an error that says where the variant went."""
    import json

    adapter = CrossAdapter(clip_dim=8, llm_dim=4, num_heads=2)
    adapter.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "gated" not in config
    (tmp_path / "config.json").write_text(json.dumps({**config, "gated": False}))
    loaded = CrossAdapter.from_pretrained(tmp_path)
    assert "gated" not in loaded.config and loaded.config.num_heads == 2
    (tmp_path / "config.json").write_text(json.dumps({**config, "gated": True}))
    with pytest.raises(ValueError, match="gated=True, a research variant that left llm4gen in 0.2"):
        CrossAdapter.from_pretrained(tmp_path)
