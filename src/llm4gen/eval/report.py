"""Results as a rich table in the terminal, a JSON file and a PNG bar chart (drawn with PIL: no plotting library)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "bar_chart", "print_table", "to_jsonable", "write_json"]

PALETTE = [  # colour-blind friendly (Okabe-Ito), then greys
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0), (240, 228, 66),
    (0, 0, 0), (120, 120, 120), (180, 180, 180),
]


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples, Paths and non-finite floats as plain JSON values (NaN/inf -> null)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> Path:
    """Write ``data`` (see :func:`to_jsonable`) as JSON, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return "-" if not math.isfinite(float(value)) else float_format.format(float(value))
    return str(value)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    title: str | None = None,
    columns: Sequence[str] | None = None,
    float_format: str = "{:.4f}",
    console: Any = None,
) -> Any:
    """Print ``rows`` (dicts) as a rich table; ``columns`` defaults to the keys in first-seen order. Numbers are
    right-aligned, floats formatted with ``float_format``, missing values shown as ``-``. Returns the table."""
    from rich.console import Console
    from rich.table import Table

    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title)
    for col in columns:
        numeric = any(isinstance(row.get(col), (int, float, np.number)) for row in rows)
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_cell(row.get(col), float_format) for col in columns))
    (console or Console()).print(table)
    return table


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + 1e-9 * span:
        if t >= lo - 1e-9 * span:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def bar_chart(
    groups: Mapping[str, Mapping[str, float | None]],
    path: str | os.PathLike,
    title: str = "",
    errors: Mapping[str, Mapping[str, float | None]] | None = None,
    *,
    ylabel: str = "",
    shared_axis: bool = True,
    ylim: tuple[float, float] | None = None,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
    value_labels: bool = True,
) -> Path:
    """Draw a grouped bar chart to a PNG and return its path.

    ``groups`` maps a group (a benchmark category, a metric, ...) to ``{series: value}`` (a model, a run, ...); each
    series keeps one colour across groups and appears in the legend. ``errors`` (same shape) draws +-error whiskers
    (e.g. standard deviations or confidence half-widths). ``shared_axis=False`` gives each group its own panel and
    y scale, for metrics of different units (CLIP score next to FID). Missing or None values leave a gap.
    """
    if not groups:
        raise ValueError("bar_chart needs at least one group.")
    series = list(dict.fromkeys(s for values in groups.values() for s in values))
    if not series:
        raise ValueError("bar_chart: the groups hold no values.")
    palette = {s: (colors or {}).get(s, PALETTE[i % len(PALETTE)]) for i, s in enumerate(series)}
    errors = errors or {}

    def value(g: str, s: str) -> float | None:
        v = groups[g].get(s)
        return None if v is None or not math.isfinite(float(v)) else float(v)

    def err(g: str, s: str) -> float:
        e = errors.get(g, {}).get(s)
        return 0.0 if e is None or not math.isfinite(float(e)) else abs(float(e))

    font, small, big = _font(14), _font(12), _font(18)
    panels = [list(groups)] if shared_axis else [[g] for g in groups]
    bar_w, gap = 28, 24
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = {g: g if len(g) <= 24 else g[:22] + "..." for g in groups}
    slot = {g: max(len(series) * bar_w, _text_size(measure, labels[g], font)[0] + 6) for g in groups}
    panel_widths = [sum(slot[g] for g in p) + gap * (len(p) + 1) for p in panels]
    margin_l, margin_r, margin_t, plot_h, margin_b, panel_gap = 78, 20, 56, 300, 70, 70
    legend_h = 24 * math.ceil(len(series) / 4) + 10
    width = margin_l + sum(panel_widths) + panel_gap * (len(panels) - 1) + margin_r
    height = margin_t + plot_h + margin_b + legend_h
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if title:
        tw, _ = _text_size(draw, title, big)
        draw.text(((width - tw) // 2, 14), title, fill=(0, 0, 0), font=big)

    x0 = margin_l
    for panel, pw in zip(panels, panel_widths):
        vals = [(value(g, s), err(g, s)) for g in panel for s in series if value(g, s) is not None]
        lo = min([0.0] + [v - e for v, e in vals])
        hi = max([0.0] + [v + e for v, e in vals])
        if ylim is not None:
            lo, hi = ylim
        if hi <= lo:
            hi = lo + 1.0
        hi, lo = hi + 0.08 * (hi - lo), lo - (0.08 * (hi - lo) if lo < 0 else 0.0)  # room for value labels

        def y_of(v: float, lo: float = lo, hi: float = hi) -> float:
            return margin_t + plot_h * (1 - (v - lo) / (hi - lo))

        for t in _nice_ticks(lo, hi):
            y = y_of(t)
            draw.line([(x0, y), (x0 + pw, y)], fill=(230, 230, 230))
            label = _fmt(t)
            lw, lh = _text_size(draw, label, small)
            draw.text((x0 - 6 - lw, y - lh / 2 - 2), label, fill=(60, 60, 60), font=small)
        draw.line([(x0, margin_t), (x0, margin_t + plot_h)], fill=(0, 0, 0))
        y_zero = y_of(min(max(0.0, lo), hi))
        draw.line([(x0, y_zero), (x0 + pw, y_zero)], fill=(0, 0, 0))

        gx = x0 + gap
        for g in panel:
            bars_x = gx + (slot[g] - len(series) * bar_w) / 2
            for k, s in enumerate(series):
                v = value(g, s)
                if v is None:
                    continue
                bx = bars_x + k * bar_w
                y_top, y_base = y_of(v), y_of(min(max(0.0, lo), hi))
                draw.rectangle([bx + 2, min(y_top, y_base), bx + bar_w - 2, max(y_top, y_base)], fill=palette[s])
                e = err(g, s)
                cx = bx + bar_w / 2
                if e > 0:
                    ya, yb = y_of(v + e), y_of(v - e)
                    draw.line([(cx, ya), (cx, yb)], fill=(0, 0, 0), width=2)
                    draw.line([(cx - 5, ya), (cx + 5, ya)], fill=(0, 0, 0), width=2)
                    draw.line([(cx - 5, yb), (cx + 5, yb)], fill=(0, 0, 0), width=2)
                if value_labels:
                    label = _fmt(v)
                    lw, lh = _text_size(draw, label, small)
                    ly = y_of(v + e) - lh - 4 if v >= 0 else y_of(v - e) + 2
                    draw.text((cx - lw / 2, ly), label, fill=(0, 0, 0), font=small)
            lw, _ = _text_size(draw, labels[g], font)
            draw.text((gx + slot[g] / 2 - lw / 2, margin_t + plot_h + 8), labels[g], fill=(0, 0, 0), font=font)
            gx += slot[g] + gap
        x0 += pw + panel_gap

    if ylabel:
        label_img = Image.new("RGB", (plot_h, 20), (255, 255, 255))
        text = ylabel[:40]
        tw, _ = _text_size(measure, text, font)
        ImageDraw.Draw(label_img).text((max(0, (plot_h - tw) // 2), 2), text, fill=(0, 0, 0), font=font)
        image.paste(label_img.rotate(90, expand=True), (4, margin_t))
    ly = margin_t + plot_h + margin_b - 20
    for i, s in enumerate(series):
        lx = margin_l + (i % 4) * max(160, (width - margin_l) // 4)
        yy = ly + 24 * (i // 4)
        draw.rectangle([lx, yy + 2, lx + 14, yy + 16], fill=palette[s])
        draw.text((lx + 20, yy), s if len(s) <= 22 else s[:20] + "...", fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
