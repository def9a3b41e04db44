"""Do the text features the UNet reads say which colour goes with which shape? A linear probe on ShapesWorld captions.

The attention diagnostic (attention_separation.py) shows the UNet does not put each object's words on that object.
This asks the question one step earlier: is the pairing in the conditioning at all? For every mention in a caption
whose colour word and noun name exactly one object of the scene (``llm4gen.shapesworld.mentions.mention_words``:
"a small red circle" -> the red circle), it takes the feature at a word's token and asks a linear probe

- **noun -> colour**: from the noun's token ("circle"), which of the scene's colours is this object's?
- **colour -> shape**: from the colour word's token ("red"), which of the scene's shapes is this object's?
- **noun -> place**: from the noun's token, which of the cells of the 3x3 grid that the scene's objects occupy (and
  a dense caption names: "sits in the upper left corner") is this object's? Whether the features say *where* each
  object goes; the colour swaps below leave places as they are, so only the first fit tells anything here.

The probe (multinomial logistic regression on standardised features, L2-regularised) picks only among the values the
scene has, so a feature that knows *which* colours the caption names but not which goes with this noun scores
chance (1 / the number of distinct values in the scene; only scenes with two or more count). The ``caption mean``
row is that control: the mean LLM feature over the caption, the same for every mention in it. Two fits:

- **train captions**: fitted on mentions from ``train``-split captions (the distribution the UNet was trained on)
  and scored on the headline benchmark's held-out prompts (``test`` split; every one asks for at least one
  (colour, shape) pair never seen in training), split by whether the mention's pair was held out. A readout learnt
  on training captions, as the UNet's is, meets the held-out pairs as the UNet does.
- **train captions + colour swaps**: a readout can also go by priors: a probe that has only seen circles in red,
  blue or green reads "circle" and picks one of those. So every caption whose scene has two colours gets a twin with
  its first two colours traded everywhere (:func:`colour_swap`: "a red circle and a blue square" -> "a blue circle
  and a red square": the same sentences, only the pairing changes), and the probe is fitted on the train captions
  and their twins and scored on the held-out prompts and theirs. Each twin asks the same word, among the same
  values, for the other answer, so priors alone get at most half of a two-colour pair right; only a feature that
  reads its own object's colour in context gets both.

Feature spaces: ``CLIP`` (the frozen CLIP text encoder's last hidden state; words beyond its 77-token window have no
token), ``LLM`` (the LLM's hidden states), ``CAM input`` (the first CAM layer's ``llm_proj`` of them: the linear
projection to the UNet's width that the layer's attention and FFN then add to) and ``CAM`` (the CAM's output tokens,
what the llm4gen UNet attends to next to the CLIP tokens).

    python research/shapesworld/binding_probe.py --model models/default

Prints a table and writes JSON (default runs/research/binding_probe.json, and its summary
``binding_probe.summary.json`` where the report holds per-item records) and a bar chart next to it (.png).
It also prints, per CAM layer, the RMS size of its three terms (input, attention and FFN branch; ``branch_rms``)
over the held-out prompts (the gated CAM these were read with at first left the library in 0.2).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROLES = {"noun -> colour": "colour", "colour -> shape": "shape", "noun -> place": "place"}
FITS = ("train captions", "train captions + colour swaps")


def role_values() -> dict[str, list]:
    """The classes of each role's label: the colours, the shapes, and the 3x3 grid's cells (``place``: the cell a
    dense caption names for the object, :func:`~llm4gen.shapesworld.world.position_region`)."""
    from llm4gen.shapesworld.world import COLOURS, POSITION_CELLS, SHAPES

    return {"colour": list(COLOURS), "shape": list(SHAPES), "place": list(POSITION_CELLS)}


def label_of(obj: Any, key: str, values: dict[str, list]) -> int:
    """``obj``'s class index for a role's ``key`` (``colour``, ``shape`` or ``place``)."""
    from llm4gen.shapesworld.world import position_region

    value = position_region(obj.x, obj.y) if key == "place" else getattr(obj, key)
    return values[key].index(value)


def colour_swap(text: str, scene: Any) -> tuple[str, Any] | None:
    """The caption and scene with the scene's first two object colours traded everywhere ("an orange circle and a
    red square" -> "a red circle and an orange square", and the objects recoloured to match), articles mended; None
    when the scene has one colour. Sentences, order and positions stay: only which colour goes with which shape
    changes."""
    from dataclasses import replace

    from llm4gen.shapesworld.world import COLOURS, Scene

    first_two = list(dict.fromkeys(o.colour for o in scene.objects))[:2]
    if len(first_two) < 2:
        return None
    trade = {first_two[0]: first_two[1], first_two[1]: first_two[0]}

    def word(m: re.Match) -> str:
        new = trade[m.group(0).lower()]
        return new.capitalize() if m.group(0)[0].isupper() else new

    out = re.sub(r"\b(" + "|".join(first_two) + r")\b", word, text, flags=re.IGNORECASE)
    out = re.sub(r"\b([Aa])n? (" + "|".join(COLOURS) + r")\b",
                 lambda m: f"{m.group(1)}{'n' if m.group(2)[0] in 'aeiou' else ''} {m.group(2)}", out)
    objects = [replace(o, colour=trade.get(o.colour, o.colour)) for o in scene.objects]
    return out, Scene(objects=objects, background=scene.background, relations=list(scene.relations))


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-4, max_iter: int = 300
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A multinomial logistic regression fitted to rows ``x`` ``[N, D]`` and labels ``y`` ``[N]`` (full batch,
    L-BFGS, features standardised with the training rows' statistics, ``l2`` on the weights); returns the function
    from features to logits ``[M, num_classes]``."""
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"fit_probe needs rows [N, D] and labels [N] with N > 0, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda feats: ((feats.double() - mean) / std) @ w + b


def pick_among(logits: torch.Tensor, allowed: Sequence[Sequence[int]]) -> list[int]:
    """Per row, the class with the highest logit among that row's ``allowed`` classes (the scene's values)."""
    if len(allowed) != logits.shape[0] or any(not a for a in allowed):
        raise ValueError("pick_among needs one non-empty list of allowed classes per row.")
    return [max(a, key=lambda c: float(row[c])) for row, a in zip(logits, allowed)]


def probe_rows(captions: list[str], scenes: list[Any], spaces: dict[str, tuple[Any, str, Callable]],
               batch_size: int = 64, progress: Any = None) -> dict[tuple[str, str], dict[str, list]]:
    """Feature rows per (token space, role). ``spaces[name] = (fast tokenizer, prefix, encode)`` where ``encode``
    maps a batch of captions to features ``[B, T, D]``; words at or beyond ``T`` have no row. Each row keeps the
    feature, the label (index into :func:`role_values`), the scene's distinct values (labels), whether the pair was
    held out and the caption's index (``prompt``); roles without two distinct values in the scene are skipped. The
    ``caption mean`` space (mean over the caption of the ``LLM`` space's features, or of the first space's without
    one) is added for both roles."""
    from llm4gen.shapesworld.mentions import mention_words
    from llm4gen.shapesworld.world import HELD_OUT_PAIRS

    values = role_values()
    rows: dict[tuple[str, str], dict[str, list]] = {}

    def add(space: str, role: str, feat: torch.Tensor, obj: Any, scene: Any, prompt: int) -> None:
        key = ROLES[role]
        present = sorted({label_of(o, key, values) for o in scene.objects})
        if len(present) < 2:
            return
        r = rows.setdefault((space, role), {"x": [], "y": [], "allowed": [], "held_out": [], "prompt": []})
        r["prompt"].append(prompt)
        r["x"].append(feat.float())
        r["y"].append(label_of(obj, key, values))
        r["allowed"].append(present)
        r["held_out"].append((obj.colour, obj.shape) in HELD_OUT_PAIRS)

    mean_space = "LLM" if "LLM" in spaces else next(iter(spaces))
    for start in range(0, len(captions), batch_size):
        batch, batch_scenes = captions[start:start + batch_size], scenes[start:start + batch_size]
        for name, (tokenizer, prefix, encode) in spaces.items():
            feats = encode(batch)
            limit = feats.shape[1]
            offsets = tokenizer([prefix + c for c in batch], return_offsets_mapping=True, truncation=True,
                                max_length=limit)["offset_mapping"]
            for i, (text, scene) in enumerate(zip(batch, batch_scenes)):
                found = mention_words(text, scene, offsets[i], len(prefix), limit)
                for noun, colour, k in found:
                    obj = scene.objects[k]
                    if noun is not None:
                        add(name, "noun -> colour", feats[i, noun], obj, scene, start + i)
                        add(name, "noun -> place", feats[i, noun], obj, scene, start + i)
                    if colour is not None:
                        add(name, "colour -> shape", feats[i, colour], obj, scene, start + i)
                if name == mean_space:  # over the caption's own tokens: no prefix, special tokens or padding
                    words = [t for t, (a, b) in enumerate(offsets[i]) if b > a and a >= len(prefix)]
                    pooled = feats[i, words].mean(0)
                    for _, _, k in found:
                        for role in ROLES:
                            add("caption mean", role, pooled, scene.objects[k], scene, start + i)
        if progress is not None:
            progress(len(batch))
    return rows


def _accuracy(picked: list[int], rows: dict[str, list]) -> dict[str, Any]:
    """Accuracy (%) of picks against ``rows``' labels, overall and on seen / held-out pairs, with chance (mean of
    1 / the scene's number of values) and row counts."""
    right = np.array([p == y for p, y in zip(picked, rows["y"])], dtype=float)
    held = np.array(rows["held_out"], dtype=bool)
    chance = np.array([1.0 / len(a) for a in rows["allowed"]])

    def pct(v: np.ndarray, mask: np.ndarray) -> float | None:
        return float(100 * v[mask].mean()) if mask.any() else None

    every = np.ones_like(held)
    return {"accuracy": pct(right, every), "accuracy_seen_pairs": pct(right, ~held),
            "accuracy_held_out_pairs": pct(right, held), "chance": pct(chance, every),
            "test_rows": len(rows["y"]), "test_rows_held_out": int(held.sum())}


def _subset(rows: dict[str, list], keep: Sequence[bool]) -> dict[str, list]:
    return {k: [v for v, on in zip(vals, keep) if on] for k, vals in rows.items()}


def score_probe(train: dict[str, list], test: dict[str, list], num_classes: int, l2: float = 1e-4
                ) -> dict[str, Any]:
    """Fit on ``train`` rows, pick among each test row's scene values: :func:`_accuracy` on ``test`` plus the
    probe's accuracy on its own training rows and their count."""
    probe = fit_probe(torch.stack(train["x"]), torch.tensor(train["y"]), num_classes, l2)
    on_train = pick_among(probe(torch.stack(train["x"])), train["allowed"])
    return {**_accuracy(pick_among(probe(torch.stack(test["x"])), test["allowed"]), test),
            "train_accuracy": _accuracy(on_train, train)["accuracy"], "train_rows": len(train["y"])}


def plot_probe(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spaces = list(dict.fromkeys(r["tokens"] for r in rows))
    bars = ((FITS[0], "accuracy_seen_pairs", "fitted on train captions: seen pairs"),
            (FITS[0], "accuracy_held_out_pairs", "fitted on train captions: held-out pairs"),
            (FITS[1], "accuracy", "fitted on train captions + swaps: held-out prompts + swaps"))
    width = 0.8 / len(bars)
    fig, axes = plt.subplots(1, len(ROLES), figsize=(6 * len(ROLES), 4.2), sharey=True)
    for ax, role in zip(np.atleast_1d(axes), ROLES):
        mine = {(r["fit"], r["tokens"]): r for r in rows if r["role"] == role}
        x = np.arange(len(spaces))
        for k, (fit, key, label) in enumerate(bars):
            vals = [np.nan if (fit, s) not in mine or mine[fit, s][key] is None else mine[fit, s][key]
                    for s in spaces]
            ax.bar(x + (k - (len(bars) - 1) / 2) * width, vals, width, label=label, color=f"C{k}")
        chance = [mine[FITS[0], s]["chance"] if (FITS[0], s) in mine else np.nan for s in spaces]
        ax.scatter(x, chance, marker="_", s=1200, color="black", label="chance", zorder=3)
        ax.set_xticks(x, spaces)
        ax.set_title(role)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("probe picks the object's value (%)")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="an LLM4GEN pipeline folder (ShapesWorld)")
    ap.add_argument("--train-prompts", type=int, default=2000, help="train-split captions to fit the probe on")
    ap.add_argument("--prompts", type=int, default=500, help="held-out benchmark prompts to score it on")
    ap.add_argument("--l2", type=float, default=1e-4, help="the probe's weight penalty (features standardised)")
    ap.add_argument("--out", default="runs/research/binding_probe.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from llm4gen.denoiser import ClipText
    from llm4gen.shapesworld.arms import load_with_tokenizers
    from llm4gen.shapesworld.bench import QualityConfig, benchmark_prompts
    from llm4gen.shapesworld.world import ShapesWorld, ShapesWorldConfig
    from llm4gen.utils import write_report

    src = Path(args.model)
    if args.train_prompts < 1 or args.prompts < 1 or args.l2 < 0:
        raise SystemExit("--train-prompts and --prompts must be at least 1, --l2 at least 0.")
    try:
        pipe, clip_tok, llm_tok = load_with_tokenizers(src)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--model: {err}") from None
    cfg = QualityConfig(num_prompts=args.prompts)
    test = benchmark_prompts(cfg)
    world = ShapesWorld("train", seed=cfg.prompt_seed,
                        config=ShapesWorldConfig(size=cfg.size, caption_style=cfg.caption_style))
    train = [world.caption_of(i) for i in range(args.train_prompts)]
    # each caption's colour-swapped twin, at the same index (None: one colour); swapped scenes may hold any pair
    swaps = {"train": [colour_swap(c, s) for c, s in train], "test": [colour_swap(c, s) for c, s in test]}

    text = ClipText([pipe.tokenizer], [pipe.text_encoder.eval()])
    clip_first = getattr(pipe.adapter.config, "concat_order", "clip_first") == "clip_first"
    pipe.adapter.eval()

    @functools.lru_cache(maxsize=1)  # the spaces of one batch share one pass of each encoder and of the CAM
    def encoded(batch: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        clip = text(list(batch))[0]
        enc = pipe.llm_encoder.encode(list(batch))
        llm = enc.embeds.float()
        fused, _ = pipe.adapter(clip, llm, enc.attention_mask)
        cam = fused[:, clip.shape[1]:] if clip_first else fused[:, :llm.shape[1]]  # one CAM token per LLM token
        return clip, llm, cam, pipe.adapter.layers[0].llm_proj(llm)

    def space(k: int) -> Callable[[list[str]], torch.Tensor]:
        return lambda batch: encoded(tuple(batch))[k]

    prefix = pipe.llm_encoder.config.prefix
    spaces = {"CLIP": (clip_tok, "", space(0)), "LLM": (llm_tok, prefix, space(1)), "CAM": (llm_tok, prefix, space(2)),
              "CAM input": (llm_tok, prefix, space(3))}
    sets = {"train": train, "test": test,
            "train swapped": [t for t in swaps["train"] if t is not None],
            "test swapped": [t for t in swaps["test"] if t is not None]}
    with torch.no_grad(), Progress(transient=True) as bar:
        task = bar.add_task("encoding captions", total=sum(map(len, sets.values())))
        step = lambda n: bar.advance(task, n)  # noqa: E731
        rows = {name: probe_rows([c for c, _ in items], [s for _, s in items], spaces, progress=step)
                for name, items in sets.items()}

    def with_twins(split: str, key: tuple[str, str]) -> dict[str, list] | None:
        """A split's captions that have a colour-swapped twin, and the twins: the rows of both."""
        has_twin = [t is not None for t in swaps[split]]
        originals = rows[split].get(key)
        twins = rows[f"{split} swapped"].get(key)
        if originals is None or twins is None:
            return None
        kept = _subset(originals, [has_twin[p] for p in originals["prompt"]])
        return {k: kept[k] + twins[k] for k in kept}

    results, values = [], role_values()
    for key in rows["train"]:
        space, role = key
        n = len(values[ROLES[role]])
        if key in rows["test"]:
            results.append({"tokens": space, "role": role, "fit": FITS[0], "scored_on": "held-out prompts",
                            **score_probe(rows["train"][key], rows["test"][key], n, args.l2)})
        fit, scored = with_twins("train", key), with_twins("test", key)
        if fit is not None and scored is not None:
            results.append({"tokens": space, "role": role, "fit": FITS[1],
                            "scored_on": "held-out prompts + colour swaps", **score_probe(fit, scored, n, args.l2)})
    order = {s: k for k, s in enumerate(["CLIP", "LLM", "CAM input", "CAM", "caption mean"])}
    results.sort(key=lambda r: (FITS.index(r["fit"]), list(ROLES).index(r["role"]), order[r["tokens"]]))

    table = Table(title=f"Linear probe: does a word's feature say its own object's value? {src} ({len(train)} train "
                        f"captions, {len(test)} held-out prompts, and their colour-swapped twins; accuracy %, picking "
                        "among the scene's values)")
    for col in ("fitted on", "word -> predicts", "tokens", "all", "seen pairs", "held-out pairs", "chance",
                "on train", "train rows", "test rows (held-out)"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["fit"], r["role"], r["tokens"],
                      *("-" if r[k] is None else f"{r[k]:.1f}"
                        for k in ("accuracy", "accuracy_seen_pairs", "accuracy_held_out_pairs", "chance",
                                  "train_accuracy")),
                      str(r["train_rows"]), f"{r['test_rows']} ({r['test_rows_held_out']})")
    Console(width=max(Console().width, 150)).print(table)
    with torch.no_grad():  # how large each term of the CAM is
        batch = [c for c, _ in test]
        enc = pipe.llm_encoder.encode(batch)
        sizes = pipe.adapter.branch_rms(text(batch)[0], enc.embeds.float(), enc.attention_mask)
    for k, size in enumerate(sizes):
        print(f"CAM layer {k}, RMS over the held-out prompts' real LLM tokens: input (llm_proj) {size['input']:.3f}, "
              f"attention branch {size['attention']:.3f}, FFN branch {size['ffn']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": str(src), "train_prompts": len(train), "test_prompts": len(test), "l2": args.l2,
              "swapped": {k: len(sets[f"{k} swapped"]) for k in ("train", "test")},
              "cam_branch_rms": sizes, "rows": results}
    write_report(out, report)
    plot_probe(results, out.with_suffix(".png"), f"Linear binding probe on {src} (held-out prompts)")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
