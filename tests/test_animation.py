"""vit_course.animation: the discard-ratio sweep (maps, frames, atomic GIF) on a tiny ViT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vit_course.animation import (
    DEFAULT_RATIOS,
    discard_sweep_gif,
    discard_sweep_maps,
    render_discard_sweep,
    save_gif,
)
from vit_course.explain import explain

RATIOS = (0.0, 0.5, 0.9)
FUSIONS = ("mean", "max", "min")


@pytest.fixture
def model(tiny_tv_vit: Callable[..., nn.Module]) -> nn.Module:
    return tiny_tv_vit(seed=0)


def image(seed: int = 3) -> torch.Tensor:
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method, target", [("rollout", None), ("grad_rollout", 2)])
def test_sweep_maps_equal_explain_with_one_forward_pass(model: nn.Module, method: str,
                                                        target) -> None:
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        maps = discard_sweep_maps(model, image(), FUSIONS, RATIOS, method=method, target=target)
    finally:
        handle.remove()
    assert len(calls) == 1, "one model pass for the whole sweep"
    assert maps.shape == (len(RATIOS), len(FUSIONS), 4, 4)
    for r, ratio in enumerate(RATIOS):
        for f, fusion in enumerate(FUSIONS):
            expected = explain(model, image()[None], method, target=target, head_fusion=fusion,
                               discard_ratio=ratio)[0]
            torch.testing.assert_close(maps[r, f], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(maps[0, 0], maps[-1, 0]), "the ratio changes the map"


def test_frames_one_per_ratio_same_size_and_changing(model: nn.Module) -> None:
    maps = discard_sweep_maps(model, image(), FUSIONS, RATIOS)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:20, 8:20] = True
    frames = render_discard_sweep(image(), maps, RATIOS, FUSIONS, mask=mask, display_size=64)
    assert len(frames) == len(RATIOS)
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape == frames[0].shape
               for f in frames)
    assert not np.array_equal(frames[0], frames[-1])


def test_gif_is_written_with_every_frame_and_loops(model: nn.Module, tmp_path: Path) -> None:
    out = discard_sweep_gif(model, image(), tmp_path / "sweep.gif", FUSIONS, RATIOS, fps=5)
    assert out == tmp_path / "sweep.gif" and out.is_file()
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.n_frames == len(RATIOS)
        assert gif.info.get("loop") == 0
        assert gif.info.get("duration") == 200
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.gif"], "no temporary files left"


def test_failed_write_leaves_nothing_and_keeps_an_old_file(model: nn.Module, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sweep.gif"
    target.write_bytes(b"old")
    frames = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)]

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"GIF89a partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_gif(frames, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.gif"]


def test_bad_input(model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ratios must be a non-empty sequence of numbers in \[0, 1\)"):
        discard_sweep_maps(model, image(), FUSIONS, (0.0, 1.0))
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        discard_sweep_maps(model, image(), ("mean", "median"), RATIOS)
    with pytest.raises(ValueError, match="no discard_ratio/head_fusion"):
        discard_sweep_maps(model, image(), FUSIONS, RATIOS, method="attention")
    with pytest.raises(ValueError, match="one image"):
        discard_sweep_maps(model, torch.rand(2, 3, 32, 32), FUSIONS, RATIOS)
    with pytest.raises(ValueError, match="does not exist"):
        discard_sweep_gif(model, image(), tmp_path / "missing" / "a.gif", FUSIONS, RATIOS)
    with pytest.raises(ValueError, match=r"must end in \.gif"):
        save_gif([np.zeros((4, 4, 3), np.uint8)], tmp_path / "a.png")
    with pytest.raises(ValueError, match="raw_image"):
        discard_sweep_gif(model, image() * 4 - 2, tmp_path / "a.gif", FUSIONS, RATIOS)
    maps = discard_sweep_maps(model, image(), FUSIONS, RATIOS)
    with pytest.raises(ValueError, match=r"maps must be \(R, F, h, w\)"):
        render_discard_sweep(image(), maps[:2], RATIOS, FUSIONS)
    assert list(tmp_path.iterdir()) == []


def test_default_ratios_are_valid_and_increasing() -> None:
    r = DEFAULT_RATIOS
    assert r[0] == 0.0 and r[-1] < 1.0 and all(a < b for a, b in zip(r, r[1:]))
