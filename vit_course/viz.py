"""Plotting: takes finished arrays or tensors and returns a matplotlib ``Figure`` (or, for
the explorer's widgets, PNG bytes and HTML: :func:`png_bytes`, :func:`colorbar_html`).

Nothing here trains, runs a model or explains; the only arithmetic is for display
(upsampling a patch map to pixels and min-max scaling it with :mod:`vit_course.imaging`,
blending a heat map over an image).
Figures are created with ``matplotlib.figure.Figure`` through ``plt.subplots`` so they show
inline in notebooks; close them with ``plt.close(fig)`` in loops and tests.
"""

from __future__ import annotations

import html
import io
import math
import textwrap
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .checks import check_positive_int
from .imaging import normalize_maps, upsample


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def _image_hwc(image: Any, name: str = "image") -> np.ndarray:
    """(3, H, W) tensor/array in [0, 1] → (H, W, 3) float array."""
    arr = _array(image).astype(np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"{name} must be (3, H, W) (channels first, as ToTensor gives), got "
                         f"shape {arr.shape}; for an (H, W, 3) array pass arr.transpose(2, 0, 1)")
    if not np.isfinite(arr).all() or arr.min() < -1e-4 or arr.max() > 1 + 1e-4:
        raise ValueError(f"{name} values must lie in [0, 1] (finite), got [{arr.min():.3f}, {arr.max():.3f}]; "
                         "plot images from vit_course.data.simple_transform (no Normalize), or "
                         "undo ImageNet normalisation first (x * std + mean)")
    return np.clip(arr.transpose(1, 2, 0), 0.0, 1.0)


def tick_labels(values: Sequence[float], max_digits: int = 6) -> list[str]:
    """Labels for colour-bar ticks: the fewest significant digits (2 to ``max_digits``)
    that round each value by under a tenth of the smallest gap between values, e.g.
    ``[0.00035, 0.0003]`` → ``['0.00035', '0.0003']`` (not ``0.0003`` twice),
    ``[1234.5, 1234.6]`` → ``['1234.5', '1234.6']``."""
    vals = [float(v) for v in values]
    gaps = [abs(a - b) for a, b in zip(sorted(vals), sorted(vals)[1:]) if a != b]
    tolerance = 0.1 * min(gaps) if gaps else 0.0
    for digits in range(2, max_digits + 1):
        labels = [f"{v:.{digits}g}" for v in vals]
        if all(abs(float(t) - v) <= tolerance for t, v in zip(labels, vals)):
            return labels
    return labels


def wrap_title(title: str, width: int = 28) -> str:
    """``title`` broken into lines of at most ``width`` characters (a 3.2-inch panel at
    the default font size holds about 28), so long titles fit above their panel."""
    return "\n".join(textwrap.wrap(str(title), width, break_long_words=False,
                                   break_on_hyphens=False)) or str(title)


# ----------------------------------------------------------------------------- training
def plot_loss_curves(history: dict[str, Sequence[float]]):
    """Loss and accuracy per epoch, train vs test.

    Args:
        history: the dict from :func:`vit_course.engine.train` (``train_loss``,
            ``train_acc`` and optionally ``test_loss``, ``test_acc``).

    Returns:
        a Figure with two axes: loss, accuracy.
    """
    required = ("train_loss", "train_acc")
    if not isinstance(history, dict) or any(k not in history for k in required):
        got = sorted(history) if isinstance(history, dict) else type(history).__name__
        raise ValueError(f"history must be the dict from vit_course.engine.train with keys "
                         f"{list(required)} (and test_loss, test_acc), got {got}")
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        for split in ("train", "test"):
            values = list(history.get(f"{split}_{key}", []))
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    ax_acc.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm: Any, class_names: Sequence[str], normalize: bool = False):
    """Confusion matrix as an annotated heat map (rows true, columns predicted).

    Args:
        cm: (K, K) counts, e.g. ``Evaluation.confusion_matrix``.
        class_names: the K names.
        normalize: colour and annotate each row as fractions of its true class. Default: False.

    Returns:
        a Figure with one axes whose image data is the (K, K) matrix shown.
    """
    mat = _array(cm).astype(np.float64)
    K = len(class_names)
    if mat.shape != (K, K):
        raise ValueError(f"cm must be ({K}, {K}) for {K} class names, got shape {mat.shape}")
    if normalize:
        rows = mat.sum(axis=1, keepdims=True)
        mat = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * K + 2.5, 1.2 * K + 2))
    ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(mat.max(), 1e-12))
    ax.set_xticks(range(K), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(K), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = mat.max() / 2 if mat.max() > 0 else 1
    for i in range(K):
        for j in range(K):
            text = f"{mat[i, j]:.2f}" if normalize else f"{int(round(mat[i, j]))}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if mat[i, j] > threshold else "black")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    fig.tight_layout()
    return fig


def plot_prediction(image: Any, probs: Any, class_names: Sequence[str]):
    """Show one image with its predicted class and probability.

    The model runs elsewhere, e.g. ``probs = vit_course.engine.predict(model,
    transform(image))[0]``.

    Args:
        image: what ``imshow`` draws: a PIL image (e.g. from ``vit_course.data.load_image``)
            or an (H, W, 3) array.
        probs: (K,) class probabilities.
        class_names: the K names.

    Returns:
        a Figure with one axes showing the image; the title holds the prediction.
    """
    p = _array(probs).reshape(-1)
    if p.size != len(class_names):
        raise ValueError(f"probs has {p.size} classes but {len(class_names)} "
                         f"class_names were given: {list(class_names)}")
    if not np.isfinite(p).all():
        raise ValueError(f"probs must be finite, got {p.tolist()}; the model's output is NaN "
                         "or inf: check its weights and the image (vit_course.engine.predict "
                         "refuses non-finite images).")
    k = int(p.argmax())
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image)
    ax.set_title(f"Pred: {class_names[k]} | Prob: {p[k]:.3f}")
    ax.axis("off")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- patches
def plot_patches(image: Any, patch_size: int, gap: int = 2):
    """Show an image and the same image cut into its grid of patches.

    Args:
        image: (3, H, W) in [0, 1]; H and W multiples of ``patch_size``.
        patch_size: patch side P in pixels.
        gap: white pixels between patches in the cut view. Default: 2.

    Returns:
        a Figure with two axes: the image with the patch grid drawn, and the patches
        separated, an array of shape (h·(P+gap)−gap, w·(P+gap)−gap, 3).
    """
    img = _image_hwc(image)
    H, W, _ = img.shape
    check_positive_int(patch_size, "patch_size")
    if H % patch_size or W % patch_size:
        raise ValueError(f"image size {H}x{W} is not divisible by patch_size={patch_size}; resize "
                         "it first, e.g. with vit_course.data.simple_transform(224)")
    h, w, P = H // patch_size, W // patch_size, patch_size
    cut = np.ones((h * (P + gap) - gap, w * (P + gap) - gap, 3), dtype=np.float32)
    for i in range(h):
        for j in range(w):
            cut[i * (P + gap):i * (P + gap) + P, j * (P + gap):j * (P + gap) + P] = \
                img[i * P:(i + 1) * P, j * P:(j + 1) * P]
    plt = _plt()
    fig, (ax_img, ax_cut) = plt.subplots(1, 2, figsize=(10, 5))
    ax_img.imshow(img)
    for k in range(1, h):
        ax_img.axhline(k * P - 0.5, color="white", linewidth=0.8)
    for k in range(1, w):
        ax_img.axvline(k * P - 0.5, color="white", linewidth=0.8)
    ax_img.set_title(f"{H}x{W} image, {P}x{P} patches")
    ax_cut.imshow(cut)
    ax_cut.set_title(f"{h}x{w} = {h * w} patches (tokens)")
    for ax in (ax_img, ax_cut):
        ax.axis("off")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- maps
def overlay(image: Any, heat: Any, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map over an image: ``(1 − alpha)·image + alpha·cmap(heat)``.

    Args:
        image: (3, H, W) in [0, 1].
        heat: (H, W) in [0, 1] at the image's resolution (use
            :func:`vit_course.imaging.upsample` first).
        alpha: heat-map weight in [0, 1]. Default: 0.5.
        cmap: a matplotlib colormap name. Default: ``"jet"`` (jacobgil/vit-explain's
            ``show_mask_on_image`` in ``vit_explain.py`` uses ``cv2.COLORMAP_JET``).

    Returns:
        (H, W, 3) float32 array in [0, 1].
    """
    img = _image_hwc(image)
    hm = _heat(heat, alpha)
    if hm.shape != img.shape[:2]:
        raise ValueError(f"heat must be (H, W) = {img.shape[:2]} like the image, got shape "
                         f"{hm.shape}; upsample a patch-grid map with "
                         "vit_course.imaging.upsample(maps, size=(H, W)).")
    return (1 - alpha) * img + alpha * _colours(hm, cmap)[..., :3].astype(np.float32)


def _heat(heat: Any, alpha: float) -> np.ndarray:
    """``heat`` as a float32 array, checked to lie in [0, 1]; ``alpha`` checked too."""
    hm = _array(heat).astype(np.float32)
    if not np.isfinite(hm).all() or hm.min() < -1e-4 or hm.max() > 1 + 1e-4:
        raise ValueError(f"heat values must lie in [0, 1], got [{np.nanmin(hm):.3f}, "
                         f"{np.nanmax(hm):.3f}]; scale it first, e.g. "
                         "(m - m.min()) / (m.max() - m.min())")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return np.clip(hm, 0, 1)


def _colours(heat: np.ndarray, cmap: str, as_bytes: bool = False) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps[cmap](heat, bytes=as_bytes)


def plot_maps(images: Any, maps: Any, titles: Sequence[str] | None = None, ncols: int = 4,
              alpha: float = 0.5, cmap: str = "jet", normalize: bool = True):
    """A grid of heat-map overlays, one panel per map.

    Args:
        images: (B, 3, H, W) in [0, 1], or one (3, H, W) image shown under every map
            (e.g. one map per class or per method).
        maps: (B, h, w) patch-grid maps (upsampled bilinearly to H×W here) or (B, H, W).
        titles: one title per panel. Default: none.
        ncols: panels per row. Default: 4 (fewer if B is smaller).
        alpha, cmap: as in :func:`overlay`.
        normalize: min-max scale each map to [0, 1] for display (a constant map shows as
            0). With False maps must already lie in [0, 1]. Default: True.

    Returns:
        a Figure with exactly B axes; each shows the (H, W, 3) overlay.
    """
    maps_t = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if maps_t.ndim == 2:
        maps_t = maps_t[None]
    if maps_t.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got shape {tuple(maps_t.shape)}")
    B = maps_t.shape[0]
    imgs = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if imgs.ndim == 3:
        imgs = imgs[None].expand(B, *imgs.shape)
    if imgs.ndim != 4 or imgs.shape[0] != B:
        raise ValueError(f"images must be (B, 3, H, W) with B = {B} (one per map) or a single "
                         f"(3, H, W) image, got shape {tuple(imgs.shape)}")
    if titles is not None and len(titles) != B:
        raise ValueError(f"titles must have one entry per map ({B}), got {len(titles)}")
    check_positive_int(ncols, "ncols")
    H, W = imgs.shape[-2:]
    maps_t = maps_t.detach().cpu().float()
    if tuple(maps_t.shape[-2:]) != (H, W):
        maps_t = upsample(maps_t, (H, W))
    if normalize:
        maps_t = normalize_maps(maps_t)
    ncols = min(ncols, B)
    nrows = math.ceil(B / ncols)
    plt = _plt()
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    flat = axes.ravel()
    for b in range(B):
        flat[b].imshow(overlay(imgs[b], maps_t[b].numpy(), alpha=alpha, cmap=cmap))
        flat[b].axis("off")
        if titles is not None:
            flat[b].set_title(wrap_title(titles[b]))     # each panel is 3.2 inches wide
    for ax in flat[B:]:
        fig.delaxes(ax)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- widgets
def png_bytes(rgb: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """(H, W, 3) floats in [0, 1] → PNG bytes, resized (nearest) to ``size`` (H', W')."""
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="png", compress_level=1)
    return buf.getvalue()


def photo_png(image: Any) -> bytes:
    """(3, H, W) image in [0, 1] (checked as :func:`overlay` checks it) → PNG bytes."""
    return png_bytes(_image_hwc(image, "raw_images"))


def heat_png(heat: Any, alpha: float = 0.5, cmap: str = "jet") -> bytes:
    """(h, w) heat in [0, 1] → RGBA PNG bytes of ``cmap(heat)`` at opacity ``alpha``.

    The explorer's overlay: this layer lies over the photo and the browser scales both to
    one box, so the screen shows :func:`overlay`'s ``(1 − alpha)·image + alpha·cmap(heat)``
    with the browser's smoothing. A 56×56 layer is about 7 KB and 1 ms, where a 256×256
    blended PNG is 150 KB and 10–30 ms (docs/BENCHMARKS.md, "Explorer latency").
    """
    rgba = _colours(_heat(heat, alpha), cmap, as_bytes=True)
    rgba[..., 3] = round(255 * alpha)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="png", compress_level=1)
    return buf.getvalue()


def colorbar_html(lo: float, hi: float, height: int = 256, cmap: str = "viridis") -> str:
    """A vertical colour bar for values lo..hi as HTML, ``height`` pixels tall, with 5
    tick labels from :func:`tick_labels` (for widgets that show images without a figure)."""
    import matplotlib

    colours = matplotlib.colormaps[cmap](np.linspace(0, 1, 11))[:, :3]
    stops = ", ".join("#%02x%02x%02x" % tuple(int(255 * c) for c in rgb) for rgb in colours)
    labels = "".join(f"<span>{t}</span>" for t in tick_labels(np.linspace(hi, lo, 5)))
    return (f"<div style='display:flex;gap:4px;height:{height}px;margin-top:22px'>"
            f"<div style='width:14px;background:linear-gradient(to top, {stops})'></div>"
            "<div style='display:flex;flex-direction:column;justify-content:space-between;"
            f"font-size:11px;line-height:1'>{labels}</div></div>")


def title_html(text: str, width: int = 256) -> str:
    """``text`` as an HTML title that wraps within ``width`` pixels."""
    return (f"<div style='width:{width}px;font-size:12px;line-height:1.3;white-space:normal;"
            f"overflow-wrap:anywhere;min-height:32px'>{html.escape(text)}</div>")
