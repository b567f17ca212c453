"""The explorer's computing side: which control feeds which method option
(:func:`method_options`), and the cache where the model runs once per image (and class)
and maps come from the cached captures after that (:mod:`vit_course.widgets` shows them).

Every model pass happens under :attr:`ExplanationCache.lock`, so the explorer's background
job and a call from the notebook never run the model at the same time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .checks import check_images, check_index, check_nonnegative_int, check_targets
from .explain import (METHODS, Capture, capture, describe_model, explain, get_method,
                      gradients_for_targets)


#: Methods listed first in the explorer's dropdown, in this order; the rest alphabetically.
_PREFERRED_ORDER = ("rollout", "grad_rollout", "attention")

#: Explorer controls that feed a method option of the same name.
CONTROL_OPTIONS: tuple[str, ...] = ("discard_ratio", "head_fusion", "start_layer", "layer", "head")


def method_options(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The explorer values that ``method`` takes as options.

    A control in :data:`CONTROL_OPTIONS` is passed when the method has an option of that
    name; ``layer`` only when the method's ``layer`` is a layer index (Grad-CAM's
    ``layer`` is a module, which the slider cannot give).

    Args:
        method: a registered method name.
        values: control name → value (missing names are skipped).

    Returns:
        option name → value, ready for ``explain(..., **options)``.
    """
    defaults = get_method(method).defaults
    return {name: values[name] for name in CONTROL_OPTIONS
            if name in defaults and name in values
            and not (name == "layer" and (isinstance(defaults[name], bool)
                                          or not isinstance(defaults[name], int)))}


def describe_options(options: Mapping[str, Any]) -> str:
    """Options for a status line, e.g. ``discard ratio 0.90, head fusion max, head all``."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.2f}" if isinstance(v, float)
                     else f"{k.replace('_', ' ')} {'all' if v is None else v}"
                     for k, v in options.items())


#: Options the explorer gives methods whose paper defaults are too slow for a slider, so
#: that a ViT-B/16 image answers within about 10 s on a 2-core CPU (docs/BENCHMARKS.md,
#: "Explorer": times, integrated gradients' completeness error at 16 steps, and what
#: bfloat16 costs value zeroing and ViT-CX). Small internal batches make the progress bar move.
EXPLORER_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 16, "internal_batch_size": 4},
    "smoothgrad": {"n_samples": 8, "internal_batch_size": 2},
    "value_zeroing": {"precision": "bfloat16"},
    "vit_cx": {"internal_batch_size": 16, "precision": "bfloat16"},
}

#: Each method's time in the explorer (with :data:`EXPLORER_OPTIONS`) in units of one
#: image's first capture (forward + backward for every class), measured on ViT-B/16
#: (benchmarks/bench_explorer.py). Unlisted: 0.01 for capture methods, 1 otherwise.
COST_IN_CAPTURES: dict[str, float] = {
    "attention": 0.01, "rollout": 0.01, "grad_rollout": 0.02, "gae": 0.02,
    "attention_gradcam": 0.01, "attention_flow": 5.1, "attention_norm": 0.27,
    "saliency": 0.64, "gradcam": 0.27, "transformer_attribution": 3.7, "smoothgrad": 4.2,
    "integrated_gradients": 7.0, "value_zeroing": 8.5, "vit_cx": 6.6, "attn_lrp": 0.58,
    "cp_lrp": 0.55, "random": 0.01, "center_gaussian": 0.01,
}


def method_names(methods: Sequence[str] | None = None) -> list[str]:
    """``methods`` checked (ValueError naming the valid ones), or every registered method
    with ``rollout``, ``grad_rollout``, ``attention`` first (the explorer's dropdown)."""
    if methods is None:
        names = sorted(METHODS)
        return ([n for n in _PREFERRED_ORDER if n in names]
                + [n for n in names if n not in _PREFERRED_ORDER])
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise TypeError(f"methods must be a non-empty list of method names, e.g. "
                        f"['rollout', 'grad_rollout'], got {methods!r}")
    for name in methods:
        get_method(name)                        # ValueError listing the valid names
    return list(methods)


def as_batch(images: Any, name: str = "images") -> Tensor:
    """(B, C, H, W) float images; one (C, H, W) image becomes a batch of one."""
    if isinstance(images, Tensor) and images.ndim == 3:
        images = images.unsqueeze(0)
    return check_images(images, name, finite=True)


class ExplanationCache:
    """Model passes once per image (and class); maps from cached captures after that.

    Args:
        model: a supported ViT (see :data:`vit_course.explain.SUPPORTED_MODELS`).
        images: (B, C, H, W) transformed for the model (or one (C, H, W) image).
        max_classes_upfront: on an image's first visit, compute the gradients of every
            class in one batched backward pass if the model has at most this many classes;
            with more classes, gradients are computed per (image, class) when first asked
            for. Default: 16.
        max_maps: how many maps of methods without capture support to keep (least recently
            used dropped first). Default: 64.

    Attributes:
        passes: model passes run so far (forward passes, each with its backward pass).
        capture_seconds: how long the first image's first capture took (the unit of
            :data:`COST_IN_CAPTURES`); NaN before it.
        lock: held during every model pass, so two threads never run the model at once.
    """

    def __init__(self, model: nn.Module, images: Tensor, max_classes_upfront: int = 16,
                 max_maps: int = 64):
        self.model = model
        self.info = describe_model(model)           # TypeError for unsupported models
        self.images = as_batch(images)
        self.max_classes_upfront = check_nonnegative_int(max_classes_upfront, "max_classes_upfront")
        self.max_maps = check_nonnegative_int(max_maps, "max_maps")
        self.passes = 0
        self.capture_seconds = float("nan")
        self.lock = threading.RLock()
        self._base: dict[int, Capture] = {}
        self._caps: dict[tuple[int, int], Capture] = {}     # (image, class) → with gradients
        self._maps: OrderedDict[tuple, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return self.images.shape[0]

    def _index(self, index: Any) -> int:
        return check_index(index, len(self), "index", "images")

    def base(self, index: int) -> Capture:
        """Image ``index``'s capture (logits, attentions, prediction); runs the model once.

        On the first visit: one forward pass keeping its graph, gradients for every class
        (or the predicted one, beyond ``max_classes_upfront`` classes) in one batched
        backward pass, then the graph is released.
        """
        i = self._index(index)
        if i in self._base:
            return self._base[i]
        with self.lock:
            if i not in self._base:
                start = time.perf_counter()
                cap = capture(self.model, self.images[i:i + 1], keep_graph=True)
                self.passes += 1
                try:
                    K = cap.num_classes
                    classes = (list(range(K)) if K <= self.max_classes_upfront
                               else [int(cap.targets[0])])
                    for c, g in zip(classes, gradients_for_targets(cap, classes)):
                        self._caps[(i, c)] = cap.with_gradients(g, c)
                finally:
                    cap.release()
                self._base[i] = cap
                if math.isnan(self.capture_seconds):
                    self.capture_seconds = time.perf_counter() - start
        return self._base[i]

    def resolve_target(self, index: int, target: int | None) -> int:
        """``target``, or image ``index``'s predicted class when it is ``None``."""
        cap = self.base(index)
        if target is None:
            return int(cap.targets[0])
        return int(check_targets(target, 1, cap.num_classes)[0])

    def capture(self, index: int, target: int | None = None) -> Capture:
        """Image ``index``'s capture with the gradients of ``target`` (None: predicted).

        Zero model passes once the image (and, beyond ``max_classes_upfront`` classes,
        the class) has been seen.
        """
        i = self._index(index)
        t = self.resolve_target(i, target)
        if (i, t) not in self._caps:
            with self.lock:
                cap = capture(self.model, self.images[i:i + 1], target=t, with_grad=True)
                self.passes += 1
                self._caps[(i, t)] = self._base[i].with_gradients(cap.gradients, t)
        return self._caps[(i, t)]

    def _key(self, i: int, t: int, method: str, options: Mapping[str, Any]) -> tuple:
        return (i, t, method, tuple(sorted(options.items())))

    def ready(self, index: int, method: str, target: int | None = None, **options: Any) -> bool:
        """Whether :meth:`map` would answer without running the model."""
        i = self._index(index)
        if i not in self._base:
            return False
        t = self.resolve_target(i, target)
        if get_method(method).supports_capture:
            return (i, t) in self._caps
        return self._key(i, t, method, options) in self._maps

    def map(self, index: int, method: str, target: int | None = None, **options: Any) -> Tensor:
        """Image ``index``'s map for ``method`` with ``options``, (h, w).

        Methods with capture support: ``explain(..., capture=...)`` from the cached
        capture, zero model passes. Others: ``explain`` on the one image, cached per
        (image, class, method, options); option values must then be hashable.
        """
        i = self._index(index)
        t = self.resolve_target(i, target)
        x = self.images[i:i + 1]
        if get_method(method).supports_capture:
            return explain(self.model, x, method, target=t, capture=self.capture(i, t),
                           **options)[0]
        key = self._key(i, t, method, options)
        m = self._maps.pop(key, None)
        if m is None:
            with self.lock:
                m = explain(self.model, x, method, target=t, **options)[0].detach()
                self.passes += 1
        self._maps[key] = m                                  # most recently used last
        while len(self._maps) > self.max_maps:
            self._maps.popitem(last=False)
        return m

    def probabilities(self, index: int) -> Tensor:
        """Softmax of image ``index``'s logits, (K,)."""
        return self.base(index).logits[0].float().softmax(-1)

    def clear(self) -> None:
        """Forget every capture, gradient and map (the next request runs the model)."""
        for store in (self._base, self._caps, self._maps):
            store.clear()
