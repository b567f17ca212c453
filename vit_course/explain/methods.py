"""Explanation methods as small classes sharing one call shape, and a registry by name.

Every method is built from a model and called as ``attribute(images, target=None,
**options) -> (B, h, w)`` (Captum's shape). The base class :class:`Explainer` owns the
rest: input and target checks (through :func:`~vit_course.explain.capture.capture`), the
one forward (and, for gradient methods, one backward) pass, option defaults and checks,
and the token → grid reshape. A method overrides one function, :meth:`Explainer.token_scores`,
which maps a :class:`~vit_course.explain.capture.Capture` to the class token's row over
all T tokens (B, T). :meth:`Explainer.from_capture` runs only that cheap part, so
interactive tools capture once and then recompute maps for new options with zero
forward passes.

New methods register by name and become available to :func:`vit_course.explain.explain`,
the CLI and the notebooks' loops::

    @register_method("my_method")
    class MyMethod(Explainer):
        defaults = {"alpha": 1.0}
        def token_scores(self, cap, alpha):
            return ...  # (B, T)

Maps come back on the patch grid and are not normalised; :func:`upsample` brings them
to pixels (and optionally to [0, 1] per image).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import Capture, capture, describe_model
from .rollout import (
    _check_fusion,
    _check_layer_index,
    _check_ratio,
    _fused_layers,
    _rollout_cls_from_fused,
    attention_map,
    cls_row_to_grid,
)

__all__ = [
    "METHODS",
    "register_method",
    "get_method",
    "Explainer",
    "AttentionMap",
    "Rollout",
    "GradRollout",
    "upsample",
    "normalize_maps",
]

#: Registered explanation methods by name (``explain(..., method=name)``).
METHODS: dict[str, type[Explainer]] = {}


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
    """Base class: checks, capture, option handling and the token → grid reshape.

    Args:
        model: a supported ViT (course ViT, torchvision ``VisionTransformer``, timm
            ViT/DeiT). Anything else raises ``TypeError`` here.
        **options: default values for this instance's options (see ``defaults``);
            ``attribute``'s keywords override them per call.

    Subclasses set ``defaults`` (option name → default), ``needs_grad`` and override
    :meth:`token_scores`; :meth:`check_options` may add checks that need the model.
    """

    name: ClassVar[str] = ""
    #: Whether the method needs ``Capture.gradients`` (one backward pass per batch).
    needs_grad: ClassVar[bool] = False
    #: Whether :meth:`from_capture` works from a Capture alone (no model pass); viewers
    #: recompute such methods cheaply and fall back to :meth:`attribute` otherwise.
    supports_capture: ClassVar[bool] = True
    #: Option name → default value; the only keywords the method accepts.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, **options: Any):
        self.model = model
        self.info = describe_model(model)
        self.options = self._merge(options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({type(self.model).__name__}{', ' if opts else ''}{opts})"

    # ------------------------------------------------------------------ options
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

    # ------------------------------------------------------------------ computing
    def token_scores(self, cap: Capture, **options: Any) -> Tensor:
        """Map a capture to the class token's row over all T tokens, (B, T). Override."""
        raise NotImplementedError

    def attribute(self, images: Tensor, target: object = None, **options: Any) -> Tensor:
        """Explain ``images``.

        Args:
            images: (B, C, H, W), transformed for the model.
            target: ``None`` (each image's predicted class), an int, or B ints. Gradient
                methods explain this class; class-agnostic methods check it and ignore it.
                Default: ``None``.
            **options: this method's options (see ``defaults``).

        Returns:
            (B, h, w) maps on the model's patch grid.
        """
        opts = self._merge(options)
        cap = capture(self.model, images, target=target, with_grad=self.needs_grad)
        return self._grid(cap, opts)

    def from_capture(self, cap: Capture, **options: Any) -> Tensor:
        """Maps from an existing capture: no forward or backward pass.

        Args:
            cap: from :func:`capture` (with gradients for gradient methods).
            **options: this method's options.

        Returns:
            (B, h, w).
        """
        if not isinstance(cap, Capture):
            raise TypeError(f"cap must be a Capture from vit_course.explain.capture, got "
                            f"{type(cap).__name__}")
        if self.needs_grad and cap.gradients is None:
            raise ValueError(f"{self.name} needs gradients; capture with "
                             "capture(model, images, with_grad=True) or add them with "
                             "cap.with_gradients(...)")
        return self._grid(cap, self._merge(options))

    def _grid(self, cap: Capture, opts: dict[str, Any]) -> Tensor:
        scores = self.token_scores(cap, **opts)
        return cls_row_to_grid(scores, cap.grid, cap.num_prefix_tokens)


class _RolloutOptions(Explainer):
    """Shared options and a one-entry cache of the fused layers (L, B, T, T).

    Fusing the heads reads every attention tensor and is the costly part of a map; it
    depends only on the capture and ``head_fusion``, so moving the discard-ratio or
    start-layer control of a viewer reuses it. The cache holds weak references to the
    capture's tensors and checks their version counters, so it never serves stale values
    and keeps no capture alive (only the last fused layers).
    """

    defaults: ClassVar[dict[str, Any]] = {"head_fusion": "mean", "discard_ratio": 0.0,
                                          "start_layer": 0}

    def check_options(self, head_fusion: str, discard_ratio: float, start_layer: int) -> None:
        _check_fusion(head_fusion)
        _check_ratio(discard_ratio)
        _check_layer_index(start_layer, self.info.num_layers, "start_layer")

    def _fused(self, cap: Capture, head_fusion: str) -> Tensor:
        grads = list(cap.gradients) if self.needs_grad else []
        tensors = list(cap.attentions) + grads
        key = (head_fusion, len(tensors), tuple(t._version for t in tensors))
        cached = getattr(self, "_fused_cache", None)
        if cached is not None:
            refs, old_key, fused = cached
            if old_key == key and all(r() is t for r, t in zip(refs, tensors)):
                return fused
        fused = _fused_layers(cap.attentions, head_fusion, grads or None)
        self._fused_cache = ([weakref.ref(t) for t in tensors], key, fused)
        return fused


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
        _check_layer_index(layer, self.info.num_layers, "layer")
        _check_fusion(head_fusion)
        H = self.info.num_heads
        if head is not None and (isinstance(head, bool) or not isinstance(head, int)
                                 or not -H <= head < H):
            raise ValueError(f"head must be None (fuse all heads) or an int in [{-H}, {H - 1}] "
                             f"for {H} heads, got {head!r}")

    def token_scores(self, cap: Capture, layer: int, head: int | None,
                     head_fusion: str) -> Tensor:
        return attention_map(cap.attentions, layer=layer, head=head, head_fusion=head_fusion)[:, 0]


@register_method("rollout")
class Rollout(_RolloutOptions):
    """Attention rollout (Abnar & Zuidema 2020) with vit-explain's fusion and discard.

    Options: ``head_fusion`` (``"mean"``), ``discard_ratio`` (0.0), ``start_layer`` (0);
    see :func:`vit_course.explain.rollout.rollout`. Class-agnostic: ``target`` is checked
    but does not change the map.
    """

    def token_scores(self, cap: Capture, head_fusion: str, discard_ratio: float,
                     start_layer: int) -> Tensor:
        return _rollout_cls_from_fused(self._fused(cap, head_fusion), discard_ratio,
                                       start_layer)


@register_method("grad_rollout")
class GradRollout(_RolloutOptions):
    """Gradient attention rollout for a target class (vit-explain's, layer pairing fixed).

    Options as :class:`Rollout`; see :func:`vit_course.explain.rollout.grad_rollout`.
    One forward and one backward pass for the whole batch, one target per image.
    """

    needs_grad = True

    def token_scores(self, cap: Capture, head_fusion: str, discard_ratio: float,
                     start_layer: int) -> Tensor:
        return _rollout_cls_from_fused(self._fused(cap, head_fusion), discard_ratio,
                                       start_layer)


# ----------------------------------------------------------------------------- post-processing
def normalize_maps(maps: Tensor) -> Tensor:
    """Scale each map to [0, 1] (min → 0, max → 1); a constant map becomes all zeros.

    Args:
        maps: (B, ...) one map per image.

    Returns:
        same shape.
    """
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.zeros_like(flat))
    return out.reshape(maps.shape)


def upsample(maps: Tensor, size: int | tuple[int, int], normalize: bool = False,
             mode: str = "bilinear") -> Tensor:
    """Bring patch-grid maps to pixels (for overlays).

    Args:
        maps: (B, h, w) from :func:`vit_course.explain.explain`.
        size: output H×W as ``(H, W)`` or one int for square images.
        normalize: scale each upsampled map to [0, 1]. Default: ``False``.
        mode: ``"bilinear"`` (smooth) or ``"nearest"`` (shows the patches). Default:
            ``"bilinear"``.

    Returns:
        (B, H, W).
    """
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be (B, h, w), got {got}; add a batch dimension with "
                         ".unsqueeze(0) for a single map.")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    x = maps.unsqueeze(1)
    if not x.is_floating_point():
        x = x.float()
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(x, size=tuple(size), mode=mode, **kwargs).squeeze(1)
    return normalize_maps(out) if normalize else out
