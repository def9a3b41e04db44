"""The `llm4gen` command. Thin: parse arguments, call the library, print where results went."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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

DEMO_PROMPTS = [
    "A small red circle sits in the upper left corner of a plain grey canvas, while a large blue square fills the "
    "lower right; between them, slightly below the centre, a green triangle points upwards.",
    "On a white background there are three shapes arranged from left to right: a yellow star, a purple ring and an "
    "orange square. The star is the largest of them and the ring is drawn with a thick outline.",
]


def bundled_model_dir() -> Path | None:
    """The bundled default model, if this checkout or installation has one (``models/default``)."""
    for candidate in (
        Path(os.environ["LLM4GEN_DEFAULT_MODEL"]) if os.environ.get("LLM4GEN_DEFAULT_MODEL") else None,
        Path(__file__).resolve().parents[2] / "models" / "default",
    ):
        if candidate is not None and (candidate / "model_index.json").is_file():
            return candidate
    return None


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
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale (<= 1 disables it)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same image."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt."),
    num_images: int = typer.Option(1, "--num-images", "-n", min=1, help="Images to generate."),
    height: int | None = typer.Option(None, "--height", help="Image height in pixels (default: the model's)."),
    width: int | None = typer.Option(None, "--width", help="Image width in pixels (default: the model's)."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda, cuda:1, mps."),
    xl: bool | None = typer.Option(None, "--xl/--sd", help="Force SDXL or SD1.x (default: read from the model)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the LLM's own Python code."),
) -> None:
    """Generate images for PROMPT with an LLM4GEN pipeline and write them as PNGs."""
    import torch

    if model is None:
        bundled = bundled_model_dir()
        if bundled is None:
            console.print(
                "[red]No --model given and no bundled default model is installed yet.[/red] Pass --model with an "
                "LLM4GEN pipeline folder or hub id, or run `llm4gen demo` to try a tiny random model."
            )
            raise typer.Exit(2)
        model = str(bundled)
    try:
        pipe = _load_pipeline(model, xl, device, trust_remote_code)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        result = pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            num_images_per_prompt=num_images,
            generator=generator,
            height=height,
            width=width,
        )
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    paths = _save_images(result.images, out, f"seed{seed}")
    for p in paths:
        typer.echo(str(p))


@app.command()
def demo(
    out: Path = typer.Option(Path("outputs/demo"), "--out", "-o", help="Folder for the PNGs and the grid."),
    steps: int = typer.Option(20, "--steps", min=1, help="Denoising steps."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Run the main job offline: generate images for a few dense prompts and write them with a grid.

    Uses the bundled default model when there is one; otherwise it builds a tiny random LLM4GEN pipeline (random
    UNet/VAE/CLIP, the real all-MiniLM-L6-v2 from its pip package as the LLM) and says so: its images are noise.
    """
    import torch

    from .images import make_grid

    bundled = bundled_model_dir()
    if bundled is not None:
        console.print(f"Using the bundled model at {bundled}")
        pipe = _load_pipeline(str(bundled), None, "cpu", False)
    else:
        from .tiny import MINILM_REF, build_tiny_pipeline

        console.print(
            "[yellow]No bundled trained model yet: building a tiny RANDOMLY INITIALISED pipeline "
            "(MiniLM as the LLM). Its images are noise; they show that the whole path runs, not what LLM4GEN can "
            "do.[/yellow]"
        )
        pipe = build_tiny_pipeline(llm=MINILM_REF, llm_max_length=256, llm_padding="longest", seed=seed)
    images = []
    for i, prompt in enumerate(DEMO_PROMPTS):
        generator = torch.Generator().manual_seed(seed + i)
        images.append(pipe(prompt, num_inference_steps=steps, generator=generator).images[0])
    paths = _save_images(images, out, "demo")
    grid = make_grid(images, captions=DEMO_PROMPTS, cell=256)
    grid_path = out / "grid.png"
    grid.save(grid_path)
    table = Table(title="llm4gen demo")
    table.add_column("image")
    table.add_column("prompt")
    for p, prompt in zip(paths, DEMO_PROMPTS):
        table.add_row(str(p), prompt[:80] + "...")
    table.add_row(str(grid_path), "(grid)")
    Console().print(table)


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Training config (YAML or JSON); see the README's training section."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder to continue from."),
    output_dir: str | None = typer.Option(None, "--output-dir", help="Override the config's output_dir."),
    max_train_steps: int | None = typer.Option(None, "--max-train-steps", help="Override max_train_steps."),
) -> None:
    """Train a CAM (and the UNet) on frozen CLIP, LLM and VAE; writes checkpoints and a pipeline folder.

    Several processes or GPUs: `accelerate launch --num_processes N -m llm4gen train CONFIG`.
    """
    from .training.config import load_config
    from .training.trainer import TrainingDivergedError, train

    try:
        cfg = load_config(config, output_dir=output_dir, max_train_steps=max_train_steps)
        result = train(cfg, resume=resume)
    except (ValueError, FileNotFoundError, OSError, NotImplementedError, TrainingDivergedError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    if not result.is_main_process:
        return
    last = result.losses[-1] if result.losses else float("nan")
    typer.echo(f"trained {result.final_step} steps, final loss {last:.4f}, {result.samples_per_second:.1f} samples/s")
    typer.echo(f"pipeline: {result.output_dir}")


# ---------------------------------------------------------------------- shapes
shapes_app = typer.Typer(
    help="ShapesWorld: synthetic scenes with dense captions and an exact scorer.", no_args_is_help=True
)
app.add_typer(shapes_app, name="shapes")


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
) -> None:
    """Score generated images against their scene graphs; print a table by category and prompt length."""
    import json

    from .eval.shapes import LENGTH_BUCKETS, METRICS, score_folder

    try:
        report = score_folder(str(images_dir))
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
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and batches."),
) -> None:
    """Train the small ShapesWorld VAE (64 px -> 16x16x4 latents); report PSNR and the scorer on reconstructions."""
    from .training.small_vae import SmallVaeConfig, train_small_vae

    cfg = SmallVaeConfig(steps=steps, batch_size=batch_size, train_items=train_items, eval_items=eval_items,
                         image_size=size, seed=seed)
    result = train_small_vae(out, cfg)
    score = result["scorer_on_reconstructions"]
    typer.echo(f"held-out PSNR {result['psnr_db_heldout']:.2f} dB; scorer on reconstructions: all-correct "
               f"{100 * score['all_correct']:.1f}%, binding {100 * score['binding']:.1f}%; "
               f"scaling_factor {result['scaling_factor']:.4f}; {result['wall_time_s']} s; saved to {out / 'vae'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
