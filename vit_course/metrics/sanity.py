"""Sanity checks for saliency maps (Adebayo et al. 2018) and the similarity measures they use.

- :func:`cascading_randomization`: re-initialise the model from the top (classifier) down,
  one transformer block at a time (attention Q/K/V and output projections, MLP, norms), and
  compare each map with the original. A map that stays the same while the model is destroyed
  does not explain the model.
- :func:`class_sensitivity`: compare the map for the predicted class with the maps for the
  other classes. A map that does not change with the class explains the image, not the
  decision.

The model is never modified: randomisation works on a deep copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_images, check_numbers, check_positive_int, resolve_targets
from ..imaging import normalize_maps
from ..runtime import SEED
from ..explain import ExplainFn
from ._common import batch_logits, explain_maps

#: Parameter-name prefixes of the classifier end (final norm + head) for the supported models.
HEAD_PREFIXES = ("head.", "heads.", "norm.", "fc_norm.", "encoder.ln.", "head_drop.")
#: Where the transformer blocks live: course ViT, torchvision, timm.
BLOCK_CONTAINERS = ("transformer_encoder", "encoder.layers", "blocks")
#: Standard deviation of the re-initialisation (ViT's truncated-normal init scale).
REINIT_STD = 0.02


# ----------------------------------------------------------------------------- similarity
def rank_average(x: Tensor) -> Tensor:
    """Ranks 1..n along the last axis, ties get their average rank: (B, n) → (B, n) float64."""
    x = x.double()
    B, n = x.shape
    sv, idx = torch.sort(x, dim=1, stable=True)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[:, 1:] = sv[:, 1:] != sv[:, :-1]
    group = new.long().cumsum(dim=1) - 1                        # tie group of each sorted entry
    pos = torch.arange(n, dtype=torch.float64, device=x.device).expand(B, n)
    first = torch.full((B, n), float(n), dtype=torch.float64, device=x.device).scatter_reduce(
        1, group, pos, reduce="amin")
    last = torch.zeros((B, n), dtype=torch.float64, device=x.device).scatter_reduce(
        1, group, pos, reduce="amax")
    avg = ((first + last) / 2 + 1).gather(1, group)             # average rank of each sorted entry
    return torch.empty_like(avg).scatter_(1, idx, avg)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per item: Pearson correlation of average ranks.

    Args:
        a, b: (B, ...) with equal shapes; everything after the first axis is flattened.

    Returns:
        (B,) float64 in [-1, 1]; NaN where either input is constant (correlation undefined).
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"spearman needs two tensors of the same shape (B, ...), got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}.")
    ra = rank_average(check_numbers(a, "a").flatten(1))          # NaN / inf refused, not ranked
    rb = rank_average(check_numbers(b, "b").flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = (ra.pow(2).sum(dim=1) * rb.pow(2).sum(dim=1)).sqrt()
    num = (ra * rb).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def ssim(a: Tensor, b: Tensor, *, sigma: float = 1.5, window: int = 11, normalise: bool = True) -> Tensor:
    """Structural similarity (Wang et al. 2004) of two batches of maps, Gaussian window.

    Each map is min-max scaled to [0, 1] first (``normalise=True``), so the data range is 1
    and C1 = 0.01², C2 = 0.03². Local statistics use a Gaussian window (σ = 1.5) of
    ``min(window, h, w)`` pixels (made odd), "valid" positions only; the result is the mean
    of the SSIM map. Identical maps give exactly 1.

    Args:
        a, b: (B, h, w).
        sigma: window σ in tokens. Default: 1.5.
        window: largest window size. Default: 11 (a 14×14 map leaves 4×4 positions).
        normalise: scale each map to [0, 1] first. Default: True.

    Returns:
        (B,) float64 in [-1, 1].
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim needs two (B, h, w) tensors of the same shape, got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}.")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
        raise ValueError(f"sigma must be a positive number of tokens, got {sigma!r}; the default is 1.5.")
    check_positive_int(window, "window", "the largest window side in tokens, e.g. 11.")
    x, y = check_numbers(a, "a"), check_numbers(b, "b")
    x, y = (normalize_maps(x), normalize_maps(y)) if normalise else (x, y)
    h, w = x.shape[1:]
    k = min(window, h, w)
    k = k if k % 2 else k - 1
    g = torch.exp(-0.5 * ((torch.arange(k, dtype=torch.float64, device=x.device) - k // 2) / sigma) ** 2)
    g = g / g.sum()
    win = (g.view(-1, 1) * g.view(1, -1)).view(1, 1, k, k)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t.unsqueeze(1), win).squeeze(1)

    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx * mx
    vy = filt(y * y) - my * my
    cxy = filt(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------- randomisation
def randomization_steps(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The cascading-randomisation order: classifier end first, then blocks top-down, then embedding.

    Returns:
        ``[(step_name, parameter_names), ...]``: ``"head"`` (final norm and classifier), then
        ``"block L-1"`` … ``"block 0"`` (each block's attention — ``qkv``/``proj`` in the course
        ViT, ``in_proj_weight``/``out_proj`` in torchvision — MLP and norms), then
        ``"embedding"`` (patch projection, class token, position embedding).

    Raises:
        TypeError: a model without a recognised block container or head.
    """
    names = [n for n, _ in model.named_parameters()]
    container = None
    for path in BLOCK_CONTAINERS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, (nn.Sequential, nn.ModuleList)) and len(mod) > 0:
            container = (path, mod)
            break
    head = [n for n in names if n.startswith(HEAD_PREFIXES)]
    if container is None or not head:
        raise TypeError(f"cascading randomisation needs a ViT with blocks in one of {BLOCK_CONTAINERS} "
                        f"and a classifier under {HEAD_PREFIXES}; got {type(model).__name__}. "
                        "Supported: vit_course.models.ViT, torchvision VisionTransformer, timm ViT.")
    path, blocks = container
    steps = [("head", head)]
    in_blocks: set[str] = set()
    for i, (child, _) in reversed(list(enumerate(blocks.named_children()))):
        prefix = f"{path}.{child}."
        group = [n for n in names if n.startswith(prefix)]
        in_blocks.update(group)
        steps.append((f"block {i}", group))
    rest = [n for n in names if n not in in_blocks and n not in head]
    if rest:
        steps.append(("embedding", rest))
    return steps


@torch.no_grad()
def reinitialize_(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Re-draw the named parameters in place, deterministically from ``generator``.

    Rule: tensors with ≥ 2 dims (weights, in_proj_weight, class/position tokens) ~
    N(0, 0.02²) truncated at ±2σ (the ViT initialisation); 1-D ``…weight`` (norm scales) ~
    1 + N(0, 0.02²); other 1-D tensors (biases, norm shifts) ~ N(0, 0.02²).
    """
    params = dict(model.named_parameters())
    for n in names:
        p = params[n]
        new = torch.empty(p.shape, dtype=torch.float32)
        if p.ndim >= 2:
            nn.init.trunc_normal_(new, std=REINIT_STD, a=-2 * REINIT_STD, b=2 * REINIT_STD,
                                  generator=generator)
        else:
            new.normal_(0.0, REINIT_STD, generator=generator)
            if n.endswith("weight"):
                new += 1.0
        p.copy_(new.to(p.dtype))


def cascading_randomization(model: nn.Module, images: Tensor, explain_fn: ExplainFn, target: Any = None,
                            *, seed: int = SEED, absolute: bool = False, progress: bool = True
                            ) -> dict[str, Any]:
    """Model-parameter randomisation test, cascading from the top (Adebayo et al. 2018).

    A deep copy of ``model`` is randomised step by step (see :func:`randomization_steps`;
    step k keeps the randomisation of steps 0..k-1); after each step the maps are recomputed
    for the same target classes (those of the original model) and compared with the original
    maps by Spearman rank correlation and SSIM. Step k's new weights come from a generator
    seeded with ``seed + k``, so a run is reproducible. ``model`` itself is never changed.

    Args:
        model: the trained model.
        images: (B, C, H, W).
        explain_fn: an :data:`~vit_course.metrics.ExplainFn`, called as
            ``explain_fn(model, images, target=t)`` → (B, h, w).
        target: ``None`` (class predicted by the original model), an int, or B ints.
        seed: randomisation seed. Default: SEED.
        absolute: compare absolute values of the maps (as Adebayo et al. also report).
        progress: tqdm bar over the steps.

    Returns:
        dict with ``"steps"`` (S names), ``"spearman"`` and ``"ssim"`` (S, B) float64, and
        ``"maps"`` (S+1, B, h, w): the original maps first, then each step's.
    """
    from tqdm.auto import tqdm

    images = check_images(images, finite=True)
    t = resolve_targets(target, batch_logits(model, images, images.shape[0]))
    original = explain_maps(explain_fn, model, images, t)
    plan = randomization_steps(model)
    work = copy.deepcopy(model)
    maps = [original]
    rho, sim = [], []
    ref = original.abs() if absolute else original
    for k, (name, group) in enumerate(tqdm(plan, desc="randomise", disable=not progress, leave=False)):
        reinitialize_(work, group, torch.Generator().manual_seed(seed + k))
        m = explain_maps(explain_fn, work, images, t)
        maps.append(m)
        cmp = m.abs() if absolute else m
        rho.append(spearman(ref, cmp))
        sim.append(ssim(ref, cmp))
    return {"steps": [name for name, _ in plan], "spearman": torch.stack(rho),
            "ssim": torch.stack(sim), "maps": torch.stack(maps)}


def class_sensitivity(model: nn.Module, images: Tensor, explain_fn: ExplainFn, *, others: str = "all"
                      ) -> dict[str, Tensor]:
    """Does the map change with the class? Spearman correlation of the map for the predicted
    class with the map for other classes (high correlation = class-insensitive).

    Args:
        model, images, explain_fn: as in :func:`cascading_randomization`.
        others: ``"all"`` (every other class; K-1 explanations per image) or ``"lowest"``
            (only the least likely class; use it for models with many classes).

    Returns:
        dict with ``"predicted"`` (B,), ``"classes"`` (B, J) the other classes compared,
        ``"spearman"`` (B, J) and ``"mean"`` (B,) the mean over the J classes.
    """
    check_choice(others, "others", ("all", "lowest"))
    images = check_images(images, finite=True)
    logits = batch_logits(model, images, images.shape[0])
    B, K = logits.shape
    if K < 2:
        raise ValueError("class sensitivity needs a model with at least 2 classes.")
    order = logits.argsort(dim=1, descending=True, stable=True)   # (B, K), predicted first
    pred = order[:, 0]
    classes = order[:, 1:] if others == "all" else order[:, -1:]
    ref = explain_maps(explain_fn, model, images, pred)
    rho = torch.stack([spearman(ref, explain_maps(explain_fn, model, images, classes[:, j]))
                       for j in range(classes.shape[1])], dim=1)
    return {"predicted": pred, "classes": classes, "spearman": rho, "mean": rho.nanmean(dim=1)}
