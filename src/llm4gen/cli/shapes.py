"""`llm4gen shapes ...` and `llm4gen bench quality`: ShapesWorld, the instrument, and its headline benchmark."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..sampling import DEFAULT_STEPS
from .common import DEVICE_HELP, app, console, model_or_bundled, pick_device, sampling_settings

shapes_app = typer.Typer(
    help="ShapesWorld: synthetic scenes with dense captions and an exact scorer.", no_args_is_help=True
)
app.add_typer(shapes_app, name="shapes")


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
    from ..shapesworld.world import ShapesWorldConfig, write_dataset

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
        help="The scorer's shape prototypes: auto (the published tables'), clean, or smooth (reads a diffusion "
             "model's soft stars right; see research/shapesworld/scorer-audit.md)."),
) -> None:
    """Score generated images against their scene graphs; print a table by category and prompt length."""
    import json

    from ..shapesworld.scorer import LENGTH_BUCKETS, METRICS, score_folder

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
    from ..shapesworld.small_clip import SmallClipConfig, train_small_clip

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
    from ..shapesworld.small_vae import SmallVaeConfig, train_small_vae

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
    from ..shapesworld.recipe import build_shapes_base

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
    from ..shapesworld.recipe import package_default_model

    try:
        path = package_default_model(llm4gen, base, out)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    typer.echo(f"bundled model written to {path} ({size / 2**20:.1f} MiB)")


@bench_app.command("quality")
def bench_quality(
    out: Path = typer.Option(Path("runs/bench-quality"), "--out",
                             help="Folder for images, results.json (and a summary without per-prompt scores), charts."),
    model: str = typer.Option(None, "--model", help="The llm4gen arm (default: the bundled model)."),
    base_unet: str = typer.Option(
        None, "--base-unet",
        help="The base arm's UNet (trained on CLIP only), run with --model's VAE/CLIP (default: the bundled one)."),
    base_model: str = typer.Option(
        None, "--base-model", help="A whole plain Stable Diffusion folder as the base arm, instead of --base-unet."),
    prompts: int = typer.Option(500, "--prompts", min=1, help="Held-out dense prompts to render per arm."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: 64 prompts, 15 steps (a few minutes here)."),
    steps: int | None = typer.Option(
        None, "--steps", min=1,
        help=f"Sampling steps (default: --model's llm4gen_sampling.json, 25 for the bundled model; else "
             f"{DEFAULT_STEPS})."),
    guidance: float | None = typer.Option(
        None, "--guidance",
        help="Classifier-free guidance scale (default: --model's llm4gen_sampling.json, 5 for the bundled model; "
             "else 7.5)."),
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
        help="The scorer's shape prototypes: auto (what the published tables use), clean, or smooth (reads blurred "
             "generated stars right; see research/shapesworld/scorer-audit.md)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """ShapesWorld headline benchmark: base (CLIP only) vs llm4gen (CLIP + LLM via the CAM) on held-out dense
    prompts, scored exactly, split by prompt length, with 95% intervals; writes results.json, quality.png,
    samples.png."""
    from ..shapesworld.arms import base_schedule_differences, base_unet_dir, load_arm
    from ..shapesworld.bench import QualityConfig, run_quality_benchmark

    model = model_or_bundled(model)
    guidance, steps, _ = sampling_settings(model, guidance, steps)
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
        device = pick_device(device)
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
