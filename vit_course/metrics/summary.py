"""Summaries: mean with a bootstrap confidence interval per method and metric, as table rows."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..checks import check_nonnegative_int, check_numbers, check_positive_int
from ..runtime import SEED

#: Which direction is better for the metrics this package produces ("higher" / "lower").
METRIC_DIRECTIONS: dict[str, str] = {
    "deletion_auc": "lower",
    "insertion_auc": "higher",
    "chefer_positive_auc": "lower",
    "chefer_negative_auc": "higher",
    "road_morf_auc": "lower",
    "road_lerf_auc": "higher",
    "grid_pointing": "higher",
    "pointing_game": "higher",
    "mass_on_mask": "higher",
    "relevance_mass_accuracy": "higher",
    "relevance_rank_accuracy": "higher",
    "randomization_spearman": "lower",
    "randomization_ssim": "lower",
    "class_sensitivity_spearman": "lower",
}


def bootstrap_ci(values: Any, n_boot: int = 1000, ci: float = 0.95, seed: int = SEED,
                 name: str = "values") -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean.

    NaN values are dropped (with a warning); inf values, and no value left at all, are refused
    (ValueError); one value gives (v, v, v).

    Args:
        values: per-image scores (tensor, array or list).
        n_boot: bootstrap resamples. Default: 1000.
        ci: coverage. Default: 0.95 (the 2.5th and 97.5th percentiles of the resampled means).
        seed: NumPy generator seed, so the interval is reproducible. Default: SEED.
        name: what the values are, for error messages.

    Returns:
        (mean, lo, hi).
    """
    check_positive_int(n_boot, "n_boot", "the number of bootstrap resamples, e.g. 1000.")
    if isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {ci!r}.")
    check_nonnegative_int(seed, "seed")
    v = check_numbers(values, name, allow_nan=True).cpu().numpy().ravel()     # inf refused
    if np.isnan(v).any():
        warnings.warn(f"bootstrap_ci: dropping {int(np.isnan(v).sum())} NaN value(s) of {v.size}.",
                      RuntimeWarning, stacklevel=2)
        v = v[~np.isnan(v)]
    if v.size == 0:
        raise ValueError(f"{name} has no value that is not NaN; score at least one image (an "
                         "empty object mask scores NaN) before summarising.")
    mean = float(v.mean())
    if v.size == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return (mean, float(lo), float(hi))


def summarise(results: Mapping[str, Mapping[str, Any]], n_boot: int = 1000, ci: float = 0.95,
              seed: int = SEED) -> list[dict[str, Any]]:
    """One row per (metric, method): mean, bootstrap interval, count, direction.

    Args:
        results: ``results[method][metric]`` = per-image values.
        n_boot, ci, seed: see :func:`bootstrap_ci`.

    Returns:
        Rows ``{"metric", "method", "mean", "lo", "hi", "n", "better"}`` ordered by metric
        (first appearance) and then method (as given). ``better`` is ``"higher"``,
        ``"lower"`` or ``""`` for metrics not in :data:`METRIC_DIRECTIONS`. Methods with a
        different number of values for one metric (different images) get a RuntimeWarning.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a dict method -> dict metric -> values, got {type(results).__name__}.")
    metrics: list[str] = []
    for method, per in results.items():
        if not isinstance(per, Mapping):
            raise TypeError(f"results[{method!r}] must be a dict metric -> values, got {type(per).__name__}.")
        metrics += [m for m in per if m not in metrics]
    rows = []
    for metric in metrics:
        first = None                                # (method, count) of the metric's first method
        for method, per in results.items():
            if metric not in per:
                continue
            name = f"results[{method!r}][{metric!r}]"
            v = check_numbers(per[metric], name, allow_nan=True).cpu().numpy().ravel()
            first = first or (method, v.size)
            if v.size != first[1]:          # allowed (the rows' n say so) but rarely meant
                warnings.warn(f"{name} has {v.size} values but results[{first[0]!r}][{metric!r}] has {first[1]}: "
                              "the means cover different images; score every method on the same images.",
                              RuntimeWarning, stacklevel=2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = bootstrap_ci(v, n_boot, ci, seed, name)
            rows.append({"metric": metric, "method": method, "mean": mean, "lo": lo, "hi": hi,
                         "n": int((~np.isnan(v)).sum()), "better": METRIC_DIRECTIONS.get(metric, "")})
    return rows


def format_table(rows: list[dict[str, Any]], digits: int = 3) -> str:
    """Plain-text table of :func:`summarise` rows (monospace; for print or a Markdown code block)."""
    head = ("metric", "method", "mean [CI]", "n", "better")
    body = [(r["metric"], r["method"],
             f"{r['mean']:.{digits}f} [{r['lo']:.{digits}f}, {r['hi']:.{digits}f}]", str(r["n"]),
             {"higher": "↑", "lower": "↓"}.get(r["better"], "")) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(wd) for c, wd in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * wd for wd in widths])] + [line(b) for b in body])
