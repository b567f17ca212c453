"""Control "explanations" that every metric should score: a random map and a centre Gaussian.

A method is only worth its cost if it beats both: the random map is chance, the centre
Gaussian is the photographer's bias (objects tend to sit in the middle of the picture).

Both come as plain map functions and as explainers with the package's call shape
``explain_fn(model, images, target=t) -> (B, h, w)``; the patch grid is read from the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..runtime import SEED
from ._common import as_generator, check_images


def random_map(shape: tuple[int, ...], seed: int | torch.Generator | None = SEED) -> Tensor:
    """Uniform random values in [0, 1) of the given shape (e.g. (B, h, w)), from ``seed``."""
    if not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be positive ints, e.g. (B, h, w); got {shape!r}.")
    return torch.rand(tuple(shape), generator=as_generator(seed, SEED))


def center_gaussian_map(h: int, w: int, sigma: float | None = None) -> Tensor:
    """Isotropic Gaussian bump centred on the grid: (h, w), peak 1 at the centre.

    Args:
        h, w: grid size.
        sigma: standard deviation in tokens. Default: ``min(h, w) / 4`` (3.5 on a 14×14 grid).
    """
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"h and w must be positive ints, got {h!r}, {w!r}.")
    sigma = min(h, w) / 4 if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}.")
    y = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    x = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    return torch.exp(-(y.view(-1, 1) ** 2 + x.view(1, -1) ** 2) / (2 * sigma ** 2)).float()


def infer_grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    """The model's patch grid (h, w) for ``images``.

    Reads ``model.grid_size`` (course ViT), ``model.patch_size`` (torchvision
    ``VisionTransformer``) or ``model.patch_embed.patch_size`` (timm).
    """
    H, W = check_images(images).shape[-2:]
    if hasattr(model, "grid_size") and not hasattr(model, "patch_embed"):
        g = model.grid_size
        return (int(g[0]), int(g[1]))
    p = getattr(model, "patch_size", None)
    if p is None and hasattr(model, "patch_embed"):
        p = getattr(model.patch_embed, "patch_size", None)
    if p is None:
        raise TypeError(f"cannot read the patch grid of {type(model).__name__}; expected a course ViT "
                        "(grid_size), a torchvision VisionTransformer (patch_size) or a timm ViT "
                        "(patch_embed.patch_size). Pass grid=(h, w) to the explainer.")
    ph, pw = (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))
    return (H // ph, W // pw)


class RandomExplainer:
    """Explainer returning uniform random maps; reproducible from ``seed``.

    Successive calls continue one random stream (a fresh explainer with the same seed
    repeats it), so scoring the batch in chunks still gives independent maps.

    Args:
        seed: int or torch.Generator. Default: SEED.
        grid: (h, w); default read from the model with :func:`infer_grid`.
    """

    name = "random"

    def __init__(self, seed: int | torch.Generator | None = SEED, grid: tuple[int, int] | None = None):
        self.generator = as_generator(seed, SEED)
        self.grid = grid

    def __call__(self, model: nn.Module, images: Tensor, target: Any = None) -> Tensor:
        h, w = self.grid or infer_grid(model, images)
        return random_map((images.shape[0], h, w), self.generator).to(images.device)


class CenterGaussianExplainer:
    """Explainer returning the same centre Gaussian for every image (see :func:`center_gaussian_map`)."""

    name = "center_gaussian"

    def __init__(self, sigma: float | None = None, grid: tuple[int, int] | None = None):
        self.sigma = sigma
        self.grid = grid

    def __call__(self, model: nn.Module, images: Tensor, target: Any = None) -> Tensor:
        h, w = self.grid or infer_grid(model, images)
        m = center_gaussian_map(h, w, self.sigma)
        return m.to(images.device).expand(images.shape[0], h, w).clone()
