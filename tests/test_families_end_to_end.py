"""Every supported model family, end to end: each registered method, the metrics suite and
the explorer run on tiny course, torchvision, timm (ViT and distilled DeiT) and Hugging Face
models (issue 10: "capture, every method, the explorer and the metrics work on all four
families"). Definition-level checks live beside each module; this only proves the families
are wired through every public entry point, with maps that are finite and not constant."""

from __future__ import annotations

import functools

import pytest
import torch

from _tiny import MODEL_KINDS, images, make_model
from vit_course.explain import METHODS, explain
from vit_course.metrics import run_suite
from vit_course.widgets import AttentionExplorer

FAST = {"smoothgrad": {"n_samples": 2}, "integrated_gradients": {"steps": 4}}
CONTROLS = {"random", "center_gaussian"}


def _unsupported(kind: str, method: str) -> bool:
    # LRP has no rule for the distilled DeiT's second prefix token: a clear TypeError (tested
    # in tests/explain/test_lrp.py and test_attn_lrp.py), not a map
    return kind == "timm_distilled" and method in ("transformer_attribution", "attn_lrp",
                                                   "cp_lrp")


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_method_on_every_family(kind: str, one_thread) -> None:
    model = make_model(kind)
    x = images(2)
    for method in sorted(METHODS):
        if _unsupported(kind, method):
            with pytest.raises(TypeError):
                explain(model, x, method)
            continue
        maps = explain(model, x, method, target=1, **FAST.get(method, {}))
        assert maps.shape == (2, 4, 4), (kind, method)
        assert torch.isfinite(maps).all(), (kind, method)
        if method not in CONTROLS | {"gradcam", "attention_gradcam"}:
            # the Grad-CAMs of a tiny random model may be all zero (a ReLU of negative sums)
            assert maps.flatten(1).std(dim=1).gt(0).all(), (kind, method)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_metrics_suite_on_every_family(kind: str, one_thread) -> None:
    model = make_model(kind)
    x = images(2)
    fns = {"grad_rollout": functools.partial(explain, method="grad_rollout")}
    res = run_suite(model, x, [0, 1], fns, steps=4, grid_game=False, progress=False)
    rows = res.table(n_boot=50)
    assert rows and all(torch.isfinite(torch.tensor(float(r["mean"]))) for r in rows)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_explorer_on_every_family(kind: str, one_thread) -> None:
    model = make_model(kind)
    ex = AttentionExplorer(model, images(2), ["a", "b", "c"], method="rollout")
    first = ex.current_map.clone()
    ex.set(method="grad_rollout", target=2)
    assert not torch.equal(ex.current_map, first)
    assert "explaining <b>c</b>" in ex.status.value
