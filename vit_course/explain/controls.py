"""Control "explanations" that every metric should score: a random map and a centre Gaussian.

A method is only worth its cost if it beats both: the random map is chance, the centre
Gaussian is the photographer's bias (objects tend to sit in the middle of the picture).

Both come as pure map functions (:func:`random_map`, :func:`center_gaussian_map`) and as
registered methods, so the metrics call them like any explainer::

    explain(model, images, "random", seed=0)             # (B, h, w) uniform in [0, 1)
    explain(model, images, "center_gaussian", sigma=2.0)  # the same bump for every image

The patch grid is read from the model (or given as ``grid=(h, w)``); no model pass runs.
Class-agnostic: ``target`` is checked, not used.

Random stream: an int ``seed`` restarts the stream at every call (the same images give the
same maps); a ``torch.Generator`` continues its stream from call to call, so scoring a
batch in chunks with ``seed=torch.Generator().manual_seed(s)`` gives the chunks different
maps — the numbers the metrics' ``RandomExplainer(s)`` gave before (issue 10).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import check_images, check_targets
from ..runtime import SEED
from .methods import Explainer, register_method


def _generator(seed: object) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    seed = SEED if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}: "
                        f"{seed!r}.")
    return torch.Generator().manual_seed(seed)


def random_map(shape: tuple[int, ...], seed: int | torch.Generator | None = SEED) -> Tensor:
    """Uniform random values in [0, 1) of the given shape (e.g. (B, h, w)), from ``seed``.

    Args:
        shape: positive ints, e.g. (B, h, w).
        seed: an int (a fresh stream), a ``torch.Generator`` (its stream continues), or
            ``None`` (:data:`vit_course.runtime.SEED`). Default: SEED.
    """
    if not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be positive ints, e.g. (B, h, w); got {shape!r}.")
    return torch.rand(tuple(shape), generator=_generator(seed))


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


class _Control(Explainer):
    """Shared part of the controls: the grid, the target check; no model pass."""

    supports_capture = False

    def _grid(self, images: Tensor, target: object, grid: tuple[int, int] | None
              ) -> tuple[int, int]:
        x = check_images(images, finite=True)
        check_targets(target, x.shape[0], self.info.num_classes)
        return tuple(grid) if grid is not None else self.info.grid(*x.shape[-2:])


def _check_grid(grid: object) -> None:
    if grid is not None and (not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(
            isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)):
        raise ValueError(f"grid must be None (the model's patch grid) or (h, w) positive ints, "
                         f"got {grid!r}")


@register_method("random")
class RandomExplainer(_Control):
    """Uniform random maps in [0, 1) (chance level); see :func:`random_map`.

    Options:
        seed: int (the same maps at every call) or ``torch.Generator`` (the stream
            continues from call to call). Default: :data:`vit_course.runtime.SEED`.
        grid: (h, w), or ``None`` for the model's patch grid. Default: ``None``.
    """

    defaults: ClassVar[dict[str, Any]] = {"seed": SEED, "grid": None}

    def check_options(self, seed: object, grid: object) -> None:
        _generator(seed)
        _check_grid(grid)

    def compute(self, images: Tensor, target: object, seed: object, grid: object) -> Tensor:
        h, w = self._grid(images, target, grid)
        return random_map((images.shape[0], h, w), seed).to(images.device)


@register_method("center_gaussian")
class CenterGaussianExplainer(_Control):
    """The same centre Gaussian for every image; see :func:`center_gaussian_map`.

    Options:
        sigma: standard deviation in tokens, or ``None`` for ``min(h, w) / 4``.
            Default: ``None``.
        grid: (h, w), or ``None`` for the model's patch grid. Default: ``None``.
    """

    defaults: ClassVar[dict[str, Any]] = {"sigma": None, "grid": None}

    def check_options(self, sigma: object, grid: object) -> None:
        if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))
                                  or not sigma > 0):
            raise ValueError(f"sigma must be None (min(h, w) / 4) or a positive number of "
                             f"tokens, got {sigma!r}.")
        _check_grid(grid)

    def compute(self, images: Tensor, target: object, sigma: float | None,
                grid: object) -> Tensor:
        h, w = self._grid(images, target, grid)
        m = center_gaussian_map(h, w, sigma)
        return m.to(images.device).expand(images.shape[0], h, w).clone()
