from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vit_course import runtime


def test_set_seed_makes_all_generators_repeat():
    runtime.set_seed(123)
    a = (random.random(), np.random.rand(), torch.rand(3))
    runtime.set_seed(123)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    runtime.set_seed(124)
    assert random.random() != a[0]


def test_set_seed_rejects_non_int():
    with pytest.raises(TypeError, match="seed must be an int"):
        runtime.set_seed("42")


def test_profile_default_and_quick(monkeypatch):
    monkeypatch.delenv(runtime.PROFILE_ENV, raising=False)
    full = runtime.get_profile()
    assert full.name == "full" and full.pick(full=10, quick=1) == 10
    monkeypatch.setenv(runtime.PROFILE_ENV, "Quick")
    quick = runtime.get_profile()
    assert quick.is_quick and quick.pick(full=10, quick=1) == 1
    assert "quick" in quick.banner() and "not the course's results" in quick.banner()


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(runtime.PROFILE_ENV, "fast")
    with pytest.raises(ValueError, match="full.*quick"):
        runtime.get_profile()


def test_artifacts_dir_honours_env(monkeypatch, tmp_path):
    target = tmp_path / "arts"
    monkeypatch.setenv(runtime.ARTIFACTS_ENV, str(target))
    assert runtime.artifacts_dir() == target and target.is_dir()


def test_get_device_prefers_argument():
    assert runtime.get_device("cpu").type == "cpu"


def test_eval_mode_restores_mixed_flags_even_on_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[0].eval()                                   # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with runtime.eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
