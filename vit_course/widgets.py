"""Slider explorer for explanation maps (ipywidgets), and the cache that makes it fast.

::

    explorer = AttentionExplorer(model, images, class_names, transform=transform)
    explorer                     # in a notebook cell: sliders, dropdowns and the two images

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
methods whose ``class_specific`` flag is false. Methods whose paper defaults are too slow
for a slider get the lighter settings of :data:`EXPLORER_OPTIONS`.

**No silent waits.** A move whose map is cached and cheap is drawn at once, in the event
callback. Anything else (a model pass, a method expected to take longer than
``busy_after`` seconds) runs in a background thread (:mod:`vit_course.background`): the
status line says at once what is computed and how long it should take (from the measured
cost, :data:`COST_IN_CAPTURES` × this model's capture time, then the method's own last
time), a progress bar counts the forward calls of the model and its blocks, and a newer move
supersedes the running job at its next such call (the latest choice wins; nothing queues). If a
method fails, the map is cleared and the status line names the method and the reason.

**Redraw only what changed.** The photo goes to the browser once per image; a move sends
the heat layer laid over it (an RGBA PNG of 4× the patch grid, :func:`vit_course.viz.heat_png`,
about 7 KB, which the browser scales smoothly) and the map (``ipywidgets.Image``), titles
and the colour bar as HTML; no figure is drawn.

For scripts and tests the explorer works without a browser: ``explorer.set(discard_ratio=0.5)``
computes in the calling thread and updates ``explorer.current_map`` (h, w), the arrays
``overlay_rgb`` / ``map_rgb`` and the PNGs ``overlay_image.value`` / ``map_image.value``;
after setting ``explorer.controls[...].value`` call ``explorer.wait()``. ``explorer.copy()``
gives a second explorer over the same cache (no model pass), for code that should not move
the one on screen.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
from IPython.display import display
import matplotlib
import numpy as np
from torch import Tensor, nn

from .background import LatestOnly, Superseded, on_forward
from .checks import (HEAD_FUSIONS, check_fusion, check_head_index, check_layer_index,
                     check_ratio, check_targets)
from .explain import METHODS, get_method
from .explain.families import blocks_of
from .explanation_cache import (  # EXPLORER_OPTIONS, COST_IN_CAPTURES: read from here too
    CONTROL_OPTIONS, COST_IN_CAPTURES, EXPLORER_OPTIONS, ExplanationCache, as_batch,
    describe_options, method_names, method_options)
from .imaging import normalization_of, to_display, upsample
from .viz import colorbar_html, heat_png, overlay, photo_png, png_bytes, title_html


#: What the target and head dropdowns hold for "predicted class" / "all heads fused"
#: (a Dropdown cannot hold None: None means "nothing selected"); state() gives None.
_NONE = -1
_NULLABLE = ("target", "head")

#: Shown size of the two images, pixels.
_SIZE = 256


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
            display (and for integrated gradients' black baseline). Default: ``None``
            (images shown as they are, clamped to [0, 1]).
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
        options: method name → extra options, over :data:`EXPLORER_OPTIONS` (e.g.
            ``{"integrated_gradients": {"steps": 32}}``). Default: none.
        busy_after: a move whose map is not cached, or is expected to take longer than
            this many seconds, runs in the background with a busy state. Default: 0.5.
        cache: an :class:`ExplanationCache` of this model and images to share
            (:meth:`copy` passes its own). Default: a new one.

    Attributes:
        controls: control name → widget (``"image"``, ``"method"``, ``"target"``,
            ``"head_fusion"``, ``"discard_ratio"``, ``"start_layer"``, ``"layer"``, ``"head"``).
        cache: the :class:`ExplanationCache`.
        current_map: the map shown, (h, w), as the method returns it (not normalised);
            ``None`` after a failure.
        overlay_rgb, map_rgb: the two pictures shown, (H', W', 3) and (h, w, 3) in [0, 1]
            (``overlay_rgb`` composed on access, the heat layer upsampled here, not by the
            browser).
        photo_image, overlay_image, map_image: the ``ipywidgets.Image`` widgets: the photo
            (PNG, sent once per image), the heat layer over it (RGBA PNG, transparent after
            a failure) and the map (PNG).
        status: an ``ipywidgets.HTML`` line (prediction, class explained, timing, busy
            state, errors); ``progress`` the bar under it.
        widget: the whole box; a notebook cell ending with the explorer displays it.
        last_update_ms: time of the last update (map + drawing), milliseconds.
        error: the last failure's message, ``None`` after a successful update.

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
                 max_classes_upfront: int = 16,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 busy_after: float = 0.5, cache: ExplanationCache | None = None):
        if cache is not None and cache.model is not model:
            raise ValueError("cache belongs to another model; pass that model, or no cache")
        self.cache = cache or ExplanationCache(model, images, max_classes_upfront)
        self.info, self.images = self.cache.info, self.cache.images
        B = self.images.shape[0]
        if raw_images is None:
            self.raw_images = to_display(self.images, transform)
        else:
            self.raw_images = as_batch(raw_images, "raw_images").detach().cpu().float()
            if self.raw_images.shape[0] != B:
                raise ValueError(f"raw_images must hold one image per model input ({B}), "
                                 f"got {self.raw_images.shape[0]}")
        self.titles = [f"image {i}" for i in range(B)] if titles is None else list(titles)
        if len(self.titles) != B:
            raise ValueError(f"titles must have one entry per image ({B}), got {len(self.titles)}")
        self.methods = method_names(methods)
        if method not in self.methods:
            raise ValueError(f"method {method!r} is not among the explorer's methods "
                             f"{self.methods}")
        self.alpha, self.cmap = alpha, cmap               # checked by overlay on the first draw
        self.busy_after = float(busy_after)
        self.options = self._method_extras(transform, options)
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
        self.map_rgb = self._heat = self._shown = None
        self._photos: dict[int, bytes] = {}           # image index → its PNG, encoded once
        self._heat_size = tuple(min(R, 4 * g) for R, g in zip(  # the heat layer: 4× the grid
            self.raw_images.shape[-2:], self.info.grid(*self.images.shape[-2:])))
        self.error: str | None = None
        self.last_update_ms = float("nan")
        self._holding = self._dirty = False
        self._jobs = LatestOnly()
        self._draw_lock = threading.Lock()
        self._seconds: dict[str, float] = {}           # method → its last measured time
        self._forwards: dict[str, int] = {}            # method → forward passes it made
        self.controls = self._build_controls(index, method, head_fusion, discard_ratio,
                                             start_layer, layer, head, target)
        self._build_view()
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.update()

    def _method_extras(self, transform: Callable | None,
                       options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict]:
        extras = {m: dict(o) for m, o in EXPLORER_OPTIONS.items()}
        norm = normalization_of(transform)
        if norm is not None and norm[0] is not None:      # black = pixel 0 in model space
            extras["integrated_gradients"].update(mean=tuple(norm[0]), std=tuple(norm[1]))
        for name, opts in (options or {}).items():
            get_method(name)                              # ValueError naming the methods
            extras.setdefault(name, {}).update(opts)
        return {m: o for m, o in extras.items() if m in METHODS}

    def copy(self) -> AttentionExplorer:
        """A new explorer in this one's state over the same cache (no model pass)."""
        s = self.state()
        return AttentionExplorer(
            self.cache.model, self.images, self.class_names, self.raw_images,
            titles=self.titles, methods=self.methods, alpha=self.alpha, cmap=self.cmap,
            options=self.options, busy_after=self.busy_after, cache=self.cache,
            index=s.pop("image"), **s)

    # ------------------------------------------------------------------ widgets
    def _build_controls(self, index: int, method: str, head_fusion: str, discard_ratio: float,
                        start_layer: int, layer: int, head: int | None,
                        target: int | None) -> dict[str, widgets.Widget]:
        L, H = self.info.num_layers, self.info.num_heads
        style = {"description_width": "90px"}
        slider = dict(continuous_update=False, style=style,
                      layout=widgets.Layout(width="330px"))
        wide = widgets.Layout(width=f"{min(640, 110 + 8 * max(len(t) for t in self.titles))}px")
        controls = {
            "image": widgets.Dropdown(options=[(t, i) for i, t in enumerate(self.titles)],
                                      value=index, description="image", style=style,
                                      layout=wide),
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
        for name, control in controls.items():           # stable hooks for browser tests
            control.add_class(f"vitc-{name}")
        return controls

    def _build_view(self) -> None:
        self.photo_image, self.overlay_image, self.map_image = (widgets.Image(
            format="png", layout=widgets.Layout(width=f"{_SIZE}px", height=f"{_SIZE}px",
                                                grid_area=area)) for area in ("a", "a", None))
        self._overlay_title, self._map_title, self.colorbar = (widgets.HTML() for _ in range(3))
        self.status = widgets.HTML()
        self.progress = widgets.FloatProgress(min=0.0, max=1.0, layout=widgets.Layout(
            width="160px", visibility="hidden"))
        for w, name in ((self.overlay_image, "overlay"), (self.map_image, "map"),
                        (self.status, "status"), (self.progress, "progress")):
            w.add_class(f"vitc-{name}")
        c = self.controls
        left = widgets.VBox([c["image"], c["method"], c["target"], c["head_fusion"]])
        right = widgets.VBox([c["discard_ratio"], c["start_layer"], c["layer"], c["head"]])
        stack = widgets.GridBox([self.photo_image, self.overlay_image],  # heat over photo
                                layout=widgets.Layout(grid_template_areas='"a"'))
        pictures = widgets.HBox([widgets.VBox([self._overlay_title, stack]),
                                 widgets.VBox([self._map_title, self.map_image]), self.colorbar])
        self.widget = widgets.VBox([widgets.HBox([left, right]), pictures,
                                    widgets.HBox([self.progress, self.status])])
        self.widget.add_class("vitc-explorer")

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
        """Set control values (names as in :attr:`controls`) and update once, in this thread.

        Raises:
            TypeError: an unknown control name (the message lists them).
            ValueError: a value the control does not offer (checked as the constructor
                checks it; nothing changes then).
            Exception: whatever the method raised (also shown in the status line).
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

    # ------------------------------------------------------------------ updating
    def _sync_enabled(self, method: str) -> None:
        takes = set(method_options(method, {name: None for name in CONTROL_OPTIONS}))
        for name in CONTROL_OPTIONS:
            self.controls[name].disabled = name not in takes
        if "head" in takes and self.controls["head"].value != _NONE:
            self.controls["head_fusion"].disabled = True     # one head: nothing to fuse
        self.controls["target"].disabled = not get_method(method).class_specific

    def _options(self, s: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.options.get(s["method"], {}), **method_options(s["method"], s)}

    def compute_map(self, s: Mapping[str, Any] | None = None) -> Tensor:
        """The map for the controls ``s`` (default: the current ones), (h, w): a package
        call, no drawing."""
        s = self.state() if s is None else s
        return self.cache.map(s["image"], s["method"], s["target"], **self._options(s))

    def expected_seconds(self, s: Mapping[str, Any] | None = None) -> float:
        """How long the map for controls ``s`` should take: 0 when cached for a capture
        method, else the method's last measured time, else :data:`COST_IN_CAPTURES` ×
        this model's measured capture time (plus a capture for an unseen image)."""
        s = self.state() if s is None else s
        method, cap_s = get_method(s["method"]), self.cache.capture_seconds
        if not method.supports_capture and self.cache.ready(s["image"], s["method"], s["target"],
                                                            **self._options(s)):
            return 0.0
        default = COST_IN_CAPTURES.get(method.name, 0.01 if method.supports_capture else 1.0)
        seconds = self._seconds.get(method.name, default * cap_s)
        return seconds + (0.0 if s["image"] in self.cache._base else cap_s)

    def update(self) -> None:
        """Recompute the map for the current controls and redraw, in this thread (a
        running background job is superseded and waited for)."""
        generation = self._jobs.new_request()
        s = self.state()
        self._sync_enabled(s["method"])
        self._jobs.wait()
        self._compute_and_show(generation, s, raise_errors=True)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background job (if any) has finished and drawn."""
        self._jobs.wait(timeout)

    def _on_change(self, change: dict) -> None:
        if self._holding:
            self._dirty = True
            return
        generation = self._jobs.new_request()
        s = self.state()
        self._sync_enabled(s["method"])
        expected = self.expected_seconds(s)
        if expected <= self.busy_after and self.cache.ready(s["image"], s["method"],
                                                            s["target"], **self._options(s)):
            self._compute_and_show(generation, s)   # cheap, no model pass: answer at once
            return
        self._busy(s, expected)
        self._jobs.submit(generation, lambda: self._compute_and_show(generation, s))

    def _busy(self, s: Mapping[str, Any], expected: float) -> None:
        opts = {**get_method(s["method"]).defaults, **self.options.get(s["method"], {})}
        work = ", ".join(f"{k.replace('n_', '')} {v}" for k, v in opts.items()
                         if k in ("steps", "n_samples"))
        what = "capturing the image, then " if s["image"] not in self.cache._base else ""
        self.status.value = (f"<span style='color:#a60'>⏳ computing <b>{s['method']}</b>"
                             f"{f' ({work})' if work else ''} for "
                             f"<b>{html.escape(self.titles[s['image']])}</b>: {what}about "
                             f"{max(expected, 0.1):.1f} s</span>")
        self.progress.value, self.progress.layout.visibility = 0.0, "visible"

    def _steps(self, method: str) -> int | None:
        """Forward calls (of the model and its blocks) ``method`` is expected to make: as
        many as on its last run, else one pass per chunk of its steps or samples."""
        if method in self._forwards:
            return self._forwards[method]
        opts = {**get_method(method).defaults, **self.options.get(method, {})}
        n = opts.get("steps", opts.get("n_samples"))
        chunks = None if n is None else math.ceil(n / opts.get("internal_batch_size", 16))
        return chunks and chunks * (1 + self.info.num_layers)      # the model + each block

    def _compute_and_show(self, generation: int, s: Mapping[str, Any],
                          raise_errors: bool = False) -> None:
        start, done, total = time.perf_counter(), [0], self._steps(s["method"])
        method = get_method(s["method"])
        cached = self.cache.ready(s["image"], s["method"], s["target"], **self._options(s))
        measure = s["image"] in self.cache._base and (method.supports_capture or not cached)

        def tick() -> None:                                  # before every forward pass
            self._jobs.check(generation)
            done[0] += 1
            if total and threading.current_thread() is not threading.main_thread():
                self.progress.value = min(1.0, (done[0] - 1) / total)

        try:
            with on_forward([self.cache.model, *blocks_of(self.cache.model)], tick):
                m = self.compute_map(s).detach().cpu().float()
        except Superseded:
            return
        except Exception as exc:                 # shown, and the explorer stays usable
            self._show_error(generation, s, exc)
            if raise_errors:
                raise
            return
        if measure:
            self._seconds[method.name] = time.perf_counter() - start
            self._forwards[method.name] = done[0]
        self._show(generation, s, m, start)

    def _show(self, generation: int, s: Mapping[str, Any], m: Tensor, start: float) -> None:
        with self._draw_lock:
            if not self._jobs.is_current(generation):
                return
            self.current_map, self.error = m, None
            self._heat = upsample(m[None], self._heat_size, normalize=True)[0]
            lo, hi = float(m.min()), float(m.max())
            scaled = ((m - lo) / (hi - lo) if hi > lo else m * 0).numpy()
            self.map_rgb = matplotlib.colormaps["viridis"](scaled)[..., :3]
            self._draw(s, s["method"], lo, hi)
            self.last_update_ms = (time.perf_counter() - start) * 1e3
            self._status(s)

    def _draw(self, s: Mapping[str, Any], title: str, lo: float, hi: float) -> None:
        # one widget message per changed value, the pictures first; the map's title names
        # the method only (the status line names the options), so a move sends no title
        self._shown = i = s["image"]
        self.map_image.value = png_bytes(self.map_rgb, (_SIZE, _SIZE))
        heat = np.zeros(self._heat_size) if self._heat is None else self._heat
        self.overlay_image.value = heat_png(heat, 0.0 if self._heat is None else self.alpha, self.cmap)
        self.photo_image.value = self._photos.get(i) or self._photos.setdefault(
            i, photo_png(self.raw_images[i]))
        self._overlay_title.value = title_html(self.titles[s["image"]])
        self._map_title.value = title_html(title)
        self.colorbar.value = colorbar_html(lo, hi, _SIZE) if hi >= lo else ""
        self.progress.layout.visibility = "hidden"

    def _show_error(self, generation: int, s: Mapping[str, Any], exc: Exception) -> None:
        with self._draw_lock:
            if not self._jobs.is_current(generation):
                return
            reason = f"{type(exc).__name__}: {exc}"
            self.current_map, self.error = None, f"{s['method']} failed: {reason}"
            self._heat = None
            self.map_rgb = np.full((*self.cache.info.grid(*self.images.shape[-2:]), 3), 0.9)
            self._draw(s, f"{s['method']} (no map)", 1.0, 0.0)
            self.status.value = (f"<span style='color:#b00'>✗ <b>{s['method']}</b> failed: "
                                 f"{html.escape(reason)} — the map is cleared; choose another "
                                 "method or setting.</span>")

    def _status(self, s: Mapping[str, Any]) -> None:
        i = s["image"]
        probs = self.cache.probabilities(i)
        pred = int(probs.argmax())
        desc = describe_options(method_options(s["method"], s))
        parts = [f"<b>{s['method']}</b>{f' ({desc})' if desc else ''}",
                 f"<b>{html.escape(self.titles[i])}</b>: predicted "
                 f"<b>{self.class_names[pred]}</b> ({probs[pred]:.0%})"]
        if get_method(s["method"]).class_specific:
            t = self.cache.resolve_target(i, s["target"])
            parts.append(f"explaining <b>{self.class_names[t]}</b>")
        else:
            parts.append("class-agnostic: the target class does not change this map")
        parts += [f"update {self.last_update_ms:.0f} ms",
                  f"model passes so far: {self.cache.passes}"]
        self.status.value = " · ".join(parts)

    @property
    def overlay_rgb(self) -> np.ndarray | None:
        """The overlay shown, (H', W', 3) in [0, 1]: the photo alone after a failure."""
        raw = None if self.map_rgb is None else self.raw_images[self._shown]
        if raw is None or self._heat is None:
            return raw if raw is None else raw.permute(1, 2, 0).numpy()
        heat = upsample(self._heat[None], tuple(raw.shape[-2:]))[0]
        return overlay(raw, heat.clamp(0, 1).numpy(), alpha=self.alpha, cmap=self.cmap)

    def _ipython_display_(self) -> None:
        display(self.widget)
