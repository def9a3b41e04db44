"""The ceiling the VAE puts on the bundled model: score held-out ShapesWorld images after a VAE round trip.

A diffusion model in the VAE's latent space can at best draw what the decoder gives back, so the ShapesWorld scores
of ``decode(encode(image))`` for true renders bound every arm's scores from above. Run on the bundled model::

    python research/shapesworld/vae_ceiling.py --model models/default --images 96

Prints a table (original renders vs round trip, per metric) and writes JSON (default
runs/research/vae_ceiling.json) and a grid PNG (originals on top, round trips below) next to it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="a folder with vae/ (a pipeline or a base model)")
    ap.add_argument("--images", type=int, default=96, help="held-out test scenes (items 0..N-1, seed 0)")
    ap.add_argument("--out", default="runs/research/vae_ceiling.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from diffusers import AutoencoderKL
    from rich.console import Console
    from rich.table import Table

    from llm4gen.images import images_from_pixels, make_grid, pixels_from_uint8, uint8_tensor
    from llm4gen.shapesworld.scorer import METRICS, score_image, summarize
    from llm4gen.shapesworld.small_vae import vae_round_trip
    from llm4gen.shapesworld.world import ShapesWorld
    from llm4gen.utils import write_report

    vae_dir = Path(args.model) / "vae"
    if not (vae_dir / "config.json").is_file():
        raise SystemExit(f"{vae_dir} has no config.json: --model must be a folder with a vae/ sub-folder.")
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    items = ShapesWorld("test", seed=0).take(args.images, progress=True)
    _, back = vae_round_trip(vae, pixels_from_uint8(uint8_tensor([it.image for it in items])))
    round_trips = images_from_pixels(back)
    summary = {
        "original": summarize([score_image(it.image, it.scene) for it in items]),
        "round_trip": summarize([score_image(im, it.scene) for it, im in zip(items, round_trips)]),
    }

    table = Table(title=f"ShapesWorld scores of {args.images} held-out renders before and after {vae_dir}")
    for col in ("metric", "original", "VAE round trip"):
        table.add_column(col, justify="right")
    for m in METRICS:
        a, b = summary["original"][m]["mean"], summary["round_trip"][m]["mean"]
        if a is not None:
            table.add_row(m, f"{100 * a:.1f}", f"{100 * b:.1f}" if b is not None else "-")
    Console().print(table)
    out = Path(args.out)
    write_report(out, {"model": str(args.model), "images": args.images, "summary": summary})
    n = min(16, len(items))
    make_grid([it.image for it in items[:n]] + round_trips[:n], cols=n, cell=64).save(out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
