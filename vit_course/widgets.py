"""Slider explorer for explanation maps (ipywidgets), and the cache that makes it fast.

::

    explorer = AttentionExplorer(model, images, class_names, transform=transform)
    explorer                     # in a notebook cell: sliders, dropdowns and the figure

Moving a control must not run the model again. So the work is split in two:

- :class:`ExplanationCache` runs the model **once per image**: one forward pass that keeps
  its autograd graph, then one batched backward pass giving ∂y_c/∂A_l for every class c
  (:func:`vit_course.explain.gradients_for_targets`; when the model has at most
  ``max_classes_upfront`` classes, otherwise one forward and backward pass per new
  (image, class)), then the graph is dropped. What is left is a
  :class:`~vit_course.explain.Capture` per (image, class).
- Every map is one call of the one dispatcher, ``explain(model, image, method, target=t,
  capture=cap, **options)``: methods that work from a capture (``supports_capture``)
  recompute from it with zero model passes (fuse heads, discard, add I, normalise,
  multiply: milliseconds). Methods that cannot (input gradients, LRP, Grad-CAM on token
  features) are called without a capture and their maps cached per option set.

The method list is read from :data:`vit_course.explain.METHODS`, so methods registered
later appear in the dropdown. Each control feeds the method option of the same name
(``discard_ratio``, ``head_fusion``, ``start_layer``, ``layer``, ``head``) when the method
has that option; the other controls are greyed out, and so is the target dropdown for
methods whose ``class_specific`` flag is false.

Callbacks hold no maths: they read the controls, call :meth:`ExplanationCache.map` and
:func:`vit_course.viz.overlay`, and put the new arrays into the figure. Sliders update
on release (``continuous_update=False``), since a redraw takes tens of milliseconds.

For scripts and tests the explorer works without a browser: ``explorer.set(discard_ratio=0.5)``
(or setting ``explorer.controls["discard_ratio"].value``) updates ``explorer.current_map``
(h, w), the figure's image data (``explorer.overlay_artist.get_array()``) and the PNG
shown (``explorer.image_widget.value``).
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

from .checks import (HEAD_FUSIONS, check_fusion, check_head_index, check_images, check_index,
                     check_layer_index, check_nonnegative_int, check_ratio, check_targets)
from .explain import (METHODS, Capture, capture, describe_model, explain, get_method,
                      gradients_for_targets)
from .imaging import to_display, upsample
from .viz import overlay


#: Explorer controls that feed a method option of the same name.
CONTROL_OPTIONS: tuple[str, ...] = ("discard_ratio", "head_fusion", "start_layer", "layer", "head")

#: What the target and head dropdowns hold for "predicted class" / "all heads fused"
#: (a Dropdown cannot hold None: None means "nothing selected"); state() gives None.
_NONE = -1
_NULLABLE = ("target", "head")

#: Methods listed first in the dropdown, in this order; the rest follow alphabetically.
_PREFERRED_ORDER = ("rollout", "grad_rollout", "attention")


# ----------------------------------------------------------------------------- helpers
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


def _method_names(methods: Sequence[str] | None) -> list[str]:
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


def _batch(images: Any, name: str = "images") -> Tensor:
    """(B, C, H, W) float images; one (C, H, W) image becomes a batch of one."""
    if isinstance(images, Tensor) and images.ndim == 3:
        images = images.unsqueeze(0)
    return check_images(images, name, finite=True)


# ----------------------------------------------------------------------------- cache
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
    """

    def __init__(self, model: nn.Module, images: Tensor, max_classes_upfront: int = 16,
                 max_maps: int = 64):
        self.model = model
        self.info = describe_model(model)           # TypeError for unsupported models
        self.images = _batch(images)
        self.max_classes_upfront = check_nonnegative_int(max_classes_upfront, "max_classes_upfront")
        self.max_maps = check_nonnegative_int(max_maps, "max_maps")
        self.passes = 0
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
        if i not in self._base:
            cap = capture(self.model, self.images[i:i + 1], keep_graph=True)
            self.passes += 1
            try:
                K = cap.num_classes
                classes = list(range(K)) if K <= self.max_classes_upfront else [int(cap.targets[0])]
                for c, g in zip(classes, gradients_for_targets(cap, classes)):
                    self._caps[(i, c)] = cap.with_gradients(g, c)
            finally:
                cap.release()
            self._base[i] = cap
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
            cap = capture(self.model, self.images[i:i + 1], target=t, with_grad=True)
            self.passes += 1
            self._caps[(i, t)] = self._base[i].with_gradients(cap.gradients, t)
        return self._caps[(i, t)]

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
        key = (i, t, method, tuple(sorted(options.items())))
        m = self._maps.pop(key, None)
        if m is None:
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


# ----------------------------------------------------------------------------- explorer
class AttentionExplorer:
    """Sliders and dropdowns over explanation maps of a few images; the model runs once each.

    Args:
        model: a supported ViT, in the state to explain (it is run in eval mode and left
            as it was).
        images: (B, C, H, W) transformed for the model (a few images: each is captured on
            its first visit and kept).
        class_names: K names for the target dropdown. Default: ``class 0``, ``class 1``, …
        raw_images: (B, 3, H', W') in [0, 1] to draw under the maps (any resolution).
            Default: ``images`` with ``transform``'s normalisation undone
            (:func:`vit_course.imaging.to_display`).
        transform: the transform that made ``images``, to undo its ``Normalize`` for
            display. Default: ``None`` (images shown as they are, clamped to [0, 1]).
        titles: one caption per image for the image dropdown. Default: ``image i``.
        methods: method names for the dropdown. Default: every registered method,
            ``rollout``, ``grad_rollout``, ``attention`` first.
        method, head_fusion, discard_ratio, start_layer, layer, head, target, index: the
            initial control values (``layer`` −1 = last; ``head`` None = heads fused;
            ``target`` None = predicted class; ``discard_ratio`` in [0, 1), the slider
            reaching 0.99). Defaults: ``"rollout"``, ``"mean"``, 0.9, 0, −1, None, None, 0.
        alpha, cmap: overlay blending (see :func:`vit_course.viz.overlay`). Defaults: 0.5,
            ``"jet"``.
        max_classes_upfront: see :class:`ExplanationCache`. Default: 16.

    Attributes:
        controls: control name → widget (``"image"``, ``"method"``, ``"target"``,
            ``"head_fusion"``, ``"discard_ratio"``, ``"start_layer"``, ``"layer"``, ``"head"``).
        cache: the :class:`ExplanationCache`.
        current_map: the map shown, (h, w), as the method returns it (not normalised).
        figure: the matplotlib ``Figure``; ``overlay_artist`` / ``map_artist`` are its two
            images (overlay at display resolution, map on the patch grid).
        image_widget: the ``ipywidgets.Image`` showing the figure as PNG.
        status: an ``ipywidgets.HTML`` line (prediction, class explained, timing, errors).
        widget: the whole box; a notebook cell ending with the explorer displays it.
        last_update_ms: time of the last update (map + overlay + PNG), milliseconds.

    Example::

        ex = AttentionExplorer(model, x, ["pizza", "steak", "sushi"], transform=transform)
        ex.set(method="grad_rollout", target=2, discard_ratio=0.5)
        ex.current_map.shape                     # (14, 14) for ViT-B/16 at 224
    """

    def __init__(self, model: nn.Module, images: Tensor, class_names: Sequence[str] | None = None,
                 raw_images: Tensor | None = None, *, transform: Callable | None = None,
                 titles: Sequence[str] | None = None,
                 methods: Sequence[str] | None = None, method: str = "rollout",
                 head_fusion: str = "mean", discard_ratio: float = 0.9, start_layer: int = 0,
                 layer: int = -1, head: int | None = None, target: int | None = None,
                 index: int = 0, alpha: float = 0.5, cmap: str = "jet",
                 max_classes_upfront: int = 16):
        self.cache = ExplanationCache(model, images, max_classes_upfront=max_classes_upfront)
        self.info, self.images = self.cache.info, self.cache.images
        B = self.images.shape[0]
        if raw_images is None:
            self.raw_images = to_display(self.images, transform)
        else:
            self.raw_images = _batch(raw_images, "raw_images").detach().cpu().float()
            if self.raw_images.shape[0] != B:
                raise ValueError(f"raw_images must hold one image per model input ({B}), "
                                 f"got {self.raw_images.shape[0]}")
        self.titles = [f"image {i}" for i in range(B)] if titles is None else list(titles)
        if len(self.titles) != B:
            raise ValueError(f"titles must have one entry per image ({B}), got {len(self.titles)}")
        self.methods = _method_names(methods)
        if method not in self.methods:
            raise ValueError(f"method {method!r} is not among the explorer's methods "
                             f"{self.methods}")
        self.alpha, self.cmap = alpha, cmap               # checked by overlay on the first draw
        index = self.cache._index(index)
        K = self.cache.base(index).num_classes             # the first model pass
        self.class_names = [f"class {k}" for k in range(K)] if class_names is None \
            else [str(c) for c in class_names]
        if len(self.class_names) != K:
            raise ValueError(f"class_names has {len(self.class_names)} names but the model "
                             f"gives {K} classes")
        layer, start_layer, head, head_fusion, discard_ratio = (          # as set() checks
            self._checked(n, v) for n, v in [("layer", layer), ("start_layer", start_layer),
                                             ("head", head), ("head_fusion", head_fusion),
                                             ("discard_ratio", discard_ratio)])
        target = None if target is None else self._checked("target", target)

        self.current_map: Tensor | None = None
        self.last_update_ms = float("nan")
        self._holding = self._dirty = False
        self.controls = self._build_controls(index, method, head_fusion, discard_ratio,
                                             start_layer, layer, head, target)
        self.status = widgets.HTML()
        self.image_widget = widgets.Image(format="png")
        self._build_figure()
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        c = self.controls
        left = widgets.VBox([c["image"], c["method"], c["target"], c["head_fusion"]])
        right = widgets.VBox([c["discard_ratio"], c["start_layer"], c["layer"], c["head"]])
        self.widget = widgets.VBox([widgets.HBox([left, right]), self.image_widget, self.status])
        self.update()

    # ------------------------------------------------------------------ widgets
    def _build_controls(self, index: int, method: str, head_fusion: str, discard_ratio: float,
                        start_layer: int, layer: int, head: int | None,
                        target: int | None) -> dict[str, widgets.Widget]:
        L, H = self.info.num_layers, self.info.num_heads
        style = {"description_width": "90px"}
        slider = dict(continuous_update=False, style=style,
                      layout=widgets.Layout(width="330px"))
        return {
            "image": widgets.Dropdown(options=[(t, i) for i, t in enumerate(self.titles)],
                                      value=index, description="image", style=style),
            "method": widgets.Dropdown(options=self.methods, value=method,
                                       description="method", style=style),
            "target": widgets.Dropdown(
                options=[("predicted class", _NONE)] + [(n, k) for k, n in
                                                        enumerate(self.class_names)],
                value=_NONE if target is None else target, description="target class",
                style=style),
            "head_fusion": widgets.ToggleButtons(options=list(HEAD_FUSIONS), value=head_fusion,
                                                 description="head fusion", style=style),
            "discard_ratio": widgets.FloatSlider(value=discard_ratio, min=0.0,
                                                 max=max(0.99, discard_ratio),
                                                 step=0.01, readout_format=".2f",
                                                 description="discard ratio", **slider),
            "start_layer": widgets.IntSlider(value=start_layer, min=0, max=L - 1,
                                             description="start layer", **slider),
            "layer": widgets.IntSlider(value=layer, min=0, max=L - 1,
                                       description="layer", **slider),
            "head": widgets.Dropdown(options=[("all (fused)", _NONE)]
                                     + [(f"head {k}", k) for k in range(H)],
                                     value=_NONE if head is None else head,
                                     description="head", style=style),
        }

    def _build_figure(self) -> None:
        raw = self.raw_images[self.controls["image"].value]
        h, w = self.cache.base(self.controls["image"].value).grid
        self.figure = Figure(figsize=(8.4, 4.0), dpi=80)
        FigureCanvasAgg(self.figure)
        ax_overlay, ax_map = self.figure.subplots(1, 2)
        self.overlay_artist = ax_overlay.imshow(raw.permute(1, 2, 0).numpy())
        self.map_artist = ax_map.imshow(np.zeros((h, w), dtype=np.float32), cmap="viridis",
                                        interpolation="nearest")
        self.figure.colorbar(self.map_artist, ax=ax_map, fraction=0.046, pad=0.04)
        for ax in (ax_overlay, ax_map):
            ax.set(xticks=[], yticks=[])
        self._ax_overlay, self._ax_map = ax_overlay, ax_map
        # fixed margins (room for a two-line title); tight_layout would move the axes
        # whenever a title changes
        self.figure.subplots_adjust(left=0.02, right=0.93, bottom=0.03, top=0.86, wspace=0.08)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The current control values, control name → value (``None`` for "predicted
        class" and "all heads fused"; the widgets hold -1 for those)."""
        return {name: None if name in _NULLABLE and c.value == _NONE else c.value
                for name, c in self.controls.items()}

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Change several controls with one update at the end::

            with explorer.hold():
                explorer.controls["method"].value = "grad_rollout"
                explorer.controls["target"].value = 1
        """
        if self._holding:
            yield
            return
        self._holding, self._dirty = True, False
        try:
            yield
        finally:
            self._holding = False
        if self._dirty:
            self.update()

    def set(self, **values: Any) -> AttentionExplorer:
        """Set control values (names as in :attr:`controls`) and update once.

        Raises:
            TypeError: an unknown control name (the message lists them).
            ValueError: a value the control does not offer (checked as the constructor
                checks it; nothing changes then).
        """
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise TypeError(f"unknown control(s) {unknown}; the controls are "
                            f"{list(self.controls)}")
        values = {n: _NONE if n in _NULLABLE and v is None else self._checked(n, v)
                  for n, v in values.items()}          # all checked before any control moves
        with self.hold():
            for name, value in values.items():
                control = self.controls[name]
                if name == "discard_ratio":          # any ratio in [0, 1), as in the constructor
                    control.max = max(control.max, value)
                try:
                    control.value = value
                except Exception as exc:        # traitlets.TraitError from the widget
                    raise ValueError(f"{name}={value!r} is not a value this control offers: "
                                     f"{exc}") from exc
        return self

    def _checked(self, name: str, value: Any) -> Any:
        """``value`` for control ``name``, checked (and converted) as the constructor does."""
        L, H = self.info.num_layers, self.info.num_heads
        check = {"discard_ratio": check_ratio, "head_fusion": check_fusion,
                 "layer": lambda v: check_layer_index(v, L),
                 "start_layer": lambda v: check_layer_index(v, L, "start_layer"),
                 "head": lambda v: check_head_index(v, H), "image": self.cache._index,
                 "target": lambda v: int(check_targets(v, 1, len(self.class_names))[0])}.get(name)
        return value if check is None else check(value)

    def _on_change(self, change: dict) -> None:
        if self._holding:
            self._dirty = True
            return
        try:
            self.update()
        except (ValueError, TypeError, RuntimeError) as exc:   # shown, not lost in the console
            self.status.value = f"<span style='color:#b00'>error: {exc}</span>"

    # ------------------------------------------------------------------ updating
    def _sync_enabled(self, method: str) -> None:
        takes = set(method_options(method, {name: None for name in CONTROL_OPTIONS}))
        for name in CONTROL_OPTIONS:
            self.controls[name].disabled = name not in takes
        if "head" in takes and self.controls["head"].value != _NONE:
            self.controls["head_fusion"].disabled = True     # one head: nothing to fuse
        self.controls["target"].disabled = not get_method(method).class_specific

    def compute_map(self) -> Tensor:
        """The map for the current controls, (h, w): a package call, no drawing."""
        s = self.state()
        return self.cache.map(s["image"], s["method"], s["target"],
                              **method_options(s["method"], s))

    def update(self) -> None:
        """Recompute the map for the current controls and redraw (also called by controls)."""
        start = time.perf_counter()
        s = self.state()
        self._sync_enabled(s["method"])
        m = self.compute_map().detach().cpu().float()
        self.current_map = m
        raw = self.raw_images[s["image"]]
        heat = upsample(m[None], tuple(raw.shape[-2:]), normalize=True)[0]
        self.overlay_artist.set_data(overlay(raw, heat.numpy(), alpha=self.alpha, cmap=self.cmap))
        self.map_artist.set_data(m.numpy())
        lo, hi = float(m.min()), float(m.max())
        self.map_artist.set_clim(lo, hi if hi > lo else lo + 1e-12)
        desc = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in method_options(s["method"], s).items())
        self._ax_overlay.set_title(self.titles[s["image"]], fontsize=10)
        self._ax_map.set_title(s["method"] + (f"\n{desc}" if desc else ""), fontsize=9)
        self.image_widget.value = _png(self.figure)
        self.last_update_ms = (time.perf_counter() - start) * 1e3
        self._status(s)

    def _status(self, s: Mapping[str, Any]) -> None:
        i = s["image"]
        probs = self.cache.probabilities(i)
        pred = int(probs.argmax())
        parts = [f"<b>{self.titles[i]}</b>: predicted <b>{self.class_names[pred]}</b> "
                 f"({probs[pred]:.0%})"]
        if get_method(s["method"]).class_specific:
            t = self.cache.resolve_target(i, s["target"])
            parts.append(f"explaining <b>{self.class_names[t]}</b>")
        else:
            parts.append("class-agnostic: the target class does not change this map")
        parts.append(f"update {self.last_update_ms:.0f} ms")
        parts.append(f"model passes so far: {self.cache.passes}")
        self.status.value = " · ".join(parts)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _png(figure: Figure) -> bytes:
    """Draw ``figure`` once with Agg and encode it as PNG (savefig would draw it twice)."""
    canvas = figure.canvas
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    buf = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buf, format="png", compress_level=1)
    return buf.getvalue()

