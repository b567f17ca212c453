"""Small tensor helpers for images, masks and maps, each defined once for the whole course.

- :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`: the normalisation of torchvision's presets.
- :func:`normalization_of`, :func:`to_display`: undo a transform's normalisation for display.
- :func:`gaussian_blur`: separable Gaussian blur with reflected borders.
- :func:`normalize_maps`: min-max scale each map to [0, 1]; :func:`upsample`: grid → pixels.
- :func:`mask_coverage` (fraction of each patch inside a pixel mask) and
  :func:`mask_to_grid` (which patches count as inside).

Shapes: B batch, C channels, H×W pixels, h×w patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: ImageNet normalisation (torchvision's ``Normalize`` values). Pass ``mean=(0, 0, 0),
#: std=(1, 1, 1)`` where images were not normalised.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- display
def normalization_of(transform: Callable | None) -> tuple[Sequence[float], Sequence[float]] | None:
    """(mean, std) a transform normalises with, if it says (torchvision presets, Compose)."""
    for t in [transform, *getattr(transform, "transforms", [])]:   # None: no step, no answer
        if hasattr(t, "mean") and hasattr(t, "std"):
            return t.mean, t.std
    return None


def to_display(images: Tensor, transform: Callable | None = None, *,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Tensor:
    """Model inputs back to displayable images in [0, 1]: ``x · std + mean``, clamped.

    Args:
        images: (C, H, W) or (B, C, H, W) model inputs.
        transform: the transform that made them; its ``Normalize`` (if any) is undone.
        mean, std: the normalisation, when there is no transform to read it from. Without
            either, the images are only clamped (inputs that were never normalised).

    Returns:
        same shape, float32 on the CPU, detached.
    """
    x = images.detach().cpu().float()
    norm = normalization_of(transform) if mean is None else (mean, std)
    if norm is not None and norm[0] is not None:
        shape = (-1, 1, 1)
        x = x * torch.tensor(norm[1], dtype=x.dtype).view(shape) \
            + torch.tensor(norm[0], dtype=x.dtype).view(shape)
    return x.clamp(0, 1)


# ----------------------------------------------------------------------------- blur
def gaussian_blur(images: Tensor, sigma: float, kernel_size: int | None = None) -> Tensor:
    """Separable Gaussian blur with reflected borders (a constant image stays constant).

    Because the kernel sums to 1, blurring commutes with a per-channel normalisation
    (x − mean)/std, so blurring normalised model inputs equals normalising a blurred image.

    Args:
        images: (B, C, H, W).
        sigma: standard deviation in pixels, > 0.
        kernel_size: odd kernel width; default ``2·ceil(3σ) + 1``. Reflect padding needs
            ``kernel_size // 2 < min(H, W)``; a kernel of width 1 returns a copy.

    Returns:
        (B, C, H, W).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}.")
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * sigma) + 1
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) \
            or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}.")
    B, C, H, W = images.shape
    r = kernel_size // 2
    if r == 0:
        return images.clone()
    if r >= min(H, W):
        raise ValueError(f"a {kernel_size}-px blur kernel needs images larger than {r} px for "
                         f"reflect padding, got {H}x{W}; use a smaller sigma (or another "
                         "baseline such as 'mean' or 'zero') for such small images.")
    x = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - r
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    flat = images.reshape(B * C, 1, H, W)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return flat.reshape(B, C, H, W)


# ----------------------------------------------------------------------------- maps
def normalize_maps(maps: Tensor) -> Tensor:
    """Scale each map to [0, 1] (min → 0, max → 1); a constant map becomes all zeros.

    Args:
        maps: (B, ...) one map per image.

    Returns:
        same shape and dtype.
    """
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.zeros_like(flat))
    return out.reshape(maps.shape)


def _check_pair(value: Any, name: str, what: str) -> tuple[int, int]:
    """One positive int (square) or a pair of them → ``(a, b)``; ValueError naming ``what``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                       for v in value)):
        raise ValueError(f"{name} must be a positive int or {what}, got {value!r}")
    return int(value[0]), int(value[1])


def upsample(maps: Tensor, size: int | tuple[int, int], normalize: bool = False,
             mode: str = "bilinear") -> Tensor:
    """Bring patch-grid maps to pixels (for overlays).

    Args:
        maps: (B, h, w) from :func:`vit_course.explain.explain`.
        size: output H×W as ``(H, W)`` or one int for square images.
        normalize: scale each upsampled map to [0, 1]. Default: ``False``.
        mode: ``"bilinear"`` (smooth), ``"bicubic"`` or ``"nearest"`` (shows the patches).
            Default: ``"bilinear"``.

    Returns:
        (B, H, W).
    """
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be (B, h, w), got {got}; add a batch dimension with "
                         ".unsqueeze(0) for a single map.")
    if mode not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"mode must be 'bilinear', 'bicubic' or 'nearest', got {mode!r}")
    size = _check_pair(size, "size", "(H, W)")
    x = maps.unsqueeze(1)
    if not x.is_floating_point():
        x = x.float()
    kwargs = {"align_corners": False} if mode != "nearest" else {}
    out = F.interpolate(x, size=tuple(size), mode=mode, **kwargs).squeeze(1)
    return normalize_maps(out) if normalize else out


# ----------------------------------------------------------------------------- masks
def mask_coverage(masks: Tensor | np.ndarray, grid: int | Sequence[int]) -> Tensor:
    """Fraction of each patch's pixels inside a pixel mask.

    Args:
        masks: (H, W) or (B, H, W), bool (or float in [0, 1]); torch or NumPy. Integer masks
            (0/255 or 0/1) are refused: say which pixels are inside with ``mask > 0``.
        grid: (h, w) patch grid (or one int for square); H must be a multiple of h and W of w.

    Returns:
        float64 (h, w) or (B, h, w).
    """
    if not isinstance(masks, (Tensor, np.ndarray)):
        raise TypeError(f"masks must be a bool torch.Tensor or NumPy array, got {type(masks).__name__}.")
    m = torch.as_tensor(masks)
    if m.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (B, H, W), got shape {tuple(m.shape)}.")
    if m.dtype != torch.bool:
        if not m.is_floating_point():
            raise TypeError(f"masks must be bool (or float fractions in [0, 1]), got {m.dtype}; "
                            "turn a 0/255 mask into bool with mask > 0.")
        if not ((m >= 0) & (m <= 1)).all():                # NaN fails both comparisons
            raise ValueError("float masks must hold fractions in [0, 1] (no NaN), got values in "
                             f"[{float(m.min()):.3g}, {float(m.max()):.3g}]; use mask > 0.5.")
    h, w = _check_pair(grid, "grid", "a pair (h, w) of positive ints")
    H, W = m.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"masks of {H}x{W} pixels do not split into the {h}x{w} patch grid "
                         "(H % h and W % w must be 0); resize the masks to the image size.")
    flat = m.double().reshape(-1, 1, H, W)
    return F.avg_pool2d(flat, (H // h, W // w)).reshape(*m.shape[:-2], h, w)


def mask_to_grid(masks: Tensor | np.ndarray, grid: int | Sequence[int],
                 threshold: float = 0.5) -> Tensor:
    """Pixel masks → token masks: a token is inside when its coverage is ≥ ``threshold``.

    If no token of an image reaches the threshold but the mask is not empty, the token(s)
    with the largest coverage are inside, so small objects still have a target.

    Args:
        masks: (B, H, W) bool (or (H, W)).
        grid: (h, w) patch grid.
        threshold: coverage needed, in (0, 1]. Default: 0.5.

    Returns:
        bool, (B, h, w) (or (h, w)).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}.")
    cov = mask_coverage(masks, grid)
    single = cov.ndim == 2
    cov = cov.unsqueeze(0) if single else cov
    inside = cov >= threshold - 1e-12
    top = cov.flatten(1).amax(dim=1).view(-1, 1, 1)
    fallback = (~inside.flatten(1).any(dim=1)).view(-1, 1, 1) & (top > 0)
    out = torch.where(fallback, (cov == top) & (top > 0), inside)
    return out[0] if single else out
