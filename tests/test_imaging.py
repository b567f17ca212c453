"""vit_course.imaging: display, blur, min-max, upsampling and masks, each defined once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from vit_course.imaging import (IMAGENET_MEAN, IMAGENET_STD, gaussian_blur, mask_coverage,
                                mask_to_grid, normalization_of, normalize_maps, to_display,
                                upsample)


def test_to_display_undoes_the_transforms_normalisation():
    raw = torch.rand(2, 3, 8, 8)
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    x = norm(raw)
    transform = T.Compose([T.ToTensor(), norm])
    assert normalization_of(transform) == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization_of(T.ToTensor()) is None and normalization_of(None) is None
    torch.testing.assert_close(to_display(x, transform), raw, atol=1e-6, rtol=0)
    torch.testing.assert_close(to_display(x[0], mean=IMAGENET_MEAN, std=IMAGENET_STD), raw[0],
                               atol=1e-6, rtol=0)
    clamped = to_display(torch.tensor([[[-1.0, 2.0]]]))        # nothing to undo: only clamped
    assert clamped.tolist() == [[[0.0, 1.0]]]


def test_gaussian_blur_keeps_constants_commutes_with_normalisation_and_checks_size():
    const = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)
    x = torch.rand(2, 3, 20, 20)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(gaussian_blur((x - mean) / std, 1.5),
                               (gaussian_blur(x, 1.5) - mean) / std, atol=1e-5, rtol=0)
    blurred = gaussian_blur(x, 1.0)
    assert blurred.std() < x.std()                          # it smooths
    assert torch.equal(gaussian_blur(x, 1.0, kernel_size=1), x)
    with pytest.raises(ValueError, match="positive odd"):
        gaussian_blur(x, 1.0, kernel_size=4)
    with pytest.raises(ValueError, match="smaller sigma"):
        gaussian_blur(torch.rand(1, 1, 8, 8), 5.0)          # 31-px kernel on 8 px
    with pytest.raises(ValueError, match="positive number of pixels"):
        gaussian_blur(x, 0)


def test_normalize_maps_per_map_and_constant_maps():
    maps = torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]])
    assert normalize_maps(maps).tolist() == [[[0.0, 1.0]], [[0.0, 0.0]]]
    assert normalize_maps(maps.double()).dtype == torch.float64


def test_mask_coverage_and_mask_to_grid():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, :2] = True                                     # half of patch (0, 0) of a 2x2 grid
    cov = mask_coverage(mask, 2)
    assert cov.dtype == torch.float64 and cov.tolist() == [[0.5, 0.0], [0.0, 0.0]]
    assert torch.equal(mask_coverage(mask.numpy(), (2, 2)), cov)          # NumPy too
    assert mask_to_grid(mask, 2).tolist() == [[True, False], [False, False]]
    small = torch.zeros(1, 8, 8, dtype=torch.bool)
    small[0, 0, 0] = True                                   # below the threshold everywhere
    assert mask_to_grid(small, 2)[0].tolist() == [[True, False], [False, False]]  # fallback
    assert not mask_to_grid(torch.zeros(1, 8, 8, dtype=torch.bool), 2).any()
    with pytest.raises(TypeError, match="mask > 0"):
        mask_coverage(np.full((8, 8), 255, dtype=np.uint8), 2)   # 0/255 is not a fraction
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        mask_coverage(torch.full((8, 8), 2.0), 2)
    with pytest.raises(ValueError, match="do not split"):
        mask_coverage(mask, 3)
    with pytest.raises(ValueError, match="threshold"):
        mask_to_grid(mask, 2, threshold=0)


def test_upsample_for_display_shapes_and_modes():
    """plot_maps and overlay take maps brought to pixels by vit_course.imaging.upsample."""
    maps = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2)
    up = upsample(maps, size=(8, 8), mode="nearest")
    assert up.shape == (2, 8, 8)
    # nearest: each patch becomes a constant 4x4 block with the patch's value
    assert torch.equal(up[1, :4, 4:], torch.full((4, 4), maps[1, 0, 1].item()))
    bil = upsample(maps, size=16)
    assert bil.shape == (2, 16, 16)
    assert bil.min() >= maps.min() and bil.max() <= maps.max()
    single = upsample(torch.ones(1, 4, 4) * 0.3, size=(32, 32))[0]
    assert single.shape == (32, 32)
    torch.testing.assert_close(single, torch.full((32, 32), 0.3))
    with pytest.raises(ValueError, match="mode must be"):
        upsample(maps, 8, mode="area")
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        upsample(torch.ones(1, 1, 2, 2), 8)


