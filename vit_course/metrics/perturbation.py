"""Perturbation metrics at token level: deletion / insertion (Petsiuk et al. 2018, RISE) and
the perturbation test of Chefer et al. (2021).

Both rank the patch tokens by the explanation map and replace whole p×p pixel blocks. All
(image, step) perturbations are stacked and run ``batch_size`` at a time; the unperturbed
image and the fully perturbed one are each run once per image and shared (see
:class:`~vit_course.metrics._common.LogitCache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import (
    channel_stats, check_choice, check_images, check_labels, check_maps, check_numbers,
    check_positive_int, resolve_targets
)
from ..imaging import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur
from ..explain.families import family_of
from ._common import (
    LogitCache, dropped_logits, fraction_counts, perturbed_logits, prefix_masks, rank_tokens,
    target_probability, token_counts
)

BASELINES = ("blur", "mean", "zero")
#: Deletion/insertion baselines: an image (:data:`BASELINES`) or ``"token_drop"``: removed
#: patches' tokens leave the sequence (class token and position embeddings kept).
CURVE_BASELINES = BASELINES + ("token_drop",)
#: What Chefer's test puts in place of a removed token: black pixels or nothing (token drop).
CHEFER_BASELINES = ("black", "token_drop")
#: Gaussian blur baseline: σ = 5 px, kernel 2·ceil(3σ)+1 = 31 px, reflect padding.
BLUR_SIGMA = 5.0
#: Removal fractions of the Chefer et al. perturbation test: 0 %, 10 %, …, 90 %.
CHEFER_FRACTIONS = tuple(i / 10 for i in range(10))


# ----------------------------------------------------------------------------- baselines
def make_baseline(images: Tensor, baseline: str = "blur") -> Tensor:
    """The image every token is replaced with (deletion) or revealed on (insertion).

    Args:
        images: (B, C, H, W), in the model's input space (normalised or not).
        baseline: ``"blur"`` (:func:`vit_course.imaging.gaussian_blur` with σ =
            :data:`BLUR_SIGMA` = 5 px: 31-px kernel, reflect padding), ``"mean"`` (each
            channel's mean over the image) or ``"zero"`` (all zeros in the model's input
            space; for ImageNet-normalised inputs that is the dataset's mean colour).

    Returns:
        (B, C, H, W) baseline images.
    """
    check_choice(baseline, "baseline", BASELINES)
    images = check_images(images, finite=True)
    if baseline == "blur":
        return gaussian_blur(images, BLUR_SIGMA)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    return torch.zeros_like(images)


# ----------------------------------------------------------------------------- deletion / insertion
def _curve(model: nn.Module, images: Tensor, maps: Tensor, target: Any, steps: int, baseline: str,
           batch_size: int, progress: bool, insertion: bool, cache: LogitCache | None = None,
           baseline_images: Tensor | None = None, precision: str = "float32") -> Tensor:
    images = check_images(images, finite=True)
    maps = check_maps(maps, images)
    steps = check_positive_int(steps, "steps", "the number of perturbation steps, e.g. 20.")
    if steps > max(maps[0].numel(), 100):
        raise ValueError(f"steps={steps} is more than the {maps[0].numel()} tokens (or 100); use e.g. steps=20.")
    check_choice(baseline, "baseline", CURVE_BASELINES)
    if baseline == "token_drop":
        family_of(model)                    # refuse other models before any work
    cache = cache or LogitCache(precision)
    clean = cache.get("clean", model, lambda: images, batch_size)
    t = resolve_targets(target, clean)
    h, w = maps.shape[1:]
    masks = prefix_masks(rank_tokens(maps).to(images.device), token_counts(steps, h * w))
    if baseline == "token_drop":           # insertion keeps the revealed tokens, deletion the others
        logits = dropped_logits(model, images, masks if insertion else ~masks, batch_size=batch_size,
                                progress=progress, desc="insertion" if insertion else "deletion",
                                cache=cache)
        return target_probability(logits, t)
    base = baseline_images if baseline_images is not None else make_baseline(images, baseline)
    # insertion: masked tokens show the image, the rest the baseline; deletion: the reverse
    off, on = (base, images) if insertion else (images, base)
    keys = ("clean", f"baseline:{baseline}")
    key_off, key_on = keys[::-1] if insertion else keys
    logits = perturbed_logits(model, off, on, masks, (h, w), batch_size=batch_size, progress=progress,
                              desc="insertion" if insertion else "deletion", cache=cache,
                              key_off=key_off, key_on=key_on)
    return target_probability(logits, t)


def deletion_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Any = None, *,
                   steps: int = 20, baseline: str = "blur", batch_size: int = 64,
                   progress: bool = True, precision: str = "float32") -> Tensor:
    """Deletion curve (RISE): remove the most relevant tokens first, watch the class probability.

    Tokens are ranked by ``maps`` (descending; equal values by token index). At step k the
    ``ceil(k·N/steps)`` top tokens' p×p pixel blocks are replaced by the baseline image's
    pixels. A faithful map makes the probability fall fast (low :func:`auc`).

    Args:
        model: ``model(images) -> logits (B, K)``; run in eval mode, restored afterwards.
        images: (B, C, H, W) model inputs.
        maps: (B, h, w) explanations on the patch grid (H % h == W % w == 0).
        target: ``None`` (class predicted on the unperturbed image), an int, or B ints.
        steps: number of steps S; the curve has S+1 points, x = k/S. Default: 20.
        baseline: ``"blur"`` | ``"mean"`` | ``"zero"``, see :func:`make_baseline`, or
            ``"token_drop"``: removed tokens leave the sequence (class token and position
            embeddings kept; supported model families only), so no pixel is invented and a
            forward over k tokens costs about k/N of a full one. Default: blur.
        batch_size: perturbed images per forward pass. Default: 64.
        progress: tqdm bar over forward passes. Default: True.
        precision: ``"float32"`` or ``"bfloat16"`` (faster forwards on CPUs with bfloat16
            instructions, numbers a little different), see
            :data:`vit_course.metrics.PRECISIONS`. Default: ``"float32"``.

    Returns:
        (B, steps+1) softmax probability of the target class; column 0 is the unperturbed image,
        column S the full baseline.

    Example::

        curve = deletion_curve(model, images, maps, steps=10)   # (B, 11)
        auc(curve)                                               # (B,), lower is better
    """
    return _curve(model, images, maps, target, steps, baseline, batch_size, progress, insertion=False,
                  precision=precision)


def insertion_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Any = None, *,
                    steps: int = 20, baseline: str = "blur", batch_size: int = 64,
                    progress: bool = True, precision: str = "float32") -> Tensor:
    """Insertion curve (RISE): reveal the most relevant tokens first on top of the baseline.

    Same ranking and step counts as :func:`deletion_curve`; at step k the top
    ``ceil(k·N/steps)`` tokens show the image and every other token shows the baseline. A
    faithful map makes the probability rise fast (high :func:`auc`). Arguments as for
    :func:`deletion_curve`.

    Returns:
        (B, steps+1) target-class probabilities; column 0 is the full baseline, column S the
        unperturbed image.
    """
    return _curve(model, images, maps, target, steps, baseline, batch_size, progress, insertion=True,
                  precision=precision)


def auc(curve: Any) -> Tensor:
    """Area under a curve sampled at x = k/S, k = 0..S, by the trapezoid rule on [0, 1].

    Args:
        curve: (..., S+1) values (tensor, array or list), S >= 1.

    Returns:
        (...) areas: ``sum_k (y_k + y_{k+1}) / 2 · (1/S)``.
    """
    y = check_numbers(curve, "curve")
    if y.ndim == 0 or y.shape[-1] < 2:
        raise ValueError(f"curve needs at least 2 points along its last axis (steps >= 1), "
                         f"got shape {tuple(y.shape)}.")
    S = y.shape[-1] - 1
    return ((y[..., :-1] + y[..., 1:]) / 2).sum(dim=-1) / S


# ----------------------------------------------------------------------------- Chefer et al.
def chefer_auc(accuracy: Any) -> Tensor:
    """Area under a perturbation-test curve, by the trapezoid rule on x = 0, 0.1, …, 0.9.

    The accuracies a_0..a_9 after removing 0 %, 10 %, …, 90 % of the tokens (a_0 is the
    unperturbed accuracy) are integrated over the removed fraction::

        AUC = sum_{i=0}^{8} (a_i + a_{i+1}) / 2 · 0.1  =  np.trapz(a, x),  x = 0, 0.1, …, 0.9

    No point is added for 100 % removal, so a constant curve of 1 gives 0.9.

    Source: the first author's answers in hila-chefer/Transformer-Explainability, issue #27
    (the perturbation test gives the accuracy at 0 %, 10 %, …, 90 % removal; the AUC is
    ``np.trapz`` of those results) and issue #31 (``np.trapz(y, x) * 100``, with the
    network's unperturbed accuracy at x = 0). The repository itself has no AUC code: its
    ``baselines/ViT/pertubation_eval_from_hdf5.py`` records the per-step accuracies only.
    Their tables report the value × 100. The formula is linear, so the mean of per-image
    AUCs equals the AUC of the mean curve.

    Args:
        accuracy: (..., 10) accuracies (or 0/1 hits) at 0 %, 10 %, …, 90 % removal.

    Returns:
        (...) float64 AUC values in [0, 0.9].
    """
    a = check_numbers(accuracy, "accuracy")
    if a.ndim == 0 or a.shape[-1] != 10:
        raise ValueError(f"chefer_auc expects 10 values per curve (0 %, 10 %, …, 90 % removal), "
                         f"got shape {tuple(a.shape)}.")
    return ((a[..., :-1] + a[..., 1:]) / 2 * 0.1).sum(dim=-1)


def _chefer_curves(model: nn.Module, images: Tensor, maps: Tensor, labels: Any, mean: Any, std: Any,
                   batch_size: int, progress: bool, cache: LogitCache | None = None,
                   precision: str = "float32", baseline: str = "black") -> dict[str, Tensor]:
    images = check_images(images, finite=True)
    maps = check_maps(maps, images)
    if check_choice(baseline, "baseline", CHEFER_BASELINES) == "token_drop":
        family_of(model)
    cache = cache or LogitCache(precision)
    B, C = images.shape[:2]
    m = channel_stats(mean, C, "mean", images)
    s = channel_stats(std, C, "std", images)
    black = ((0.0 - m) / s).expand_as(images)          # pixel value 0 before normalisation
    clean = cache.get("clean", model, lambda: images, batch_size)
    K = clean.shape[1]
    y = clean.argmax(dim=1) if labels is None else check_labels(labels, B, K).to(clean.device)
    h, w = maps.shape[1:]
    counts = fraction_counts(CHEFER_FRACTIONS, h * w)
    out: dict[str, Tensor] = {"fractions": torch.tensor(CHEFER_FRACTIONS, dtype=torch.float64)}
    for name, descending in (("positive", True), ("negative", False)):
        masks = prefix_masks(rank_tokens(maps, descending=descending).to(images.device), counts)
        if baseline == "token_drop":
            logits = dropped_logits(model, images, ~masks, batch_size=batch_size, progress=progress,
                                    desc=f"chefer {name}", cache=cache)
        else:
            logits = perturbed_logits(model, images, black, masks, (h, w), batch_size=batch_size,
                                      progress=progress, desc=f"chefer {name}", cache=cache,
                                      key_off="clean", key_on="chefer:black")
        out[name] = (logits.argmax(dim=2) == y.view(-1, 1)).double()   # (B, 10) hits
        out[f"{name}_auc"] = chefer_auc(out[name])
    return out


def perturbation_test(model: nn.Module, images: Tensor, maps: Tensor, labels: Any = None, *,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      batch_size: int = 64, progress: bool = True, precision: str = "float32",
                      baseline: str = "black") -> dict[str, Tensor]:
    """Positive and negative perturbation test of Chefer et al. (2021), at token level.

    For fractions f = 0 %, 10 %, …, 90 %, the ``floor(f·N)`` most relevant tokens
    (positive; ties by token index) or least relevant tokens (negative; ascending order, ties
    by token index) are set to pixel value 0 *before normalisation*, i.e. to ``(0 - mean)/std``
    in the model's input space, and top-1 accuracy is recorded. Positive: lower AUC is
    better; negative: higher is better.

    Differences from the authors' script (``baselines/ViT/pertubation_eval_from_hdf5.py`` in
    hila-chefer/Transformer-Explainability), on purpose: it ranks the 224·224 pixels of
    the stored map and sets the top ``int(f·224·224)`` of them to 0 (``torch.topk`` +
    ``scatter_``); here whole patches are removed (the maps live on the patch grid),
    ``floor(f·N)`` of them, ties broken by token index.

    Args:
        model: ``model(images) -> logits``.
        images: (B, C, H, W) normalised with ``mean``/``std``.
        maps: (B, h, w) explanations on the patch grid.
        labels: B ground-truth labels (the script compares with the dataset's ``target``);
            ``None`` scores against the class predicted on the unperturbed image, so every
            curve starts at 1.
        mean, std: the normalisation the images went through. Default: ImageNet (the
            course's transforms). For images that were not normalised pass
            ``mean=(0, 0, 0), std=(1, 1, 1)``. (The script's ``normalize`` uses 0.5/0.5 for
            its ViT.)
        batch_size: perturbed images per forward pass. Default: 64.
        progress: tqdm bars. Default: True.
        precision: ``"float32"`` or ``"bfloat16"``, as in :func:`deletion_curve`.
        baseline: ``"black"`` (the paper's) or ``"token_drop"`` (removed tokens leave the
            sequence, see :func:`deletion_curve`). Default: ``"black"``.

    Returns:
        dict with ``"fractions"`` (10,), ``"positive"`` and ``"negative"`` (B, 10) hits (1.0
        if the perturbed image is classified as the label), ``"positive_auc"`` and
        ``"negative_auc"`` (B,) from :func:`chefer_auc`.
    """
    return _chefer_curves(model, images, maps, labels, mean, std, batch_size, progress, precision=precision,
                          baseline=baseline)
