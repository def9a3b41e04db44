"""`llm4gen generate` and `llm4gen demo`: images from prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ..examples import DEMO_PROMPTS
from ..sampling import DEFAULT_STEPS, SamplingDefaults
from ..utils import check_generation_args, quiet_library_notices, to_device, validate_prompts
from . import common
from . import official as release
from .common import (
    DEVICE_HELP,
    DTYPE_HELP,
    app,
    check_device,
    check_output_folder,
    check_seed,
    console,
    load_pipeline,
    model_or_bundled,
    pick_device,
    png_parameters,
    resolve_device,
    resolve_dtype,
    sampling_settings,
    save_images,
    say_domain,
)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt; long, dense descriptions are welcome."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="LLM4GEN pipeline folder or hub id. Default: the bundled model (models/default)."
    ),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Folder for the PNGs."),
    steps: int | None = typer.Option(
        None, "--steps", min=1,
        help=f"Denoising steps. Default: the model's (its llm4gen_sampling.json), else {DEFAULT_STEPS}; 50 with "
             "--official (the authors' script)."),
    guidance: float | None = typer.Option(
        None, "--guidance",
        help="Classifier-free guidance scale (<= 1 disables it). Default: the model's (its llm4gen_sampling.json: 5 "
             "for the bundled model), else 7.5."),
    guidance_rescale: float = typer.Option(
        0.0, "--guidance-rescale", min=0.0, max=1.0,
        help="Rescale the guided prediction toward the text-conditioned one's std (Lin et al. 2024: about 0.7 for "
             "models trained with zero terminal SNR); 0 = plain guidance."),
    seed: int = typer.Option(
        0, "--seed", help="Random seed; the same seed gives the same image. With -n N the images take seeds SEED .. "
                          "SEED+N-1 (each PNG records its own), so any one of them can be made again alone."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt."),
    num_images: int = typer.Option(1, "--num-images", "-n", min=1, help="Images to generate."),
    height: int | None = typer.Option(None, "--height", help="Image height in pixels (default: the model's)."),
    width: int | None = typer.Option(None, "--width", help="Image width in pixels (default: the model's)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the PNGs of an earlier run with the same seed (default: number on)."),
    xl: bool | None = typer.Option(None, "--xl/--sd", help="Force SDXL or SD1.x (default: read from the model)."),
    adapter_scale: float | None = typer.Option(
        None, "--adapter-scale", min=0.0,
        help="The CAM's balance factor λ for the LLM tokens (default: the adapter's, 1.0 as trained)."),
    region: list[str] = typer.Option(
        [], "--region", metavar="PHRASE:X0,Y0,X1,Y1",
        help="Region guidance: draw PHRASE (words of the prompt) inside the box, in fractions of the image with y "
             "down, e.g. --region 'red circle:0,0,0.4,0.4'. Repeatable."),
    auto_regions: bool = typer.Option(
        False, "--auto-regions",
        help="Region guidance with boxes planned from the prompt's own place words ('a red cube on the left', "
             "'in the upper right corner', 'a dog to the left of a cat'); prints them. Not with --region."),
    region_scale: float = typer.Option(
        0.05, "--region-scale", min=0.0, help="Region guidance: RMS change of the latents per guided step."),
    region_steps: int = typer.Option(10, "--region-steps", min=0, help="Region guidance: how many first steps."),
    region_mask: bool = typer.Option(
        True, "--region-mask/--no-region-mask",
        help="With two regions or more, also mask the cross-attention: each region's words are read only inside its "
             "box (no extra UNet pass; with --region-scale 0 it places things without guidance)."),
    region_mask_steps: int | None = typer.Option(
        None, "--region-mask-steps", min=0, help="--region-mask: how many first steps (default: all)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the LLM's own Python code."),
    official: bool = typer.Option(
        False, "--official",
        help="Run the authors' SD1.5 release (LLM4GenPipeline.from_official: RankGen-T5-XL, which needs "
             "--trust-remote-code) with their settings, instead of --model."),
    official_base: str | None = release.BASE_OPTION,
    official_release: str | None = release.RELEASE_OPTION,
    official_llm: str | None = release.LLM_OPTION,
    official_llm_tokenizer: str | None = release.LLM_TOKENIZER_OPTION,
) -> None:
    """Generate images for PROMPT with an LLM4GEN pipeline and write them as PNGs."""
    import torch

    from ..images import draw_regions
    from ..layout import region_words
    from ..regions import Region

    if official and model is not None:
        console.print("[red]Error:[/red] give either --model or --official, not both.")
        raise typer.Exit(2)
    sampling = None
    if official:  # the authors' script calls the pipeline with diffusers' defaults
        guidance, steps = 7.5 if guidance is None else guidance, 50 if steps is None else steps
    else:
        bundled = model is None
        model = model_or_bundled(model, ", or run `llm4gen demo` to try a tiny random model")
        guidance, steps, sampling = sampling_settings(model, guidance, steps)
        if bundled:
            say_domain(sampling)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        check_cli_arguments(prompt, negative, steps, guidance, num_images, height, width, seed, device, out)
        regions: Any = [Region.parse(r) for r in region]
        if auto_regions:
            if regions:
                raise ValueError("Give either --region boxes or --auto-regions, not both.")
            regions = print_planned_regions(prompt)
        if official:
            pipe = release.load_official(official_base, official_release, official_llm, official_llm_tokenizer,
                                         trust_remote_code, device, torch_dtype)
        else:
            pipe = load_pipeline(model, xl, device, trust_remote_code, torch_dtype, sampling)
        if adapter_scale is not None:
            pipe.set_adapter_scale(adapter_scale)
        note = clip_window_note(pipe, [prompt])
        if note:
            console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
        # one generator per image: image i is what `--seed SEED+i -n 1` draws, and its PNG says so
        generator = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(num_images)]
        result = pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            guidance_rescale=guidance_rescale,
            num_images_per_prompt=num_images,
            generator=generator,
            height=height,
            width=width,
            **(dict(regions=regions, region_guidance_scale=region_scale, region_guidance_steps=region_steps,
                    region_mask=region_mask, region_mask_steps=region_mask_steps) if regions else {}),
        )
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    except (MemoryError, torch.OutOfMemoryError) as err:
        console.print(f"[red]Error:[/red] out of memory on {device} ({str(err).splitlines()[0][:200]}); try a "
                      "smaller --height / --width or --num-images.")
        raise typer.Exit(1) from None
    made_by = model if model is not None else "the authors' release (--official)"
    parameters = [png_parameters(prompt, negative, seed + i, steps, guidance, image.size, made_by,
                                 sampler=type(pipe.scheduler).__name__) for i, image in enumerate(result.images)]
    paths = save_images(result.images, out, f"seed{seed}", overwrite=overwrite, parameters=parameters)
    if regions:  # beside each image, the same with the boxes it was guided to
        labelled = [(region_words(prompt, r), r.box) for r in regions]
        for path, image in zip(list(paths), result.images):
            paths.append(path.with_name(path.stem + "_regions.png"))
            draw_regions(image, labelled).save(paths[-1])
    for p in paths:
        typer.echo(str(p))


# the command's names for the pipeline's arguments, in messages
_FLAGS = {"height": "--height", "width": "--width", "num_inference_steps": "--steps", "guidance_scale": "--guidance",
          "num_images_per_prompt": "--num-images"}


def check_cli_arguments(prompt: str, negative: str | None, steps: int, guidance: float, num_images: int,
                        height: int | None, width: int | None, seed: int, device: str, out: Path) -> None:
    """Every argument of `llm4gen generate` that can be wrong, checked before any model loads (a ValueError)."""
    validate_prompts(prompt, "PROMPT")
    if negative is not None:
        validate_prompts(negative, "--negative", allow_empty=True)
    check_generation_args(height, width, steps, guidance, num_images, names=_FLAGS)
    check_seed(seed)
    check_seed(seed + num_images - 1, "--seed + --num-images - 1 (the last image's seed)")
    check_device(device)
    check_output_folder(out)


def clip_window_note(pipe: Any, prompts: list[str]) -> str | None:
    """For prompts past CLIP's window, one line saying what diffusers' "truncated" notice means for an LLM4GEN
    pipeline: CLIP reads the first tokens, the LLM reads on (up to its own ``max_length``). None when no prompt is
    longer than the window or the pipeline has no LLM."""
    from ..shapesworld.scorer import clip_token_count

    tokenizer, llm = getattr(pipe, "tokenizer", None), getattr(pipe, "llm_encoder", None)
    if tokenizer is None or llm is None:
        return None
    window = int(tokenizer.model_max_length)
    with quiet_library_notices():  # counting a long prompt is not an error
        counts = clip_token_count(prompts, tokenizer)
    long = [(i, n) for i, n in enumerate(counts) if n > window]
    if not long:
        return None

    def listed(items: list[int]) -> str:  # 1 / 1 and 2 / 1, 2 and 3
        words = [str(v) for v in items]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    sizes = listed([n for _, n in long])
    if len(prompts) == 1:
        which = f"The prompt is {sizes}"
    else:
        numbers = listed([i + 1 for i, _ in long])
        which = f"Prompt {numbers} is {sizes}" if len(long) == 1 else f"Prompts {numbers} are {sizes}"
    return (f"{which} CLIP tokens: CLIP reads the first {window} (hence any \"truncated\" notice), the LLM reads on "
            f"up to {llm.max_length} of its own tokens (it warns if it has to cut). Reading past CLIP's window is what "
            "LLM4GEN adds.")


def print_planned_regions(prompt: str) -> list[Any]:
    """``--auto-regions``: the regions :func:`llm4gen.layout.plan_regions` reads from ``prompt``, printed."""
    from ..layout import PLACE_EXAMPLES, plan_regions, region_words

    planned = plan_regions(prompt)
    if not planned:
        console.print(f"[yellow]--auto-regions: the prompt names no place for anything ({PLACE_EXAMPLES}); sampling "
                      "without region guidance.[/yellow]")
    for r in planned:
        console.print(f"region: {region_words(prompt, r)!r} in box ({', '.join(f'{v:.2f}' for v in r.box)})")
    return planned


@app.command()
def demo(
    out: Path = typer.Option(Path("outputs/demo"), "--out", "-o", help="Folder for the PNGs and the grid."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help=f"Denoising steps (default: the model's, else {DEFAULT_STEPS})."),
    guidance: float | None = typer.Option(
        None, "--guidance", help="Classifier-free guidance scale (default: the model's, 5 for the bundled one)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
) -> None:
    """Run the main job offline: generate images for a few dense prompts and write them with a grid.

    Uses the bundled default model (models/default) and renders each prompt side by side with its base arm (the same
    recipe trained on CLIP only, models/default/base_unet) from the same noise, and a third time with region
    guidance: boxes for each object planned from the prompt's own place words (``llm4gen.layout.plan_regions`` on
    ShapesWorld's grid, ``llm4gen.shapesworld.bench.planned_regions``). Without a bundled model it builds a tiny
    random LLM4GEN pipeline (the real all-MiniLM-L6-v2 as the LLM) and says so: its images are noise.
    """
    import time
    from contextlib import nullcontext

    import torch

    from ..images import draw_regions, make_grid
    from ..layout import region_words
    from ..shapesworld.arms import base_unet_dir, clip_only_pipeline
    from ..shapesworld.bench import planned_regions
    from ..tiny import MINILM_REF, build_tiny_pipeline

    try:
        check_generation_args(num_inference_steps=steps, guidance_scale=guidance, names=_FLAGS)
        check_seed(seed)
        device = pick_device(device)
        check_output_folder(out)
    except ValueError as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    started = time.perf_counter()
    bundled = common.bundled_model_dir()  # looked up there, so a test can stand in for it
    arms: dict[str, object] = {}
    torch_dtype = resolve_dtype(dtype, device)
    if bundled is not None:
        console.print(f"Using the bundled model at {bundled}")
        guidance, steps, sampling = sampling_settings(str(bundled), guidance, steps)
        say_domain(sampling)
        pipe = load_pipeline(str(bundled), None, device, False, torch_dtype, sampling)

        if base_unet_dir(bundled) is not None:
            base = clip_only_pipeline(pipe, base_unet_dir(bundled))
            arms["base (CLIP only)"] = to_device(base, device, pipe.unet.dtype)  # its own UNet is float32
    else:
        console.print(
            "[yellow]No bundled trained model: building a tiny RANDOMLY INITIALISED pipeline "
            "(MiniLM as the LLM). Its images are noise; they show that the whole path runs, not what LLM4GEN can "
            "do.[/yellow]"
        )
        pipe = build_tiny_pipeline(llm=MINILM_REF, llm_max_length=256, llm_padding="longest", seed=seed)
        pipe = to_device(pipe, device, torch_dtype)
        chosen = SamplingDefaults().call_kwargs(guidance_scale=guidance, num_inference_steps=steps)
        guidance, steps = chosen["guidance_scale"], chosen["num_inference_steps"]
    arms["llm4gen"] = pipe
    if bundled is not None:
        arms["llm4gen + regions"] = pipe
    images, captions, paths = [], [], []
    out.mkdir(parents=True, exist_ok=True)
    loaded = time.perf_counter()
    note = clip_window_note(pipe, DEMO_PROMPTS)
    if note:  # said once here, so diffusers' per-call truncation notices are silenced below
        base_note = " The base column reads CLIP's window only." if "base (CLIP only)" in arms else ""
        console.print(f"note: {note}{base_note}", style="yellow", markup=False, highlight=False)
    for i, prompt in enumerate(DEMO_PROMPTS):
        for name, arm in arms.items():
            generator = torch.Generator().manual_seed(seed + i)  # the same noise in every arm
            arm.set_progress_bar_config(disable=True)
            extra = {}
            if name.endswith("regions"):
                extra["regions"] = planned_regions(prompt)
            with quiet_library_notices() if note else nullcontext():
                image = arm(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                            **extra).images[0]
            path = out / f"demo_{i:02d}_{name.split(' (')[0].replace(' + ', '_')}.png"
            image.save(path)
            if "regions" in extra:  # the grid shows the boxes the image was guided to
                image = draw_regions(image, [(region_words(prompt, r), r.box) for r in extra["regions"]])
                name += " (boxes drawn)"
            images.append(image)
            captions.append(f"[{name}] {prompt}")
            paths.append((path, prompt))
    grid = make_grid(images, captions=captions, cols=len(arms), cell=256, caption_lines=None)  # whole prompts
    grid_path = out / "grid.png"
    grid.save(grid_path)
    table = Table(title="llm4gen demo" + (" (side by side: the same seed in each arm)" if len(arms) > 1 else ""))
    table.add_column("image")
    table.add_column("prompt")
    for p, prompt in paths:
        table.add_row(str(p), prompt[:80] + "...")
    table.add_row(str(grid_path), "(grid: prompt as caption)")
    Console().print(table)
    done = time.perf_counter()
    each = (done - loaded) / len(images)
    console.print(f"demo: {len(images)} images of {steps} steps in {done - loaded:.1f} s ({each:.2f} s each) after "
                  f"{loaded - started:.1f} s loading, {done - started:.1f} s in all, on {device} "
                  f"({torch.get_num_threads()} CPU threads)", highlight=False)
