"""`llm4gen cache ...`: precompute a training config's frozen features."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import app, console

cache_app = typer.Typer(help="The training feature cache: precompute frozen CLIP, LLM and VAE features.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("build")
def cache_build(
    config: Path = typer.Argument(..., help="Training config (YAML or JSON) with cache_dir set; see docs/training.md."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Items encoded at once per process "
                                          "(default: the config's train_batch_size)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override any config key, as for `llm4gen train` (e.g. --set "
                                        "cache_dir=runs/cache --set cache_dtype=float32)."),
) -> None:
    """Precompute the dataset's frozen features into the config's cache_dir, so training reads them.

    Resumable: run it again after an interruption and it computes only what is missing. Several processes or GPUs:
    `accelerate launch --num_processes N -m llm4gen cache build CONFIG` (each takes the items it will train on).
    """
    from ..eval.report import print_table
    from ..training.config import load_config, parse_set
    from ..training.trainer import build_cache

    try:
        cfg = load_config(config, parse_set(set_))
        result = build_cache(cfg, batch_size=batch_size)
    except (ValueError, FileNotFoundError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    if not result.is_main_process:
        return
    rows = [{"part": name, "entries": e, "MB": round(b / 1e6, 3), "bytes/item": round(b / max(result.items, 1))}
            for name, (e, b) in result.parts.items()]
    print_table(rows, title=f"feature cache: {result.cache_dir} ({cfg.cache_dtype})")
    typer.echo(f"items: {result.items}  bytes: {result.bytes}  bytes/item: {result.bytes_per_item:.0f}  "
               f"items/s: {result.items_per_second:.1f}")
