"""`llm4gen train`: train a CAM (and the UNet) from a config."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import app, console


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Training config (YAML or JSON); see docs/training.md."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder to continue from."),
    output_dir: str | None = typer.Option(None, "--output-dir", help="Override the config's output_dir."),
    max_train_steps: int | None = typer.Option(None, "--max-train-steps", help="Override max_train_steps."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override any config key (repeatable; dots for nested keys, values are YAML), "
                                        "e.g. --set prediction_type=epsilon --set data.num_items=2000."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Start afresh in an output_dir that holds another run's checkpoints: they and "
                                        "its logs/metrics.jsonl are deleted (without it such a folder is refused)."),
) -> None:
    """Train a CAM (and the UNet) on frozen CLIP, LLM and VAE; writes checkpoints and a pipeline folder.

    Several processes or GPUs: `accelerate launch --num_processes N -m llm4gen train CONFIG`.
    """
    from ..training.config import load_config, parse_set
    from ..training.trainer import TrainingDivergedError, train

    try:
        cfg = load_config(config, parse_set(set_), output_dir=output_dir, max_train_steps=max_train_steps)
        result = train(cfg, resume=resume, overwrite=overwrite)
    except (ValueError, FileNotFoundError, OSError, NotImplementedError, TrainingDivergedError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    if not result.is_main_process:
        return
    last = result.losses[-1] if result.losses else float("nan")
    typer.echo(f"trained {result.final_step} steps, final loss {last:.4f}, {result.samples_per_second:.1f} samples/s")
    typer.echo(f"pipeline: {result.output_dir}")
