"""Plots for :mod:`vit_course.metrics`: finished arrays in, a matplotlib ``Figure`` out.

- :func:`plot_deletion_insertion`: mean deletion / insertion curves per method.
- :func:`plot_grid_examples`: grid pointing-game images with each method's map.
- :func:`plot_summary`: the summary table (mean and interval per method, one panel per metric).
- :func:`plot_meta_evaluation`: which metrics agree, which ones tell the methods from the control.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .imaging import IMAGENET_MEAN, IMAGENET_STD, to_display, upsample
from .viz import overlay


def plot_deletion_insertion(curves: Mapping[str, Mapping[str, Any]],
                            kinds: Sequence[str] = ("deletion", "insertion"), band: bool = True):
    """Mean curve per method (and a ±1 standard-error band), one panel per kind.

    Args:
        curves: ``curves[method][kind]`` = (B, S+1) per-image curves (or one (S+1,) curve),
            e.g. ``SuiteResult.curves``.
        kinds: which curves to draw. Default: deletion and insertion.
        band: shade ±1 standard error of the mean. Default: True.

    Returns:
        Figure; the legend gives each method's mean AUC (trapezoid on [0, 1]).
    """
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves is empty: pass {method: {'deletion': (B, S+1), ...}}.")
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for method, per in curves.items():
            if kind not in per:
                raise ValueError(f"curves[{method!r}] has no {kind!r} curve; it has {sorted(per)}.")
            y = np.atleast_2d(torch.as_tensor(per[kind]).detach().double().cpu().numpy())
            x = np.linspace(0, 1, y.shape[1])
            m = y.mean(axis=0)
            area = float(((m[:-1] + m[1:]) / 2).sum() / (len(m) - 1))
            (line,) = ax.plot(x, m, label=f"{method} (AUC {area:.3f})")
            if band and y.shape[0] > 1:
                se = y.std(axis=0, ddof=1) / math.sqrt(y.shape[0])
                ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("fraction of tokens " + ("removed" if kind == "deletion" else "revealed"
                                               if kind == "insertion" else "perturbed"))
        ax.set_ylabel("target-class probability" if kind in ("deletion", "insertion") else "value")
        ax.set_title(kind)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_grid_examples(grids: Any, maps: Mapping[str, Any] | Any, target_tile: Any, n: int = 4,
                       mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                       class_names: Sequence[str] | None = None, target_class: Any = None):
    """Grid images (target tile outlined) next to each method's map.

    Args:
        grids: (G, 3, H, W) normalised grid images (``GridImages.grids``).
        maps: ``{method: (G, h, w)}`` or one (G, h, w) tensor.
        target_tile: (G,) tile index 0..3.
        n: examples (rows) to show. Default: 4.
        mean, std: to undo the normalisation for display (:func:`vit_course.imaging.to_display`).
        class_names, target_class: optional, for row titles.

    Returns:
        Figure with n rows and 1 + number of methods columns.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    g = torch.as_tensor(grids).detach().cpu().float()
    if g.ndim != 4 or g.shape[1] != 3:
        raise ValueError(f"grids must be (G, 3, H, W), got shape {tuple(g.shape)}.")
    maps = maps if isinstance(maps, Mapping) else {"map": maps}
    tiles = torch.as_tensor(target_tile).long().flatten()
    G, _, H, W = g.shape
    n = min(n, G)
    pix = to_display(g[:n], mean=mean, std=std)
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(2.4 * (1 + len(maps)), 2.4 * n), squeeze=False)
    for i in range(n):
        r, c = divmod(int(tiles[i]), 2)
        box = dict(xy=(c * W / 2, r * H / 2), width=W / 2 - 1, height=H / 2 - 1, fill=False,
                   edgecolor="lime", linewidth=2)
        axes[i, 0].imshow(pix[i].permute(1, 2, 0).numpy())
        axes[i, 0].add_patch(Rectangle(**box))
        title = "grid"
        if class_names is not None and target_class is not None:
            title = f"target: {class_names[int(torch.as_tensor(target_class).flatten()[i])]}"
        axes[i, 0].set_title(title, fontsize=9)
        for j, (name, mp) in enumerate(maps.items(), start=1):
            mm = torch.as_tensor(mp)[i:i + 1].detach().cpu().float()
            axes[i, j].imshow(overlay(pix[i], upsample(mm, (H, W), normalize=True)[0]))
            axes[i, j].add_patch(Rectangle(**box))
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_summary(rows: Sequence[Mapping[str, Any]], chance: Mapping[str, float] | None = None):
    """One panel per metric: each method's mean with its interval as an error bar.

    Args:
        rows: :func:`vit_course.metrics.summarise` rows (``metric, method, mean, lo, hi, better``).
        chance: optional ``{metric: value}`` reference lines (e.g. ``{"grid_pointing": 0.25}``).

    Returns:
        Figure; panel titles carry ↑ (higher is better) or ↓.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: pass vit_course.metrics.summarise(results).")
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 0.5 + 0.45 * nrows *
                                                    max(3, len({r['method'] for r in rows}))),
                             squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        sel = [r for r in rows if r["metric"] == metric]
        y = np.arange(len(sel))
        means = np.array([r["mean"] for r in sel], dtype=float)
        err = np.array([[r["mean"] - r["lo"] for r in sel], [r["hi"] - r["mean"] for r in sel]], dtype=float)
        ax.errorbar(means, y, xerr=np.abs(err), fmt="o", capsize=3)
        ax.set_yticks(y, [r["method"] for r in sel])
        ax.invert_yaxis()
        arrow = {"higher": " ↑", "lower": " ↓"}.get(sel[0].get("better", ""), "")
        ax.set_title(metric + arrow, fontsize=10)
        if chance and metric in chance:
            ax.axvline(chance[metric], color="grey", linestyle="--", linewidth=1)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_meta_evaluation(meta: Any):
    """One look at a :class:`~vit_course.metrics.MetaEvaluation`.

    Left: Kendall τ between the metrics' orders of the methods (1 = same order, -1 = reversed),
    with each metric's bootstrap stability under its name. Right: each method's distance from
    the control in units of the bootstrap half-width (|value| > 1: the interval excludes 0;
    > 0 better than the control, < 0 worse).

    Returns:
        Figure.
    """
    import matplotlib.pyplot as plt

    k = len(meta.metrics)
    fig, (a, b) = plt.subplots(1, 2, figsize=(3 + 2 * k, 1.8 + 0.55 * max(k, len(meta.separation))),
                               gridspec_kw={"width_ratios": [1, 1]})
    labels = [f"{m}\nstab. {meta.bootstrap_stability[m]:.2f}" for m in meta.metrics]
    im = a.imshow(meta.agreement, vmin=-1, vmax=1, cmap="RdBu")
    a.set_xticks(range(k), [m.replace("_", " ") for m in meta.metrics], rotation=45, ha="right", fontsize=8)
    a.set_yticks(range(k), labels, fontsize=8)
    for i in range(k):
        for j in range(k):
            a.text(j, i, f"{meta.agreement[i, j]:.2f}", ha="center", va="center", fontsize=8)
    a.set_title("do the metrics agree? (Kendall τ)")
    fig.colorbar(im, ax=a, shrink=0.8)
    methods = list(meta.separation)
    z = np.array([[meta.separation[m][k_] for k_ in meta.metrics] for m in methods]).reshape(len(methods), k)
    im = b.imshow(np.clip(z, -3, 3), vmin=-3, vmax=3, cmap="PiYG", aspect="auto")
    b.set_xticks(range(k), [m.replace("_", " ") for m in meta.metrics], rotation=45, ha="right", fontsize=8)
    b.set_yticks(range(len(methods)), methods, fontsize=8)
    for i in range(len(methods)):
        for j in range(k):
            b.text(j, i, f"{z[i, j]:.1f}", ha="center", va="center", fontsize=8)
    b.set_title(f"distance from {meta.control!r} (interval half-widths)")
    fig.colorbar(im, ax=b, shrink=0.8)
    fig.tight_layout()
    return fig
