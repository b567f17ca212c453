"""vit_course.widgets: the slider explorer and its cache, headless, on tiny models.

The model's forward passes are counted with a forward pre-hook registered here (the
explorer knows nothing about it). The key property: once an image (and class) has been
seen, moving any control runs the model zero times, and the figure still changes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vit_course.explain import METHODS, Explainer, explain, get_method, register_method
from vit_course.imaging import to_display
from vit_course.models import ViT
from vit_course.widgets import (COST_IN_CAPTURES, EXPLORER_OPTIONS, AttentionExplorer,
                               ExplanationCache, method_options)
from vit_course.viz import colorbar_html

CLASSES = ["pizza", "steak", "sushi"]


def course_vit(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    model = ViT(img_size=32, patch_size=8, num_transformer_layers=2, embedding_dim=32,
                mlp_size=64, num_heads=2, num_classes=3)
    nn.init.normal_(model.head.weight, std=0.5)
    nn.init.normal_(model.head.bias, std=0.5)
    return model.eval()


@pytest.fixture(params=["torchvision", "course"])
def any_model(request: pytest.FixtureRequest, tiny_tv_vit: Callable[..., nn.Module]) -> nn.Module:
    """Both model families (for the tests of the explorer's core promises)."""
    return tiny_tv_vit(seed=0) if request.param == "torchvision" else course_vit(seed=0)


@pytest.fixture
def model(tiny_tv_vit: Callable[..., nn.Module]) -> nn.Module:
    return tiny_tv_vit(seed=0)


def batch(B: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class ForwardCounter:
    """Counts the model's forward calls (a pre-hook on the top module)."""

    def __init__(self, model: nn.Module):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.n += 1

    def remove(self) -> None:
        self.handle.remove()


@pytest.fixture
def counted(any_model: nn.Module):
    counter = ForwardCounter(any_model)
    yield any_model, counter
    counter.remove()


def figure_data(ex: AttentionExplorer) -> tuple[np.ndarray, np.ndarray, bytes]:
    return (np.array(ex.overlay_rgb, copy=True), np.array(ex.map_rgb, copy=True),
            ex.map_image.value)


# ----------------------------------------------------------------------------- zero passes
def test_slider_moves_change_the_figure_with_zero_forward_passes(counted) -> None:
    model, counter = counted
    ex = AttentionExplorer(model, batch(), CLASSES, discard_ratio=0.0)
    assert counter.n == 1, "the initial capture is one forward pass"
    counter.n = 0
    pred = int(ex.cache.base(0).targets[0])
    others = [c for c in range(3) if c != pred]
    moves = [dict(discard_ratio=0.5), dict(discard_ratio=0.9), dict(head_fusion="max"),
             dict(head_fusion="min"), dict(start_layer=1),
             dict(start_layer=0, head_fusion="mean", discard_ratio=0.0),
             dict(method="grad_rollout"), dict(target=others[0]), dict(target=others[1]),
             dict(method="attention", layer=0), dict(head=1),
             dict(layer=1)]
    for move in moves:
        before_map = ex.current_map.clone()
        before = figure_data(ex)
        ex.set(**move)
        after = figure_data(ex)
        assert not torch.equal(ex.current_map, before_map), f"map unchanged after {move}"
        assert not np.array_equal(before[0], after[0]), f"overlay unchanged after {move}"
        assert not np.array_equal(before[1], after[1]), f"patch map unchanged after {move}"
        assert before[2] != after[2], f"PNG unchanged after {move}"
    assert counter.n == 0, f"{counter.n} forward pass(es) during slider moves; expected 0"
    assert ex.cache.passes == 1


def test_setting_widget_values_directly_triggers_the_update(counted) -> None:
    model, counter = counted
    ex = AttentionExplorer(model, batch(), CLASSES, discard_ratio=0.0)
    counter.n = 0
    before = ex.current_map.clone()
    ex.controls["discard_ratio"].value = 0.8           # as a user dragging the slider
    assert not torch.equal(ex.current_map, before)
    assert ex.state()["discard_ratio"] == pytest.approx(0.8)
    assert counter.n == 0


def test_image_and_target_switches_compute_once_then_cache(counted) -> None:
    model, counter = counted
    ex = AttentionExplorer(model, batch(B=3), CLASSES, method="grad_rollout")
    assert counter.n == 1
    ex.set(image=1)
    assert counter.n == 2, "a new image is captured once"
    ex.set(image=2)
    assert counter.n == 3
    counter.n = 0
    for image in (0, 1, 2, 1, 0):                      # second visits
        for target in (0, 1, 2, None):
            ex.set(image=image, target=target)
    assert counter.n == 0, f"{counter.n} forward pass(es) on revisits; expected 0"


def test_per_class_capture_beyond_the_upfront_limit(counted) -> None:
    """With more classes than max_classes_upfront, each new (image, class) costs one pass."""
    model, counter = counted
    cache = ExplanationCache(model, batch(B=2), max_classes_upfront=0)
    cache.map(0, "grad_rollout", None)
    assert counter.n == 1                              # the predicted class comes with it
    pred = int(cache.base(0).targets[0])
    other = (pred + 1) % 3
    cache.map(0, "grad_rollout", other)
    assert counter.n == 2
    for _ in range(3):
        cache.map(0, "grad_rollout", other, discard_ratio=0.5)
        cache.map(0, "grad_rollout", pred, head_fusion="max")
    assert counter.n == 2


# ----------------------------------------------------------------------------- correctness
CASES = [
    ("rollout", dict(head_fusion="max", discard_ratio=0.5, start_layer=0)),
    ("rollout", dict(head_fusion="min", discard_ratio=0.0, start_layer=1)),
    ("grad_rollout", dict(head_fusion="mean", discard_ratio=0.3, start_layer=0)),
    ("grad_rollout", dict(head_fusion="max", discard_ratio=0.0, start_layer=1)),
    ("attention", dict(layer=0, head=1)),
    ("attention", dict(layer=1, head=None, head_fusion="max")),
]


def test_maps_equal_the_package_call_on_the_image_alone(any_model: nn.Module) -> None:
    """Cached captures and batched per-class gradients give explain()'s maps exactly."""
    model = any_model
    x = batch(B=3)
    cache = ExplanationCache(model, x)
    for method, options in CASES:
        for target in (None, 0, 2):
            expected = explain(model, x[2:3], method=method, target=target, **options)[0]
            torch.testing.assert_close(cache.map(2, method, target, **options), expected,
                                       rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{method} {options} target={target}: {m}")
    ex = AttentionExplorer(model, x, CLASSES)                # the explorer passes its controls
    method, options = CASES[3]
    ex.set(image=2, method=method, target=0, **options)
    expected = explain(model, x[2:3], method=method, target=0, **options)[0]
    torch.testing.assert_close(ex.current_map, expected, rtol=1e-5, atol=1e-6)


def test_class_specific_maps_differ_by_target_and_rollout_does_not(model: nn.Module) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES, method="grad_rollout", discard_ratio=0.0)
    maps = [ex.set(target=t).current_map.clone() for t in range(3)]
    assert not torch.allclose(maps[0], maps[1]) or not torch.allclose(maps[1], maps[2])
    ex.set(method="rollout")
    agnostic = [ex.set(target=t).current_map.clone() for t in range(3)]
    assert all(torch.equal(agnostic[0], m) for m in agnostic[1:])


def test_hold_batches_changes_into_one_update(model: nn.Module) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES)
    calls = []
    original = ex.update
    ex.update = lambda: (calls.append(1), original())[1]
    with ex.hold():
        ex.controls["method"].value = "grad_rollout"
        ex.controls["target"].value = 1
        ex.controls["discard_ratio"].value = 0.2
    assert len(calls) == 1
    ex.set(head_fusion="max", start_layer=1)
    assert len(calls) == 2
    assert ex.state()["method"] == "grad_rollout" and ex.state()["target"] == 1


# ----------------------------------------------------------------------------- registry
def test_method_list_comes_from_the_registry(model: nn.Module) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES)
    assert set(ex.controls["method"].options) == set(METHODS)
    assert list(ex.controls["method"].options)[:3] == ["rollout", "grad_rollout", "attention"]


@pytest.fixture
def extra_methods():
    """Two throw-away methods: one from a capture, one that needs the model (recompute)."""
    added = []

    def add(name: str, cls: type) -> type:
        register_method(name)(cls)
        added.append(name)
        return cls

    class ColumnSum(Explainer):
        defaults = {"start_layer": 0}

        def compute(self, cap, target, start_layer):
            return torch.stack(list(cap.attentions))[start_layer:].sum(dim=(0, 2, 3))

    class PixelMean(Explainer):
        supports_capture = False
        class_specific = True
        defaults = {"discard_ratio": 0.0}

        def compute(self, images, target, discard_ratio):
            logits = self.model(images)
            t = logits.argmax(1) if target is None else torch.as_tensor(target).expand(len(images))
            h, w = self.info.grid(*images.shape[-2:])
            base = torch.nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), (h, w))
            return base[:, 0] * (1 + discard_ratio) + t.view(-1, 1, 1)

    class FailsAtOne(Explainer):
        defaults = {"start_layer": 0}

        def compute(self, cap, target, start_layer):
            if start_layer == 1:
                raise ValueError("start_layer=1 is not supported by this test method")
            return cap.attentions[0].mean(1)[:, 0]

    class DeclaredAgnostic(PixelMean):
        class_specific = False

    add("_test_declared_agnostic", DeclaredAgnostic)
    add("_test_column_sum", ColumnSum)
    add("_test_pixel_mean", PixelMean)
    add("_test_fails_at_one", FailsAtOne)
    yield
    for name in added:
        METHODS.pop(name, None)


def test_newly_registered_methods_appear_and_work(counted, extra_methods) -> None:
    model, counter = counted
    ex = AttentionExplorer(model, batch(), CLASSES)
    assert {"_test_column_sum", "_test_pixel_mean"} <= set(ex.controls["method"].options)
    counter.n = 0
    ex.set(method="_test_column_sum", start_layer=1)
    assert counter.n == 0, "a method with capture support runs from the cache"
    assert ex.controls["discard_ratio"].disabled and not ex.controls["start_layer"].disabled

    ex.set(method="_test_pixel_mean", discard_ratio=0.5)
    first = counter.n
    assert first >= 1, "a method without capture support recomputes with the model"
    assert not ex.controls["discard_ratio"].disabled and ex.controls["start_layer"].disabled
    assert not ex.controls["target"].disabled
    ex.set(discard_ratio=0.1)
    assert counter.n > first, "new options: recomputed"
    n = counter.n
    ex.set(discard_ratio=0.5)
    ex.set(discard_ratio=0.1)
    assert counter.n == n, "options seen before come from the map cache"


def decoded(png: bytes) -> np.ndarray:
    """An ``ipywidgets.Image`` value decoded: (H, W, 3) or (H, W, 4) uint8."""
    return np.asarray(Image.open(io.BytesIO(png)))


def test_a_move_sends_a_small_heat_layer_and_the_photo_once_per_image(
        model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    import vit_course.widgets as module

    def layer() -> np.ndarray:
        return decoded(ex.overlay_image.value)

    raw = torch.rand(3, 3, 64, 64)
    ex = AttentionExplorer(model, batch(), CLASSES, raw_images=raw, discard_ratio=0.0)
    photo, heat = ex.photo_image.value, layer()
    assert heat.shape == (16, 16, 4), "4x the 4x4 patch grid, not the photo's 64x64 pixels"
    assert (heat[..., 3] == round(255 * ex.alpha)).all()
    shown = decoded(photo).astype(float) / 255
    np.testing.assert_allclose(shown, raw[0].permute(1, 2, 0).numpy(), atol=1 / 255)
    encoded = []
    real = module.photo_png
    monkeypatch.setattr(module, "photo_png", lambda image: encoded.append(tuple(image.shape)) or real(image))
    ex.set(discard_ratio=0.9)
    assert ex.photo_image.value == photo and not np.array_equal(layer(), heat)
    ex.set(image=1)
    assert ex.photo_image.value != photo
    ex.set(image=0)
    assert ex.photo_image.value == photo
    assert encoded == [(3, 64, 64)], "each photo is encoded once, on its first visit"
    assert ex.overlay_rgb.shape == (64, 64, 3), "composed at the photo's resolution"
    assert not np.allclose(ex.overlay_rgb, raw[0].permute(1, 2, 0).numpy(), atol=0.05)


def test_errors_show_in_the_status_line_from_controls_and_raise_from_set(
        model: nn.Module, extra_methods) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES, method="_test_fails_at_one")
    before = ex.overlay_image.value
    ex.controls["start_layer"].value = 1          # a user moving the slider: no exception
    ex.wait()
    assert "_test_fails_at_one</b> failed" in ex.status.value and "not supported" in ex.status.value
    assert ex.current_map is None and ex.error.startswith("_test_fails_at_one failed")
    assert np.ptp(ex.map_rgb) == 0, "the old map is cleared, not left under the new name"
    assert ex.overlay_image.value != before and ex.progress.layout.visibility == "hidden"
    assert (decoded(ex.overlay_image.value)[..., 3] == 0).all(), \
        "the heat layer is transparent: the photo alone"
    ex.controls["start_layer"].value = 0          # still usable
    ex.wait()
    assert "failed" not in ex.status.value and ex.current_map is not None and ex.error is None
    with pytest.raises(ValueError, match="not supported"):
        ex.set(start_layer=1)


def test_a_method_can_declare_whether_it_is_class_specific(model: nn.Module,
                                                          extra_methods) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES, method="_test_pixel_mean")
    assert not ex.controls["target"].disabled             # declared class-specific
    ex.set(method="_test_declared_agnostic")               # declared agnostic
    assert ex.controls["target"].disabled
    assert not get_method("_test_declared_agnostic").supports_capture
    assert "class-agnostic" in ex.status.value


def test_method_option_helpers(model: nn.Module) -> None:
    values = dict(discard_ratio=0.5, head_fusion="max", start_layer=1, layer=0, head=None)
    assert method_options("rollout", values) == dict(discard_ratio=0.5, head_fusion="max",
                                                     start_layer=1)
    assert method_options("attention", values) == dict(head_fusion="max", layer=0, head=None)
    assert get_method("rollout").supports_capture and get_method("grad_rollout").supports_capture
    ex = AttentionExplorer(model, batch(), CLASSES, method="grad_rollout")
    assert not ex.controls["target"].disabled              # grad_rollout is class-specific
    for agnostic in ("rollout", "attention"):
        ex.set(method=agnostic)
        assert ex.controls["target"].disabled, agnostic


def test_controls_that_do_not_apply_are_disabled(model: nn.Module) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES)
    c = ex.controls
    assert c["layer"].disabled and c["head"].disabled and c["target"].disabled
    assert not c["discard_ratio"].disabled and not c["head_fusion"].disabled
    ex.set(method="attention", head=0)
    assert c["discard_ratio"].disabled and c["start_layer"].disabled
    assert not c["layer"].disabled and c["head_fusion"].disabled   # one head: nothing to fuse
    ex.set(method="grad_rollout")
    assert not c["target"].disabled and c["layer"].disabled


# ----------------------------------------------------------------------------- display
def test_display_images_from_the_transform_or_raw_images(model: nn.Module) -> None:
    from torchvision.transforms import Normalize

    x = batch()
    torch.testing.assert_close(AttentionExplorer(model, x, CLASSES).raw_images, x)
    normalised = (x - 0.5) / 0.25
    ex = AttentionExplorer(model, normalised, CLASSES, transform=Normalize([0.5] * 3, [0.25] * 3))
    torch.testing.assert_close(ex.raw_images, to_display(normalised, mean=[0.5] * 3,
                                                         std=[0.25] * 3))
    torch.testing.assert_close(ex.raw_images, x, rtol=0, atol=1e-6)   # the photo is back
    raw = torch.rand(3, 3, 64, 64)
    ex = AttentionExplorer(model, x, CLASSES, raw_images=raw, titles=["a", "b", "c"])
    assert ex.overlay_rgb.shape[:2] == (64, 64)
    assert ex.current_map.shape == (4, 4)
    assert ex.controls["image"].options[1] == ("b", 1)
    assert "predicted" in ex.status.value and "model passes so far: 1" in ex.status.value


def test_model_is_left_as_it_was(any_model: nn.Module) -> None:
    model = any_model
    model.train()
    ex = AttentionExplorer(model, batch(), CLASSES, method="grad_rollout")
    ex.set(image=1, target=2)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(model: nn.Module) -> None:
    x = batch()
    with pytest.raises(ValueError, match="class_names has 2 names"):
        AttentionExplorer(model, x, ["a", "b"])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        AttentionExplorer(model, x, CLASSES, raw_images=x * 3)
    with pytest.raises(ValueError, match="one image per model input"):
        AttentionExplorer(model, x, CLASSES, raw_images=x[:2])
    with pytest.raises(ValueError, match="titles must have one entry per image"):
        AttentionExplorer(model, x, CLASSES, titles=["only one"])
    with pytest.raises(ValueError, match="unknown explanation method"):
        AttentionExplorer(model, x, CLASSES, methods=["rollout", "nope"])
    with pytest.raises(ValueError, match="discard_ratio must be"):
        AttentionExplorer(model, x, CLASSES, discard_ratio=1.0)
    with pytest.raises(ValueError, match="target class 3 is out of range"):
        AttentionExplorer(model, x, CLASSES, target=3)
    with pytest.raises(ValueError, match=r"layer must be in \[-2, 1\]"):
        AttentionExplorer(model, x, CLASSES, layer=5)
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        AttentionExplorer(model, x.numpy(), CLASSES)
    with pytest.raises(TypeError, match="explanations support"):
        AttentionExplorer(nn.Linear(3, 3), x, CLASSES)
    ex = AttentionExplorer(model, x, CLASSES)
    with pytest.raises(TypeError, match="unknown control"):
        ex.set(discard=0.5)
    with pytest.raises(ValueError, match="not a value this control offers"):
        ex.set(method="nope")
    with pytest.raises(ValueError, match=r"index must be in \[-3, 2\]"):
        ex.cache.map(7, "rollout")


# ----------------------------------------------------------------------------- no silent waits
@pytest.fixture
def slow_method():
    """A method with ``steps`` that runs one forward pass per step (and records them)."""
    calls: list[int] = []

    class Slow(Explainer):
        supports_capture = False
        class_specific = True
        defaults = {"steps": 6, "internal_batch_size": 1}

        def compute(self, images, target, steps, internal_batch_size):
            h, w = self.info.grid(*images.shape[-2:])
            for k in range(-(-steps // internal_batch_size)):      # one pass per chunk
                self.model(images)
                calls.append(k)
                time.sleep(0.05)
            return torch.arange(h * w, dtype=torch.float32).view(1, h, w) + steps

    register_method("_test_slow")(Slow)
    yield calls
    METHODS.pop("_test_slow", None)


def test_a_slow_method_runs_in_the_background_and_the_latest_choice_wins(
        model: nn.Module, slow_method) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES, busy_after=0.5,
                           options={"_test_slow": {"steps": 40}})
    ex._seconds["_test_slow"] = 2.0                        # as measured before
    rollout_map = ex.current_map.clone()
    ex.controls["method"].value = "_test_slow"             # returns at once: the kernel is free
    assert ex._jobs.busy
    assert "computing <b>_test_slow</b> (steps 40)" in ex.status.value and "about 2.0 s" in ex.status.value
    assert ex.progress.layout.visibility == "visible"
    deadline = time.monotonic() + 30
    while len(slow_method) < 2 and time.monotonic() < deadline:   # it has started
        time.sleep(0.01)
    ex.controls["method"].value = "rollout"                # cheap and cached: drawn at once
    assert torch.equal(ex.current_map, rollout_map) and "<b>rollout</b>" in ex.status.value
    ex.wait()
    assert len(slow_method) < 40, "the superseded job stopped at its next forward pass"
    assert ex.state()["method"] == "rollout" and torch.equal(ex.current_map, rollout_map)
    assert "<b>rollout</b>" in ex.status.value and ex.progress.layout.visibility == "hidden"


def test_superseded_by_another_slow_request_only_the_last_is_drawn(
        model: nn.Module, slow_method) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES, busy_after=0.0)
    drawn = []
    ex.map_image.observe(lambda change: drawn.append(ex.state()["target"]), names="value")
    ex.controls["method"].value = "_test_slow"
    for target in (0, 1, 2):                               # three moves while it computes
        ex.controls["target"].value = target
    ex.wait()
    assert drawn == [2], f"drawn for targets {drawn}; only the latest choice should be"
    assert "explaining <b>sushi</b>" in ex.status.value
    assert len(slow_method) < 4 * 6, "superseded jobs were cut short"


def test_progress_bar_counts_the_forward_passes_of_a_method_with_steps(
        model: nn.Module, slow_method) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES)
    seen = []
    assert ex._steps("_test_slow") == 6 * 3       # ceil(steps / internal batch) × (model + 2 blocks)
    assert not ex._steps("rollout")                        # no steps: no bar
    ex2 = AttentionExplorer(model, batch(), CLASSES, options={"_test_slow": {"steps": 12,
                                                             "internal_batch_size": 2}},
                            cache=ex.cache)
    assert ex2._steps("_test_slow") == 6 * 3
    ex2.progress.observe(lambda change: seen.append(change["new"]), names="value")
    ex2.controls["method"].value = "_test_slow"
    ex2.wait()
    assert seen[1:] == sorted(seen[1:]) and 0 < max(seen) < 1 and len(seen) >= 5
    assert ex2._forwards["_test_slow"] == 6 * 3 and ex2._seconds["_test_slow"] >= 0.25
    assert ex2.expected_seconds() == 0.0                   # cached now
    assert ex2.expected_seconds({**ex2.state(), "target": 0}) == ex2._seconds["_test_slow"]


def test_expected_time_comes_from_the_measured_capture_cost(model: nn.Module) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES)
    cap_s = ex.cache.capture_seconds
    assert cap_s > 0
    s = {**ex.state(), "method": "integrated_gradients"}
    assert ex.expected_seconds(s) == pytest.approx(COST_IN_CAPTURES["integrated_gradients"] * cap_s)
    assert ex.expected_seconds({**s, "image": 2}) == pytest.approx(
        (COST_IN_CAPTURES["integrated_gradients"] + 1) * cap_s), "an unseen image adds a capture"


def test_explorer_options_make_slow_methods_lighter(model: nn.Module) -> None:
    from torchvision.transforms import Normalize

    norm = Normalize([0.5] * 3, [0.25] * 3)
    x = (batch() - 0.5) / 0.25
    ex = AttentionExplorer(model, x, CLASSES, transform=norm)
    assert ex.options["integrated_gradients"] == {**EXPLORER_OPTIONS["integrated_gradients"],
                                                  "mean": (0.5,) * 3, "std": (0.25,) * 3}
    ex.set(method="integrated_gradients", target=1)
    expected = explain(model, x[:1], "integrated_gradients", target=1,
                       **ex.options["integrated_gradients"])[0]
    torch.testing.assert_close(ex.current_map, expected)
    ex.set(method="smoothgrad")
    torch.testing.assert_close(ex.current_map, explain(model, x[:1], "smoothgrad", target=1,
                                                       **EXPLORER_OPTIONS["smoothgrad"])[0])
    with pytest.raises(ValueError, match="unknown explanation method"):
        AttentionExplorer(model, x, CLASSES, options={"nope": {}})


def test_copy_shares_the_cache_and_leaves_the_original_alone(counted) -> None:
    model, counter = counted
    ex = AttentionExplorer(model, batch(), CLASSES, method="grad_rollout", discard_ratio=0.5)
    shown, state = ex.map_image.value, ex.state()
    counter.n = 0
    probe = ex.copy()
    assert probe.state() == state and probe.cache is ex.cache
    probe.set(target=2, method="attention", layer=0)
    assert counter.n == 0, "the copy works from the shared cache"
    assert ex.state() == state and ex.map_image.value == shown, "the original did not move"
    with pytest.raises(ValueError, match="cache belongs to another model"):
        AttentionExplorer(course_vit(), batch(), CLASSES, cache=ex.cache)


def test_colour_bar_labels_stay_distinct_for_small_values(model: nn.Module, extra_methods) -> None:
    ex = AttentionExplorer(model, batch(), CLASSES)
    ex.current_map = None
    html_bar = colorbar_html(0.0003, 0.00035)
    assert "0.00035" in html_bar and "0.0003<" in html_bar
    labels = [part.split("<")[0] for part in html_bar.split("<span>")[1:]]
    assert len(set(labels)) == 5, labels
    assert ex.colorbar.value.count("<span>") == 5


@pytest.mark.parametrize("head", ["bare_linear", "sequential"])
def test_every_registered_method_works_on_notebook_03s_head_shape(tiny_tv_vit, head) -> None:
    """attach_head sets ``model.heads`` to a bare ``nn.Linear`` (notebook 03's classifier)."""
    model = tiny_tv_vit(seed=0)
    if head == "bare_linear":
        linear = model.heads.head
        model.heads = linear
    ex = AttentionExplorer(model, batch(B=1), CLASSES)
    for method in ex.methods:
        ex.set(method=method)
        assert ex.error is None, ex.error
        assert ex.current_map is not None and torch.isfinite(ex.current_map).all(), method
        assert f"<b>{method}</b>" in ex.status.value


def test_every_registered_method_has_a_measured_explorer_cost():
    # an unlisted method would get the default of 1 capture as its expected time
    from vit_course.explain import METHODS
    from vit_course.widgets import COST_IN_CAPTURES

    assert set(COST_IN_CAPTURES) == set(METHODS)
    assert all(v > 0 for v in COST_IN_CAPTURES.values())
