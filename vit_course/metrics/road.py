"""ROAD: RemOve And Debias (Rong et al., ICML 2022), with noisy linear imputation.

Removed pixels are not set to a constant (which leaks the mask's shape to the model) but
imputed from their neighbours: every removed pixel equals the weighted mean of its 8
neighbours (weight 1/6 for the 4 direct ones, 1/12 for the 4 diagonal ones; neighbours
outside the image are dropped and the weights renormalised), which couples all removed
pixels into one sparse linear system per image and channel; then Gaussian noise (std 0.01 in
[0, 1] pixel units) is added to the imputed pixels. The weights, the
renormalisation at the border and the noise follow the authors' ``NoisyLinearImputer`` and
``neighbors_weights`` in ``road/imputations.py`` of tleemann/road_evaluation (which builds the
sparse system and solves it with SciPy's ``spsolve``). Here the system is solved in torch, batched over images
and channels, by conjugate gradients (see :func:`linear_impute`), so SciPy is not needed.
Solving to the default relative residual 1e-5 leaves errors of a few 1e-4 in pixel units
on 224×224 images with 90 % of the tokens removed (about 250 iterations), well below the
0.01 noise that is added afterwards.

Differences from the reference, on purpose: removal is per patch token (maps live on the
patch grid) and ties in the ranking are broken by token index rather than by a random
1e-4 jitter; for "least relevant first" (LeRF) a fraction f removes the ``floor(f·N)``
least relevant tokens (the reference's ``remove=False`` with ``th_p=p`` *keeps* the top
``p`` instead, i.e. it equals LeRF with f = 1 - p).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import (
    channel_stats, check_choice, check_fractions, check_images, check_labels, check_maps,
    check_nonnegative_int, resolve_targets
)
from ..imaging import IMAGENET_MEAN, IMAGENET_STD
from ..runtime import SEED
from ._common import (
    LogitCache, fraction_counts, perturbed_logits, prefix_masks, rank_tokens, target_probability
)

ROAD_ORDERS = ("morf", "lerf")
ROAD_FRACTIONS = tuple(i / 10 for i in range(1, 10))
#: Neighbour weights of the linear imputation: 1/6 direct, 1/12 diagonal, 0 centre.
NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12),
                     (1 / 6, 0.0, 1 / 6),
                     (1 / 12, 1 / 6, 1 / 12))


def _neighbour_sum(x: Tensor, kernel: Tensor) -> Tensor:
    """Σ_j w_j x_j over in-image neighbours: (M, 1, H, W) → (M, 1, H, W) (zero padding = dropped).

    Runs as one depthwise convolution over M channels, several times faster on CPU than a
    single-channel convolution over a batch of M.
    """
    M, _, H, W = x.shape
    weight = kernel.expand(M, 1, 3, 3).contiguous()
    return F.conv2d(x.reshape(1, M, H, W), weight, padding=1, groups=M).view(M, 1, H, W)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-image inner products: (M, 1, H, W) × (M, 1, H, W) → (M, 1, 1, 1)."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1)).view(-1, 1, 1, 1)


def _solve(values: Tensor, known: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int, float]:
    """Solve the imputation system for M single-channel images by conjugate gradients.

    Args:
        values: (M, 1, H, W) float; only entries where ``known`` is True are used.
        known: (M, 1, H, W) bool. Every image needs at least one known pixel.
        tol: stop when every image's residual norm is <= tol × its right-hand side's norm.

    Returns:
        (filled images (M, 1, H, W), CG iterations used, largest relative residual).
    """
    kernel = torch.tensor(NEIGHBOUR_WEIGHTS, dtype=torch.float64).to(values).view(1, 1, 3, 3)
    miss = (~known).to(values.dtype)
    v = values * known                                          # known pixels, 0 elsewhere
    d = _neighbour_sum(torch.ones_like(values[:1]), kernel)    # (1, 1, H, W) Σ in-image weights
    b = _neighbour_sum(v, kernel).mul_(miss)                    # known neighbours → right side

    def A(x: Tensor) -> Tensor:                                 # x is 0 outside the missing set
        return torch.addcmul(-_neighbour_sum(x, kernel), d, x).mul_(miss)

    bb = _dot(b, b)
    n_known = known.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    start = v.sum(dim=(1, 2, 3), keepdim=True) / n_known        # mean of the known pixels …
    x = torch.where(bb > 0, start, 0.0) * miss                  # … or 0, the solution when b = 0
    r = b - A(x)
    p = r.clone()
    rr = _dot(r, r)
    bb = bb.clamp_min(torch.finfo(values.dtype).tiny)
    tol2 = tol * tol
    it = 0
    while it < max_iter:
        if it % 8 == 0 and bool((rr <= tol2 * bb).all()):
            break
        Ap = A(p)
        pAp = _dot(p, Ap)
        alpha = torch.where(pAp > 0, rr / pAp.clamp_min(torch.finfo(values.dtype).tiny), 0.0)
        x.addcmul_(p, alpha)
        r.addcmul_(Ap, -alpha)
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(values.dtype).tiny), 0.0)
        p.mul_(beta).add_(r)
        rr = rr_new
        it += 1
    rel = (rr / bb).sqrt().max().item()
    return torch.where(known, values, x), it, rel


def _check_noise(noise: Any) -> None:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
        raise ValueError(f"noise must be a finite number >= 0 (a pixel standard deviation), got {noise!r}; try 0.01.")


def linear_impute(images: Tensor, known: Tensor, *, tol: float = 1e-6, max_iter: int = 5000) -> Tensor:
    """Noise-free linear imputation: fill the unknown pixels from their neighbours.

    Solves, per image and channel, ``d_i x_i - Σ_{j unknown} w_ij x_j = Σ_{j known} w_ij v_j``
    for every unknown pixel i (w = :data:`NEIGHBOUR_WEIGHTS`, d_i = Σ of in-image neighbour
    weights), i.e. each unknown pixel is the weighted mean of its neighbours. The matrix is
    symmetric (w_ij = w_ji) and positive definite as soon as one pixel is known (every unknown
    region then touches a known pixel), so conjugate gradients converge; the matrix is never
    formed, A·x is one depthwise 3×3 convolution. CG starts from the mean of the known pixels
    (from 0 when the right-hand side is 0, which is then the exact solution) and stops when every system's residual norm is below ``tol`` times its right-hand side's
    norm. The solve runs in the images' dtype (float64 input → float64 solve). An image with
    no known pixel at all is filled with its per-channel mean (nothing to interpolate).

    Args:
        images: (B, C, H, W) float; values at known pixels are kept exactly.
        known: (B, H, W) bool, True where the pixel is kept.
        tol: relative residual tolerance. Default: 1e-6.
        max_iter: CG iteration limit (a RuntimeWarning is raised if it is hit first).

    Returns:
        (B, C, H, W) images, in the input dtype.
    """
    images = check_images(images, finite=True)
    B, C, H, W = images.shape
    if not isinstance(known, Tensor) or known.shape != (B, H, W):
        raise ValueError(f"known must be a bool tensor of shape {(B, H, W)} (one pixel mask per image), "
                         f"got {getattr(known, 'shape', type(known).__name__)}.")
    known = known.bool().to(images.device)
    vals = images.reshape(B * C, 1, H, W)
    kn = known.repeat_interleave(C, dim=0).unsqueeze(1)
    has_known = kn.any(dim=(1, 2, 3))
    out = vals.clone()
    if has_known.any():
        sel = has_known.nonzero().flatten()
        filled, it, rel = _solve(vals[sel], kn[sel], tol, max_iter)
        if rel > tol:
            warnings.warn(f"linear_impute: conjugate gradients stopped after {it} iterations with "
                          f"relative residual {rel:.2e} > tol={tol:g}; raise max_iter.",
                          RuntimeWarning, stacklevel=2)
        out[sel] = filled
    if (~has_known).any():
        sel = (~has_known).nonzero().flatten()
        out[sel] = vals[sel].mean(dim=(1, 2, 3), keepdim=True).expand_as(vals[sel])
    return out.reshape(B, C, H, W)


def noisy_linear_impute(images: Tensor, known: Tensor, *, noise: float = 0.01,
                        generator: torch.Generator | None = None, tol: float = 1e-6,
                        max_iter: int = 5000) -> Tensor:
    """ROAD's noisy linear imputation: :func:`linear_impute` plus N(0, noise²) on imputed pixels.

    Args:
        images: (B, C, H, W) in [0, 1] pixel units (before normalisation, as in ROAD).
        known: (B, H, W) bool, True where the pixel is kept.
        noise: standard deviation of the added Gaussian noise. Default: 0.01.
        generator: torch.Generator for the noise (CPU). Default: a fresh one seeded with SEED.

    Returns:
        (B, C, H, W) imputed images; known pixels are unchanged.
    """
    _check_noise(noise)
    out = linear_impute(images, known, tol=tol, max_iter=max_iter)
    if noise > 0:
        g = generator if generator is not None else torch.Generator().manual_seed(SEED)
        eps = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
        out = torch.where(known.bool().to(out.device).unsqueeze(1), out, out + noise * eps)
    return out


def road_curve(model: nn.Module, images: Tensor, maps: Tensor, labels: Any = None, target: Any = None, *,
               order: str = "morf", fractions: Sequence[float] = ROAD_FRACTIONS, noise: float = 0.01,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               seed: int | torch.Generator | None = SEED, batch_size: int = 64, progress: bool = True,
               tol: float = 1e-5, max_iter: int = 5000) -> dict[str, Any]:
    """ROAD curve: remove tokens by relevance, impute them (noisy linear), classify.

    For each fraction f the ``floor(f·N)`` most relevant (``order="morf"``; lower curve is
    better) or least relevant (``"lerf"``; higher is better) tokens are removed; their pixels
    are imputed in [0, 1] pixel space (images are un-normalised with ``mean``/``std``,
    imputed, re-normalised) with :func:`noisy_linear_impute`.

    Args:
        model: ``model(images) -> logits``.
        images: (B, C, H, W) normalised with ``mean``/``std``.
        maps: (B, h, w) explanations on the patch grid.
        labels: B labels for the accuracy curve; ``None`` uses the predicted class.
        target: class whose probability is recorded (``None`` = predicted class, int, B ints).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        fractions: removal fractions in [0, 1). Default: 0.1, …, 0.9.
        noise: imputation noise std in pixel units. Default: 0.01 (``NoisyLinearImputer``'s
            default in ``road/imputations.py``).
        mean, std: the images' normalisation. Default: ImageNet; ``(0,0,0)``/``(1,1,1)`` if
            the images are plain [0, 1] pixels.
        seed: int or torch.Generator for the noise; each perturbed image gets its own
            stream, so results do not depend on ``batch_size``.
        batch_size: images per forward pass (and per imputation solve). Default: 64.
        tol, max_iter: conjugate-gradient settings of the imputation.

    Returns:
        dict with ``"fractions"`` (F,), ``"order"``, ``"probs"`` (B, F) target-class
        probability and ``"correct"`` (B, F) 1.0 where the prediction equals the label.
    """
    images = check_images(images, finite=True)
    maps = check_maps(maps, images)
    check_choice(order, "order", ROAD_ORDERS)
    fractions = check_fractions(fractions)
    _check_noise(noise)
    B, C, H, W = images.shape
    m = channel_stats(mean, C, "mean", images)
    s = channel_stats(std, C, "std", images)
    base_seed = (int(torch.randint(2**62, (1,), generator=seed).item()) if isinstance(seed, torch.Generator)
                 else check_nonnegative_int(SEED if seed is None else seed, "seed", "or a torch.Generator."))
    cache = LogitCache()
    clean = cache.get("clean", model, lambda: images, batch_size)
    t = resolve_targets(target, clean)
    y = clean.argmax(dim=1) if labels is None else check_labels(labels, B, clean.shape[1]).to(clean.device)
    h, w = maps.shape[1:]
    order_idx = rank_tokens(maps, descending=(order == "morf")).to(images.device)
    masks = prefix_masks(order_idx, fraction_counts(fractions, h * w))

    def impute(x: Tensor, pix: Tensor, rows: Tensor) -> Tensor:
        pixels = x * s + m
        known = ~pix[:, 0]
        filled = linear_impute(pixels, known, tol=tol, max_iter=max_iter)
        if noise > 0:
            eps = torch.stack([torch.randn((C, H, W), dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(
                                               (base_seed * 1_000_003 + int(r)) % 2**63))
                               for r in rows]).to(filled.device, filled.dtype)
            filled = torch.where(known.unsqueeze(1), filled, filled + noise * eps)
        return (filled - m) / s

    logits = perturbed_logits(model, images, images, masks, (h, w), batch_size=batch_size,
                              progress=progress, desc=f"ROAD {order}", cache=cache,
                              key_off="clean", key_on="road:unreachable", impute=impute)
    return {"fractions": torch.tensor(fractions, dtype=torch.float64), "order": order,
            "probs": target_probability(logits, t),
            "correct": (logits.argmax(dim=2) == y.view(-1, 1)).double()}
