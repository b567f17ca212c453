"""Figures for notebook 07 (:mod:`vit_course.inside`): finished tensors in, a ``Figure`` out.

Nothing here runs a model; the only arithmetic is for display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .viz import _array, _image_hwc, _plt


def plot_images(images: Any, titles: Sequence[str] | None = None, ncols: int | None = None):
    """A row (or grid) of (B, 3, H, W) images in [0, 1], one title each."""
    ims = _array(images)
    B = ims.shape[0]
    ncols = ncols or B
    nrows = -(-B // ncols)
    fig, axes = _plt().subplots(nrows, ncols, figsize=(2.3 * ncols, 2.4 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < B:
            ax.imshow(_image_hwc(ims[i], f"images[{i}]"))
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def plot_attention_distance(distance: Any, image_size: int | None = None,
                            uniform: float | None = None):
    """Each head's mean attention distance (L, heads) in pixels against depth (ViT Fig. 7)."""
    d = _array(distance)
    L, H = d.shape
    fig, ax = _plt().subplots(figsize=(4.5, 3.2))
    for h in range(H):
        ax.scatter(np.arange(L) + 1, d[:, h], s=14, label=f"head {h}" if H <= 6 else None)
    if uniform is not None:
        ax.axhline(uniform, color="grey", ls="--", lw=1, label="uniform attention")
    ax.set_xlabel("block")
    ax.set_ylabel("mean attention distance (pixels)")
    if image_size:
        ax.set_ylim(0, image_size)
    ax.set_xticks(np.arange(L) + 1)
    if H <= 6 or uniform is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_logit_lens(probs: Any, class_names: Sequence[str], ax: Any = None,
                    layer: int | None = None):
    """Per-block class probabilities (L, K) of the logit lens, one line per class."""
    p = _array(probs)
    fig = None
    if ax is None:
        fig, ax = _plt().subplots(figsize=(4.5, 3.2))
    for k, name in enumerate(class_names):
        ax.plot(np.arange(p.shape[0]) + 1, p[:, k], marker="o", label=name)
    if layer is not None:
        ax.axvline(layer + 1, color="grey", lw=1)
    ax.set_xticks(np.arange(p.shape[0]) + 1)
    ax.set_xlabel("after block")
    ax.set_ylabel("probability (final norm + head)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def plot_logit_attribution(attn: Any, mlp: Any, heads: Any, title: str = ""):
    """Direct logit attribution: attention and MLP output per block (L,), and per head (L, H)."""
    a, m, h = _array(attn), _array(mlp), _array(heads)
    L = a.shape[0]
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(8.5, 3.2))
    x = np.arange(L) + 1
    ax1.bar(x - 0.2, a, 0.4, label="attention")
    ax1.bar(x + 0.2, m, 0.4, label="MLP")
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_xlabel("block")
    ax1.set_ylabel("share of the target logit")
    ax1.set_xticks(x)
    ax1.legend(fontsize=7)
    lim = float(np.abs(h).max()) or 1.0
    im = ax2.imshow(h.T, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax2.set_xticks(range(L), [str(i + 1) for i in range(L)])
    ax2.set_xlabel("block")
    ax2.set_ylabel("head")
    fig.colorbar(im, ax=ax2, label="share of the target logit")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_inside_view(image: Any, norms: Any, probs: Any, class_names: Sequence[str],
                     layer: int = -1, threshold: float | None = None):
    """One image: its token norms after block ``layer`` on the patch grid, and the lens.

    Args:
        image: (3, H, W) in [0, 1]. norms: (h, w) patch-token norms (``TokenNorms.norms``
            of one image and layer, prefix tokens dropped, reshaped to the grid).
        probs: (L, K) per-block class probabilities. threshold: marks norms above it.
    """
    img, n, p = _image_hwc(image), _array(norms), _array(probs)
    L = p.shape[0]
    layer = layer % L
    fig, axes = _plt().subplots(1, 3, figsize=(10, 3.1))
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=9)
    im = axes[1].imshow(n, cmap="magma")
    fig.colorbar(im, ax=axes[1], label="token norm")
    if threshold is not None:
        for r, c in zip(*np.nonzero(n > threshold)):
            axes[1].add_patch(_plt().Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False,
                                               color="cyan", lw=1.5))
    axes[1].set_title(f"patch-token norms after block {layer + 1}", fontsize=9)
    for ax in axes[:2]:
        ax.axis("off")
    plot_logit_lens(p, class_names, ax=axes[2], layer=layer)
    axes[2].set_title("logit lens", fontsize=9)
    fig.tight_layout()
    return fig
