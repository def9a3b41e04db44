"""llm4gen_sampling.json: a model folder's recommended sampling settings, saved, read back and checked."""

from __future__ import annotations

import json

import pytest

from llm4gen.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, SAMPLING_FILE, SamplingDefaults


def test_round_trip_and_explicit_values_win(tmp_path):
    saved = SamplingDefaults(guidance_scale=4, num_inference_steps=12, scheduler="DDIMScheduler", domain="shapes")
    path = saved.save(tmp_path)
    assert path.name == SAMPLING_FILE and "example_prompt" not in json.loads(path.read_text())  # unset: left out
    back = SamplingDefaults.from_folder(tmp_path)
    assert back == saved and isinstance(back.guidance_scale, float)
    assert back.call_kwargs() == {"guidance_scale": 4.0, "num_inference_steps": 12}
    assert back.call_kwargs(guidance_scale=7.5, num_inference_steps=3) == {"guidance_scale": 7.5,
                                                                             "num_inference_steps": 3}
    # no file, or a hub id: the library's defaults
    assert SamplingDefaults.from_folder(tmp_path / "none") == SamplingDefaults.from_folder(None)
    assert SamplingDefaults().call_kwargs() == {"guidance_scale": 7.5, "num_inference_steps": 25}
    assert (DEFAULT_GUIDANCE, DEFAULT_STEPS) == (7.5, 25)  # diffusers' usual guidance; one default for steps


@pytest.mark.parametrize("text, match", [
    ("{", "not valid JSON"),
    ("[1]", "JSON object"),
    ('{"guidance": 5}', r"unknown keys \['guidance'\]"),
    ('{"num_inference_steps": 0}', "integer >= 1"),
    ('{"num_inference_steps": 2.5}', "integer >= 1"),
    ('{"guidance_scale": "5"}', "must be a number"),
    ('{"domain": 3}', "domain must be a string"),
])
def test_a_bad_file_is_named_with_the_problem(tmp_path, text, match):
    (tmp_path / SAMPLING_FILE).write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        SamplingDefaults.from_folder(tmp_path)
    assert SAMPLING_FILE in str(err.value)


def test_the_pipeline_reads_saves_and_applies_them(tiny_sd_dir, tmp_path):
    from diffusers import DDIMScheduler

    from llm4gen import LLM4GenPipeline

    pipe = LLM4GenPipeline.from_pretrained(tiny_sd_dir)
    assert pipe.sampling_defaults == SamplingDefaults()  # the tiny folder recommends nothing
    pipe.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / SAMPLING_FILE).exists()  # and its copy gets no file of library defaults
    pipe.sampling_defaults = SamplingDefaults(guidance_scale=3.0, scheduler="DDIMScheduler")
    pipe.save_pretrained(tmp_path / "saved")
    again = LLM4GenPipeline.from_pretrained(tmp_path / "saved")
    assert again.sampling_defaults.guidance_scale == 3.0
    before = dict(again.scheduler.config)
    again.sampling_defaults.apply_scheduler(again)
    assert isinstance(again.scheduler, DDIMScheduler)
    assert again.scheduler.config.beta_schedule == before["beta_schedule"]  # the same noise schedule
    with pytest.raises(ValueError, match="NoSuchScheduler"):
        SamplingDefaults(scheduler="NoSuchScheduler").apply_scheduler(again)
