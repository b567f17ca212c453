"""Explanation methods as small classes with one hook, a registry by name, one dispatcher.

Every method is a subclass of :class:`Explainer` that overrides ONE function,
:meth:`Explainer.compute`; the base class does the rest (option defaults and checks, the
capture, the token → grid reshape). What ``compute`` receives depends on one class
attribute, ``supports_capture``:

- ``True`` (attention, rollouts, GAE, attention Grad-CAM, attention flow): a
  :class:`~vit_course.explain.capture.Capture` — one forward pass (plus one backward pass
  for ``cap.targets`` when ``needs_grad``), made by the base class or handed in by the
  caller with ``explain(..., capture=cap)``, which then costs zero model passes.
- ``False`` (input gradients, Grad-CAM, norm, LRP, the controls): the images, because the
  method runs its own passes (hooks on other layers, gradients with respect to the input).

``compute`` returns the class token's row over all T tokens (B, T) (the base drops the
prefix columns and lays the patches out on the grid), or finished maps (B, h, w) — or
(B, H, W) pixel maps for the input-gradient methods' ``resolution="pixels"``. A new
method is one class (as a new CAM in jacobgil/pytorch-grad-cam is one ``BaseCAM`` subclass
that overrides ``get_cam_weights``, e.g. ``GradCAM`` in ``grad_cam.py``)::

    @register_method("my_method")
    class MyMethod(Explainer):
        defaults = {"alpha": 1.0}
        def compute(self, cap, target, alpha):
            return ...  # (B, T), e.g. alpha * cap.attentions[-1].mean(1)[:, 0]

    explain(model, images, "my_method", alpha=2.0)   # (B, h, w)

Capabilities are class attributes, read by the explorer and the CLI: ``needs_grad`` (the
method differentiates the target logit), ``class_specific`` (the map depends on
``target``), ``supports_capture`` (see above).

Maps come back on the patch grid and are not normalised;
:func:`vit_course.imaging.upsample` brings them to pixels (and optionally to [0, 1]).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_fusion, check_head_index, check_images, \
    check_layer_index, check_positive_int, check_ratio, check_targets
from .capture import Capture, capture, gradients_for_targets, prepare_images, \
    require_autograd, require_finite
from .families import ModelInfo, describe_model, unwrap
from .rollout import _shape_or_type, attention_map, cls_row_to_grid, grad_rollout, rollout


#: What the input-gradient methods' ``resolution`` option accepts.
RESOLUTIONS: tuple[str, ...] = ("grid", "pixels")

#: Registered explanation methods by name (``explain(..., method=name)``).
METHODS: dict[str, type[Explainer]] = {}

#: What the metrics call an explainer: ``explain_fn(model, images, target=t) -> (B, h, w)``,
#: e.g. ``functools.partial(explain, method="rollout")``.
ExplainFn = Callable[[nn.Module, Tensor, Any], Tensor]


def register_method(name: str) -> Callable[[type[Explainer]], type[Explainer]]:
    """Class decorator adding an :class:`Explainer` subclass to :data:`METHODS` as ``name``.

    Raises:
        ValueError: ``name`` already taken by another class.
        TypeError: the class is not an :class:`Explainer`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"method name must be a non-empty str, got {name!r}")

    def decorator(cls: type[Explainer]) -> type[Explainer]:
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise TypeError(f"register_method({name!r}) decorates Explainer subclasses, "
                            f"got {cls!r}")
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered to "
                             f"{METHODS[name].__qualname__}; pick another name.")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorator


def get_method(name: str) -> type[Explainer]:
    """The class registered as ``name``; ValueError listing the valid names otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown explanation method {name!r}; choose one of "
                         f"{sorted(METHODS)}.")
    return METHODS[name]


class Explainer:
    """Base class: options, capture and the token → grid reshape; subclasses override
    :meth:`compute` only (and :meth:`check_options` for checks that need the model).

    Args:
        model: a supported ViT (course ViT, torchvision ``VisionTransformer``, timm
            ViT/DeiT, Hugging Face ``ViTForImageClassification``; see
            :mod:`vit_course.explain.families`). Anything else raises ``TypeError`` here.
        **options: default values for this instance's options (see ``defaults``);
            ``attribute``'s keywords override them per call.
    """

    name: ClassVar[str] = ""
    #: The method differentiates the target logit (capture methods: ``Capture.gradients``).
    needs_grad: ClassVar[bool] = False
    #: The map depends on ``target``; class-agnostic methods check it and ignore it.
    class_specific: ClassVar[bool] = False
    #: :meth:`compute` reads a Capture, so ``explain(..., capture=cap)`` needs no model pass.
    supports_capture: ClassVar[bool] = True
    #: Option name → default value; the only keywords the method accepts.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, **options: Any):
        self.model = model
        self.info = describe_model(model)
        # the class's defaults are valid; instance options are checked here, once
        self.options = self._merge(options) if options else dict(self.defaults)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({type(self.model).__name__}{', ' if opts else ''}{opts})"

    def _merge(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise TypeError(f"{type(self).__name__} got unknown option(s) {unknown}; "
                            f"its options are: {valid}.")
        merged = {**self.defaults, **getattr(self, "options", {}), **options}
        self.check_options(**merged)
        return merged

    def check_options(self, **options: Any) -> None:
        """Validate options before any computation (override; raise ValueError/TypeError)."""

    def compute(self, source: Capture | Tensor, target: object, **options: Any) -> Tensor:
        """THE method to override: the map of every image of the batch.

        Args:
            source: a :class:`Capture` when ``supports_capture`` is True (with gradients for
                ``source.targets`` when ``needs_grad``); the images (B, C, H, W) as given
                otherwise, for methods that run their own passes.
            target: as given to :meth:`attribute` (``None``, an int or B ints); capture
                methods read ``source.targets`` instead.
            **options: this method's options, checked and with defaults filled in.

        Returns:
            (B, T) class-token row over all tokens (prefix columns included), or
            (B, h, w) maps on the patch grid, or (B, H, W) pixel maps: methods that return
            pixels declare the option ``resolution`` (``"grid"`` (default): the base
            averages each patch; ``"pixels"``: returned as they are). The base handles
            ``resolution`` itself; ``compute`` does not receive it.
        """
        raise NotImplementedError(f"{type(self).__name__} must override compute()")

    def attribute(self, images: Tensor | None, target: object = None, *,
                  capture: Capture | None = None, **options: Any) -> Tensor:
        """Explain ``images`` (or a ready ``capture`` of them); see :func:`explain`."""
        opts = self._merge(options)                # bad options fail before any model pass
        if self.needs_grad and capture is None:
            require_autograd(self.name)            # inference_mode: say why, and what to do
        if capture is not None or self.supports_capture:
            cap = (self._check_capture(capture, target, images) if capture is not None else
                   _capture(self.model, images, target=target, with_grad=self.needs_grad,
                            info=self.info))
            out, grid, prefix = self.compute(cap, target, **opts), cap.grid, cap.num_prefix_tokens
        else:
            resolution = check_choice(opts.pop("resolution", "grid"), "resolution", RESOLUTIONS)
            out = self.compute(images, target, **opts)
            H, W = images.shape[-2:]
            grid, prefix = self.info.grid(H, W), self.info.num_prefix_tokens
            if resolution == "grid" and out.ndim == 3 and out.shape[-2:] == (H, W) != grid:
                return require_finite(pool_to_grid(out, grid))     # pixel maps → the grid
        return require_finite(cls_row_to_grid(out, grid, prefix) if out.ndim == 2 else out)

    def _check_capture(self, cap: object, target: object, images: object) -> Capture:
        if not isinstance(cap, Capture):
            raise TypeError(f"capture must be a Capture from vit_course.explain.capture(...), "
                            f"got {type(cap).__name__}")
        if cap.model_id not in (None, id(unwrap(self.model))):
            raise ValueError("this capture was made from another model; capture this one "
                             "(capture(model, images, ...)) or explain the model it came from.")
        shape = images.shape if isinstance(images, Tensor) and images.ndim == 4 else (0,) * 4
        if images is not None and (shape[0], self.info.grid(*shape[2:])) != (cap.batch_size,
                                                                            cap.grid):
            raise ValueError(f"images {_shape_or_type(images)} do not match the capture "
                             f"({cap.batch_size} images, grid {cap.grid}); pass images=None.")
        if not self.supports_capture:
            raise TypeError(f"{self.name} cannot be computed from a Capture: it runs its own "
                            f"passes over the images; call explain(model, images, "
                            f"{self.name!r}, target=...) without capture=.")
        if self.needs_grad and cap.gradients is None:
            raise ValueError(f"{self.name} needs gradients; capture with "
                             "capture(model, images, with_grad=True) or add them with "
                             "cap.with_gradients(...)")
        t = check_targets(target, cap.batch_size, cap.num_classes)
        if self.needs_grad and t is not None and not torch.equal(t, cap.targets.cpu()):
            raise ValueError(f"target {t.tolist()} differs from the capture's targets "
                             f"{cap.targets.tolist()}, whose gradients it holds; capture with "
                             "target=... or pass target=None.")
        return cap


_capture = capture                                 # `capture` is also attribute's keyword


def gradient_inputs(model: nn.Module, images: object) -> tuple[ModelInfo, Tensor]:
    """:func:`~vit_course.explain.capture.prepare_images`, detached, refusing
    ``torch.inference_mode()`` (for methods that run their own backward passes).

    Raises:
        RuntimeError: called inside ``torch.inference_mode()`` (no gradients there).
    """
    require_autograd("this explanation method")
    info, x = prepare_images(model, images)
    return info, x.detach()


def pool_to_grid(pixel_maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """Average a pixel map over each patch: (B, H, W) → (B, h, w).

    Args:
        pixel_maps: (B, H, W) with H, W multiples of the grid.
        grid: (h, w) patch grid.

    Returns:
        (B, h, w); a pixel map that is constant within each patch comes back unchanged.
    """
    if not isinstance(pixel_maps, Tensor) or pixel_maps.ndim != 3:
        raise ValueError(f"pixel_maps must be (B, H, W), got {_shape_or_type(pixel_maps)}")
    h, w = (int(g) for g in grid)
    H, W = pixel_maps.shape[-2:]
    if h < 1 or w < 1 or H % h or W % w:
        raise ValueError(f"a {H}x{W} map does not split into a {h}x{w} patch grid; pass the "
                         "model's grid (Capture.grid or ModelInfo.grid(H, W)).")
    return F.avg_pool2d(pixel_maps.unsqueeze(1), kernel_size=(H // h, W // w)).squeeze(1)


# ----------------------------------------------------------------------------- attention methods
@register_method("attention")
class AttentionMap(Explainer):
    """Raw attention of one layer: how much the class token attends to each patch.

    Options:
        layer: layer index, negative from the top. Default: -1 (last).
        head: one head's index, or ``None`` to fuse the heads. Default: ``None``.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` when ``head`` is ``None``.
            Default: ``"mean"``.

    Class-agnostic: ``target`` is checked but does not change the map.
    """

    defaults: ClassVar[dict[str, Any]] = {"layer": -1, "head": None, "head_fusion": "mean"}

    def check_options(self, layer: int, head: int | None, head_fusion: str) -> None:
        check_layer_index(layer, self.info.num_layers, "layer")
        check_head_index(head, self.info.num_heads)
        check_fusion(head_fusion)

    def compute(self, cap: Capture, target: object, layer: int, head: int | None,
                head_fusion: str) -> Tensor:
        return attention_map(cap.attentions, layer=layer, head=head, head_fusion=head_fusion)[:, 0]


@register_method("rollout")
class Rollout(Explainer):
    """Attention rollout (Abnar & Zuidema 2020) with vit-explain's fusion and discard.

    Options: ``head_fusion`` (``"mean"``), ``discard_ratio`` (0.0), ``start_layer`` (0);
    see :func:`vit_course.explain.rollout.rollout`. Class-agnostic: ``target`` is checked
    but does not change the map.
    """

    defaults: ClassVar[dict[str, Any]] = {"head_fusion": "mean", "discard_ratio": 0.0,
                                          "start_layer": 0}

    def check_options(self, head_fusion: str, discard_ratio: float, start_layer: int) -> None:
        check_fusion(head_fusion)
        check_ratio(discard_ratio)
        check_layer_index(start_layer, self.info.num_layers, "start_layer")

    def compute(self, cap: Capture, target: object, **options: Any) -> Tensor:
        if self.needs_grad:                        # GradRollout: layers weighted by ∂y/∂A
            return grad_rollout(cap.attentions, cap.gradients, **options)[:, 0]
        return rollout(cap.attentions, **options)[:, 0]


@register_method("grad_rollout")
class GradRollout(Rollout):
    """Gradient attention rollout for a target class (vit-explain's, layer pairing fixed).

    Options as :class:`Rollout`; see :func:`vit_course.explain.rollout.grad_rollout`.
    One forward and one backward pass for the whole batch, one target per image.
    """

    needs_grad = True
    class_specific = True


def explain(model: nn.Module, images: Tensor | None, method: str = "rollout",
            target: Any = None, *, capture: Capture | None = None, **options: Any) -> Tensor:
    """Explain a batch of images with the method registered as ``method``.

    Args:
        model: course ViT, torchvision ``VisionTransformer``, timm ViT/DeiT or Hugging Face
            ``ViTForImageClassification`` (:mod:`vit_course.explain.families`). It is run
            in eval mode and left exactly as it was.
        images: (B, C, H, W), transformed for the model (may be ``None`` with ``capture``).
        method: a name in :data:`METHODS`. Default: ``"rollout"``.
        target: ``None`` (predicted class), an int, or B ints; used by class-specific
            methods (``grad_rollout``, ...). Default: ``None``.
        capture: a :class:`Capture` of the images (e.g. ``capture(model, images,
            with_grad=True)``); methods with ``supports_capture`` then compute from it with
            zero model passes, the others raise ``TypeError``. Default: ``None``.
        **options: the method's options, e.g. ``head_fusion``, ``discard_ratio``,
            ``start_layer`` (rollouts), ``layer``, ``head`` (attention), ``resolution=
            "pixels"`` (input-gradient methods: (B, H, W) maps).

    Returns:
        (B, h, w) maps on the patch grid.

    Raises:
        ValueError: unknown method (the message lists the valid ones), bad option values,
            bad images or targets. TypeError: unsupported model, unknown option names.

    Example::

        maps = explain(model, images, "grad_rollout", target=2, discard_ratio=0.9)
        maps.shape                                   # (B, 14, 14) for ViT-B/16 at 224
    """
    return get_method(method)(model).attribute(images, target, capture=capture, **options)


def explain_classes(model: nn.Module, images: Tensor, method: str = "grad_rollout",
                    classes: Sequence[int] | None = None, chunk_size: int = 4,
                    **options: Any) -> Tensor:
    """Maps of ``method`` for several classes of every image: one per (image, class).

    Methods that read attention gradients from a capture (``grad_rollout``, ``gae``, ...)
    run one forward pass per chunk of ``chunk_size`` images, keep its graph, and get the
    gradients for all ``classes`` from one vectorised backward pass
    (:func:`gradients_for_targets`). Other methods call :func:`explain` once per class.
    Either way the maps equal ``explain(model, images, method, target=c, **options)``.

    Args:
        model, images, method, **options: as for :func:`explain`.
        classes: class indices; default: every class of the model.
        chunk_size: images per kept forward graph. Small chunks keep the graph in cache:
            on a 2-core CPU, ViT-B/16 with 3 classes ran 16 images in 14 s in chunks of 4
            and 28 s in one chunk of 16 (docs/BENCHMARKS.md). Default: 4.

    Returns:
        (B, K, h, w) for K = len(classes), in the order of ``classes``.
    """
    check_positive_int(chunk_size, "chunk_size",
                       "it is the number of images per kept graph, e.g. 4.")
    explainer = get_method(method)(model)
    opts = explainer._merge(options)            # bad options fail before any model pass
    K = explainer.info.num_classes
    if classes is None:
        if K is None:
            raise ValueError("the model does not say how many classes it has; pass classes=[...].")
        classes = range(K)
    if hasattr(classes, "tolist"):                 # a tensor or array of class indices
        classes = classes.tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in classes):
        raise TypeError(f"classes must be a list of int class indices, e.g. [0, 2], got {classes!r}"
                        "; True/False are not classes, nor are floats (wrap one in a list).")
    classes = [int(c) for c in classes]
    images = check_images(images, finite=True)    # NaN/inf named by their index in the batch
    if not classes:
        raise ValueError("classes is empty; pass at least one class index (or None for all).")
    if K is not None and not all(0 <= c < K for c in classes):
        raise ValueError(f"classes must be in [0, {K - 1}] for a model with {K} classes, "
                         f"got {classes}")
    if not (explainer.needs_grad and explainer.supports_capture):
        return torch.stack([explainer.attribute(images, c, **opts) for c in classes], dim=1)
    require_autograd(explainer.name)
    out = []
    for i in range(0, images.shape[0], chunk_size):
        cap = capture(model, images[i:i + chunk_size], keep_graph=True)
        try:
            grads = gradients_for_targets(cap, classes)
            out.append(torch.stack([explainer.attribute(None, capture=cap.with_gradients(g, c),
                                                        **opts)
                                    for c, g in zip(classes, grads)], dim=1))
        finally:
            cap.release()
    return torch.cat(out)
