"""Training state that cannot be silently wrong: config types, resume with new rates, reused output folders,
diverged weights, metrics after a resume, damaged checkpoints and a full disk (issue 39)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from llm4gen.cli import app
from llm4gen.training.config import load_config, parse_set
from llm4gen.training.trainer import TrainingDivergedError, train


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_llm_dirs):
    from llm4gen.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("fault-base")
    build_tiny_pipeline(llm=tiny_llm_dirs["bert"], work_dir=root / "parts").save_pretrained(root / "base")
    return str(root / "base")


def _cfg(base, llm, out, **kw):
    cfg = {"output_dir": str(out), "base_model": base, "llm": llm, "llm_max_length": 160,
           "data": {"type": "shapesworld", "num_items": 64}, "resolution": 32, "train_batch_size": 2,
           "max_train_steps": 2, "checkpointing_steps": 1, "log_every": 1, "learning_rate": 1e-3}
    cfg.update(kw)
    return load_config(cfg)


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def _says(result, text: str) -> bool:
    """Whether a command's output holds ``text``, whitespace ignored (rich wraps lines, even inside paths)."""
    return "".join(text.split()) in "".join(result.output.split())


def _checkpoints(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


# ---------------------------------------------------------------------- config types
def test_yaml_numbers_are_numbers_and_wrong_types_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: o\nbase_model: b\nlearning_rate: 1e-4\nadam_epsilon: 1E-8\n")
    cfg = load_config(path)
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float) and cfg.adam_epsilon == 1e-8
    assert load_config(path, parse_set(["learning_rate=2e-4"])).learning_rate == 2e-4  # --set reads YAML too
    for sets, match in [(["learning_rate=fast"], "learning_rate must be a number, got 'fast'"),
                        (["learning_rate=nan"], "learning_rate must be a number, got 'nan'"),
                        (["max_train_steps=ten"], "max_train_steps must be an integer, got 'ten'"),
                        (["resolution=64.0"], "resolution must be an integer .*write 64"),
                        (["use_ema=maybe"], "use_ema must be true or false, got 'maybe'"),
                        (["data.num_items=many"], "data.num_items must be an integer, got 'many'"),
                        (["validation_prompts=a cat"], "validation_prompts must be a list")]:
        with pytest.raises(ValueError, match=match):
            load_config(path, parse_set(sets))
    result = CliRunner().invoke(app, ["train", str(path), "--set", "max_train_steps=ten"])
    assert result.exit_code == 1 and _says(result, "max_train_steps must be an integer")
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------- reused output folders
def test_fresh_run_into_another_runs_folder_is_refused_unless_overwrite(base, tiny_llm_dirs, tmp_path):
    out = tmp_path / "run"
    train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=2, checkpointing_steps=1), progress=False)
    with pytest.raises(FileExistsError, match=r"already holds checkpoints.*--resume latest.*--overwrite"):
        train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=1), progress=False)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=1).to_dict()))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 1 and _says(result, "already holds checkpoints") and "Traceback" not in result.output
    assert _checkpoints(out) == ["checkpoint-00000001", "checkpoint-00000002"]  # nothing was touched
    train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=1), progress=False, overwrite=True)
    assert _checkpoints(out) == ["checkpoint-00000001"]
    assert [r["step"] for r in _metrics(out)] == [1]  # the old run's steps are gone
    state = json.loads((out / "checkpoints" / "checkpoint-00000001" / "trainer_state.json").read_text())
    assert state["config"]["max_train_steps"] == 1


# ---------------------------------------------------------------------- resume
def test_resume_trains_with_the_new_learning_rate_and_logs_each_step_once(base, tiny_llm_dirs, tmp_path):
    out = tmp_path / "run"
    common = dict(lr_scheduler="linear", checkpointing_steps=2)

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=4, **common), progress=False, on_step=crash)
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=4, learning_rate=4e-4, **common),
          resume="latest", progress=False)
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # step 3 of the interrupted run is not repeated
    # linear decay over 4 steps: the lr logged after step k is base * (4 - k) / 4, with the new base after resuming
    expected = [1e-3 * 3 / 4, 1e-3 * 2 / 4, 4e-4 * 1 / 4, 0.0]
    for record, lr in zip(records, expected):
        assert math.isclose(record["lr"], lr, rel_tol=1e-6, abs_tol=1e-12), (record, lr)


def test_diverged_weights_are_never_checkpointed(base, tiny_llm_dirs, tmp_path):
    out = tmp_path / "run"
    train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=1, checkpoints_total_limit=1), progress=False)
    # an absurd rate sends the weights to ~1e6 in one step: the checkpoint of that step is refused
    with pytest.raises(TrainingDivergedError, match=r"diverged by step 2 .*checkpoint-00000001, is kept"):
        train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=3, checkpoints_total_limit=1,
                   learning_rate=1e6), resume="latest", progress=False)
    assert _checkpoints(out) == ["checkpoint-00000001"]  # kept, not pruned, and no temporary folder left
    from safetensors.torch import load_file

    kept = load_file(out / "checkpoints" / "checkpoint-00000001" / "trained.safetensors")
    assert all(torch.isfinite(t).all() and t.abs().max() < 100 for t in kept.values())
    # the kept checkpoint resumes into a healthy run
    result = train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=2, checkpoints_total_limit=1),
                   resume="latest", progress=False)
    assert all(math.isfinite(v) for v in result.losses)


# ---------------------------------------------------------------------- damaged checkpoints, full disk
def test_damaged_checkpoint_names_the_file_and_the_previous_one(base, tiny_llm_dirs, tmp_path):
    out = tmp_path / "run"
    train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=2), progress=False)
    last = out / "checkpoints" / "checkpoint-00000002"
    first = out / "checkpoints" / "checkpoint-00000001"
    weights = (last / "trained.safetensors").read_bytes()
    (last / "trained.safetensors").write_bytes(weights[: len(weights) // 2])
    cfg = _cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=3)
    with pytest.raises(ValueError, match=rf"Cannot resume from {last}: trained.safetensors is damaged .*"
                                         rf"the previous checkpoint is {first}"):
        train(cfg, resume="latest", progress=False)
    (last / "trained.safetensors").write_bytes(weights)
    (last / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="optimizer.pt is damaged"):
        train(cfg, resume="latest", progress=False)
    (first / "lr_scheduler.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="lr_scheduler.pt is damaged.*there is no earlier checkpoint"):
        train(cfg, resume=str(first), progress=False)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    result = CliRunner().invoke(app, ["train", str(path), "--resume", "latest"])
    assert result.exit_code == 1 and _says(result, "optimizer.pt is damaged") and "Traceback" not in result.output


def test_full_disk_at_a_checkpoint_keeps_the_last_one_and_leaves_no_temp_folder(base, tiny_llm_dirs, tmp_path,
                                                                                monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real, calls = safetensors.torch.save_file, {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's weights
            raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"Could not write checkpoint-00000002 .*No space left.*"
                                      r"checkpoint-00000001, is kept.*--resume latest"):
        train(_cfg(base, tiny_llm_dirs["bert"], out, max_train_steps=2), progress=False)
    assert _checkpoints(out) == ["checkpoint-00000001"]
