"""vit_course.tools.standin (``python -m vit_course.standin``): the random stand-in checkpoint."""

from __future__ import annotations

import os

import torch
from torchvision.models import ViT_B_16_Weights

from vit_course import standin

VIT_B16_FILE = "vit_b_16-c867db91.pth"


def test_standin_file_name_and_random_head(standin_torch_home_dir):
    assert standin.checkpoint_filename() == os.path.basename(ViT_B_16_Weights.IMAGENET1K_V1.url)
    path = standin_torch_home_dir / "hub" / "checkpoints" / VIT_B16_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["heads.head.weight"].shape == (1000, 768)
    assert state["heads.head.weight"].abs().sum() > 0
    mtime = path.stat().st_mtime_ns
    assert standin.seed_standin_torch_home(standin_torch_home_dir) == path  # idempotent
    assert path.stat().st_mtime_ns == mtime


def test_command_is_idempotent_and_says_random(standin_torch_home_dir, capsys):
    path = standin_torch_home_dir / "hub" / "checkpoints" / VIT_B16_FILE
    mtime = path.stat().st_mtime_ns
    assert standin.main([str(standin_torch_home_dir)]) == 0
    assert "NOT pretrained" in capsys.readouterr().out and path.stat().st_mtime_ns == mtime
