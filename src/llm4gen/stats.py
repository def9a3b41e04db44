"""Statistics for paired benchmark runs: percentile-bootstrap intervals of means and of paired differences.

Every benchmark that compares arms on the same prompts and noise reports per arm the mean with a 95% bootstrap
interval over items, and between arms the *paired* difference (same item in both) with its own interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["bootstrap_ci", "metric_summary", "paired_difference"]


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (resampling items with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _values(results: list[dict[str, Any]], metric: str) -> np.ndarray:
    return np.array([r[metric] for r in results if r.get(metric) is not None], dtype=np.float64)


def metric_summary(results: list[dict[str, Any]], metric: str, n_boot: int = 2000) -> dict[str, Any]:
    """``{"mean", "ci95", "n"}`` of ``metric`` over the rows scored on it (``mean`` and ``ci95`` None if none is)."""
    v = _values(results, metric)
    return {"mean": float(v.mean()) if v.size else None,
            "ci95": list(bootstrap_ci(v, n_boot)) if v.size else None, "n": int(v.size)}


def paired_difference(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str,
                      n_boot: int = 2000) -> dict[str, Any]:
    """Mean of ``b - a`` over prompts scored in both (same order = same prompt), with a paired bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"Paired results need the same prompts: {len(a)} vs {len(b)} rows.")
    d = np.array([y[metric] - x[metric] for x, y in zip(a, b)
                  if x.get(metric) is not None and y.get(metric) is not None], dtype=np.float64)
    if d.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    return {"mean": float(d.mean()), "ci95": list(bootstrap_ci(d, n_boot)), "n": int(d.size)}
