"""Aggregation as a hyperparameter: choose how rollout-style maps are aggregated by a
faithfulness metric (issue 16, after Mylonas et al.'s survey of attention aggregation).

The grid: head fusion × start layer × discard ratio × how the rolled-out matrix is read (the
class token's row, the mean over all rows, the max over all rows). Attentions (and, for
gradient rollout, their gradients) are captured once per image; only the rollout maths and
the metric repeat per setting. Choose on one set of images, report on held-out ones.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_choice
from ..explain.capture import capture
from ..explain.rollout import grad_rollout, rollout
from ..runtime import SEED
from .perturbation import CURVE_BASELINES, auc, deletion_curve, insertion_curve
from .summary import bootstrap_ci

#: How the rolled-out (B, T, T) matrix becomes a map: the class token's row, or the mean /
#: max over every token's row (each row: how much each patch flows into that token).
ROW_READINGS = ("cls", "mean", "max")
#: The course's rollout defaults (notebook 04): mean fusion, all layers, no discard, CLS row.
DEFAULT_SETTING = {"head_fusion": "mean", "start_layer": 0, "discard_ratio": 0.0, "reading": "cls"}
FAITHFULNESS = ("deletion", "insertion")


def read_rows(R: Tensor, grid: tuple[int, int], num_prefix_tokens: int, reading: str) -> Tensor:
    """(B, T, T) rolled-out matrix → (B, h, w) map of the patch columns, read as ``reading``."""
    check_choice(reading, "reading", ROW_READINGS)
    cols = R[:, :, num_prefix_tokens:]                                 # (B, T, N)
    row = cols[:, 0] if reading == "cls" else cols.mean(dim=1) if reading == "mean" else cols.amax(dim=1)
    return row.reshape(R.shape[0], *grid)


def settings_grid(num_layers: int, fusions: Sequence[str] = ("mean", "max", "min"),
                  start_layers: Sequence[int] | None = None,
                  discard_ratios: Sequence[float] = (0.0, 0.5, 0.9),
                  readings: Sequence[str] = ROW_READINGS) -> list[dict[str, Any]]:
    """Every combination, as dicts; start layers default to 0, L/4, L/2 (distinct)."""
    starts = sorted({0, num_layers // 4, num_layers // 2}) if start_layers is None else list(start_layers)
    return [dict(head_fusion=f, start_layer=s, discard_ratio=d, reading=r)
            for f, s, d, r in itertools.product(fusions, starts, discard_ratios, readings)]


def search_maps(attentions: Sequence[Tensor], grid: tuple[int, int], num_prefix_tokens: int,
                score: Callable[[Tensor], Tensor], settings: Sequence[dict[str, Any]],
                gradients: Sequence[Tensor] | None = None) -> Tensor:
    """Score every setting's maps: the pure core of :func:`search_aggregation`.

    Args:
        attentions: L (B, heads, T, T) tensors (and ``gradients`` for gradient rollout).
        score: maps (B, h, w) → (B,) per-image scores, higher = better.
        settings: dicts with head_fusion, start_layer, discard_ratio, reading.

    Returns:
        (len(settings), B) scores.
    """
    out = []
    for s in settings:
        opts = dict(head_fusion=s["head_fusion"], discard_ratio=s["discard_ratio"], start_layer=s["start_layer"])
        R = rollout(attentions, **opts) if gradients is None else grad_rollout(attentions, gradients, **opts)
        out.append(score(read_rows(R, grid, num_prefix_tokens, s["reading"])).double().cpu())
    return torch.stack(out)


@dataclass
class AggregationSearch:
    """What :func:`search_aggregation` found.

    Attributes:
        settings: the grid searched. selection: (S, B) scores on the selection images.
        best, default: the best setting (by mean selection score) and the default one.
        held_out: {"best", "default", "best_minus_default"}: (mean, lo, hi) of the metric on
            the held-out images (the raw metric: AUC, lower is better for deletion).
        metric: ``"deletion"`` or ``"insertion"``. seconds: capture / rollout maths / metric.
        forwards: capture forwards (once per image) and metric forwards.
    """

    settings: list[dict[str, Any]]
    selection: Tensor
    best: dict[str, Any]
    default: dict[str, Any]
    held_out: dict[str, tuple[float, float, float]]
    metric: str
    seconds: dict[str, float] = field(default_factory=dict)
    forwards: dict[str, int] = field(default_factory=dict)


def search_aggregation(model: nn.Module, images: Tensor, held_out: Tensor, *, method: str = "rollout",
                       metric: str = "deletion", steps: int = 10, baseline: str = "token_drop",
                       settings: Sequence[dict[str, Any]] | None = None, batch_size: int = 64,
                       n_boot: int = 1000, seed: int = SEED) -> AggregationSearch:
    """Search rollout's aggregation for the most faithful maps, then check on held-out images.

    Args:
        model: a supported ViT. images: (B, C, H, W) selection images; held_out: (B', C, H, W).
        method: ``"rollout"`` or ``"grad_rollout"`` (gradients for the predicted class).
        metric: ``"deletion"`` (AUC, lower better) or ``"insertion"`` (higher better), of the
            predicted class, with ``steps`` and ``baseline`` (token drop: cheap, no pixels invented).
        settings: default :func:`settings_grid` of the model's depth (+ :data:`DEFAULT_SETTING`).

    Returns:
        :class:`AggregationSearch`.
    """
    check_choice(method, "method", ("rollout", "grad_rollout"))
    check_choice(metric, "metric", FAITHFULNESS)
    check_choice(baseline, "baseline", CURVE_BASELINES)
    curve = deletion_curve if metric == "deletion" else insertion_curve
    sign = -1.0 if metric == "deletion" else 1.0
    seconds = {"capture": 0.0, "rollout": 0.0, "metric": 0.0}
    forwards = {"capture": 0, "metric": 0}

    def run(x: Tensor, chosen: Sequence[dict[str, Any]]) -> Tensor:
        t = time.perf_counter()
        cap = capture(model, x, with_grad=method == "grad_rollout")
        seconds["capture"] += time.perf_counter() - t
        forwards["capture"] += x.shape[0]

        def score(maps: Tensor) -> Tensor:
            t0 = time.perf_counter()
            v = auc(curve(model, x, maps, cap.targets, steps=steps, baseline=baseline,
                          batch_size=batch_size, progress=False))
            seconds["metric"] += time.perf_counter() - t0
            forwards["metric"] += x.shape[0] * steps
            return sign * v

        t = time.perf_counter()
        out = search_maps(cap.attentions, cap.grid, cap.num_prefix_tokens, score, chosen, cap.gradients)
        seconds["rollout"] += time.perf_counter() - t
        return out

    info_layers = len(capture(model, images[:1]).attentions) if settings is None else 0
    chosen = list(settings) if settings is not None else settings_grid(info_layers)
    if DEFAULT_SETTING not in chosen:
        chosen.append(dict(DEFAULT_SETTING))
    sel = run(images, chosen)
    best = chosen[int(sel.mean(dim=1).argmax())]
    ho = sign * run(held_out, [best, DEFAULT_SETTING])                  # raw metric values back
    res = {"best": bootstrap_ci(ho[0], n_boot, seed=seed), "default": bootstrap_ci(ho[1], n_boot, seed=seed),
           "best_minus_default": bootstrap_ci(ho[0] - ho[1], n_boot, seed=seed)}
    seconds["rollout"] -= seconds["metric"]                            # the maths alone
    return AggregationSearch(chosen, sign * sel, dict(best), dict(DEFAULT_SETTING), res, metric, seconds, forwards)
