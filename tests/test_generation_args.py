"""Generation arguments are checked before any work, in the pipeline call and in `llm4gen generate` (issue 39)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from llm4gen.cli import app
from llm4gen.utils import MAX_IMAGE_SIDE, check_generation_args

runner = CliRunner()


def _says(result, text: str) -> bool:
    """Whether a command's output holds ``text``, whitespace ignored (rich wraps lines, even inside paths)."""
    return "".join(text.split()) in "".join(result.output.split())


@pytest.fixture(scope="module")
def pipe(tiny_sd_dir):
    from llm4gen import LLM4GenPipeline

    p = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    p.set_progress_bar_config(disable=True)
    return p


BAD_CALLS = [
    ({"num_inference_steps": -1}, "`num_inference_steps` must be an integer >= 1, got -1"),
    ({"num_inference_steps": 0}, "`num_inference_steps` must be an integer >= 1, got 0"),
    ({"num_images_per_prompt": 0}, "`num_images_per_prompt` must be an integer >= 1, got 0"),
    ({"num_images_per_prompt": -1}, "`num_images_per_prompt` must be an integer >= 1"),
    ({"guidance_scale": float("nan")}, "`guidance_scale` must be a finite number"),
    ({"guidance_scale": float("inf")}, "`guidance_scale` must be a finite number"),
    ({"height": 60}, "`height` must be a positive multiple of 8 .* got 60; e.g. 64"),
    ({"width": -64}, "`width` must be a positive multiple of 8"),
    ({"height": 10**6, "width": 64}, f"up to {MAX_IMAGE_SIDE}, got 1000000"),
]


@pytest.mark.parametrize("kwargs, match", BAD_CALLS)
def test_pipeline_refuses_bad_sampling_arguments_before_any_work(pipe, monkeypatch, kwargs, match):
    def no_work(*args, **kw):
        raise AssertionError("the pipeline encoded or denoised before checking its arguments")

    monkeypatch.setattr(pipe, "encode_prompt", no_work)
    monkeypatch.setattr(pipe.unet, "forward", no_work)
    with pytest.raises(ValueError, match=match):
        pipe("a red cube", **kwargs)


def test_one_given_side_is_used_and_the_other_is_the_models(pipe):
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    tall = pipe("a red cube", num_inference_steps=1, height=2 * default, generator=g, output_type="np").images
    assert tall.shape[1:3] == (2 * default, default)
    wide = pipe("a red cube", None, 2 * default, num_inference_steps=1, generator=g, output_type="np").images
    assert wide.shape[1:3] == (default, 2 * default)  # positional width, height passed as None


def test_prompt_that_is_not_valid_text_is_named(pipe):
    broken = b"a caf\xe9 on the left".decode("utf-8", errors="surrogateescape")  # Latin-1 bytes read as UTF-8
    with pytest.raises(ValueError, match=r"`prompt\[1\]` is not valid text: character 5 .*lone surrogate.*UTF-8"):
        pipe(["a red cube", broken], num_inference_steps=1)
    with pytest.raises(ValueError, match="lone surrogate"):
        pipe("a \ud800 cube", num_inference_steps=1)


def test_check_generation_args_fills_only_a_missing_side():
    assert check_generation_args(64, None, default_size=(32, 48)) == (64, 48)
    assert check_generation_args(None, None, default_size=(32, 48)) == (None, None)  # the model's own default
    assert check_generation_args(None, 16, vae_scale_factor=2, default_size=(32, 48)) == (32, 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        check_generation_args(24, 32, vae_scale_factor=16)
    with pytest.raises(ValueError, match="--steps must be an integer >= 1, got 0"):
        check_generation_args(num_inference_steps=0, names={"num_inference_steps": "--steps"})
    with pytest.raises(ValueError, match="`height`"):
        check_generation_args(64.0, 64)
    with pytest.raises(ValueError, match="`guidance_scale`"):
        check_generation_args(guidance_scale=True)


def _bad_cli_cases(tmp_path):
    a_file = tmp_path / "taken.png"
    a_file.write_bytes(b"x")
    cases = [
        (["--height", "60"], "--height must be a positive multiple of 8"),
        (["--width", "-8"], "--width must be a positive multiple of 8"),
        (["--height", "100000", "--width", "100000"], f"up to {MAX_IMAGE_SIDE}"),
        (["--guidance", "nan"], "--guidance must be a finite number"),
        (["--guidance", "inf"], "--guidance must be a finite number"),
        (["--seed", "-1"], "--seed must be in 0 .. 2**64-1"),
        (["--seed", str(2**64)], "--seed must be in 0 .. 2**64-1"),
        (["--device", "foo"], "--device 'foo' is not a torch device"),
        (["--device", "cuda:99"], "--device cuda:99"),
        (["--out", str(a_file)], "is a file, not a folder"),
        (["--out", str(a_file / "sub")], "cannot be written to"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA GPU"))
    return cases


def test_generate_checks_every_argument_before_loading_the_model(tmp_path):
    missing = str(tmp_path / "no-model")  # loading it would fail: each error below comes first
    for extra, message in _bad_cli_cases(tmp_path):
        result = runner.invoke(app, ["generate", "a red cube", "--model", missing, "--out", str(tmp_path / "o"),
                                     *extra])
        assert result.exit_code == 1, (extra, result.output)
        assert _says(result, message), (extra, result.output)
        assert not _says(result, "no-model") and "Traceback" not in result.output, (extra, result.output)
    broken = b"caf\xe9".decode("utf-8", errors="surrogateescape")  # what Python makes of a Latin-1 argument
    result = runner.invoke(app, ["generate", broken, "--model", missing])
    assert result.exit_code == 1 and _says(result, "is not valid text")


def test_a_read_only_out_folder_is_named_before_loading_the_model(tmp_path, monkeypatch):
    """The suite runs as root, which writes anywhere: a read-only folder is what the probe file's creation answers
    there, so the test makes that creation fail as it does for a user without write permission."""
    import errno
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    out = tmp_path / "read-only"
    out.mkdir()
    result = runner.invoke(app, ["generate", "a red cube", "--model", str(tmp_path / "no-model"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert _says(result, f"--out {out} cannot be written to (Permission denied)"), result.output
    assert not _says(result, "no-model") and "Traceback" not in result.output


def test_generate_with_one_side_and_a_damaged_model_index(pipe, tiny_sd_dir, tmp_path, monkeypatch):
    from PIL import Image

    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    result = runner.invoke(app, ["generate", "a red cube", "--model", tiny_sd_dir, "--steps", "1", "--height",
                                 str(2 * default), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    with Image.open(next((tmp_path / "o").glob("*.png"))) as image:
        assert image.size == (default, 2 * default)  # (width, height): the given height, the model's width
    from llm4gen import LLM4GenPipeline

    def no_memory(*args, **kwargs):  # what a size the device cannot hold raises
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 51.20 GiB")

    monkeypatch.setattr(LLM4GenPipeline, "__call__", no_memory)
    result = runner.invoke(app, ["generate", "a red cube", "--model", tiny_sd_dir, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and _says(result, "out of memory on cpu") and "Traceback" not in result.output
    monkeypatch.undo()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text("{not json")
    result = runner.invoke(app, ["generate", "a red cube", "--model", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and _says(result, "model_index.json is not valid JSON")
    assert _says(result, str(bad))


def test_demo_checks_its_arguments_first(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for extra, message in [(["--guidance", "nan"], "--guidance must be a finite number"),
                           (["--seed", "-3"], "--seed must be in 0 .. 2**64-1"),
                           (["--out", str(a_file)], "is a file, not a folder")]:
        result = runner.invoke(app, ["demo", "--out", str(tmp_path / "o"), *extra])
        assert result.exit_code == 1 and _says(result, message), (extra, result.output)
        assert not _says(result, "bundled model") and not _says(result, "RANDOMLY"), result.output
