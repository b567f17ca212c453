"""Tests for vit_course.metrics.localisation: the grid pointing game and the ground-truth mask
scores, on hand-made maps.
"""

from __future__ import annotations

import pytest
import torch

import vit_course.metrics as M
from vit_course.imaging import mask_to_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def test_make_grid_images_layout_and_determinism():
    M_, H = 8, 16
    imgs = torch.arange(M_, dtype=torch.float32).view(M_, 1, 1, 1).expand(M_, 3, H, H).clone()
    labels = [0, 0, 1, 1, 2, 2, 1, 2]
    out = M.make_grid_images(imgs, labels, target_class=1, n_grids=5, seed=3)
    assert out.grids.shape == (5, 3, H, H)
    for g in range(5):
        src = out.sources[g].tolist()
        assert len(set(src)) == 4
        for t, j in enumerate(src):
            r, c = divmod(t, 2)
            tile = out.grids[g, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
            assert torch.allclose(tile, torch.full_like(tile, float(j)))      # constant images
            assert (labels[j] == 1) == (t == out.target_tile[g].item())
        assert out.target_class[g].item() == 1
    again = M.make_grid_images(imgs, labels, target_class=1, n_grids=5, seed=3)
    assert torch.equal(again.grids, out.grids) and torch.equal(again.target_tile, out.target_tile)
    free = M.make_grid_images(imgs, labels, target_class=None, n_grids=20, seed=0)
    assert set(free.target_class.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="3 images of other classes"):
        M.make_grid_images(imgs[:4], [0, 0, 1, 1], target_class=0, n_grids=1)


def test_grid_pointing_score_hand_computed():
    maps = torch.zeros(3, 4, 4)
    maps[0, :2, :2] = 1.5          # tile 0 sums to 6
    maps[0, :2, 2:] = 0.5          # tile 1 sums to 2
    maps[0, 2:, :2] = -4.0         # negative: ignored
    maps[1] = -1.0                 # nothing positive: chance
    maps[2, 3, 3] = 2.0            # everything in tile 3
    score = M.grid_pointing_score(maps, [0, 2, 3])
    assert score.tolist() == pytest.approx([0.75, 0.25, 1.0])
    assert M.grid_pointing_score(maps[:1], [1]).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="even"):
        M.grid_pointing_score(torch.rand(1, 3, 3), [0])
    with pytest.raises(ValueError, match="0..3"):
        M.grid_pointing_score(maps, [0, 1, 4])


def test_mask_to_grid_coverage_threshold_and_small_objects():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :2, :1] = True        # token (0,0) half covered (2 of 4 pixels) → inside
    masks[0, 2:3, 2:3] = True      # token (1,1) a quarter covered → outside
    masks[1, 5, 5] = True          # tiny object: falls back to its best-covered token
    grid = mask_to_grid(masks, (4, 4))
    assert grid[0].nonzero().tolist() == [[0, 0]]
    assert grid[1].nonzero().tolist() == [[2, 2]]


def test_pointing_game_is_tie_aware():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, :2, :2] = True                         # token 0 only
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0] = 1.0                             # unique max inside
    maps[1, 3, 3] = 1.0                             # unique max outside
    maps[2, 0, :4] = 1.0                            # 4 tied maxima, one inside
    assert M.pointing_game(maps, masks).tolist() == pytest.approx([1.0, 0.0, 0.25])
    assert M.pointing_game(torch.ones(3, 4, 4), masks).tolist() == pytest.approx([1 / 16] * 3)


def test_relevance_mass_and_rank_accuracy_hand_examples():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :2, :4] = True                         # tokens 0 and 1
    maps = torch.zeros(2, 4, 4)
    maps[0].view(-1)[[0, 1, 5]] = torch.tensor([3.0, 1.0, 4.0])
    maps[0].view(-1)[7] = -10.0                     # negative relevance is ignored
    maps[1] = -1.0                                  # nothing positive: uniform share 2/16
    mass = M.relevance_mass_accuracy(maps, masks)
    assert mass.tolist() == pytest.approx([4 / 8, 2 / 16])
    rank = M.relevance_rank_accuracy(maps, masks)   # top-2 of image 0: tokens 5, 0 → 1 of 2
    assert rank[0].item() == pytest.approx(0.5)
    assert rank[1].item() == pytest.approx(1.0)     # all tied: index order puts tokens 0, 1 first
    with pytest.warns(RuntimeWarning, match="empty mask"):
        empty = M.relevance_mass_accuracy(maps, torch.zeros(2, 8, 8, dtype=torch.bool))
    assert torch.isnan(empty).all()


def test_mass_on_mask_by_hand():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True                                  # covers patch (0, 0) of a 2x2 grid
    maps = torch.tensor([[[1.0, 0.0], [0.0, 3.0]],       # 1 of 4 on the mask
                         [[-1.0, 0.0], [0.0, 0.0]],      # negative only: no mass
                         [[2.0, -5.0], [0.0, 0.0]]])     # negatives ignored: all on the mask
    want = torch.tensor([0.25, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(M.mass_on_mask(maps, mask), want)
    half = torch.zeros(4, 4)
    half[:1, :2] = 1.0                                   # half of patch (0, 0): counts half
    torch.testing.assert_close(M.mass_on_mask(maps[:1], half), want[:1] / 2)
    per_map = torch.stack([mask, ~mask, mask])           # one mask per map
    torch.testing.assert_close(M.mass_on_mask(maps, per_map), want)
    torch.testing.assert_close(M.mass_on_mask(maps, mask[::2, ::2]), want)   # already on the grid
    torch.testing.assert_close(M.mass_on_mask(maps, mask.numpy()), want)     # NumPy masks
    assert M.mass_on_mask(maps[:1], torch.zeros(4, 4, dtype=torch.bool)).item() == 0.0  # empty mask
    with pytest.raises(ValueError, match="do not split"):
        M.mass_on_mask(maps, torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(3, H, W\), one per map"):
        M.mass_on_mask(maps, per_map[:2])


def test_mass_on_mask_weighs_partial_patches_and_relevance_mass_accuracy_thresholds_them():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :2, :4] = True                              # tokens 0 and 1 fully
    masks[:, 2, :2] = True                               # token 4 half covered: inside at 0.5
    maps = torch.zeros(2, 4, 4)
    maps[:].view(2, -1)[:, [0, 4, 5]] = torch.tensor([2.0, 2.0, 4.0])
    # mass_on_mask: token 0 counts fully, token 4 half: (2 + 1) / 8
    assert M.mass_on_mask(maps, masks).tolist() == pytest.approx([3 / 8, 3 / 8])
    # relevance_mass_accuracy: token 4 reaches the 0.5 threshold, so it counts fully: 4 / 8
    assert M.relevance_mass_accuracy(maps, masks).tolist() == pytest.approx([4 / 8, 4 / 8])
    # the same ratio as mass_on_mask of the bool token mask
    inside = mask_to_grid(masks, (4, 4))
    assert torch.equal(M.relevance_mass_accuracy(maps, masks), M.mass_on_mask(maps, inside))
