"""The web app's logic without a browser: token counts, errors, model loading, side-by-side generation, the served
page's API, and the `llm4gen app` command's checks."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from llm4gen import app as webapp
from llm4gen.cli import app as cli

EXAMPLE_TEXT_LOWER = webapp.EXAMPLE_PROMPT.lower()
LONG = ("a small red circle in the upper left corner, a large blue square in the lower right, a green triangle "
        "below the centre pointing up, and a yellow star floating just above the triangle")


@pytest.fixture(scope="module")
def loaded(tiny_sd_dir):
    return webapp.load_model(tiny_sd_dir)


def test_count_tokens_matches_closed_forms(loaded):
    pipe = loaded.pipe
    # the tiny CLIP tokenizer is character level: one token per non-space character, plus BOS and EOS
    counts = webapp.count_tokens(pipe, LONG)
    assert counts.clip_tokens == len(LONG.replace(" ", "")) + 2
    assert counts.clip_window == 77
    # the LLM is a BERT: its WordPiece tokens plus [CLS] and [SEP]
    assert counts.llm_tokens == len(pipe.llm_encoder.tokenizer.tokenize(LONG)) + 2
    assert counts.llm_window == pipe.llm_encoder.max_length == 64
    assert counts.clip_cut == counts.clip_tokens - 77 > 0
    short = webapp.count_tokens(pipe, "a red cube")
    assert (short.clip_tokens, short.clip_cut) == (8 + 2, 0)
    # the cut is what the pipeline really drops: CLIP's input ids stop at 77
    ids = pipe.tokenizer(LONG, padding="max_length", truncation=True, max_length=77)["input_ids"]
    assert len(ids) == 77 and ids[-1] == pipe.tokenizer.eos_token_id


def test_token_message_names_the_numbers():
    msg = webapp.TokenCounts(131, 77, 131, 256).message()
    assert "CLIP sees 77 of 131 tokens; 54 are cut" in msg and "reads all 131" in msg
    both = webapp.TokenCounts(400, 77, 300, 256).message()
    assert "323 are cut" in both and "256 of its 300 tokens (44 cut" in both
    fine = webapp.TokenCounts(20, 77, 18, 256).message()
    assert "CLIP: 20 / 77" in fine and "LLM: 18 / 256" in fine and "⚠" not in fine
    llm_only = webapp.TokenCounts(60, 77, 300, 256).message()
    assert "44 LLM tokens are cut" in llm_only


def test_describe_app_error():
    oom = webapp.describe_app_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                    "generating")
    assert oom.startswith("Out of memory while generating") and "fewer images" in oom and "2 GiB" in oom
    cpu_oom = webapp.describe_app_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB"), "x")
    assert cpu_oom.startswith("Out of memory")
    assert webapp.describe_app_error(OSError("no such folder"), "loading") == "Error while loading: no such folder"
    other = webapp.describe_app_error(RuntimeError("boom"), "generating")
    assert other == "Error while generating (RuntimeError): boom"


def test_load_model_errors_name_the_cause(tmp_path, tiny_sd_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        webapp.load_model(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="No model given"):
        webapp.load_model("  ")
    with pytest.raises(OSError, match="offline"):  # conftest sets HF_HUB_OFFLINE=1
        webapp.load_model("someone/llm4gen-model-that-is-not-cached")
    with pytest.raises(ValueError, match="itself an LLM4GEN pipeline"):
        webapp.load_model(tiny_sd_dir, base_model=tiny_sd_dir)


def test_base_side_sources(tmp_path, tiny_sd_dir, loaded):
    from diffusers import StableDiffusionPipeline

    assert type(loaded.base) is StableDiffusionPipeline
    assert loaded.base.unet is loaded.pipe.unet and loaded.base_source == webapp.SAME_UNET_BASE
    assert loaded.base.scheduler is not loaded.pipe.scheduler
    # a model folder with a base_unet/ (the bundled model's base arm) renders its base side with that UNet
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, folder)
    other = copy.deepcopy(loaded.pipe.unet)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other.save_pretrained(folder / "base_unet")
    with_base = webapp.load_model(folder)
    assert with_base.base_source == webapp.BASE_ARM
    assert type(with_base.base) is StableDiffusionPipeline
    w = next(with_base.base.unet.parameters())
    assert not torch.equal(w, next(with_base.pipe.unet.parameters()))
    assert torch.equal(w, next(other.parameters()))
    assert with_base.base.text_encoder is with_base.pipe.text_encoder  # the model's own CLIP and VAE
    # an explicit base_model (a plain SD folder) wins over base_unet/
    plain = StableDiffusionPipeline(**{k: v for k, v in loaded.base.components.items()}, requires_safety_checker=False)
    plain.save_pretrained(tmp_path / "plain")
    explicit = webapp.load_model(folder, base_model=tmp_path / "plain")
    assert "separate base model" in explicit.base_source and str(tmp_path / "plain") in explicit.base_source
    assert torch.equal(next(explicit.base.unet.parameters()), next(loaded.pipe.unet.parameters()))


def test_generate_side_by_side_matches_each_pipeline(loaded):
    from diffusers import StableDiffusionPipeline

    calls = []
    result = webapp.generate_side_by_side(loaded, LONG, negative_prompt="blurry", steps=3, guidance=5.0, seed=7,
                                          num_images=2, progress=lambda d, t, w: calls.append((d, t, w)))
    assert len(result.base_images) == len(result.llm4gen_images) == 2
    assert [c[0] for c in calls] == list(range(1, 7)) and {c[1] for c in calls} == {6}
    assert calls[0][2].startswith("base") and calls[-1][2].startswith("LLM4GEN")

    def render(pipe):
        out = pipe(LONG, negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0, num_images_per_prompt=2,
                   generator=torch.Generator().manual_seed(7))
        return [np.asarray(im) for im in out.images]

    plain = StableDiffusionPipeline(**{k: v for k, v in loaded.pipe.components.items()
                                       if k not in ("llm_encoder", "adapter")}, requires_safety_checker=False)
    for got, want in zip(result.base_images, render(plain)):
        assert np.array_equal(np.asarray(got), want)
    for got, want in zip(result.llm4gen_images, render(loaded.pipe)):
        assert np.array_equal(np.asarray(got), want)
    assert not np.array_equal(np.asarray(result.base_images[0]), np.asarray(result.llm4gen_images[0]))
    with pytest.raises(ValueError, match="empty"):
        webapp.generate_side_by_side(loaded, "   ")


def test_generate_side_by_side_guides_only_the_llm4gen_side(loaded):
    from llm4gen.regions import Region

    regions = [Region("red circle", (0, 0, 0.5, 0.5))]
    plain = webapp.generate_side_by_side(loaded, LONG, steps=3, seed=7)
    guided = webapp.generate_side_by_side(loaded, LONG, steps=3, seed=7, regions=regions)
    assert np.array_equal(np.asarray(plain.base_images[0]), np.asarray(guided.base_images[0]))
    want = loaded.pipe(LONG, num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(7),
                       regions=regions).images[0]
    assert np.array_equal(np.asarray(guided.llm4gen_images[0]), np.asarray(want))
    assert not np.array_equal(np.asarray(plain.llm4gen_images[0]), np.asarray(want))


def test_parse_regions():
    from llm4gen.regions import Region

    assert webapp.parse_regions("") == webapp.parse_regions(None) == []
    assert webapp.parse_regions(" Auto \n") == "auto"
    assert webapp.parse_regions(" red circle: 0,0,0.5,1 \n\n a, b: 0.1,0.2,0.3,0.4") == [
        Region("red circle", (0, 0, 0.5, 1)), Region("a, b", (0.1, 0.2, 0.3, 0.4))]
    with pytest.raises(ValueError, match="line 1: A region is PHRASE:X0,Y0,X1,Y1"):
        webapp.parse_regions("red circle 0,0,1,1")
    with pytest.raises(ValueError, match="line 2: Region box"):
        webapp.parse_regions("red: 0,0,1,1\nblue: 0.5,0,0.4,1")


def test_model_manager_caches_and_reports(tiny_sd_dir, loaded, tmp_path):
    manager = webapp.ModelManager()
    manager.add(loaded)
    assert manager.get(loaded.ref) is loaded
    first = manager.get(tiny_sd_dir + "/")  # another spelling: loaded once, then reused
    assert first is not loaded and manager.get(tiny_sd_dir + "/") is first
    with pytest.raises(FileNotFoundError):
        manager.get(str(tmp_path / "missing"))


def test_served_page_generates_and_reports_errors(loaded, tmp_path):
    from gradio_client import Client

    demo, url = webapp.launch(loaded, block=False, default_steps=2)
    try:
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False, download_files=str(tmp_path))
        base, llm, status = client.predict(loaded.ref, LONG, "", 2, 7.5, 3, 1, "", api_name="/run")
        assert len(base) == len(llm) == 1 and "seed 3" in status
        from PIL import Image

        got = np.asarray(Image.open(llm[0]["image"]).convert("RGB"))
        want = loaded.pipe(LONG, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).images[0]
        assert np.array_equal(got, np.asarray(want))
        assert llm[0]["caption"].startswith("LLM4GEN · seed 3 · a small red circle")
        with pytest.raises(Exception) as info:
            client.predict(str(tmp_path / "no-such-model"), LONG, "", 2, 7.5, 0, 1, "", api_name="/run")
        assert "does not exist" in str(info.value) and "Traceback" not in str(info.value)
        with pytest.raises(Exception, match="prompt is empty"):
            client.predict(loaded.ref, "  ", "", 2, 7.5, 0, 1, "", api_name="/run")
        # regions guide the LLM4GEN side exactly as the pipeline's regions= do
        text = "red circle: 0,0,0.5,0.5\n\n blue square: 0.5,0.5,1,1"
        base2, llm, status = client.predict(loaded.ref, LONG, "", 2, 7.5, 3, 1, text, api_name="/run")
        got = np.asarray(Image.open(llm[0]["image"]).convert("RGB"))
        want = loaded.pipe(LONG, num_inference_steps=2, generator=torch.Generator().manual_seed(3),
                           regions=webapp.parse_regions(text)).images[0]
        assert np.array_equal(got, np.asarray(want)) and "guided by 2 region(s)" in status
        assert llm[0]["caption"].startswith("LLM4GEN + 2 region(s) · seed 3")
        # after the image, the same with its boxes drawn
        from llm4gen.images import draw_regions

        assert len(llm) == 2 and llm[1]["caption"].startswith("LLM4GEN + 2 region(s), boxes drawn · seed 3")
        drawn = draw_regions(want, [("red circle", (0, 0, 0.5, 0.5)), ("blue square", (0.5, 0.5, 1, 1))])
        assert np.array_equal(np.asarray(Image.open(llm[1]["image"]).convert("RGB")), np.asarray(drawn))
        assert Image.open(base2[0]["image"]).tobytes() == Image.open(base[0]["image"]).tobytes()  # base unchanged
        # "auto": the boxes the planner reads from the prompt's place words
        base3, llm, status = client.predict(loaded.ref, LONG, "", 2, 7.5, 3, 1, " auto ", api_name="/run")
        from llm4gen.layout import plan_regions

        planned = plan_regions(LONG)
        want = loaded.pipe(LONG, num_inference_steps=2, generator=torch.Generator().manual_seed(3),
                           regions=planned).images[0]
        got = np.asarray(Image.open(llm[0]["image"]).convert("RGB"))
        assert np.array_equal(got, np.asarray(want)) and f"guided by {len(planned)} region(s)" in status
        assert len(planned) == 4
        with pytest.raises(Exception, match="Regions: line 2"):
            client.predict(loaded.ref, LONG, "", 2, 7.5, 0, 1, "red circle: 0,0,1,1\nred: 0,0", api_name="/run")
    finally:
        demo.close()


def test_page_defaults_and_the_cli_guidance_default(loaded, tiny_sd_dir, monkeypatch):
    from llm4gen.examples import DEMO_PROMPTS

    demo = webapp.build_app(loaded, default_steps=9, default_guidance=4.5)
    props = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]}
    assert (props["steps"]["value"], props["guidance"]["value"]) == (9, 4.5)
    assert props["prompt"]["value"] == webapp.EXAMPLE_PROMPT == DEMO_PROMPTS[1]
    # the regions box starts empty (the page compares plain renders) and suggests "auto" or the example's own boxes
    placeholder = props["regions"]["placeholder"]
    assert not props["regions"].get("value") and placeholder.startswith("auto")
    assert "yellow star: 0.64,0,1,0.36" in placeholder
    for region in webapp.parse_regions(placeholder.split("\n", 1)[1]):
        assert region.text in EXAMPLE_TEXT_LOWER
    # `llm4gen app` serves a model with its folder's guidance and steps (llm4gen_sampling.json), however it is named;
    # a folder without the file gets 7.5 and 25 steps; explicit values win
    from llm4gen.sampling import SamplingDefaults

    own = Path(tiny_sd_dir).parent / "with-settings"
    if not own.exists():
        shutil.copytree(tiny_sd_dir, own)
        SamplingDefaults(guidance_scale=5.0, num_inference_steps=12, domain="shapes only.").save(own)
    served = []
    monkeypatch.setattr(webapp, "launch", lambda *a, **kw: served.append(kw))
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: own)
    runner = CliRunner()
    for args, want in (([], (5.0, 12)), (["--model", str(own)], (5.0, 12)), (["--model", tiny_sd_dir], (7.5, 25)),
                       (["--guidance", "3", "--steps", "4"], (3.0, 4))):
        result = runner.invoke(cli, ["app", "--device", "cpu", *args])
        assert result.exit_code == 0, result.output
        assert (served[-1]["default_guidance"], served[-1]["default_steps"]) == want, args
        # the bundled model (no --model) says once what it knows
        assert result.output.count("This model knows shapes only.") == (0 if "--model" in args else 1), args


def test_the_page_offers_prompts_the_bundled_model_draws_and_says_what_a_model_knows(loaded):
    from llm4gen.examples import DEMO_PROMPTS
    from llm4gen.sampling import SamplingDefaults

    demo = webapp.build_app(loaded)
    examples = [c for c in demo.config["components"] if c["props"].get("elem_id") == "examples"]
    assert examples and webapp.EXAMPLE_PROMPTS == DEMO_PROMPTS  # ShapesWorld prompts (test_bundled_model scores them)
    with_domain = copy.copy(loaded)
    with_domain.pipe = copy.copy(loaded.pipe)
    with_domain.pipe.sampling_defaults = SamplingDefaults(domain="64 px ShapesWorld: shapes.")
    assert "This model knows 64 px ShapesWorld: shapes." in webapp.model_summary(with_domain)
    assert "This model knows" not in webapp.model_summary(loaded)  # the tiny test model's folder says nothing
    # the bundled model's folder says it (what the page shows when the bundled model is picked)
    bundled = SamplingDefaults.from_folder(Path(__file__).resolve().parents[1] / "models" / "default")
    assert bundled.domain.startswith("64 px ShapesWorld") and bundled.example_prompt in DEMO_PROMPTS


def test_cli_app_without_gradio_names_the_extra_to_install(monkeypatch):
    import importlib.util

    from llm4gen.cli import webapp as app_cmd

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir",
                        lambda: pytest.fail("no model may load before the check"))
    result = CliRunner().invoke(cli, ["app"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Serving" not in said and "gradio" in said
    checkout = Path(app_cmd.__file__).resolve().parents[3]
    assert f'pip install "{checkout}[app]"' in said  # the checkout: llm4gen is on no package index
    assert "llm4gen[app]" not in said.replace(f"{checkout}[app]", "")


def test_free_port_is_bindable():
    import socket

    port = webapp.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_cli_app_needs_a_model(monkeypatch, tmp_path):
    monkeypatch.setattr("llm4gen.cli.common.bundled_model_dir", lambda: None)
    runner = CliRunner()
    result = runner.invoke(cli, ["app"])
    assert result.exit_code == 2 and "--model" in result.output
    result = runner.invoke(cli, ["app", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "does not exist" in " ".join(result.output.split())
    assert "--share" in runner.invoke(cli, ["app", "--help"]).output
