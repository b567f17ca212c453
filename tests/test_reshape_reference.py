"""The numbers the course computes did not change when the package was reshaped (issue 10).

``tests/data/reshape_reference.pt`` was written by ``tests/data/make_reshape_reference.py``
on the tree *before* the reshape: every registered method's maps (default and non-default
options, predicted and fixed target), all-class gradient rollout, deletion/insertion curves
for three baselines, Chefer's perturbation curves, and the localisation scores, on a tiny
course ViT and a tiny torchvision ViT whose weights and inputs are stored in the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from vit_course.explain import explain, explain_classes
from vit_course.metrics import (deletion_curve, grid_pointing_score, insertion_curve,
                                perturbation_test, pointing_game, relevance_mass_accuracy)
from vit_course.models import ViT

REFERENCE = Path(__file__).parent / "data" / "reshape_reference.pt"
TOL = 1e-6


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(REFERENCE, weights_only=True)


def _model(kind: str, ref: dict) -> nn.Module:
    entry = ref["models"][kind]
    if kind == "torchvision":
        from torchvision.models import VisionTransformer
        model = VisionTransformer(**entry["config"])
    else:
        model = ViT(**entry["config"])
    model.load_state_dict(entry["state_dict"])
    return model.eval()


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got = torch.as_tensor(got).detach().double()
    want = torch.as_tensor(want).double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), f"{what}: NaNs moved"
    scale = want[~nan].abs().max().clamp_min(1.0) if (~nan).any() else 1.0
    diff = (got[~nan] - want[~nan]).abs().max() if (~nan).any() else torch.tensor(0.0)
    assert diff <= TOL * scale, f"{what}: max difference {float(diff):.3g}"


@pytest.mark.parametrize("kind", ["torchvision", "course"])
def test_every_map_is_unchanged(ref: dict, kind: str, one_thread) -> None:
    model = _model(kind, ref)
    keys = [k for k in ref["maps"] if k.startswith(kind + "/")]
    assert len(keys) >= 28
    for key in keys:
        entry = ref["maps"][key]
        method = key.split("/")[1]
        got = explain(model, ref["images"], method, target=entry["target"], **entry["options"])
        _close(got, entry["maps"], key)


@pytest.mark.parametrize("kind", ["torchvision", "course"])
def test_all_class_maps_and_metrics_are_unchanged(ref: dict, kind: str, one_thread) -> None:
    model = _model(kind, ref)
    images, masks = ref["images"], ref["masks"]
    _close(explain_classes(model, images, "grad_rollout", chunk_size=2), ref["classes"][kind],
           f"{kind}/explain_classes")
    maps = ref["maps"][f"{kind}/grad_rollout/0/None"]["maps"]
    want = ref["metrics"][kind]
    for baseline in ("blur", "mean", "zero"):
        _close(deletion_curve(model, images, maps, steps=8, baseline=baseline, progress=False),
               want[f"deletion/{baseline}"], f"{kind}/deletion/{baseline}")
        _close(insertion_curve(model, images, maps, steps=8, baseline=baseline, progress=False),
               want[f"insertion/{baseline}"], f"{kind}/insertion/{baseline}")
    pt = perturbation_test(model, images, maps, labels=[0, 1, 2], progress=False)
    chefer = [k for k in want if k.startswith("chefer/")]
    assert chefer
    for k in chefer:
        _close(pt[k.split("/", 1)[1]], want[k], f"{kind}/{k}")
    _close(grid_pointing_score(ref["grid_maps"][kind], torch.tensor([0, 1, 3])), want["grid_pointing"],
           f"{kind}/grid_pointing")
    _close(pointing_game(maps, masks), want["pointing_game"], f"{kind}/pointing_game")
    _close(relevance_mass_accuracy(maps, masks), want["relevance_mass_accuracy"],
           f"{kind}/relevance_mass_accuracy")
