"""Do the words of different objects attend to different places? A cross-attention diagnostic for ShapesWorld models.

For held-out scenes with two or more objects (the headline benchmark's test prompts), the true image is encoded,
noised to timestep t and passed through the UNet (with the CAM first, exactly as in training) while every
cross-attention layer's probabilities are recorded (``llm4gen.attention.AttentionStore``: mean over heads,
layers at or below 16 x 16). The caption is parsed as the entity-guided loss parses it
(``llm4gen.training.trainer.entity_targets``), once with the LLM tokenizer and once with the CLIP tokenizer, and per
token space the script reports, over all layers and prompts:

- **separation**: the mean total-variation distance between the spatial attention maps of tokens of two mentions
  that name different colours ("red" / "circle" against "blue" / "square"). 0: both objects' words attend
  everywhere alike, so the maps cannot tell which colour belongs where; 1: they attend to disjoint places.
  Compare it with the cohesion gap: if tokens of different objects are no further apart than an attribute and its
  own entity, the maps carry no object identity.
- **cohesion gap**: the mean total-variation distance between each attribute's map and its entity's (0: "red"
  attends where "circle" does).

- **on object**: where a mention can be matched to its object in the scene (its colour word and its noun name
  exactly one object: "red" + "circle" / "round disc"), the share of each of its tokens' attention that falls on
  that object's bounding disc, against **chance**, the share a map spread evenly would put there; **on other
  objects** the same for the other objects' discs (with its own chance). Bound words sit well above chance on their
  own object and not on the others; a map drawn to every object alike is above chance on both.

The CLIP row of an LLM4GEN pipeline reads the first 77 fused tokens (the CLIP window), the LLM row the CAM's tokens;
the base arm (``base_unet/``, CLIP only) has a CLIP row. Pairs beyond a window are left out (a row without pairs
shows "-", null in the JSON).

    python research/shapesworld/attention_separation.py --model models/default

Prints a table and writes JSON (default runs/research/attention_separation.json, and its summary
``attention_separation.summary.json`` where the report holds per-item records).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _tv(maps: list[torch.Tensor], pairs: list[list[tuple[int, int]]]) -> list[float]:
    """Per layer and pair, the total-variation distance between the two tokens' spatial distributions."""
    from llm4gen.training.losses import token_tv

    flat = [(b, i, j) for b, plist in enumerate(pairs) for i, j in plist]
    return [float(x) for m in maps for x in token_tv(m.float(), flat)]


def _on_objects(maps: list[torch.Tensor], mentions: list[list[tuple[list[int], Any]]], scenes: list
                ) -> dict[str, list[float]]:
    """Per layer, mention ``(tokens, scene object)`` and token: the share of the token's spatial attention on its own
    object (``own``) and on the scene's other objects (``others``: the cell-wise largest of their covers, 0 with one
    object), each with the share an even map would put there (``own_chance``, ``others_chance``)."""
    from llm4gen.attention import cover_share, grid_side
    from llm4gen.shapesworld.world import object_cover

    out: dict[str, list[float]] = {"own": [], "own_chance": [], "others": [], "others_chance": []}
    for m in maps:
        side = grid_side(m, "attention_separation")
        rows, own, others = [], [], []
        for b, found in enumerate(mentions):
            covers = [torch.from_numpy(object_cover(o, side)) for o in scenes[b].objects]
            for tokens, obj in found:
                mine = next(c for o, c in zip(scenes[b].objects, covers) if o is obj)
                rest = [c for o, c in zip(scenes[b].objects, covers) if o is not obj]
                rest = torch.stack(rest).amax(0) if rest else torch.zeros_like(mine)
                for t in tokens:
                    rows.append((b, t))
                    own.append(mine)
                    others.append(rest)
        if rows:
            own_c, others_c = torch.stack(own), torch.stack(others)
            out["own"] += cover_share(m, rows, own_c).tolist()
            out["own_chance"] += own_c.mean(-1).tolist()
            out["others"] += cover_share(m, rows, others_c).tolist()
            out["others_chance"] += others_c.mean(-1).tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--prompts", type=int, default=200, help="held-out prompts to draw (one-object ones are skipped)")
    ap.add_argument("--timesteps", default="250,500,750")
    ap.add_argument("--out", default="runs/research/attention_separation.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from diffusers import DDPMScheduler
    from rich.console import Console
    from rich.table import Table

    from llm4gen.attention import AttentionStore, install_attention_store
    from llm4gen.denoiser import ClipText, Denoiser
    from llm4gen.images import pixels_from_uint8, uint8_tensor
    from llm4gen.shapesworld.arms import load_with_tokenizers
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts
    from llm4gen.shapesworld.mentions import scene_mentions
    from llm4gen.shapesworld.world import render_scene
    from llm4gen.training.trainer import TokenSpace, entity_targets
    from llm4gen.unet import load_unet
    from llm4gen.utils import write_report

    src = Path(args.model)
    try:
        pipe, clip_tok, llm_tok = load_with_tokenizers(src)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--model: {err}") from None
    items = [(text, scene) for text, scene in benchmark_prompts(QualityConfig(num_prompts=args.prompts))
             if len(scene.objects) >= 2]
    if not items:
        raise SystemExit(f"None of the first {args.prompts} held-out prompts has two objects; raise --prompts.")
    captions = [text for text, _ in items]
    n_clip = clip_tok.model_max_length
    prefix = pipe.llm_encoder.config.prefix

    text = ClipText([pipe.tokenizer], [pipe.text_encoder.eval()])
    with torch.no_grad():
        clip = text(captions)[0]
        enc = pipe.llm_encoder.encode(captions)
    feats, mask = enc.embeds.float(), enc.attention_mask
    n_llm = feats.shape[1]
    scenes = [scene for _, scene in items]

    def targets(space: TokenSpace) -> tuple[list, list, list]:
        """(attribute pairs, negative pairs, grounded mentions) per caption: the first two as the trainer's entity
        loss reads them, the mentions matched to their scene objects; positions in the fused sequence, inside the
        window."""
        pairs, negatives = entity_targets(captions, [space], negatives=True)
        offsets = space.tokenizer([space.prefix + c for c in captions], return_offsets_mapping=True, truncation=True,
                                  max_length=space.limit)["offset_mapping"]
        grounded = [[([t + space.shift for t in tokens], scene.objects[k])
                     for tokens, k in scene_mentions(c, scene, o, len(space.prefix), space.limit)]
                    for c, scene, o in zip(captions, scenes, offsets)]
        return pairs, negatives, grounded

    # where each window sits in the fused sequence (as in training)
    clip_first = getattr(pipe.adapter.config, "concat_order", "clip_first") == "clip_first"
    clip_shift, llm_shift = (0, n_clip) if clip_first else (n_llm, 0)
    fused = {"CLIP": targets(TokenSpace(clip_tok, "", clip_shift, n_clip)),
             "LLM": targets(TokenSpace(llm_tok, prefix, llm_shift, n_llm))}
    arms = {"llm4gen": (Denoiser(pipe.unet, pipe.adapter, bool(pipe.config.get("use_llm_attention_mask", False))),
                        dict(clip=clip, llm=feats, llm_mask=mask), fused)}
    if (src / "base_unet" / "config.json").is_file():
        base = load_unet(src / "base_unet")
        arms["base (CLIP only)"] = (Denoiser(base, None, False), dict(clip=clip),
                                    {"CLIP": targets(TokenSpace(clip_tok, "", 0, n_clip))})
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    size = pipe.unet.config.sample_size * factor  # the resolution the model was trained at
    pixels = pixels_from_uint8(uint8_tensor([render_scene(scene, size) for _, scene in items]))
    rows = []
    with torch.no_grad():
        z0 = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        for arm, (model, inputs, token_spaces) in arms.items():
            model.eval()
            store = AttentionStore(16)
            install_attention_store(model.unet, store)
            g = torch.Generator().manual_seed(0)
            for t in [int(x) for x in args.timesteps.split(",")]:
                noise = torch.randn(z0.shape, generator=g)
                steps = torch.full((len(items),), t)
                store.reset()
                store.active = True
                model(sched.add_noise(z0, noise, steps), steps, **inputs)
                store.active = False
                if not store.maps:
                    raise SystemExit(f"{arm}: no cross-attention layer at or below 16 x 16 recorded anything.")
                for space, (pairs, negatives, mentions) in token_spaces.items():
                    sep, coh = _tv(store.maps, negatives), _tv(store.maps, pairs)
                    share = _on_objects(store.maps, mentions, scenes)
                    mean = {k: float(np.mean(v)) if v else None for k, v in share.items()}
                    rows.append({"arm": arm, "tokens": space, "timestep": t,
                                 "separation": float(np.mean(sep)) if sep else None,
                                 "cohesion_gap": float(np.mean(coh)) if coh else None,
                                 "on_object": mean["own"], "chance": mean["own_chance"],
                                 "on_other_objects": mean["others"], "other_chance": mean["others_chance"],
                                 "negative_pairs": sum(map(len, negatives)),
                                 "attribute_pairs": sum(map(len, pairs))})

    table = Table(title=f"Cross-attention maps of different objects' words: {src} ({len(items)} held-out prompts "
                        "with 2+ objects)")
    for col in ("arm", "tokens", "timestep", "separation (higher: apart)", "cohesion gap (lower: bound)",
                "on object", "chance", "on other objects", "chance (others)", "negative pairs", "attribute pairs"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["arm"], r["tokens"], str(r["timestep"]),
                      *("-" if r[k] is None else f"{r[k]:.3f}"
                        for k in ("separation", "cohesion_gap", "on_object", "chance", "on_other_objects",
                                  "other_chance")),
                      str(r["negative_pairs"]), str(r["attribute_pairs"]))
    Console(width=max(Console().width, 170)).print(table)
    out = Path(args.out)
    report = {"model": str(src), "prompts": len(items), "timesteps": args.timesteps, "rows": rows}
    write_report(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
