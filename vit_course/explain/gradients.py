"""Input-gradient explanations: saliency, SmoothGrad and integrated gradients.

These methods do not look inside the transformer: they differentiate the target logit
y_c with respect to the input pixels, so they work for any differentiable classifier
and give one value per pixel. For a ViT the pixel maps show a checkerboard: every 16×16
patch goes through the same linear patch projection, so the gradient inside a patch
repeats the projection's weight pattern. :func:`~.methods.pool_to_grid` averages each
patch, which puts the maps on the same (h, w) grid as the attention methods;
``explain(..., resolution="pixels")`` returns the (B, H, W) pixel maps instead.

Methods (registered for :func:`vit_course.explain.explain`):

- ``saliency`` — Simonyan, Vedaldi, Zisserman 2014, "Deep Inside Convolutional Networks":
  M(x) = max_c |∂y_c/∂x_c,i,j| (absolute gradient, maximum over colour channels).
  One forward and one backward pass for the batch.
- ``smoothgrad`` — Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise":
  the mean of the *absolute* gradients over ``n_samples`` noisy copies x + ε,
  ε ~ N(0, σ²) with σ = ``noise_level`` · (max(x) − min(x)) of each image (the paper's
  noise level, 10–20 % works well), then the maximum over channels. Taking |·| before the
  mean is what Captum's ``NoiseTunnel(Saliency(model))`` (``nt_type="smoothgrad"``) does
  (``Saliency.attribute`` defaults to ``abs=True`` in ``captum/attr/_core/saliency.py``,
  and ``NoiseTunnel`` averages those attributions), and it is tested against it. Noise comes from a ``torch.Generator`` seeded with
  ``seed``, and every image gets the same standard-normal draws, so maps are
  reproducible and independent of the rest of the batch.
- ``integrated_gradients`` — Sundararajan, Taly, Yan 2017, "Axiomatic Attribution for
  Deep Networks": IG(x) = (x − x') ⊙ ∫₀¹ ∂y_c(x' + α(x − x'))/∂x dα for a baseline x',
  approximated with ``steps`` points of the quadrature ``rule`` (default
  ``"gausslegendre"``, the default ``method`` of Captum's ``IntegratedGradients.attribute``;
  the Riemann rules of ``captum/attr/_utils/approximation_methods.py`` are available too).
  The option is called ``rule`` because ``method`` names the explainer in
  :func:`~vit_course.explain.explain`. The map is the sum over channels (signed);
  completeness says its total is y_c(x) − y_c(x') (see :func:`integrated_gradients`'s
  ``delta``). Baselines (:func:`ig_baseline`): ``"black"`` (pixel value 0: pass the
  normalisation's ``mean``/``std`` so it becomes (0 − mean)/std in model space; without
  them it is 0 in the model's input space, which is black for inputs from
  ``simple_transform``), ``"blur"`` (a Gaussian blur of the image, Sturmfels et al. 2020,
  "Visualizing the Impact of Feature Attribution Baselines") or a tensor.

Every method accepts the usual ``target`` (``None`` = predicted class, an int, or one
int per image), processes large jobs in chunks of ``internal_batch_size`` images per
forward/backward pass, runs the model in eval mode and restores every module's training
flag afterwards. Parameters' ``requires_grad`` are not touched.

Shapes: B batch, C channels, H×W pixels, h×w patch grid, K classes, S samples or steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import channel_stats, check_choice, check_positive_int, check_targets, \
    resolve_targets
from ..imaging import gaussian_blur
from ..runtime import eval_mode
from .families import ModelInfo, logits_of
from .methods import RESOLUTIONS, Explainer, gradient_inputs, register_method


#: Quadrature rules for integrated gradients (Captum's ``method`` names,
#: ``captum/attr/_utils/approximation_methods.py``).
IG_RULES: tuple[str, ...] = ("gausslegendre", "riemann_left", "riemann_right",
                               "riemann_middle", "riemann_trapezoid")
_BATCH_FIX = "it is the number of images per forward/backward pass, e.g. 16."


# ----------------------------------------------------------------------------- model handling
def resolve_input_targets(model: nn.Module, info: ModelInfo, x: Tensor,
                          target: object) -> Tensor:
    """One class index per image: checked against K without a forward pass when the
    model states K; ``None`` (or a model that does not state K) costs one no-grad forward.

    Returns:
        (B,) long on ``x``'s device.
    """
    if target is not None and info.num_classes is not None:
        return check_targets(target, x.shape[0], info.num_classes).to(x.device)
    with torch.no_grad(), eval_mode(model):
        logits = logits_of(model, x)
    return resolve_targets(target, logits)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


# ----------------------------------------------------------------------------- gradients
def input_gradients(model: nn.Module, inputs: Tensor, targets: Tensor | None,
                    internal_batch_size: int = 16) -> Tensor:
    """∂ logits[n, targets[n]] / ∂ inputs[n] for every row n, in chunks.

    Images do not interact in a ViT (no batch norm), so one backward pass of the summed
    selected logits gives each image its own gradient. The model must already be in the
    mode you want (use :func:`eval_mode`).

    Args:
        inputs: (N, C, H, W) on the model's device.
        targets: (N,) class indices, or ``None`` for each row's predicted class (read from
            the same forward pass).
        internal_batch_size: images per forward/backward pass. Default: 16.

    Returns:
        (N, C, H, W), detached.
    """
    out = torch.empty_like(inputs)
    for sl in _chunks(inputs.shape[0], internal_batch_size):
        with torch.enable_grad():
            x = inputs[sl].detach().requires_grad_(True)
            logits = logits_of(model, x)
            t = resolve_targets(None, logits) if targets is None else targets[sl].to(x.device)
            (out[sl],) = torch.autograd.grad(logits.gather(1, t.view(-1, 1)).sum(), x)
    return out


def saliency(model: nn.Module, images: Tensor, target: object = None,
             internal_batch_size: int = 16) -> Tensor:
    """Saliency (Simonyan et al. 2014): max over channels of |∂y_c/∂x|.

    Args:
        model: a supported ViT (run in eval mode, restored afterwards).
        images: (B, C, H, W), transformed for the model.
        target: ``None`` (predicted class), an int, or B ints. Default: ``None``.
        internal_batch_size: images per forward/backward pass. Default: 16.

    Returns:
        (B, H, W) non-negative pixel map.
    """
    check_positive_int(internal_batch_size, "internal_batch_size", _BATCH_FIX)
    info, x = gradient_inputs(model, images)
    with eval_mode(model):          # target None: one pass, the prediction of the same forward
        t = None if target is None else resolve_input_targets(model, info, x, target)
        grads = input_gradients(model, x, t, internal_batch_size)
    return grads.abs().amax(dim=1)


def smoothgrad(model: nn.Module, images: Tensor, target: object = None, n_samples: int = 25,
               noise_level: float = 0.15, seed: int = 0,
               internal_batch_size: int = 16) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017) on absolute gradients, max over channels.

    For each image, ``n_samples`` copies x + ε with ε ~ N(0, σ²),
    σ = ``noise_level`` · (max(x) − min(x)); the map is max_c mean_s |∂y_c/∂x(x + ε_s)|.
    Every image gets the same standard-normal draws ε_s/σ (one (n_samples, C, H, W) draw
    from a generator seeded with ``seed``, scaled by each image's σ), so a map does not
    depend on the other images in the batch; for one image these are the numbers Captum's
    ``NoiseTunnel`` draws after ``torch.manual_seed(seed)``. The noisy copies of all
    images are run ``internal_batch_size`` at a time.

    Args:
        model: a supported ViT.
        images: (B, C, H, W).
        target: ``None`` (class predicted for the clean image), an int, or B ints.
        n_samples: noisy copies per image. Default: 25.
        noise_level: σ as a fraction of each image's value range, in [0, 1]. Default: 0.15.
        seed: seed of the noise generator. Default: 0.
        internal_batch_size: images per forward/backward pass. Default: 16.

    Returns:
        (B, H, W) non-negative pixel map.
    """
    _check_smoothgrad(n_samples, noise_level, seed)
    check_positive_int(internal_batch_size, "internal_batch_size", _BATCH_FIX)
    info, x = gradient_inputs(model, images)
    B = x.shape[0]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    eps = torch.randn((n_samples, *x.shape[1:]), generator=gen, device=x.device,
                      dtype=x.dtype)                       # the same draws for every image
    sigma = noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))      # (B,)
    total = torch.zeros_like(x)
    with eval_mode(model):
        t = resolve_input_targets(model, info, x, target)
        # Row n = b * n_samples + s is image b with noise draw s; built chunk by chunk.
        for sl in _chunks(B * n_samples, internal_batch_size):
            n = torch.arange(sl.start, sl.stop, device=x.device)
            b, k = n // n_samples, n % n_samples
            noisy = x[b] + sigma[b].view(-1, 1, 1, 1) * eps[k]
            g = input_gradients(model, noisy, t[b], internal_batch_size)
            total.index_add_(0, b, g.abs())
    return (total / n_samples).amax(dim=1)


def _check_smoothgrad(n_samples: object, noise_level: object, seed: object) -> None:
    check_positive_int(n_samples, "n_samples",
                       "it is the number of noisy copies per image (the paper uses 50).")
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) \
            or not 0.0 <= float(noise_level) <= 1.0:
        raise ValueError(f"noise_level must be a float in [0, 1] (σ as a fraction of each "
                         f"image's value range), got {noise_level!r}; the paper suggests "
                         "0.1-0.2.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")


# ----------------------------------------------------------------------------- IG
def ig_rule(rule: str, steps: int) -> tuple[Tensor, Tensor]:
    """Points α_k ∈ [0, 1] and weights w_k of the quadrature ``rule`` with ``steps`` points.

    ∫₀¹ g(α) dα ≈ Σ_k w_k g(α_k). Gauss–Legendre: the Legendre nodes and weights mapped
    from [−1, 1] to [0, 1]. Riemann rules: equal widths 1/steps at the left ends, right
    ends or midpoints; the trapezoid rule uses ``steps`` equally spaced points including
    0 and 1 with weights 1/steps, halved at both ends (Captum's convention in
    ``riemann_builders()``: ``step_sizes`` 1/n halved at both ends, ``alphas``
    ``linspace(0, 1, n)``; the weights sum to 1 − 1/steps). Tested against Captum's
    ``approximation_parameters`` for every rule.

    Returns:
        (alphas, weights), each (steps,) float64.
    """
    if rule not in IG_RULES:
        raise ValueError(f"rule must be one of {list(IG_RULES)}, got {rule!r}")
    minimum = 1 if rule == "gausslegendre" else 2
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise ValueError(f"steps must be an int >= {minimum} for rule {rule!r}, got "
                         f"{steps!r}; 20-300 points are usual (cost ≈ 3 × steps forward "
                         "passes).")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1.0)), torch.from_numpy(0.5 * weights)
    w = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        w[0] /= 2
        w[-1] /= 2
        return torch.linspace(0.0, 1.0, steps, dtype=torch.float64), w
    start = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    return (torch.arange(steps, dtype=torch.float64) + start) / steps, w


def _check_ig(baseline: object, mean: object, std: object, blur_sigma: object) -> None:
    if not isinstance(baseline, Tensor) and baseline not in ("black", "blur"):
        raise ValueError(f"baseline must be 'black', 'blur' or a tensor in the model's "
                         f"input space, got {baseline!r}")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (the transform's normalisation) or "
                         f"neither; got mean={mean!r}, std={std!r}")
    if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)) \
            or not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be a positive number of pixels, got "
                         f"{blur_sigma!r}")


def ig_baseline(images: Tensor, baseline: object = "black", mean: object = None,
                std: object = None, blur_sigma: float = 8.0) -> Tensor:
    """The reference input x' of integrated gradients, in the model's input space.

    (Not :func:`vit_course.metrics.make_baseline`, the perturbation metrics' fill-in,
    whose default is a blur.)

    Args:
        images: (B, C, H, W) model inputs.
        baseline: ``"black"``, ``"blur"``, or a tensor (C, H, W) / (B, C, H, W) already in
            model space. Default: ``"black"``.
        mean, std: the normalisation the transform applied (e.g. ImageNet's
            ``(0.485, 0.456, 0.406)``, ``(0.229, 0.224, 0.225)``); only used by
            ``"black"``, whose pixels of value 0 become (0 − mean)/std. Without them black
            is 0 in model space (right for unnormalised inputs). Default: ``None``.
        blur_sigma: Gaussian σ in pixels for ``"blur"`` (kernel radius ceil(3σ), at most
            one pixel less than the image side). Default: 8.0.

    Returns:
        (B, C, H, W).
    """
    _check_ig(baseline, mean, std, blur_sigma)
    B, C, H, W = images.shape
    if isinstance(baseline, Tensor):
        base = baseline.to(device=images.device, dtype=images.dtype)
        if base.shape == (C, H, W):
            base = base.unsqueeze(0)
        if base.shape[1:] != (C, H, W) or base.shape[0] not in (1, B):
            raise ValueError(f"a baseline tensor must be (C, H, W) = {(C, H, W)} or (B, C, H, W) "
                             f"= {(B, C, H, W)} in the model's input space, got "
                             f"{tuple(baseline.shape)}")
        return base.expand(B, C, H, W)
    if baseline == "blur":
        radius = min(max(1, math.ceil(3 * blur_sigma)), H - 1, W - 1) if min(H, W) > 1 else 0
        return gaussian_blur(images, blur_sigma, kernel_size=2 * radius + 1)
    if mean is None:
        return torch.zeros_like(images)
    m = channel_stats(mean, C, "mean", images)
    s = channel_stats(std, C, "std", images)
    return ((0.0 - m) / s).expand(B, C, H, W).clone()


def integrated_gradients(model: nn.Module, images: Tensor, target: object = None,
                         baseline: object = "black", steps: int = 50,
                         rule: str = "gausslegendre", mean: object = None,
                         std: object = None, blur_sigma: float = 8.0,
                         internal_batch_size: int = 16, return_delta: bool = False
                         ) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated gradients (Sundararajan et al. 2017) per input value.

    The interpolated images x' + α_k (x − x') of all steps (and images) are stacked and
    run ``internal_batch_size`` at a time, so a batch costs about 3 × ``steps`` plain
    forward passes of itself (plus one forward when ``target`` is ``None``).

    Args:
        model: a supported ViT.
        images: (B, C, H, W).
        target: ``None`` (class predicted for the input), an int, or B ints.
        baseline, mean, std, blur_sigma: see :func:`ig_baseline`. Default: ``"black"``.
        steps: quadrature points. Default: 50 (Captum's default ``n_steps``).
        rule: one of :data:`IG_RULES` (Captum's ``method``). Default: ``"gausslegendre"``
            (Captum's default).
        internal_batch_size: images per forward/backward pass. Default: 16.
        return_delta: also return the completeness gap (Captum's convergence delta); it
            costs two more forward passes of the batch. Default: ``False``.

    Returns:
        attributions (B, C, H, W); with ``return_delta=True`` the pair
        ``(attributions, delta)`` where delta (B,) = Σ attributions − (y_c(x) − y_c(x')),
        which goes to 0 as ``steps`` grows (completeness).

    Example::

        attr, delta = integrated_gradients(model, x, target=1, steps=32, return_delta=True)
        attr.shape, delta.abs().max()      # (B, 3, 224, 224), small
    """
    check_positive_int(internal_batch_size, "internal_batch_size", _BATCH_FIX)
    alphas, weights = ig_rule(rule, steps)
    info, x = gradient_inputs(model, images)
    base = ig_baseline(x, baseline, mean, std, blur_sigma).detach()
    with eval_mode(model):
        t = resolve_input_targets(model, info, x, target)
        B = x.shape[0]
        a = alphas.to(device=x.device, dtype=x.dtype)
        w = weights.to(x.device)
        diff = x - base
        total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        # Row n = b * steps + k is image b at point k; built chunk by chunk, so memory
        # stays at internal_batch_size images whatever B and steps are.
        for sl in _chunks(B * steps, internal_batch_size):
            n = torch.arange(sl.start, sl.stop, device=x.device)
            b, k = n // steps, n % steps
            points = base[b] + a[k].view(-1, 1, 1, 1) * diff[b]
            g = input_gradients(model, points, t[b], internal_batch_size)
            total.index_add_(0, b, g.double() * w[k].view(-1, 1, 1, 1))
        attributions = (diff.double() * total).to(x.dtype)
        if not return_delta:
            return attributions
        with torch.no_grad():
            ends = torch.cat([x, base])
            y = torch.cat([logits_of(model, ends[sl]) for sl in _chunks(2 * B,
                                                                       internal_batch_size)])
            y = y.gather(1, torch.cat([t, t]).view(-1, 1)).squeeze(1)
    delta = attributions.flatten(1).double().sum(1) - (y[:B] - y[B:]).double()
    return attributions, delta.to(x.dtype)


# ----------------------------------------------------------------------------- explainers
class InputGradientExplainer(Explainer):
    """Base for methods computed from gradients with respect to the input pixels.

    :meth:`compute` returns the (B, H, W) pixel map (it shows the patch checkerboard); the
    base class averages it over each patch to the (B, h, w) grid every explainer returns,
    or, with the option ``resolution="pixels"``, returns the pixel map itself. These
    methods need the model's input, not recorded attention: no Capture path.
    """

    needs_grad = True
    class_specific = True
    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"internal_batch_size": 16, "resolution": "grid"}

    def check_options(self, internal_batch_size: int, resolution: str, **options: Any) -> None:
        check_positive_int(internal_batch_size, "internal_batch_size", _BATCH_FIX)
        check_choice(resolution, "resolution", RESOLUTIONS,
                     "'grid' averages each patch, 'pixels' gives (B, H, W) maps.")


@register_method("saliency")
class Saliency(InputGradientExplainer):
    """Saliency (Simonyan et al. 2014): max over channels of |∂y_c/∂x|; see :func:`saliency`.

    Options: ``internal_batch_size`` (16), ``resolution`` (``"grid"``). Cost: one forward
    and one backward pass.
    """

    def compute(self, images: Tensor, target: object, internal_batch_size: int) -> Tensor:
        return saliency(self.model, images, target, internal_batch_size)


@register_method("smoothgrad")
class SmoothGrad(InputGradientExplainer):
    """SmoothGrad (Smilkov et al. 2017) on |gradient|; see :func:`smoothgrad`.

    Options: ``n_samples`` (25), ``noise_level`` (0.15 of each image's range), ``seed``
    (0), ``internal_batch_size`` (16), ``resolution`` (``"grid"``). Cost: about
    3 × ``n_samples`` forward passes.
    """

    defaults: ClassVar[dict[str, Any]] = {"n_samples": 25, "noise_level": 0.15, "seed": 0,
                                          **InputGradientExplainer.defaults}

    def check_options(self, n_samples: int, noise_level: float, seed: int,
                      **options: Any) -> None:
        _check_smoothgrad(n_samples, noise_level, seed)
        super().check_options(**options)

    def compute(self, images: Tensor, target: object, **options: Any) -> Tensor:
        return smoothgrad(self.model, images, target, **options)


@register_method("integrated_gradients")
class IntegratedGradients(InputGradientExplainer):
    """Integrated gradients (Sundararajan et al. 2017); see :func:`integrated_gradients`.

    The map is Σ_c IG (signed; its total ≈ y_c(x) − y_c(x')), or |Σ_c IG| with
    ``absolute=True``.

    Options: ``baseline`` (``"black"``), ``steps`` (50), ``rule``
    (``"gausslegendre"``), ``mean`` / ``std`` (``None``: the normalisation, for a black
    baseline), ``blur_sigma`` (8.0 px), ``absolute`` (False), ``internal_batch_size`` (16),
    ``resolution`` (``"grid"``). Cost: about 3 × ``steps`` forward passes.
    """

    defaults: ClassVar[dict[str, Any]] = {"baseline": "black", "steps": 50,
                                          "rule": "gausslegendre", "mean": None,
                                          "std": None, "blur_sigma": 8.0, "absolute": False,
                                          **InputGradientExplainer.defaults}

    def check_options(self, baseline: object, steps: int, rule: str, mean: object,
                      std: object, blur_sigma: float, absolute: bool, **options: Any) -> None:
        ig_rule(rule, steps)
        _check_ig(baseline, mean, std, blur_sigma)
        if not isinstance(absolute, bool):
            raise TypeError(f"absolute must be True or False, got {absolute!r}")
        super().check_options(**options)

    def compute(self, images: Tensor, target: object, absolute: bool, **options: Any) -> Tensor:
        summed = integrated_gradients(self.model, images, target, **options).sum(dim=1)
        return summed.abs() if absolute else summed
