"""benchmarks/gpu_check.py, the prepared GPU check: its quick CPU mode runs every part through the library's real entry
points, a part that fails is reported while the others run, and each part stops at its time budget."""

from __future__ import annotations

import json
import math

import pytest

from scripts import load_script, run_script

PARTS = ["inference", "official", "training", "regions"]


def _run(monkeypatch, tmp_path, *args: str, module=None) -> dict:
    out = tmp_path / "check.json"
    argv = ["--device", "cpu", "--quick", "--work", str(tmp_path), "--json", str(out), *args]
    if module is None:
        run_script("benchmarks/gpu_check", monkeypatch, *argv)
    else:
        monkeypatch.setattr("sys.argv", ["gpu_check.py", *argv])
        module.main()
    return json.loads(out.read_text())


def test_quick_cpu_run_measures_every_part(tmp_path, monkeypatch, capsys):
    from llm4gen.tiny import make_char_clip_tokenizer

    module = load_script("benchmarks/gpu_check")
    report = _run(monkeypatch, tmp_path, module=module)
    # the quick sizes' LLM reads the prompt with the tiny character-level tokenizer: its real tokens, counted apart
    prompt_tokens = len(make_char_clip_tokenizer(tmp_path / "tok", model_max_length=1024)(module.PROMPT)["input_ids"])
    assert prompt_tokens < 256
    assert list(report["parts"]) == PARTS
    assert {p: e["status"] for p, e in report["parts"].items()} == dict.fromkeys(PARTS, "ok")
    assert sorted(report["setup_s"]) == ["release", "sd15", "t5"]  # the checkpoints, written once for two parts

    # inference: every mode of both base models timed, with its conditioning length as the tokenizers give it
    for which in ("sd15", "sdxl"):
        modes = report["parts"]["inference"]["results"][which]["modes"]
        assert list(modes) == ["plain SD", "llm4gen fixed-256", "llm4gen trimmed + cached",
                               "llm4gen fixed-256, model CPU offload"]
        for m in modes.values():
            assert m["s_per_image"] > 0 and m["finite"] and m["peak_gib"] is None  # CPU: no CUDA peak
            assert m["vs_plain"] == pytest.approx(m["s_per_image"] / modes["plain SD"]["s_per_image"])
        assert modes["plain SD"]["cond_tokens"] == 77
        assert modes["llm4gen trimmed + cached"]["cond_tokens"] == 77 + prompt_tokens
        assert modes["llm4gen fixed-256"]["cond_tokens"] == 77 + 256
        assert modes["llm4gen fixed-256, model CPU offload"]["cond_tokens"] == 77 + 256

    # the authors' path: their settings, read back from the loaded pipeline
    official = report["parts"]["official"]["results"]
    assert official["settings"] == {"prefix": "pre ", "max_length": 256, "padding": "max_length",
                                    "use_llm_attention_mask": False, "llm_dtype": "torch.float32",
                                    "unet_dtype": "torch.float32", "cond_tokens": 77 + 256}
    assert official["load_s"] > 0 and official["modes"]["from_official"]["s_per_image"] > 0

    # training: every mode ran its steps with finite losses; the cold run filled the cache, the warm runs wrote nothing
    training = report["parts"]["training"]["results"]
    assert list(training["modes"]) == list(module.TRAIN_MODES)
    for name, m in training["modes"].items():
        assert m["steps_done"] == training["steps"] and len(m["losses"]) == training["steps"]
        assert m["losses_finite"] and all(math.isfinite(x) for x in m["losses"])
        assert m["samples_per_s"] > 0
        if "cache" in name:
            assert m["vs_no_cache"] == pytest.approx(
                m["samples_per_s"] / training["modes"][name.split(",")[0]]["samples_per_s"])
    written = {n: m["cache_entries_written"] for n, m in training["modes"].items()}
    # per item: one CLIP, one LLM and one VAE entry (a caption dropped to "" shares one entry)
    assert written["full fp16, cache cold (writing)"] > training["steps"] * training["batch"]
    assert {n: w for n, w in written.items() if "warm" in n} == dict.fromkeys(
        ["full fp16, cache warm", "full bf16, cache warm", "LoRA fp16, cache warm"], 0)
    # the same seed and data give the same first loss whether features come from the models or the cache
    assert training["modes"]["full fp16, cache warm"]["losses"][0] == pytest.approx(
        training["modes"]["full fp16"]["losses"][0], rel=1e-5)

    regions = report["parts"]["regions"]["results"]["batches"]["1"]
    assert list(regions) == ["unguided", "guide", "mask", "both"]
    assert all(regions[m]["mean_abs_change_vs_unguided"] > 0 for m in ("guide", "mask", "both"))

    out = capsys.readouterr().out
    assert "llm4gen GPU check" in out
    table = (tmp_path / "check.md").read_text()
    for part in PARTS:
        assert f"| {part} |" in table


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    module = load_script("benchmarks/gpu_check")

    def boom(check, budget):
        raise RuntimeError("injected failure")

    monkeypatch.setitem(module.PARTS, "official", boom)
    report = _run(monkeypatch, tmp_path, "--parts", "official", "regions", module=module)
    official, regions = report["parts"]["official"], report["parts"]["regions"]
    assert official["status"] == "failed" and official["error"] == "RuntimeError: injected failure"
    assert "boom" in official["traceback"]
    assert regions["status"] == "ok" and regions["results"]["batches"]["1"]["unguided"]["s_per_image"] > 0
    assert "FAILED: RuntimeError: injected failure" in (tmp_path / "check.md").read_text()


def test_each_part_stops_at_its_time_budget(tmp_path, monkeypatch):
    """With the budget spent, no part starts a model, a timed call or a training run, and each says so."""
    module = load_script("benchmarks/gpu_check")
    monkeypatch.setattr(module.Budget, "spent", lambda self: True)
    report = _run(monkeypatch, tmp_path, module=module)
    parts = report["parts"]
    assert {p: e["status"] for p, e in parts.items()} == dict.fromkeys(PARTS, "incomplete")
    skipped = {"skipped": "skipped: the part's time budget was spent"}
    assert parts["inference"]["results"] == {"sd15": skipped, "sdxl": skipped}
    assert parts["official"]["results"] == skipped and parts["regions"]["results"] == skipped
    assert parts["training"]["results"]["modes"] == dict.fromkeys(module.TRAIN_MODES, skipped)
    assert "s/img" not in (tmp_path / "check.md").read_text()  # nothing was timed


@pytest.mark.parametrize("args, match", [
    (["--device", "cpu"], "add --quick"),
    (["--device", "cuda", "--quick"], "no CUDA device"),
    (["--device", "cpu", "--quick", "--budget", "0"], "must be > 0"),
])
def test_gpu_check_names_bad_settings(args, match, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match=match):
        run_script("benchmarks/gpu_check", monkeypatch, *args, "--json", str(tmp_path / "x.json"))
