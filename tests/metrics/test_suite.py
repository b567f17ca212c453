"""Tests for vit_course.metrics.suite: run_suite against the standalone metrics, with the controls.
"""

from __future__ import annotations

import pytest
import torch

import vit_course.metrics as M

from vit_course.explain.controls import center_gaussian_map, random_map

from ._models import ChannelModel, channel_images, course_vit, head_dtypes, target_channel, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_suite_scores_explainers_and_controls_consistently():
    model = ChannelModel()
    x, labels = channel_images()
    res = M.run_suite(model, x, labels, {"channel": target_channel}, steps=4, n_grids=6,
                      batch_size=16, progress=False, mean=(0, 0, 0), std=(1, 1, 1))
    assert res.methods == ["channel", "random", "center_gaussian"]
    metrics = {"deletion_auc", "insertion_auc", "chefer_positive_auc", "chefer_negative_auc", "grid_pointing"}
    for name in res.methods:
        assert set(res.scores[name]) == metrics
        assert res.scores[name]["deletion_auc"].shape == (12,)
        assert res.scores[name]["grid_pointing"].shape == (6,)
    # the suite's shared cache gives the same numbers as the standalone functions
    alone = M.deletion_curve(model, x, res.maps["channel"], steps=4, progress=False)
    assert torch.allclose(res.curves["channel"]["deletion"], alone, atol=1e-6)
    chef = M.perturbation_test(model, x, res.maps["channel"], labels, mean=(0, 0, 0), std=(1, 1, 1),
                               progress=False)
    assert torch.equal(res.curves["channel"]["chefer_positive"], chef["positive"])
    # the target-channel map points at the target tile: only that tile is bright in its channel
    assert res.scores["channel"]["grid_pointing"].mean() > 0.6
    assert res.scores["center_gaussian"]["grid_pointing"].tolist() == pytest.approx([0.25] * 6)
    # clean, baseline and all perturbed rows: 12 + 12 + 3 methods × 12 × (3 + 3 + 9 + 9)
    assert res.forwards == 24 + 3 * 12 * 24
    rows = res.table(n_boot=50)
    assert len(rows) == 15 and "channel" in res.format(n_boot=50)


def test_run_suite_in_bfloat16_is_close_to_float32():
    model = tiny_vit()
    seen = head_dtypes(model)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 3, 32, 32, generator=g)
    labels = model(x).argmax(1)
    fns = {"grad": lambda m, images, target=None: images.abs().mean(1).unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2))}
    kw = dict(steps=4, grid_game=False, controls=("random",), progress=False)
    full = M.run_suite(model, x, labels, fns, **kw)
    seen.clear()
    fast = M.run_suite(model, x, labels, fns, precision="bfloat16", **kw)
    assert set(seen) == {torch.bfloat16}
    assert (full.precision, fast.precision) == ("float32", "bfloat16")
    assert fast.forwards == full.forwards
    for name in full.methods:
        for metric in ("deletion_auc", "insertion_auc"):
            assert (fast.scores[name][metric] - full.scores[name][metric]).abs().max() < 0.05
    with pytest.raises(ValueError, match="precision"):
        M.run_suite(model, x, labels, fns, precision="half", **kw)


def test_run_suite_rejects_unknown_controls():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="control"):
        M.run_suite(model, x, [0, 1], {}, controls=("oracle",), progress=False)


def test_controls():
    a = random_map((2, 4, 4), seed=3)
    assert torch.equal(a, random_map((2, 4, 4), seed=3)) and (a >= 0).all() and (a < 1).all()
    gmap = center_gaussian_map(5, 5, sigma=1.0)
    assert gmap[2, 2] == gmap.max() == 1.0
    assert torch.allclose(gmap, gmap.flip(0)) and torch.allclose(gmap, gmap.T)
    model = tiny_vit()
    x = torch.randn(3, 3, 32, 32)
    fns = M.control_explainers(seed=0)
    assert list(fns) == ["random", "center_gaussian"]
    assert fns["random"](model, x, target=None).shape == (3, 4, 4)
    assert fns["center_gaussian"](course_vit(), x, target=None).shape == (3, 4, 4)
    r = M.control_explainers(("random",), seed=0)["random"]
    assert not torch.equal(r(model, x, target=None), r(model, x, target=None))   # the stream continues
