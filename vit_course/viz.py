"""Plotting: takes finished arrays or tensors and returns a matplotlib ``Figure``.

Nothing here trains or explains; the only arithmetic is for display (upsampling a patch
map to pixels, blending a heat map over an image, min-max scaling a map for its colours).
Figures are created with ``matplotlib.figure.Figure`` through ``plt.subplots`` so they show
inline in notebooks; close them with ``plt.close(fig)`` in loops and tests.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "plot_loss_curves",
    "plot_confusion_matrix",
    "predict_and_plot",
    "plot_patches",
    "upsample_map",
    "overlay",
    "plot_maps",
]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be a tensor or array, got {type(x).__name__}") from None


def _image_hwc(image: Any, name: str = "image") -> np.ndarray:
    """(3, H, W) tensor/array in [0, 1] → (H, W, 3) float array."""
    arr = _to_numpy(image, name).astype(np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"{name} must be (3, H, W) (channels first, as ToTensor gives), got "
                         f"shape {arr.shape}; for an (H, W, 3) array pass arr.transpose(2, 0, 1)")
    if arr.min() < -1e-4 or arr.max() > 1 + 1e-4:
        raise ValueError(f"{name} values must lie in [0, 1], got [{arr.min():.3f}, {arr.max():.3f}]; "
                         "plot images from vit_course.data.simple_transform (no Normalize), or "
                         "undo ImageNet normalisation first (x * std + mean)")
    return np.clip(arr.transpose(1, 2, 0), 0.0, 1.0)


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
    mat = _to_numpy(cm, "cm").astype(np.float64)
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


def predict_and_plot(model: torch.nn.Module, image_path: Any, class_names: Sequence[str],
                     transform: Any, device: Any = None):
    """Predict one image file and show it with the predicted class and probability.

    Args:
        model: a classifier returning logits (1, K).
        image_path: path to an image file (loaded RGB by ``vit_course.data.load_image``).
        class_names: the K names.
        transform: the model's transform, PIL image → (3, H, W) tensor.
        device: Default: the model's device.

    Returns:
        a Figure with one axes showing the original image; the title holds the prediction.
    """
    from .data import load_image  # lazy: data imports are heavier and optional here
    from .engine import predict

    image = load_image(image_path)
    probs = predict(model, transform(image), device=device)[0]
    if probs.numel() != len(class_names):
        raise ValueError(f"model gives {probs.numel()} classes but {len(class_names)} "
                         f"class_names were given: {list(class_names)}")
    k = int(probs.argmax())
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image)
    ax.set_title(f"Pred: {class_names[k]} | Prob: {probs[k]:.3f}")
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
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
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
def upsample_map(maps: torch.Tensor, size: int | tuple[int, int] = (224, 224),
                 mode: str = "bilinear") -> torch.Tensor:
    """Resize patch-grid maps to pixels.

    Args:
        maps: (B, h, w) or a single (h, w) map.
        size: output (H, W), or one int for a square. Default: (224, 224).
        mode: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (blocky, one colour per patch).
            Default: ``"bilinear"`` (``align_corners=False``).

    Returns:
        (B, H, W) float tensor, or (H, W) for a single map; not renormalised (bicubic
        may overshoot the input range slightly).
    """
    modes = ("bilinear", "bicubic", "nearest")
    if mode not in modes:
        raise ValueError(f"mode must be one of {modes}, got {mode!r}")
    if not isinstance(maps, torch.Tensor):
        maps = torch.as_tensor(np.asarray(maps))
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must be (B, h, w) or (h, w), got shape {tuple(maps.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    single = maps.ndim == 2
    x = maps.float().unsqueeze(1) if not single else maps.float()[None, None]   # (B, 1, h, w)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(x, size=size, mode=mode, **kwargs)[:, 0]                # (B, H, W)
    return out[0] if single else out


def overlay(image: Any, heat: Any, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map over an image: ``(1 − alpha)·image + alpha·cmap(heat)``.

    Args:
        image: (3, H, W) in [0, 1].
        heat: (H, W) in [0, 1] at the image's resolution (use :func:`upsample_map` first).
        alpha: heat-map weight in [0, 1]. Default: 0.5.
        cmap: a matplotlib colormap name. Default: ``"jet"`` (as vit-explain).

    Returns:
        (H, W, 3) float32 array in [0, 1].
    """
    import matplotlib

    img = _image_hwc(image)
    hm = _to_numpy(heat, "heat").astype(np.float32)
    if hm.shape != img.shape[:2]:
        raise ValueError(f"heat must be (H, W) = {img.shape[:2]} like the image, got shape "
                         f"{hm.shape}; upsample a patch-grid map with "
                         "vit_course.viz.upsample_map(maps, size=(H, W))")
    if not np.isfinite(hm).all() or hm.min() < -1e-4 or hm.max() > 1 + 1e-4:
        raise ValueError(f"heat values must lie in [0, 1], got [{np.nanmin(hm):.3f}, "
                         f"{np.nanmax(hm):.3f}]; scale it first, e.g. "
                         "(m - m.min()) / (m.max() - m.min())")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = matplotlib.colormaps[cmap](np.clip(hm, 0, 1))[..., :3].astype(np.float32)
    return (1 - alpha) * img + alpha * colours


def _minmax(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


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
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols <= 0:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    H, W = imgs.shape[-2:]
    if tuple(maps_t.shape[-2:]) != (H, W):
        maps_t = upsample_map(maps_t.detach().cpu().float(), size=(H, W))
    ncols = min(ncols, B)
    nrows = math.ceil(B / ncols)
    plt = _plt()
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    flat = axes.ravel()
    for b in range(B):
        heat = maps_t[b].detach().cpu().float().numpy()
        if normalize:
            heat = _minmax(heat)
        flat[b].imshow(overlay(imgs[b], heat, alpha=alpha, cmap=cmap))
        flat[b].axis("off")
        if titles is not None:
            flat[b].set_title(str(titles[b]))
    for ax in flat[B:]:
        fig.delaxes(ax)
    fig.tight_layout()
    return fig
