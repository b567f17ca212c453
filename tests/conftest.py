"""Shared pytest fixtures (reusable by every test module).

Weights / torch hub cache:

- ``standin_torch_home_dir`` (session): a folder whose ``hub/checkpoints`` holds the stand-in
  ViT-B/16 checkpoint (random weights under torchvision's file name, see
  :mod:`vit_course.standin`). Reuses ``$TORCH_HOME`` when it already holds a stand-in (as
  under ``make test``), else writes one (330 MB) into a session temp folder. Does not change
  the environment.
- ``standin_torch_home`` (function): points ``TORCH_HOME`` and ``torch.hub.get_dir()`` at
  that folder for one test and restores both afterwards. Request it in any test that builds
  the pretrained ViT-B/16.
- ``offline_torch_home`` (function): an EMPTY torch home, with torch.hub's downloader made
  to fail at once as it does without network, so tests never wait on (or use) the internet.

Models:

- ``tiny_tv_vit`` (function): a factory for small torchvision ``VisionTransformer`` models
  (image 32, patch 8, 2 layers, width 32) with a *random* head (torchvision zero-initialises
  heads, which makes logits and gradients all zero). Call ``tiny_tv_vit(seed=0, num_classes=3)``.
  Modules that test several model kinds use ``tests/_tiny.py`` instead.

Threads:

- ``one_thread`` (function): torch on one thread for the test, restored after. Tiny tensors
  gain nothing from a second thread, and on a busy shared CPU thread hand-offs make each
  call many times slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def standin_torch_home_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vit_course import pretrained, standin

    env = os.environ.get("TORCH_HOME")
    if env:
        existing = Path(env) / "hub" / "checkpoints" / standin.checkpoint_filename()
        if existing.is_file():
            mp = pytest.MonkeyPatch()
            try:
                mp.setattr(torch.hub, "_hub_dir", str(Path(env) / "hub"))
                if pretrained.weights_status() == "stand-in":
                    return Path(env)
            finally:
                mp.undo()
    home = tmp_path_factory.mktemp("torch_home_standin")
    standin.seed_standin_torch_home(home)
    return home


def _point_torch_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(home))
    # torch.hub.get_dir() reads TORCH_HOME on every call unless set_dir() was used; set the
    # override too (monkeypatch restores the previous value, None or a path).
    monkeypatch.setattr(torch.hub, "_hub_dir", str(home / "hub"))


@pytest.fixture
def standin_torch_home(standin_torch_home_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _point_torch_home(monkeypatch, standin_torch_home_dir)
    return standin_torch_home_dir


@pytest.fixture
def offline_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "torch_home_empty"
    home.mkdir()
    _point_torch_home(monkeypatch, home)

    def no_network(url: str, dst: str, *args, **kwargs) -> None:
        raise urllib.error.URLError(f"[test] no network: could not reach {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield home


@pytest.fixture
def tiny_tv_vit() -> Callable[..., nn.Module]:
    from torchvision.models import VisionTransformer

    def make(seed: int = 0, num_classes: int = 3) -> VisionTransformer:
        torch.manual_seed(seed)
        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                  hidden_dim=32, mlp_dim=64, num_classes=num_classes)
        nn.init.normal_(model.heads.head.weight, std=0.2)
        nn.init.normal_(model.heads.head.bias, std=0.2)
        return model.eval()

    return make


@pytest.fixture
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
