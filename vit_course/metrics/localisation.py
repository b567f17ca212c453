"""Localisation metrics: the grid pointing game (Böhle et al. 2022) and ground-truth-mask
scores (:func:`mass_on_mask`, pointing game, relevance mass accuracy, relevance rank
accuracy).

:func:`mass_on_mask` is the course's one "share of the map on the object" number
(notebooks 04-08, the explorer): each patch counts with the fraction of its pixels inside
the mask. The other mask scores work on token masks: a pixel mask (B, H, W) becomes a token
mask with :func:`vit_course.imaging.mask_to_grid`: a token is inside when at least half of
its pixels are (coverage ≥ 0.5).
If an object is so small that no token reaches that coverage, the token(s) with the largest
coverage count as inside, so every non-empty mask has a target. An empty mask gives NaN
with a warning.

Maps without any positive relevance (all ≤ 0) are scored as a uniform map would be: the
chance level (0.25 in the grid game, the object's share of tokens for mass accuracy).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import (
    check_images, check_labels, check_maps, check_nonnegative_int, check_positive_int
)
from ..imaging import mask_coverage, mask_to_grid
from ..runtime import SEED
from ._common import as_generator, batch_logits, rank_tokens

#: Chance level of the 2×2 grid pointing game.
GRID_CHANCE = 0.25


# ----------------------------------------------------------------------------- grid pointing game
class GridImages(NamedTuple):
    """2×2 grids for the grid pointing game.

    Attributes:
        grids: (G, C, H, W) images; tile t covers rows ``t // 2`` and columns ``t % 2`` of a
            2×2 layout (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
        target_tile: (G,) long, the tile holding the target class.
        target_class: (G,) long, the class to explain in each grid.
        sources: (G, 4) long, the index into ``images`` of each tile's image.
    """

    grids: Tensor
    target_tile: Tensor
    target_class: Tensor
    sources: Tensor


def correctly_classified(model: nn.Module, images: Tensor, labels: Any, batch_size: int = 64) -> Tensor:
    """(M,) bool: which images ``model`` classifies as their label (eval mode, batched)."""
    logits = batch_logits(model, check_images(images, finite=True), batch_size)
    y = check_labels(labels, images.shape[0], logits.shape[1]).to(logits.device)
    return logits.argmax(dim=1) == y


def make_grid_images(images: Tensor, labels: Any, target_class: int | None = None, n_grids: int = 32,
                     seed: int | torch.Generator | None = SEED) -> GridImages:
    """Build 2×2 grids: one tile of the target class, three tiles of other classes.

    Pass only correctly classified images (Böhle et al. build grids from images the model
    classifies correctly and confidently; see :func:`correctly_classified`). Each image is
    resized to half size (H/2 × W/2, bilinear with antialiasing; 224 → 112 px) and the four
    tiles are placed at random positions.

    Args:
        images: (M, C, H, W) with even H and W, in the model's input space.
        labels: M class labels.
        target_class: class of the target tile; ``None`` draws one per grid among the classes
            that can form a grid.
        n_grids: number of grids G.
        seed: int or torch.Generator. Default: SEED.

    Returns:
        :class:`GridImages`.
    """
    images = check_images(images, finite=True)
    M, C, H, W = images.shape
    if H % 2 or W % 2:
        raise ValueError(f"images must have even height and width to split into 2x2 tiles, got {H}x{W}.")
    check_positive_int(n_grids, "n_grids")
    y = check_labels(labels, M)
    g = as_generator(seed, SEED)
    classes = sorted(set(y.tolist()))
    usable = [c for c in classes if int((y != c).sum()) >= 3]
    if target_class is not None:
        check_nonnegative_int(target_class, "target_class", "pass one class index, e.g. 0.")
        if target_class not in classes:
            raise ValueError(f"target_class={target_class} has no image among the labels {classes}; "
                             "pass a class that has correctly classified images.")
        if target_class not in usable:
            raise ValueError(f"target_class={target_class} needs at least 3 images of other classes, "
                             f"found {int((y != target_class).sum())}.")
        usable = [target_class]
    if not usable:
        raise ValueError(f"cannot build grids: no class has an image plus 3 images of other classes "
                         f"(labels present: {classes}, {M} images). Pass more correctly classified images.")
    tiles = F.interpolate(images, size=(H // 2, W // 2), mode="bilinear", align_corners=False,
                          antialias=True)
    grids = images.new_empty(n_grids, C, H, W)
    tt = torch.empty(n_grids, dtype=torch.long)
    tc = torch.empty(n_grids, dtype=torch.long)
    src = torch.empty(n_grids, 4, dtype=torch.long)
    for i in range(n_grids):
        c = usable[int(torch.randint(len(usable), (1,), generator=g))]
        same = (y == c).nonzero().flatten()
        other = (y != c).nonzero().flatten()
        pick_t = same[torch.randint(len(same), (1,), generator=g)]
        pick_o = other[torch.randperm(len(other), generator=g)[:3]]
        pos = int(torch.randint(4, (1,), generator=g))
        order = torch.cat([pick_o[:pos], pick_t, pick_o[pos:]])
        for t, j in enumerate(order.tolist()):
            r, q = divmod(t, 2)
            grids[i, :, r * H // 2:(r + 1) * H // 2, q * W // 2:(q + 1) * W // 2] = tiles[j]
        tt[i], tc[i], src[i] = pos, c, order
    return GridImages(grids, tt, tc, src)


def grid_pointing_score(maps: Tensor, target_tile: Any) -> Tensor:
    """Share of positive attribution that falls in the target tile (Böhle et al. 2022).

    ``score = Σ_{tokens in tile} max(map, 0) / Σ_{all tokens} max(map, 0)``; chance is 0.25.
    A map with no positive value scores 0.25 (what a uniform map scores).

    Args:
        maps: (G, h, w) with even h and w (each tile is an h/2 × w/2 block of tokens).
        target_tile: G ints in 0..3 (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right);
            floats and bools are refused, not truncated.

    Returns:
        (G,) float64 scores in [0, 1].
    """
    maps = check_maps(maps)
    G, h, w = maps.shape
    if h % 2 or w % 2:
        raise ValueError(f"maps grid {h}x{w} must have even sides to split into 2x2 tiles; build the grid "
                         "images at a size the patch grid splits evenly (e.g. 224 px with 16-px patches).")
    t = check_labels(target_tile, G, name="target_tile").to(maps.device)    # ints, one per map
    if (t < 0).any() or (t > 3).any():
        raise ValueError(f"target_tile must be in 0..3, got {sorted(set(t.tolist()))}.")
    pos = maps.double().clamp_min(0)
    quad = pos.view(G, 2, h // 2, 2, w // 2).sum(dim=(2, 4)).view(G, 4)     # (G, 4) per tile
    total = quad.sum(dim=1)
    inside = quad.gather(1, t.view(-1, 1)).squeeze(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, GRID_CHANCE))


# ----------------------------------------------------------------------------- ground-truth masks
def mass_on_mask(maps: Tensor, masks: Tensor | np.ndarray) -> Tensor:
    """Share of each map's positive mass on the object: ``Σ max(m, 0)·c / Σ max(m, 0)``.

    ``c`` is the fraction of each patch's pixels inside the mask
    (:func:`vit_course.imaging.mask_coverage`). This is the relevance mass accuracy of Arras,
    Osman & Samek (2022, "CLEVR-XAI", Information Fusion 81; arXiv:2003.07258: the sum of
    positive relevance inside the ground-truth mask over the sum of all positive relevance)
    computed in pixels, for a patch map spread evenly over each patch's pixels (nearest
    upsampling), so a patch half on the object counts half. :func:`relevance_mass_accuracy` is the same ratio on token masks (a
    patch counts fully or not at all, :func:`vit_course.imaging.mask_to_grid`); for masks
    already on the grid (bool (B, h, w)) the two agree whenever the map has positive mass
    and the mask is not empty.

    A map spread evenly scores the mask's area; a map entirely on the mask scores 1.

    Args:
        maps: (B, h, w) patch-grid maps.
        masks: (H, W) for every map or (B, H, W) one per map; bool or fractions in [0, 1],
            torch or NumPy. H, W must be multiples of h, w; (h, w) masks are used as they are.

    Returns:
        (B,) float64 in [0, 1]; 0 for a map without positive mass (nothing lies on the
        object) and for an empty mask.
    """
    maps = check_maps(maps).detach()
    B, h, w = maps.shape
    cov = mask_coverage(masks, (h, w)).to(maps.device)
    cov = cov.expand(B, h, w) if cov.ndim == 2 else cov
    if cov.shape[0] != B:
        raise ValueError(f"masks must be (H, W) for every map or ({B}, H, W), one per map; got "
                         f"{cov.shape[0]} masks for {B} maps.")
    pos = maps.double().clamp_min(0)
    total = pos.sum(dim=(1, 2))
    return torch.where(total > 0, (pos * cov).sum(dim=(1, 2)) / total.clamp_min(1e-300),
                       torch.zeros_like(total))


def _nan_if_empty(score: Tensor, inside: Tensor) -> Tensor:
    return torch.where(inside.flatten(1).any(dim=1), score, torch.full_like(score, float("nan")))


def _token_masks(maps: Tensor, masks: Tensor, threshold: float) -> Tensor:
    maps = check_maps(maps)
    masks = torch.as_tensor(masks) if isinstance(masks, np.ndarray) else masks
    if not isinstance(masks, Tensor) or masks.ndim != 3 or masks.shape[0] != maps.shape[0]:
        raise ValueError(f"masks must be (B, H, W) with B = {maps.shape[0]} like maps, "
                         f"got {getattr(masks, 'shape', type(masks).__name__)}.")
    inside = mask_to_grid(masks.to(maps.device), tuple(maps.shape[1:]), threshold)
    empty = ~inside.flatten(1).any(dim=1)
    if empty.any():
        warnings.warn(f"{int(empty.sum())} empty mask(s) (no object pixel): their scores are NaN.",
                      RuntimeWarning, stacklevel=3)
    return inside


def pointing_game(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Tie-aware pointing game: is the map's maximum on the object?

    Score = fraction of the maximal tokens that are inside the object's token mask (1 or 0
    when the maximum is unique; with a shared maximum, e.g. a constant map, the share of
    tied tokens inside, so ties are neither rewarded nor punished by index order).

    Args:
        maps: (B, h, w). masks: (B, H, W) bool object masks. threshold: see :func:`mask_to_grid`.

    Returns:
        (B,) float64; NaN for empty masks.
    """
    inside = _token_masks(maps, masks, threshold).flatten(1)
    flat = maps.flatten(1)
    is_max = flat == flat.amax(dim=1, keepdim=True)
    return _nan_if_empty((is_max & inside).sum(dim=1).double() / is_max.sum(dim=1).double(), inside)


def relevance_mass_accuracy(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Share of positive relevance inside the object (Arras et al. 2022), on token masks.

    ``Σ_{inside} max(map, 0) / Σ max(map, 0)`` over the tokens of the object's token mask
    (:func:`vit_course.imaging.mask_to_grid` with ``threshold``), i.e. :func:`mass_on_mask`
    of that bool token mask. Unlike :func:`mass_on_mask`, a map without positive relevance
    scores the object's share of tokens (what a uniform map scores) and an empty mask NaN,
    so that averages over images are not pulled towards 0 by maps that say nothing.

    Returns:
        (B,) float64 in [0, 1]; NaN for empty masks.
    """
    inside = _token_masks(maps, masks, threshold)
    has_mass = (maps.flatten(1) > 0).any(dim=1)
    uniform = inside.flatten(1).double().mean(dim=1)
    return _nan_if_empty(torch.where(has_mass, mass_on_mask(maps, inside), uniform), inside)


def relevance_rank_accuracy(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Of the K highest-ranked tokens (K = tokens in the object), the share inside it.

    Ranking as everywhere in this package: descending, ties by token index (Arras et al.
    2022, at token level).

    Returns:
        (B,) float64 in [0, 1]; NaN for empty masks.
    """
    inside = _token_masks(maps, masks, threshold).flatten(1)
    order = rank_tokens(maps)                                   # (B, N)
    K = inside.sum(dim=1)
    ranks = torch.arange(order.shape[1], device=order.device).view(1, -1)
    top = ranks < K.view(-1, 1)                                 # first K of the order
    hits = (inside.gather(1, order) & top).sum(dim=1).double()
    return _nan_if_empty(hits / K.clamp_min(1).double(), inside)
