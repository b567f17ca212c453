"""The controls (random map, centre Gaussian) as pure functions and as registered methods."""

from __future__ import annotations

import pytest
import torch

from _tiny import assert_rejected_before_any_forward, images, make_model
from vit_course.explain import (
    METHODS,
    capture,
    center_gaussian_map,
    explain,
    get_method,
    random_map,
)
from vit_course.runtime import SEED

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pure_maps():
    a = random_map((2, 4, 4), seed=3)
    assert torch.equal(a, random_map((2, 4, 4), seed=3)) and (a >= 0).all() and (a < 1).all()
    assert torch.equal(random_map((2, 4, 4), seed=None), random_map((2, 4, 4), seed=SEED))
    gmap = center_gaussian_map(5, 5, sigma=1.0)
    assert gmap[2, 2] == gmap.max() == 1.0
    assert torch.allclose(gmap, gmap.flip(0)) and torch.allclose(gmap, gmap.T)
    assert torch.allclose(center_gaussian_map(14, 14), center_gaussian_map(14, 14, sigma=3.5))
    with pytest.raises(ValueError, match="positive ints"):
        random_map((2, 0, 4))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        center_gaussian_map(4, 4, sigma=0.0)


@pytest.mark.parametrize("kind", ["torchvision", "course"])
def test_registered_controls_read_the_grid_and_run_no_model_pass(kind):
    model = make_model(kind)
    x = images(3)
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        r = explain(model, x, "random", seed=0)
        g = explain(model, x, "center_gaussian", target=[0, 1, 2])
    finally:
        handle.remove()
    assert calls == []
    assert r.shape == g.shape == (3, 4, 4)
    # the same numbers as random_map / center_gaussian_map (and the metrics' old controls)
    assert torch.equal(r, random_map((3, 4, 4), seed=0))
    assert torch.equal(g, center_gaussian_map(4, 4).expand(3, 4, 4))
    assert {"random", "center_gaussian"} <= set(METHODS)
    for name in ("random", "center_gaussian"):
        cls = get_method(name)
        assert not (cls.needs_grad or cls.class_specific or cls.supports_capture)


def test_random_stream_int_seed_repeats_generator_continues():
    model = make_model("torchvision")
    x = images(2)
    assert torch.equal(explain(model, x, "random", seed=5), explain(model, x, "random", seed=5))
    gen = torch.Generator().manual_seed(5)
    first = explain(model, x, "random", seed=gen)
    second = explain(model, x, "random", seed=gen)
    assert torch.equal(first, random_map((2, 4, 4), seed=5)) and not torch.equal(first, second)
    # chunks through one generator = one call on the whole batch (what run_suite relies on)
    gen = torch.Generator().manual_seed(5)
    chunks = torch.cat([explain(model, x[i:i + 1], "random", seed=gen) for i in range(2)])
    assert torch.equal(chunks, random_map((2, 4, 4), seed=5))


def test_grid_option_and_sigma():
    model = make_model("course")
    assert explain(model, images(2), "random", grid=(2, 8)).shape == (2, 2, 8)
    m = explain(model, images(1), "center_gaussian", sigma=0.5, grid=(3, 3))
    assert torch.allclose(m[0], center_gaussian_map(3, 3, sigma=0.5))


@pytest.mark.parametrize("method, options, exc, message", [
    ("random", {"seed": 1.5}, TypeError, "seed must be an int or a torch.Generator"),
    ("random", {"grid": (0, 4)}, ValueError, "grid must be None"),
    ("center_gaussian", {"sigma": -1.0}, ValueError, "sigma must be None"),
    ("center_gaussian", {"seed": 0}, TypeError, "unknown option"),
])
def test_bad_options(method, options, exc, message):
    model = make_model("torchvision")
    assert_rejected_before_any_forward(model, lambda: explain(model, images(1), method, **options),
                                       exc, message)


def test_targets_checked_and_no_capture_path():
    model = make_model("torchvision")
    with pytest.raises(ValueError, match="out of range"):
        explain(model, images(2), "random", target=7)
    with pytest.raises(TypeError, match="cannot be computed from a Capture"):
        explain(model, None, "center_gaussian", capture=capture(model, images(1)))
