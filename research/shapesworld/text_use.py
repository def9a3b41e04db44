"""How much does a trained UNet use its text? A diagnostic for ShapesWorld base-arm checkpoints and LLM4GEN pipelines.

For training scenes with dense captions (train split, items 100 onwards), noise the true latents to timestep t,
let the UNet predict, turn the prediction into an estimate of the clean latents x0 (epsilon or v parametrisation)
and measure its mean squared error with three conditionings: the true caption, another scene's caption (the batch
rolled by one) and the empty prompt. A UNet that reads its text has a clearly lower error with the true caption at
high noise, where the image alone says little; one that ignores it scores the same with all three.

    python research/shapesworld/text_use.py --base runs/shapes/base \
        --checkpoint runs/shapes/base-arm/checkpoints/checkpoint-00002250

This is how we found that epsilon prediction left the text pathway of the bundled recipe almost unused
(research/shapesworld/v-prediction.md).

``--pipeline DIR`` diagnoses a trained LLM4GEN pipeline folder instead (e.g. ``models/default``). Its conditioning
has two sources, so it adds two more rows: the true CLIP tokens with another scene's LLM tokens ("llm shuffled") and
the other way round ("clip shuffled"). How much worse "llm shuffled" is than "true" is how much the UNet relies on
the LLM for what the image shows; if the folder has a ``base_unet/`` (the CLIP-only arm) it is measured too::

    python research/shapesworld/text_use.py --pipeline models/default

Prints a table and writes JSON (default runs/research/text_use.json, and its summary
``text_use.summary.json`` where the report holds per-item records).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="base model folder (vae, text_encoder, tokenizer, scheduler, unet)")
    ap.add_argument("--checkpoint", help="a base-arm training checkpoint folder (or a UNet folder)")
    ap.add_argument("--pipeline", help="an LLM4GEN pipeline folder instead of --base/--checkpoint")
    ap.add_argument("--weights", choices=["trained", "ema"], default="trained", help="checkpoint weights to use")
    ap.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                    help="what the checkpoint predicts (default: read from its trainer_state.json)")
    ap.add_argument("--scenes", type=int, default=32)
    ap.add_argument("--timesteps", default="300,500,700,850,950")
    ap.add_argument("--out", default="runs/research/text_use.json")
    args = ap.parse_args()
    one_pipeline = args.pipeline and not (args.base or args.checkpoint)
    if not one_pipeline and not (args.base and args.checkpoint and not args.pipeline):
        ap.error("give either --pipeline DIR, or both --base and --checkpoint")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from diffusers import AutoencoderKL, DDPMScheduler
    from rich.console import Console
    from rich.table import Table
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    from llm4gen.denoiser import ClipText, Denoiser
    from llm4gen.images import pixels_from_uint8, uint8_tensor
    from llm4gen.shapesworld.world import ShapesWorld, ShapesWorldConfig
    from llm4gen.unet import load_unet
    from llm4gen.utils import write_report

    world = ShapesWorld("train", seed=0, num_items=None, config=ShapesWorldConfig(size=64, caption_style="dense"))
    items = [world[100 + i] for i in range(args.scenes)]
    captions = [it.caption for it in items]
    blank = [""] * len(captions)
    arms = {}  # arm name -> (trainer's Denoiser, prediction type, {condition name: its text inputs})
    if args.pipeline:
        from llm4gen import LLM4GenPipeline

        src = Path(args.pipeline)
        pipe = LLM4GenPipeline.from_pretrained(src)
        vae, sched = pipe.vae.eval(), DDPMScheduler.from_config(pipe.scheduler.config)
        pred_type = args.prediction_type or sched.config.prediction_type
        text = ClipText([pipe.tokenizer], [pipe.text_encoder.eval()])
        with torch.no_grad():
            clip, clip_empty = text(captions)[0], text(blank)[0]
            llm, llm_empty = pipe.llm_encoder.encode(captions), pipe.llm_encoder.encode(blank)
        feats, mask = llm.embeds.float(), llm.attention_mask
        # the CAM, then the UNet, with the LLM padding mask if the pipeline uses it: exactly as in training
        model = Denoiser(pipe.unet, pipe.adapter, bool(pipe.config.get("use_llm_attention_mask", False))).eval()
        arms["llm4gen"] = (model, pred_type, {
            "true": dict(clip=clip, llm=feats, llm_mask=mask),
            "shuffled": dict(clip=clip.roll(1, 0), llm=feats.roll(1, 0), llm_mask=mask.roll(1, 0)),
            "llm shuffled": dict(clip=clip, llm=feats.roll(1, 0), llm_mask=mask.roll(1, 0)),
            "clip shuffled": dict(clip=clip.roll(1, 0), llm=feats, llm_mask=mask),
            "empty": dict(clip=clip_empty, llm=llm_empty.embeds.float(), llm_mask=llm_empty.attention_mask),
        })
        if (src / "base_unet" / "config.json").is_file():
            base_unet = load_unet(src / "base_unet")
            arms["base (CLIP only)"] = (Denoiser(base_unet, None, False).eval(), pred_type, {
                "true": dict(clip=clip), "shuffled": dict(clip=clip.roll(1, 0)), "empty": dict(clip=clip_empty)})
        ckpt = src
    else:
        base, ckpt = Path(args.base), Path(args.checkpoint)
        vae = AutoencoderKL.from_pretrained(base / "vae").eval()
        tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
        te = CLIPTextModel.from_pretrained(base / "text_encoder").eval()
        sched = DDPMScheduler.from_pretrained(base / "scheduler")
        pred_type = args.prediction_type
        if (ckpt / "config.json").is_file():  # a UNet folder
            unet = load_unet(ckpt)
        else:
            unet = load_unet(base / "unet")
            weights = ckpt / f"{args.weights}.safetensors"
            if not weights.is_file():
                raise SystemExit(f"{weights} does not exist: --checkpoint must be a training checkpoint or a UNet "
                                 "folder.")
            state = {k.split("unet.", 1)[1]: v for k, v in load_file(weights).items() if k.startswith("unet.")}
            unet.load_state_dict(state, strict=True)
            if pred_type is None and (ckpt / "trainer_state.json").is_file():
                saved = json.loads((ckpt / "trainer_state.json").read_text())
                pred_type = saved.get("prediction_type") or saved["config"].get("prediction_type")
        pred_type = pred_type or sched.config.prediction_type
        text = ClipText([tok], [te])  # the captions are encoded exactly as the trainer encodes them
        with torch.no_grad():
            true, empty = text(captions)[0], text(blank)[0]
        arms["base"] = (Denoiser(unet, None, False).eval(), pred_type, {
            "true": dict(clip=true), "shuffled": dict(clip=true.roll(1, 0)), "empty": dict(clip=empty)})

    pixels = pixels_from_uint8(uint8_tensor([it.image for it in items]))
    rows = []
    with torch.no_grad():
        z0 = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        g = torch.Generator().manual_seed(0)
        for t in [int(x) for x in args.timesteps.split(",")]:
            noise = torch.randn(z0.shape, generator=g)
            steps = torch.full((len(items),), t)
            zt = sched.add_noise(z0, noise, steps)
            a = sched.alphas_cumprod[t]
            for arm, (model, ptype, conditions) in arms.items():
                row = {"arm": arm, "timestep": t}
                for name, inputs in conditions.items():
                    out = model(zt, steps, **inputs)
                    x0 = a.sqrt() * zt - (1 - a).sqrt() * out if ptype == "v_prediction" else \
                        (zt - (1 - a).sqrt() * out) / a.sqrt()
                    row[name] = float(((x0 - z0) ** 2).mean())
                row["gain_vs_empty"] = 1 - row["true"] / row["empty"]
                if "llm shuffled" in row:  # what the LLM tokens add on top of the true CLIP tokens
                    row["llm_gain"] = 1 - row["true"] / row["llm shuffled"]
                rows.append(row)

    names = list(dict.fromkeys(name for _, _, conds in arms.values() for name in conds))
    table = Table(title=f"x0 error by conditioning: {ckpt} ({'pipeline' if args.pipeline else args.weights}, "
                        f"{pred_type})")
    for col in ("arm", "timestep", *names, "true vs empty", "true vs llm shuffled"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["arm"], str(r["timestep"]), *(f"{r[n]:.4f}" if n in r else "-" for n in names),
                      f"{100 * r['gain_vs_empty']:+.1f}%", f"{100 * r['llm_gain']:+.1f}%" if "llm_gain" in r else "-")
    Console(width=max(Console().width, 140)).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(ckpt), "weights": "pipeline" if args.pipeline else args.weights,
              "prediction_type": pred_type,
              "scenes": args.scenes, "rows": rows}
    write_report(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
