"""Tests for vit_course.models.synthetic: the small ViT trained on the synthetic images."""

from __future__ import annotations

import pytest
import torch

from vit_course.data import synthetic as drawing
from vit_course.data.synthetic import SyntheticFood
from vit_course.imaging import mask_coverage
from vit_course.models import synthetic as syn


def test_bad_setting_arguments() -> None:
    with pytest.raises(ValueError, match="setting"):
        syn.train_synthetic_vit(setting="medium")
    with pytest.raises(ValueError, match="unknown training option"):
        syn.train_synthetic_vit(setting="quick", momentum=0.9)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        syn.train_synthetic_vit(setting="quick", size=60)


# ----------------------------------------------------------------------------- load or train
def _fake_trainer(calls: list):
    def fake(size=64, seed=0, setting=None, device=None, progress=True):
        calls.append(setting)
        torch.manual_seed(len(calls))
        model = syn.build_synthetic_vit(img_size=size).eval()
        return model, {"test_acc": [0.5], "train_acc": [0.5]}, 0.5
    return fake


def test_load_or_train_saves_then_loads(tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(syn, "train_synthetic_vit", _fake_trainer(calls))
    path = tmp_path / "sub" / "synthetic_vit.pt"
    model, info = syn.load_or_train_synthetic_vit(path, setting="quick", progress=False)
    assert info["trained"] and path.is_file() and calls == ["quick"]
    assert [p.name for p in path.parent.iterdir()] == ["synthetic_vit.pt"]  # no temp files left
    loaded, info2 = syn.load_or_train_synthetic_vit(path, setting="quick", progress=False)
    assert not info2["trained"] and calls == ["quick"] and info2["test_accuracy"] == 0.5
    assert info2["ground_truth"] == info["ground_truth"]  # stored with the weights, same figures
    assert set(syn.GROUND_TRUTH_GOALS) <= set(info["ground_truth"])
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_a_load_reads_the_stored_checks_and_checks_an_older_checkpoint(tmp_path, monkeypatch) -> None:
    from vit_course.tools.checkpoints import load_checkpoint, save_checkpoint

    monkeypatch.setattr(syn, "train_synthetic_vit", _fake_trainer([]))
    path = tmp_path / "synthetic_vit.pt"
    _, trained = syn.load_or_train_synthetic_vit(path, setting="quick", progress=False)
    runs: list = []
    real = syn.ground_truth_checks
    monkeypatch.setattr(syn, "ground_truth_checks", lambda *a, **k: runs.append(1) or real(*a, **k))
    _, loaded = syn.load_or_train_synthetic_vit(path, setting="quick", progress=False)
    assert runs == [] and loaded["ground_truth"] == trained["ground_truth"], "read, not recomputed"
    model = syn.build_synthetic_vit()
    meta = load_checkpoint(model, path)
    del meta["ground_truth"]                       # as saved before the checks were stored
    save_checkpoint(model, path, **meta)
    _, old = syn.load_or_train_synthetic_vit(path, setting="quick", progress=False)
    assert runs == [1] and not old["trained"] and old["ground_truth"] == trained["ground_truth"]


def test_load_or_train_retrains_stale_or_broken(tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(syn, "train_synthetic_vit", _fake_trainer(calls))
    path = tmp_path / "synthetic_vit.pt"
    syn.load_or_train_synthetic_vit(path, setting="quick", progress=False)
    syn.load_or_train_synthetic_vit(path, setting="full", progress=False)  # other setting
    assert calls == ["quick", "full"]
    monkeypatch.setattr(drawing, "GENERATOR_VERSION", drawing.GENERATOR_VERSION + 1)  # images changed
    syn.load_or_train_synthetic_vit(path, setting="full", progress=False)
    assert calls == ["quick", "full", "full"]
    path.write_bytes(b"not a checkpoint")
    _, info = syn.load_or_train_synthetic_vit(path, setting="full", progress=False)
    assert info["trained"] and len(calls) == 4
    _, info = syn.load_or_train_synthetic_vit(path, setting="full", progress=False)
    assert not info["trained"] and len(calls) == 4


def test_default_path_per_setting(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VIT_COURSE_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(syn, "train_synthetic_vit", _fake_trainer([]))
    _, info = syn.load_or_train_synthetic_vit(setting="quick", progress=False)
    assert info["path"] == tmp_path / "synthetic_vit_quick.pt"
    monkeypatch.setenv("VIT_COURSE_PROFILE", "full")
    _, info = syn.load_or_train_synthetic_vit(progress=False)
    assert info["path"] == tmp_path / "synthetic_vit.pt"


# ----------------------------------------------------------------------------- ground-truth checks
class _Constant(torch.nn.Module):
    """Ignores the image: the same logits for every input."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_checks_fail_a_model_that_ignores_the_image() -> None:
    sure = syn.ground_truth_checks(_Constant([0.0, 0.0, 5.0]), n=30)  # always "sushi"
    assert not sure["passed"] and sure["background_shares"]["sushi"] == 1.0
    assert set(sure["failed"]) == set(syn.GROUND_TRUTH_GOALS)
    assert sure["object_accuracy"] == pytest.approx(1 / 3, abs=0.04)
    flat = syn.ground_truth_checks(_Constant([0.0, 0.0, 0.0]), n=30)  # uniform: unsure is not enough
    assert flat["background_top_prob"] == pytest.approx(1 / 3)
    assert "background_top_prob" not in flat["failed"] and "object_accuracy" in flat["failed"]
    assert flat["two_object_mass"] == pytest.approx(2 / 3)
    assert "FAILS" in syn.format_ground_truth_checks(flat)


@pytest.fixture(scope="module")
def broken_model():
    """Trained the old way, on single objects only: nothing tells it that no object is no class."""
    model, _, _ = syn.train_synthetic_vit(setting="quick", n_test=30, n_background=0, n_two=0,
                                          paste=0.0, progress=False, device="cpu")
    return model


def test_checks_catch_a_model_trained_without_object_free_images(broken_model, quick_model) -> None:
    broken = syn.ground_truth_checks(broken_model, n=90)
    assert {"background_top_prob", "background_max_share"} <= set(broken["failed"]), broken
    fixed = syn.ground_truth_checks(quick_model[0], n=90)
    assert fixed["background_top_prob"] < broken["background_top_prob"] - 0.1, (fixed, broken)
    assert fixed["background_top_prob"] <= 0.55 and fixed["object_accuracy"] >= 0.85, fixed


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def quick_model():
    """The quick-setting model (trained once for this module)."""
    model, history, acc = syn.train_synthetic_vit(setting="quick", progress=False, device="cpu")
    return model, history, acc


def test_quick_training_beats_chance_clearly(quick_model) -> None:
    model, history, acc = quick_model
    assert acc >= 0.8, f"quick setting reached only {acc:.1%} test accuracy (chance is 33%)"
    assert len(history["test_acc"]) == syn.SYNTHETIC_SETTINGS["quick"]["epochs"]
    assert not model.training


def test_single_object_model_names_a_present_class_on_two_object_images(quick_model) -> None:
    model, _, _ = quick_model
    ds = SyntheticFood(60, two_objects=True, split="test")
    with torch.no_grad():
        pred = model(ds.images.float() / 255).argmax(1)
    hit = (pred[:, None] == ds.labels).any(1).float().mean().item()
    assert hit >= 0.8, f"prediction is one of the two present classes on only {hit:.0%}"


def test_class_specific_maps_find_the_right_object(quick_model) -> None:
    explain_mod = pytest.importorskip("vit_course.explain")
    model, _, _ = quick_model
    ds = SyntheticFood(36, two_objects=True, split="test")
    images = ds.images.float() / 255
    grid = model.grid_size
    inside = [mask_coverage(ds.masks[:, k], grid).float() for k in range(2)]  # (B, h, w) each

    def mass(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return (maps * region).sum(dim=(1, 2)) / maps.sum(dim=(1, 2)).clamp_min(1e-12)

    maps = {}
    for k in range(2):
        target = ds.labels[:, k]
        maps["grad", k] = explain_mod.explain(model, images, method="grad_rollout", target=target)
        maps["roll", k] = explain_mod.explain(model, images, method="rollout", target=target)
    # grad_rollout: object A gets more of the map when A is the target, and the same for B
    a_wins = mass(maps["grad", 0], inside[0]) > mass(maps["grad", 1], inside[0])
    b_wins = mass(maps["grad", 1], inside[1]) > mass(maps["grad", 0], inside[1])
    ok = (a_wins & b_wins).float().mean().item()
    assert ok >= 0.8, f"grad_rollout follows the target on only {ok:.0%} of images"
    # rollout is class-agnostic: the target does not change the map
    assert torch.equal(maps["roll", 0], maps["roll", 1])


def test_training_is_deterministic_from_the_seed() -> None:
    def tiny(seed):
        return syn.train_synthetic_vit(setting="quick", n_train=24, n_test=6, n_background=6,
                                       n_two=6, epochs=1, seed=seed, progress=False, device="cpu")
    (a, ha, _), (b, hb, _), (c, _, _) = tiny(3), tiny(3), tiny(4)
    assert ha["train_loss"] == hb["train_loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.state_dict()["head.weight"], c.state_dict()["head.weight"])


@pytest.mark.slow
def test_full_setting_reaches_95_percent_and_passes_the_ground_truth_checks() -> None:
    model, history, acc = syn.train_synthetic_vit(setting="full", progress=False, device="cpu")
    assert acc >= 0.95, f"full setting reached {acc:.1%} (history {history['test_acc']})"
    checks = syn.ground_truth_checks(model)
    assert checks["passed"], syn.format_ground_truth_checks(checks)
