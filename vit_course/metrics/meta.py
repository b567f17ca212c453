"""Metrics that check each other: do the metrics agree on the methods' order, is each order
stable when the images or the baseline change, and can each metric tell a method from the
random control? (Issue 16; the plot is :func:`vit_course.viz_metrics.plot_meta_evaluation`.)

Every number here compares *orders of methods*: a metric orders the methods by their mean
score, best first (:data:`METRIC_DIRECTIONS` says which way is better), and two orders are
compared with Kendall's τ-b (1 = the same order, -1 = reversed, 0 = unrelated).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checks import check_numbers, check_positive_int
from ..runtime import SEED
from .summary import METRIC_DIRECTIONS

Scores = Mapping[str, Mapping[str, Any]]          # scores[method][metric] = per-image values


def kendall_tau(a: Any, b: Any) -> float:
    """Kendall's τ-b between two score vectors of the same n items (n >= 2).

    ``(concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b))`` over the n0 = n(n-1)/2
    pairs; NaN when one vector is constant (no order to compare).
    """
    x = check_numbers(a, "a").double().cpu().numpy().ravel()
    y = check_numbers(b, "b").double().cpu().numpy().ravel()
    if x.size != y.size or x.size < 2:
        raise ValueError(f"kendall_tau needs two vectors of the same length >= 2, got {x.size} and {y.size}.")
    i, j = np.triu_indices(x.size, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
    return float((sx * sy).sum() / denom) if denom > 0 else float("nan")


def _oriented(scores: Scores, metric: str, methods: list[str]) -> np.ndarray:
    """(methods, n) per-image values of one metric, negated where lower is better (higher = better)."""
    sign = -1.0 if METRIC_DIRECTIONS.get(metric) == "lower" else 1.0
    rows = [check_numbers(scores[m][metric], f"scores[{m!r}][{metric!r}]").double().cpu().numpy().ravel()
            for m in methods]
    if len({r.size for r in rows}) != 1:
        raise ValueError(f"metric {metric!r} has different numbers of values per method "
                         f"({[r.size for r in rows]}); score every method on the same images.")
    return sign * np.stack(rows)


@dataclass
class MetaEvaluation:
    """What :func:`meta_evaluate` found. Methods and metrics in the order given.

    Attributes:
        methods, metrics: names.
        agreement: (M, M) Kendall τ between the metrics' orders of the methods.
        bootstrap_stability: metric → mean τ between the order on all images and the order on
            each bootstrap resample of the images (1 = the sample does not matter).
        baseline_stability: other baseline → metric → τ between this order and the order
            under that baseline (metrics in both results only).
        separation: method → metric → (mean − control mean) / half-width of the bootstrap
            interval of the paired per-image difference, signed so that > 0 is better than
            the control; |value| > 1 means the interval excludes 0.
        control: the control's name.
    """

    methods: list[str]
    metrics: list[str]
    agreement: np.ndarray
    bootstrap_stability: dict[str, float]
    baseline_stability: dict[str, dict[str, float]] = field(default_factory=dict)
    separation: dict[str, dict[str, float]] = field(default_factory=dict)
    control: str = "random"


def meta_evaluate(scores: Scores | Any, others: Mapping[str, Scores | Any] | None = None, *,
                  control: str = "random", n_boot: int = 1000, ci: float = 0.95,
                  seed: int = SEED) -> MetaEvaluation:
    """Check the metrics of a suite result against each other.

    Args:
        scores: ``scores[method][metric]`` per-image values, or a
            :class:`~vit_course.metrics.SuiteResult` (its ``scores``). At least 2 methods.
        others: baseline name → the same methods scored under another baseline (scores or
            SuiteResult), e.g. ``{"zero": run_suite(..., baseline="zero")}``.
        control: the method every other one is measured against (``separation``); ``None``
            or a name not in ``scores`` skips it. Default: ``"random"``.
        n_boot: bootstrap resamples of the images. ci: interval coverage. seed: NumPy seed.

    Returns:
        :class:`MetaEvaluation`.
    """
    scores = getattr(scores, "scores", scores)
    if not isinstance(scores, Mapping) or len(scores) < 2:
        raise ValueError("meta_evaluate needs scores[method][metric] for at least 2 methods "
                         "(or a SuiteResult); there is no order of one method.")
    n_boot = check_positive_int(n_boot, "n_boot", "the number of bootstrap resamples, e.g. 1000.")
    methods = list(scores)
    metrics = [k for k in scores[methods[0]] if all(k in scores[m] for m in methods)]
    values = {k: _oriented(scores, k, methods) for k in metrics}
    means = {k: v.mean(axis=1) for k, v in values.items()}
    agreement = np.array([[kendall_tau(means[a], means[b]) for b in metrics] for a in metrics])
    rng = np.random.default_rng(seed)
    stability = {}
    for k, v in values.items():
        idx = rng.integers(0, v.shape[1], size=(n_boot, v.shape[1]))
        taus = [kendall_tau(means[k], v[:, row].mean(axis=1)) for row in idx]
        stability[k] = float(np.nanmean(taus)) if not np.isnan(taus).all() else float("nan")
    out = MetaEvaluation(methods, metrics, agreement, stability, control=control)
    for name, other in (others or {}).items():
        other = getattr(other, "scores", other)
        shared = [k for k in metrics if all(k in other.get(m, {}) for m in methods)]
        out.baseline_stability[name] = {
            k: kendall_tau(means[k], _oriented(other, k, methods).mean(axis=1)) for k in shared}
    if control in methods:
        c = methods.index(control)
        for i, m in enumerate(methods):
            if i == c:
                continue
            out.separation[m] = {}
            for k, v in values.items():
                d = v[i] - v[c]                                  # paired, higher = better
                boot = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
                lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2])
                half = (hi - lo) / 2
                out.separation[m][k] = float(d.mean() / half) if half > 0 else \
                    (0.0 if d.mean() == 0 else float(np.sign(d.mean()) * np.inf))
    return out
