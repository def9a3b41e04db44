"""The `llm4gen` command. Thin: parse arguments, call the library, print where results went."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .examples import DEMO_PROMPTS

app = typer.Typer(
    name="llm4gen",
    help=(
        "LLM4GEN: text-to-image generation that follows long, dense prompts by feeding Stable Diffusion (1.x, SDXL) "
        "the features of a large language model through a Cross-Adapter Module."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
# Guidance for the bundled model when none is given: its benchmark's setting, better than 7.5 there on colour, shape,
# binding and all-correct (README, "Sampling the bundled model"); other models keep diffusers' usual 7.5
BUNDLED_GUIDANCE = 5.0


def bundled_model_dir() -> Path | None:
    """The bundled default model, if this checkout or installation has one (``models/default``)."""
    for candidate in (
        Path(os.environ["LLM4GEN_DEFAULT_MODEL"]) if os.environ.get("LLM4GEN_DEFAULT_MODEL") else None,
        Path(__file__).resolve().parents[2] / "models" / "default",
    ):
        if candidate is not None and (candidate / "model_index.json").is_file():
            return candidate
    return None


def _guidance_or_default(guidance: float | None, model: str | None) -> float:
    """``guidance`` if given, else the bundled model's (no ``--model``) or diffusers' usual 7.5 for any other."""
    if guidance is not None:
        return guidance
    return BUNDLED_GUIDANCE if model is None else 7.5


def _model_or_bundled(model: str | None, hint: str = "") -> str:
    """``model``, or the bundled model's folder; without either, say so and exit with status 2."""
    if model is not None:
        return model
    bundled = bundled_model_dir()
    if bundled is None:
        console.print("[red]No --model given and no bundled default model (models/default) is installed.[/red] Pass "
                      f"--model with an LLM4GEN pipeline folder or hub id{hint}.")
        raise typer.Exit(2)
    return str(bundled)


def _load_pipeline(model: str, xl: bool | None, device: str, trust_remote_code: bool):
    import json

    from .pipeline import LLM4GenPipeline, LLM4GenXLPipeline

    cls = LLM4GenPipeline
    index = Path(model) / "model_index.json"
    if xl is None and index.is_file():
        with open(index, encoding="utf-8") as f:
            info = json.load(f)
        xl = info.get("_class_name") == "LLM4GenXLPipeline" or "text_encoder_2" in info
    if xl:
        cls = LLM4GenXLPipeline
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    pipe = cls.from_pretrained(model, **kwargs)
    return pipe.to(device)


def _save_images(images, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{stem}_{i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt; long, dense descriptions are welcome."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="LLM4GEN pipeline folder or hub id. Default: the bundled model (models/default)."
    ),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Folder for the PNGs."),
    steps: int = typer.Option(30, "--steps", min=1, help="Denoising steps."),
    guidance: float | None = typer.Option(
        None, "--guidance",
        help=f"Classifier-free guidance scale (<= 1 disables it). Default: 7.5, {BUNDLED_GUIDANCE} for the bundled "
             "model."),
    guidance_rescale: float = typer.Option(
        0.0, "--guidance-rescale", min=0.0, max=1.0,
        help="Rescale the guided prediction toward the text-conditioned one's std (Lin et al. 2024: about 0.7 for "
             "models trained with zero terminal SNR); 0 = plain guidance."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same image."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt."),
    num_images: int = typer.Option(1, "--num-images", "-n", min=1, help="Images to generate."),
    height: int | None = typer.Option(None, "--height", help="Image height in pixels (default: the model's)."),
    width: int | None = typer.Option(None, "--width", help="Image width in pixels (default: the model's)."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda, cuda:1, mps."),
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
) -> None:
    """Generate images for PROMPT with an LLM4GEN pipeline and write them as PNGs."""
    import torch

    guidance = _guidance_or_default(guidance, model)
    model = _model_or_bundled(model, ", or run `llm4gen demo` to try a tiny random model")
    try:
        from .regions import Region

        regions: Any = [Region.parse(r) for r in region]
        if auto_regions:
            if regions:
                raise ValueError("Give either --region boxes or --auto-regions, not both.")
            regions = _print_planned_regions(prompt)
        pipe = _load_pipeline(model, xl, device, trust_remote_code)
        if adapter_scale is not None:
            pipe.set_adapter_scale(adapter_scale)
        note = _clip_window_note(pipe, [prompt])
        if note:
            console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
        generator = torch.Generator(device="cpu").manual_seed(seed)
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
    paths = _save_images(result.images, out, f"seed{seed}")
    if regions:  # beside each image, the same with the boxes it was guided to
        from .images import draw_regions
        from .layout import region_words

        labelled = [(region_words(prompt, r), r.box) for r in regions]
        for path, image in zip(list(paths), result.images):
            paths.append(path.with_name(path.stem + "_regions.png"))
            draw_regions(image, labelled).save(paths[-1])
    for p in paths:
        typer.echo(str(p))


def _clip_window_note(pipe: Any, prompts: list[str]) -> str | None:
    """For prompts past CLIP's window, one line saying what diffusers' "truncated" notice means for an LLM4GEN
    pipeline: CLIP reads the first tokens, the LLM reads on (up to its own ``max_length``). None when no prompt is
    longer than the window or the pipeline has no LLM."""
    tokenizer, llm = getattr(pipe, "tokenizer", None), getattr(pipe, "llm_encoder", None)
    if tokenizer is None or llm is None:
        return None
    from .eval.shapes import clip_token_count
    from .utils import quiet_library_notices

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


def _print_planned_regions(prompt: str) -> list[Any]:
    """``--auto-regions``: the regions :func:`llm4gen.layout.plan_regions` reads from ``prompt``, printed."""
    from .layout import PLACE_EXAMPLES, plan_regions, region_words

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
    steps: int = typer.Option(25, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(BUNDLED_GUIDANCE, "--guidance", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Run the main job offline: generate images for a few dense prompts and write them with a grid.

    Uses the bundled default model (models/default) and renders each prompt side by side with its base arm (the same
    recipe trained on CLIP only, models/default/base_unet) from the same noise, and a third time with region
    guidance: boxes for each object planned from the prompt's own place words (``llm4gen.layout.plan_regions`` on
    ShapesWorld's grid, ``llm4gen.eval.shapes_bench.planned_regions``). Without a bundled model it builds a tiny
    random LLM4GEN pipeline (the real all-MiniLM-L6-v2 as the LLM) and says so: its images are noise.
    """
    from contextlib import nullcontext

    import torch

    from .images import make_grid
    from .utils import quiet_library_notices

    bundled = bundled_model_dir()
    arms: dict[str, object] = {}
    if bundled is not None:
        console.print(f"Using the bundled model at {bundled}")
        pipe = _load_pipeline(str(bundled), None, "cpu", False)
        from .eval.shapes_bench import base_unet_dir, clip_only_pipeline

        if base_unet_dir(bundled) is not None:
            arms["base (CLIP only)"] = clip_only_pipeline(pipe, base_unet_dir(bundled))
    else:
        from .tiny import MINILM_REF, build_tiny_pipeline

        console.print(
            "[yellow]No bundled trained model: building a tiny RANDOMLY INITIALISED pipeline "
            "(MiniLM as the LLM). Its images are noise; they show that the whole path runs, not what LLM4GEN can "
            "do.[/yellow]"
        )
        pipe = build_tiny_pipeline(llm=MINILM_REF, llm_max_length=256, llm_padding="longest", seed=seed)
    arms["llm4gen"] = pipe
    if bundled is not None:
        arms["llm4gen + regions"] = pipe
    images, captions, paths = [], [], []
    out.mkdir(parents=True, exist_ok=True)
    note = _clip_window_note(pipe, DEMO_PROMPTS)
    if note:  # said once here, so diffusers' per-call truncation notices are silenced below
        base_note = " The base column reads CLIP's window only." if "base (CLIP only)" in arms else ""
        console.print(f"note: {note}{base_note}", style="yellow", markup=False, highlight=False)
    for i, prompt in enumerate(DEMO_PROMPTS):
        for name, arm in arms.items():
            generator = torch.Generator().manual_seed(seed + i)  # the same noise in every arm
            arm.set_progress_bar_config(disable=True)
            extra = {}
            if name.endswith("regions"):
                from .eval.shapes_bench import planned_regions

                extra["regions"] = planned_regions(prompt)
            with quiet_library_notices() if note else nullcontext():
                image = arm(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                            **extra).images[0]
            path = out / f"demo_{i:02d}_{name.split(' (')[0].replace(' + ', '_')}.png"
            image.save(path)
            if "regions" in extra:  # the grid shows the boxes the image was guided to
                from .images import draw_regions
                from .layout import region_words

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


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Training config (YAML or JSON); see the README's training section."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder to continue from."),
    output_dir: str | None = typer.Option(None, "--output-dir", help="Override the config's output_dir."),
    max_train_steps: int | None = typer.Option(None, "--max-train-steps", help="Override max_train_steps."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override any config key (repeatable; dots for nested keys, values are YAML), "
                                        "e.g. --set prediction_type=epsilon --set data.num_items=2000."),
) -> None:
    """Train a CAM (and the UNet) on frozen CLIP, LLM and VAE; writes checkpoints and a pipeline folder.

    Several processes or GPUs: `accelerate launch --num_processes N -m llm4gen train CONFIG`.
    """
    from .training.config import load_config, parse_set
    from .training.trainer import TrainingDivergedError, train

    try:
        cfg = load_config(config, parse_set(set_), output_dir=output_dir, max_train_steps=max_train_steps)
        result = train(cfg, resume=resume)
    except (ValueError, FileNotFoundError, OSError, NotImplementedError, TrainingDivergedError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    if not result.is_main_process:
        return
    last = result.losses[-1] if result.losses else float("nan")
    typer.echo(f"trained {result.final_step} steps, final loss {last:.4f}, {result.samples_per_second:.1f} samples/s")
    typer.echo(f"pipeline: {result.output_dir}")


@app.command("app")
def app_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="LLM4GEN pipeline folder or hub id. Default: the bundled model (models/default)."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="A plain SD folder or hub id for the base side (default: MODEL/base_unet/ if it "
        "exists, else MODEL's own UNet with CLIP-only conditioning)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the app on your network."),
    port: int | None = typer.Option(None, "--port", help="Port (default: a free one)."),
    share: bool = typer.Option(False, "--share", help="Also open a public gradio.live link."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda, cuda:1, mps."),
    steps: int = typer.Option(25, "--steps", min=1, help="The page's default number of denoising steps."),
    guidance: float | None = typer.Option(
        None, "--guidance", min=0.0,
        help=f"The page's default guidance scale (default: 7.5, {BUNDLED_GUIDANCE} for the bundled model)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the LLM's own Python code."),
    screenshot: Path | None = typer.Option(
        None, "--screenshot", help="Instead of serving: open the page in headless Chromium, generate once, save a "
        "PNG of the page here and exit (how docs/app_screenshot.png is made)."
    ),
) -> None:
    """Serve the web app: long prompts rendered side by side by the base (CLIP only) path and by LLM4GEN."""
    try:
        from .app import EXAMPLE_PROMPT, drive_browser, launch, load_model
    except ImportError as err:
        console.print(f"[red]The web app needs gradio:[/red] pip install 'llm4gen[app]' ({err}).")
        raise typer.Exit(2) from None
    guidance = _guidance_or_default(guidance, model)
    model = _model_or_bundled(model)
    try:
        loaded = load_model(model, base_model=base_model, device=device, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    console.print(f"Model: {loaded.ref}; base side: {loaded.base_source}.")
    if screenshot is None:
        console.print(f"Serving on http://{host}:{port or '<free port>'}/ (Ctrl+C stops it)")
        launch(loaded, host=host, port=port, share=share, device=device, default_steps=steps,
               default_guidance=guidance)
        return
    demo, url = launch(loaded, host=host, port=port, device=device, default_steps=steps, default_guidance=guidance,
                       block=False)
    try:
        result = drive_browser(url, EXAMPLE_PROMPT, screenshot=screenshot, timeout=900)
    except (RuntimeError, TimeoutError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    finally:
        demo.close()
    typer.echo(f"{result['status']}\nscreenshot: {screenshot}")


# ---------------------------------------------------------------------- shapes
shapes_app = typer.Typer(
    help="ShapesWorld: synthetic scenes with dense captions and an exact scorer.", no_args_is_help=True
)
app.add_typer(shapes_app, name="shapes")


eval_app = typer.Typer(
    help="Evaluate any pipeline: generate images for a prompt file, score them, run compositional benchmarks.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

data_app = typer.Typer(help="Build data: dense prompts with a local LLM, recaptioned image sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

bench_app = typer.Typer(help="Benchmarks that print a table and write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@shapes_app.command("make-data")
def shapes_make_data(
    out: Path = typer.Argument(..., help="Folder to write the PNGs and metadata.jsonl into."),
    num: int = typer.Option(1000, "--num", "-n", min=1, help="Number of items."),
    split: str = typer.Option("train", "--split", help="train, or test (held-out attribute combinations)."),
    seed: int = typer.Option(0, "--seed", help="Seed; item k depends only on (seed, split, k)."),
    size: int = typer.Option(64, "--size", min=32, help="Image size in pixels."),
    style: str = typer.Option("mixed", "--style", help="Caption style: short, relational, dense or mixed."),
    corrupt: str | None = typer.Option(
        None, "--corrupt", help="Render corrupted scenes (swap-colours, drop-object, mirror) to validate a scorer."
    ),
) -> None:
    """Write a ShapesWorld split as an image folder with metadata.jsonl (file_name, text, scene graph)."""
    from .data.shapes import ShapesWorldConfig, write_dataset

    try:
        cfg = ShapesWorldConfig(size=size, caption_style=style)
        path = write_dataset(out, num, split=split, seed=seed, config=cfg, corrupt=corrupt)
    except ValueError as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    n = sum(1 for _ in open(path / "metadata.jsonl", encoding="utf-8"))
    typer.echo(f"wrote {n} items to {path}")


@shapes_app.command("score")
def shapes_score(
    images_dir: Path = typer.Argument(..., help="Folder of images with the metadata.jsonl they were generated from."),
    json_out: Path | None = typer.Option(None, "--json", help="Where to write the JSON report (default: "
                                            "IMAGES_DIR/shapes_scores.json)."),
    prototypes: str = typer.Option(
        "auto", "--prototypes",
        help="The scorer's shape prototypes: auto (the README's tables), clean, or smooth (reads a diffusion "
             "model's soft stars right; see the README's scorer audit)."),
) -> None:
    """Score generated images against their scene graphs; print a table by category and prompt length."""
    import json

    from .eval.shapes import LENGTH_BUCKETS, METRICS, score_folder

    try:
        report = score_folder(str(images_dir), prototypes=prototypes)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    table = Table(title=f"ShapesWorld scores: {images_dir}")
    table.add_column("metric")
    for bucket in LENGTH_BUCKETS:
        table.add_column(f"{bucket} (n={report['summary'][bucket]['count']['n']})", justify="right")
    for metric in METRICS:
        cells = []
        for bucket in LENGTH_BUCKETS:
            mean = report["summary"][bucket][metric]["mean"]
            cells.append("-" if mean is None else f"{100 * mean:.1f}%")
        table.add_row(metric, *cells)
    Console().print(table)
    target = json_out or images_dir / "shapes_scores.json"
    target.write_text(json.dumps(report, indent=1))
    typer.echo(f"report: {target}")


@shapes_app.command("train-clip")
def shapes_train_clip(
    out: Path = typer.Argument(..., help="Output folder: text_encoder/, tokenizer/, clip/, metrics.json."),
    steps: int = typer.Option(800, "--steps", min=1, help="Optimisation steps."),
    batch_size: int = typer.Option(96, "--batch-size", min=2, help="Pairs per contrastive batch."),
    hidden: int = typer.Option(128, "--hidden", min=8, help="Width of the text and image transformers."),
    layers: int = typer.Option(3, "--layers", min=1, help="Layers of each transformer."),
    train_items: int = typer.Option(12000, "--train-items", min=2, help="Training pairs generated up front."),
    eval_items: int = typer.Option(500, "--eval-items", min=2, help="Held-out pairs for zero-shot retrieval."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and batches (the data has its own)."),
) -> None:
    """Train the small ShapesWorld CLIP (the base model's text encoder) and report held-out retrieval."""
    from .training.small_clip import SmallClipConfig, train_small_clip

    heads = max(h for h in (1, 2, 4, 8) if hidden % h == 0)
    cfg = SmallClipConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, projection_dim=hidden, steps=steps,
                          batch_size=batch_size, train_items=train_items, eval_items=eval_items, seed=seed)
    result = train_small_clip(out, cfg)
    table = Table(title=f"small CLIP: zero-shot retrieval on {eval_items} held-out pairs "
                        f"(chance {100 / eval_items:.1f}%)")
    table.add_column("captions")
    for col in ("text->image top1", "image->text top1", "text->image top5", "image->text top5"):
        table.add_column(col, justify="right")
    metrics = result["retrieval_heldout"]
    for style in ("short", "relational", "dense"):
        keys = ("text_to_image_top1", "image_to_text_top1", "text_to_image_top5", "image_to_text_top5")
        table.add_row(style, *(f"{100 * metrics[f'{style}/{k}']:.1f}%" for k in keys))
    Console().print(table)
    typer.echo(f"saved to {out} in {result['wall_time_s']} s (metrics.json)")


@shapes_app.command("train-vae")
def shapes_train_vae(
    out: Path = typer.Argument(..., help="Output folder: vae/, vae_metrics.json, reconstructions.png."),
    steps: int = typer.Option(1500, "--steps", min=1, help="Optimisation steps."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per step."),
    train_items: int = typer.Option(8000, "--train-items", min=1, help="Training images generated up front."),
    eval_items: int = typer.Option(200, "--eval-items", min=1, help="Held-out images for PSNR and the scorer."),
    size: int = typer.Option(64, "--size", min=32, help="Image size in pixels."),
    latent_channels: int = typer.Option(4, "--latent-channels", min=1,
                                        help="Latent channels (more: sharper reconstructions, a wider UNet input)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and batches."),
) -> None:
    """Train the small ShapesWorld VAE (64 px -> 16x16xC latents); report PSNR and the scorer on reconstructions."""
    from .training.small_vae import SmallVaeConfig, train_small_vae

    cfg = SmallVaeConfig(steps=steps, batch_size=batch_size, train_items=train_items, eval_items=eval_items,
                         image_size=size, latent_channels=latent_channels, seed=seed)
    result = train_small_vae(out, cfg)
    score = result["scorer_on_reconstructions"]
    typer.echo(f"held-out PSNR {result['psnr_db_heldout']:.2f} dB; scorer on reconstructions: all-correct "
               f"{100 * score['all_correct']:.1f}%, binding {100 * score['binding']:.1f}%; "
               f"scaling_factor {result['scaling_factor']:.4f}; {result['wall_time_s']} s; saved to {out / 'vae'}")


@shapes_app.command("build-base")
def shapes_build_base(
    out: Path = typer.Argument(..., help="Output folder (vae/, text_encoder/, tokenizer/, scheduler/, unet/)."),
    clip: Path = typer.Option(..., "--clip", help="Output folder of `llm4gen shapes train-clip`."),
    vae: Path = typer.Option(..., "--vae", help="Output folder of `llm4gen shapes train-vae`."),
    seed: int = typer.Option(0, "--seed", help="Seed of the UNet's initial weights (shared by both arms)."),
) -> None:
    """Assemble the ShapesWorld base model that configs/shapes-*.yaml train from."""
    from .training.shapes_recipe import build_shapes_base

    try:
        path = build_shapes_base(out, clip, vae, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(f"base model written to {path}; next: llm4gen train configs/shapes-llm4gen.yaml")


@shapes_app.command("package")
def shapes_package(
    llm4gen: Path = typer.Option(Path("runs/shapes/llm4gen"), "--llm4gen",
                                 help="Output of configs/shapes-llm4gen.yaml."),
    base: Path = typer.Option(Path("runs/shapes/base-arm"), "--base", help="Output of configs/shapes-base.yaml."),
    out: Path = typer.Option(Path("models/default"), "--out", help="Where the bundled model goes."),
) -> None:
    """Assemble the bundled model: the LLM4GEN pipeline (DPM-Solver++ scheduler) plus the base arm's UNet."""
    from .training.shapes_recipe import package_default_model

    try:
        path = package_default_model(llm4gen, base, out)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    typer.echo(f"bundled model written to {path} ({size / 2**20:.1f} MiB)")


@bench_app.command("quality")
def bench_quality(
    out: Path = typer.Option(Path("outputs/bench-quality"), "--out", help="Folder for images, results.json, charts."),
    model: str = typer.Option(None, "--model", help="The llm4gen arm (default: the bundled model)."),
    base_unet: str = typer.Option(
        None, "--base-unet",
        help="The base arm's UNet (trained on CLIP only), run with --model's VAE/CLIP (default: the bundled one)."),
    base_model: str = typer.Option(
        None, "--base-model", help="A whole plain Stable Diffusion folder as the base arm, instead of --base-unet."),
    prompts: int = typer.Option(500, "--prompts", min=1, help="Held-out dense prompts to render per arm."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: 64 prompts, 15 steps (a few minutes here)."),
    steps: int = typer.Option(25, "--steps", min=1, help="Sampling steps (DPM-Solver++)."),
    guidance: float = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale."),
    guidance_rescale: float = typer.Option(
        0.0, "--guidance-rescale", min=0.0, max=1.0,
        help="Rescale the guided prediction toward the text-conditioned one's std (Lin et al. 2024, for "
             "zero-terminal-SNR models; 0 = plain guidance)."),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="Prompts rendered per batch."),
    seed: int = typer.Option(0, "--seed", help="Image i starts from noise seeded seed + i in every arm."),
    adapter_scale: float | None = typer.Option(
        None, "--adapter-scale", min=0.0,
        help="The CAM's balance factor λ in the llm4gen arm (default: the adapter's, 1.0 as trained)."),
    split: str = typer.Option(
        "test", "--split",
        help="test: the held-out prompts (each asks for a colour-shape pair never trained on); train: new scenes "
             "made only of pairs seen in training (a control: does a failure come from the unseen pairs?)."),
    scorer_prototypes: str = typer.Option(
        "auto", "--scorer-prototypes",
        help="The scorer's shape prototypes: auto (what the README's tables use), clean, or smooth (reads blurred "
             "generated stars right; see the README's scorer audit)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps."),
) -> None:
    """ShapesWorld headline benchmark: base (CLIP only) vs llm4gen (CLIP + LLM via the CAM) on held-out dense
    prompts, scored exactly, split by prompt length, with 95% intervals; writes results.json, quality.png,
    samples.png."""
    from .eval.shapes_bench import (
        QualityConfig,
        base_schedule_differences,
        base_unet_dir,
        load_arm,
        run_quality_benchmark,
    )

    model = _model_or_bundled(model)
    if base_model is None and base_unet is None:
        if base_unet_dir(model) is None:
            raise typer.BadParameter(
                f"Give the base arm with --base-unet or --base-model ({Path(model) / 'base_unet'} is absent).")
        base_unet = str(base_unet_dir(model))
    notes = []
    if base_model is None:
        try:
            differences = base_schedule_differences(model, base_unet)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        if differences:
            listed = ", ".join(f"{key}: {theirs!r} in training, {mine!r} here"
                               for key, (mine, theirs) in differences.items())
            notes.append(
                f"The base arm's UNet ({base_unet}) was trained on another noise schedule than --model's, whose "
                f"scheduler samples it ({listed}): its scores are not a fair base. Train the base arm with the same "
                "schedule settings (configs/shapes-base.yaml with the same --set flags) and pass that run's folder "
                "as --base-model or its unet/ as --base-unet.")
            typer.echo(f"warning: {notes[-1]}", err=True)
    try:
        cfg = QualityConfig(num_prompts=64 if quick else prompts, num_inference_steps=15 if quick else steps,
                            guidance_scale=guidance, guidance_rescale=guidance_rescale, batch_size=batch_size,
                            image_seed=seed, split=split, scorer_prototypes=scorer_prototypes)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    try:
        base = load_arm(base_model, device=device) if base_model else load_arm(model, unet=base_unet, device=device)
        arms = {"base": base, "llm4gen": load_arm(model, device=device)}
        if adapter_scale is not None:
            if not hasattr(arms["llm4gen"], "set_adapter_scale"):
                raise ValueError(f"--adapter-scale needs an LLM4GEN pipeline as --model; {model} has no CAM.")
            arms["llm4gen"].set_adapter_scale(adapter_scale)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise typer.BadParameter(str(err)) from None
    run_quality_benchmark(arms, out, cfg, notes=notes)
    typer.echo(f"wrote {out / 'results.json'}, {out / 'quality.png'}, {out / 'samples.png'}")


# ---------------------------------------------------------------------- eval generate / eval score
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _torch_dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in _DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {sorted(_DTYPES)}, got {name!r}.")
    return getattr(torch, _DTYPES[name])


@eval_app.command("generate")
def eval_generate(
    prompts_file: Path = typer.Argument(..., help="Prompts: .txt (one a line), .json, .jsonl, .csv or .tsv."),
    model: str = typer.Option(..., "--model", "-m", help="Any diffusers text-to-image pipeline folder or hub id "
                              "(LLM4GEN or not)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs and manifest.jsonl (resumable)."),
    column: str | None = typer.Option(None, "--column", help="CSV column / JSON field with the prompt (default: "
                                      "prompt, text or caption)."),
    num_images: int = typer.Option(1, "--num-images", "-n", min=1, help="Images per prompt."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed; image i of prompt p uses seed (SEED, p, i)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per pipeline call."),
    steps: int = typer.Option(50, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    height: int | None = typer.Option(None, "--height", help="Image height (default: the model's)."),
    width: int | None = typer.Option(None, "--width", help="Image width (default: the model's)."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt for every image."),
    naming: str = typer.Option("llm4gen", "--naming", help="File names: llm4gen ({prompt_index:05d}_{i:02d}.png) or "
                               "compbench ({prompt}_{index:06d}.png, T2I-CompBench's)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts (smoke runs)."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: this process's accelerate "
                                      "device: cuda:i under `accelerate launch`, else cuda or cpu)."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 (default: as saved)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate images that already exist."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """Generate N images per prompt of PROMPTS_FILE with fixed seeds, batched and resumable; writes manifest.jsonl.

    Several GPUs: `accelerate launch --num_processes N -m llm4gen eval generate ...` splits the images.
    """
    from .eval.generate import GenerationSettings, generate_images
    from .eval.prompts import read_prompt_records

    try:
        settings = GenerationSettings(num_images=num_images, seed=seed, steps=steps, guidance=guidance, height=height,
                                      width=width, negative_prompt=negative, naming=naming, batch_size=batch_size,
                                      limit=limit)
        records = read_prompt_records(prompts_file, column=column)
        result = generate_images(model, records, out, settings, device=device, dtype=_torch_dtype(dtype),
                                 overwrite=overwrite, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    if not result.is_main_process:
        return
    rate = f"{result.generated / result.seconds:.2f} img/s" if result.generated and result.seconds > 0 else "-"
    table = Table(title=f"llm4gen eval generate: {out}")
    for col in ("planned", "already there", "generated (this process)", "speed"):
        table.add_column(col, justify="right")
    table.add_row(str(result.planned), str(result.skipped), str(result.generated), rate)
    Console().print(table)
    typer.echo(f"manifest: {result.manifest}")


@eval_app.command("score")
def eval_score(
    images_dir: Path = typer.Argument(..., help="A folder written by `llm4gen eval generate` (or any image folder "
                                      "for FID / IS only)."),
    clip_model: str | None = typer.Option(None, "--clip-model", help="CLIP score with this transformers CLIP model "
                                          "(hub id or folder), e.g. openai/clip-vit-large-patch14."),
    fid_ref: Path | None = typer.Option(None, "--fid-ref", help="FID against this reference image folder or .npz "
                                        "statistics."),
    fid_features: str | None = typer.Option(None, "--fid-features", help="FID features: inception:PATH (the FID "
                                            "Inception weight file) or hf:ID_OR_PATH (any transformers vision model)."),
    save_ref_stats: Path | None = typer.Option(None, "--save-ref-stats", help="Write the reference statistics to this "
                                               ".npz to reuse them with --fid-ref."),
    is_classifier: str | None = typer.Option(None, "--is-classifier", help="Inception Score with inception:PATH or "
                                             "hf:ID_OR_PATH (a transformers image classifier)."),
    is_splits: int = typer.Option(10, "--is-splits", min=1, help="Inception Score splits."),
    aesthetic_head: Path | None = typer.Option(None, "--aesthetic-head", help="LAION aesthetic predictor head "
                                               "(.pth/.safetensors), on --aesthetic-clip's image embeddings."),
    aesthetic_clip: str | None = typer.Option(None, "--aesthetic-clip", help="CLIP model for the aesthetic head "
                                              "(default: --clip-model)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N images (smoke runs)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 for the scoring models."),
    json_out: Path | None = typer.Option(None, "--json", help="JSON report (default: IMAGES_DIR/scores/scores.json)."),
    chart: Path | None = typer.Option(None, "--chart", help="PNG chart (default: IMAGES_DIR/scores/scores.png)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the models' own Python code."),
) -> None:
    """Score generated images: CLIP score, FID, Inception Score, aesthetics; prints a table, writes JSON and a PNG."""
    from .eval.metrics import LaionAestheticPredictor, score_generated
    from .eval.report import bar_chart, print_table, write_json

    try:
        torch_dtype = _torch_dtype(dtype)
        aesthetic = None
        if aesthetic_head is not None:
            ref = aesthetic_clip or clip_model
            if ref is None:
                raise ValueError("--aesthetic-head needs --aesthetic-clip (or --clip-model) for the image embeddings.")
            aesthetic = LaionAestheticPredictor(aesthetic_head, ref, device=device, batch_size=batch_size)
        report = score_generated(
            images_dir, clip_model=clip_model, fid_ref=fid_ref, fid_features=fid_features,
            is_classifier=is_classifier, is_splits=is_splits, aesthetic=aesthetic, limit=limit,
            batch_size=batch_size, device=device, dtype=torch_dtype, save_ref_stats=save_ref_stats, progress=True,
            trust_remote_code=trust_remote_code,
        )
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    m = report["metrics"]
    rows, values, errors = [], {}, {}
    for key, label, value_key, spread_key, source_key in (
        ("clip_score", "CLIP score", "mean", "std", "model"), ("fid", "FID", "value", None, "features"),
        ("inception_score", "Inception Score", "mean", "std", "classifier"),
        ("aesthetic", "aesthetic", "mean", "std", "scorer"),
    ):
        if key in m:
            spread = m[key].get(spread_key) if spread_key else None
            rows.append({"metric": label, "value": m[key][value_key], "std": spread, "n": m[key]["n"],
                         "model": m[key][source_key]})
            values[label] = {images_dir.name or str(images_dir): m[key][value_key]}
            if spread is not None:
                errors[label] = {images_dir.name or str(images_dir): spread}
    print_table(rows, title=f"llm4gen eval score: {images_dir} ({report['num_images']} images)")
    target = write_json(json_out or images_dir / "scores" / "scores.json", report)
    chart_path = bar_chart(values, chart or images_dir / "scores" / "scores.png", title=f"scores: {images_dir.name}",
                           errors=errors, shared_axis=False)
    typer.echo(f"report: {target}\nchart: {chart_path}")


# ---------------------------------------------------------------------- eval compbench / eval dpg
@eval_app.command("compbench")
def eval_compbench(
    root: Path = typer.Argument(..., help="Folder with one sub-folder per category holding samples/ "
                                "({prompt}_{index:06d}.png, from `llm4gen eval generate --naming compbench`)."),
    prompts_dir: Path = typer.Option(..., "--prompts-dir", help="T2I-CompBench's examples/dataset folder "
                                     "(color_val.txt, ..., complex_val_spatial.txt)."),
    categories: str = typer.Option("color,shape,texture,spatial,non_spatial,complex", "--categories",
                                   help="Comma-separated categories to score."),
    vqa_model: str = typer.Option("Salesforce/blip-vqa-base", "--vqa-model", help="BLIP VQA (or any image-text "
                                  "model) for the attribute categories."),
    detector: str = typer.Option("facebook/detr-resnet-50", "--detector", help="transformers object detector for "
                                 "spatial."),
    detector_threshold: float = typer.Option(0.5, "--detector-threshold", help="Minimum detection confidence."),
    clip_model: str = typer.Option("openai/clip-vit-base-patch32", "--clip-model", help="CLIP model for "
                                   "non_spatial (the original used ViT-B/32)."),
    parser: str = typer.Option("auto", "--parser", help="Noun phrases: spacy (as the original), rule, or auto."),
    distance_threshold: float = typer.Option(150.0, "--distance-threshold", help="'near' distance in pixels "
                                             "(the original's 150 assumes 512 px images)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts per category."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per scoring batch."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 for the scoring models."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the models' own Python code."),
) -> None:
    """Score T2I-CompBench images per category; writes the original's vqa_result.json files, a JSON summary, a PNG.

    Differences from the original evaluators (models, versions) are listed in the README and in the JSON.
    """
    from .eval.compbench import CompBenchScorers, run_compbench
    from .eval.detect import HFObjectDetector
    from .eval.metrics import ClipScorer
    from .eval.report import bar_chart, print_table
    from .eval.vqa import load_vqa_scorer

    try:
        torch_dtype = _torch_dtype(dtype)
        kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        scorers = CompBenchScorers(
            factories={
                "vqa": lambda: load_vqa_scorer(vqa_model, device=device, trust_remote_code=trust_remote_code, **kw),
                "detector": lambda: HFObjectDetector.from_pretrained(detector, device=device, threshold=
                                                                     detector_threshold, **kw),
                "clip": lambda: ClipScorer(clip_model, device=device, dtype=torch_dtype, batch_size=batch_size),
            },
            names={"vqa": vqa_model, "detector": detector, "clip": clip_model},
        )
        summary = run_compbench(root, prompts_dir, scorers, [c.strip() for c in categories.split(",") if c.strip()],
                                limit=limit, parser=parser, batch_size=batch_size,
                                distance_threshold=distance_threshold)
    except (ValueError, TypeError, OSError, ImportError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    cats = summary["categories"]
    print_table([{"category": c, "score": v["score"], "metric": v["metric"], "images": v["num_images"]}
                 for c, v in cats.items()], title=f"T2I-CompBench: {root}")
    chart = bar_chart({c: {root.name or "model": v["score"]} for c, v in cats.items()}, root / "compbench.png",
                      title="T2I-CompBench", ylim=(0.0, 1.0))
    typer.echo(f"results: {root / 'compbench_results.json'}\nchart: {chart}")


@eval_app.command("dpg")
def eval_dpg(
    images_dir: Path = typer.Argument(..., help="Images: an `llm4gen eval generate` folder (manifest with item_id), "
                                      "{item_id}.png 2x2 grids, or {item_id}_{k}.png files."),
    questions: Path = typer.Option(..., "--questions", help="DPG-Bench's dpg_bench.csv or a questions JSONL file."),
    vqa_model: str = typer.Option("Salesforce/blip-vqa-base", "--vqa-model", help="VQA model (BLIP VQA or any "
                                  "image-text-to-text model)."),
    mode: str = typer.Option("prob", "--mode", help="prob: yes if P(yes) > 0.5; exact: the generated answer must "
                             "start with 'yes'."),
    soft: bool = typer.Option(False, "--soft", help="Use P(yes) itself instead of yes/no."),
    pic_num: int = typer.Option(4, "--pic-num", min=1, max=4, help="Tiles per grid image."),
    resolution: int | None = typer.Option(None, "--resolution", help="Tile size in pixels (default: half the grid)."),
    export_prompts: Path | None = typer.Option(None, "--export-prompts", help="Only write the prompt file "
                                               "({item_id, prompt} JSONL) for `llm4gen eval generate`, then stop."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the results (default: IMAGES_DIR)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 for the VQA model."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """DPG-Bench-style scoring: yes/no questions per dense prompt, parent questions gate their children."""
    from .eval.dpg import run_dpg, write_prompt_file
    from .eval.report import bar_chart, print_table
    from .eval.vqa import load_vqa_scorer

    try:
        if export_prompts is not None:
            typer.echo(f"prompt file: {write_prompt_file(questions, export_prompts)}")
            return
        torch_dtype = _torch_dtype(dtype)
        kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        vqa = load_vqa_scorer(vqa_model, device=device, mode=mode, trust_remote_code=trust_remote_code, **kw)
        summary = run_dpg(images_dir, questions, vqa, out_dir=out, pic_num=pic_num, resolution=resolution,
                          limit=limit, soft=soft, scorer_name=vqa_model)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    target = out or images_dir
    rows = [{"category": k, "score": v} for k, v in summary["level1"].items()]
    rows.append({"category": "DPG score", "score": summary["dpg_score"]})
    print_table(rows, title=f"DPG ({summary['num_prompts']} prompts, {vqa_model})", float_format="{:.2f}")
    chart = bar_chart({r["category"]: {images_dir.name or "model": r["score"]} for r in rows}, target / "dpg.png",
                      title="DPG-Bench style", ylim=(0.0, 100.0))
    typer.echo(f"results: {target / 'dpg_results.json'}\nchart: {chart}")


# ---------------------------------------------------------------------- data dense-prompts / data recaption
@data_app.command("dense-prompts")
def data_dense_prompts(
    out: Path = typer.Argument(..., help="JSONL to append to (resumable): id, prompt, num_words, tags, topic."),
    model: str = typer.Option(..., "--model", "-m", help="Instruction LLM (transformers causal LM), e.g. "
                              "Qwen/Qwen2.5-7B-Instruct."),
    num: int = typer.Option(7000, "--num", "-n", min=1, help="Prompts the file should hold."),
    min_words: int = typer.Option(40, "--min-words", min=1, help="Shortest prompt kept."),
    max_words: int = typer.Option(140, "--max-words", min=1, help="Longest prompt kept."),
    examples: Path | None = typer.Option(None, "--examples", help="Few-shot examples: a text file (paragraphs) or "
                                         "JSONL (prompt field). Default: the built-in ones."),
    shots: int = typer.Option(3, "--shots", min=0, help="Examples shown per request."),
    near_dup: float = typer.Option(0.7, "--near-dup", help="Word 3-gram Jaccard at which a prompt is a near "
                                   "duplicate."),
    temperature: float = typer.Option(0.9, "--temperature", help="Sampling temperature."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Tokens per answer."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Requests per generate call."),
    seed: int = typer.Option(0, "--seed", help="Seed of topics, examples and sampling."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Stop at N prompts (smoke runs)."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16 or bfloat16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """Write DensePrompts: dense 40-140-word prompts from a local LLM, deduplicated, length-filtered and tagged."""
    from .data.dense_prompts import DensePromptsConfig, build_dense_prompts, read_examples
    from .eval.report import print_table

    try:
        extra = {"examples": read_examples(examples)} if examples is not None else {}
        cfg = DensePromptsConfig(model=model, num_prompts=min(num, limit or num), min_words=min_words,
                                 max_words=max_words, num_shots=shots, near_duplicate_threshold=near_dup,
                                 temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 seed=seed, device=device, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
        stats = build_dense_prompts(cfg, out)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    print_table([{"count": k, "n": v} for k, v in stats["counts"].items()], title=f"DensePrompts: {out}")
    if not stats["complete"]:
        console.print(f"[yellow]Stopped at {stats['num_prompts']} of {cfg.num_prompts} prompts (too many drops); "
                      "run again to continue.[/yellow]")
    typer.echo(f"prompts: {out}\nstats: {out}.stats.json")


@data_app.command("recaption")
def data_recaption(
    source: str = typer.Argument(..., help="Image folder, WebDataset shards ('shards/{000..009}.tar') or a Hugging "
                                 "Face dataset (id or folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (resumable)."),
    captioner: str = typer.Option(..., "--captioner", help="transformers image-to-text model, e.g. "
                                  "llava-hf/llava-1.5-7b-hf or Qwen/Qwen2-VL-7B-Instruct."),
    instruction: str | None = typer.Option(None, "--instruction", help="What to ask the captioner (default: the "
                                           "paper's 'describe this image in more than 50 words...')."),
    prompt_style: str = typer.Option("auto", "--prompt-style", help="auto, chat, prefix or none."),
    output_format: str = typer.Option("imagefolder", "--format", help="imagefolder (+ metadata.jsonl) or "
                                      "webdataset."),
    input_type: str = typer.Option("auto", "--input-type", help="auto, imagefolder, webdataset or hf."),
    min_resolution: int = typer.Option(0, "--min-resolution", min=0, help="Minimum shorter side in pixels."),
    max_aspect_ratio: float | None = typer.Option(None, "--max-aspect-ratio", help="Maximum long/short side."),
    min_aesthetic: float | None = typer.Option(None, "--min-aesthetic", help="Minimum LAION aesthetic score."),
    aesthetic_head: str | None = typer.Option(None, "--aesthetic-head", help="LAION aesthetic predictor head file."),
    aesthetic_clip: str = typer.Option("openai/clip-vit-large-patch14", "--aesthetic-clip",
                                       help="CLIP model of the aesthetic head."),
    min_clip_similarity: float | None = typer.Option(None, "--min-clip-similarity", help="Minimum cosine of the "
                                                     "image and its original caption (LAION used 0.28, ViT-B/32)."),
    clip_model: str = typer.Option("openai/clip-vit-base-patch32", "--clip-model", help="CLIP model for that filter."),
    min_caption_words: int = typer.Option(1, "--min-caption-words", min=0, help="Drop shorter new captions."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Caption length limit in tokens."),
    caption_column: str = typer.Option("text", "--caption-column", help="Column/field of the original captions."),
    image_column: str = typer.Option("image", "--image-column", help="Image column of a HF dataset."),
    split: str = typer.Option("train", "--split", help="Split of a HF dataset."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per captioning batch."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Samples per output tar shard."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N input images."),
    device: str = typer.Option("cpu", "--device", help="torch device (under accelerate: each process's own)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the models' own Python code."),
) -> None:
    """Filter and recaption images with a VLM; writes what `llm4gen train` reads, and a per-filter report.

    Several GPUs: `accelerate launch --num_processes N -m llm4gen data recaption ... --device cuda`.
    """
    from .data.recaption import DEFAULT_INSTRUCTION, RecaptionConfig, recaption
    from .eval.report import print_table

    if device == "cuda":
        from accelerate import PartialState

        device = str(PartialState().device)
    try:
        cfg = RecaptionConfig(input=source, output_dir=str(out), captioner=captioner,
                              instruction=instruction or DEFAULT_INSTRUCTION, prompt_style=prompt_style,
                              output_format=output_format, input_type=input_type, min_resolution=min_resolution,
                              max_aspect_ratio=max_aspect_ratio, min_aesthetic=min_aesthetic,
                              aesthetic_head=aesthetic_head, aesthetic_clip=aesthetic_clip,
                              min_clip_similarity=min_clip_similarity, clip_model=clip_model,
                              min_caption_words=min_caption_words, max_new_tokens=max_new_tokens,
                              caption_column=caption_column, image_column=image_column, split=split,
                              batch_size=batch_size, shard_size=shard_size, limit=limit, device=device, dtype=dtype,
                              trust_remote_code=trust_remote_code)
        report = recaption(cfg)
    except (ValueError, TypeError, OSError, ImportError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    print_table(report["filters"], title=f"recaption: {report['kept']} of {report['total']} kept")
    typer.echo(f"output: {out}\nreport: {out / 'recaption_report.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
