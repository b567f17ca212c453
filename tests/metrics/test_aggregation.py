"""Aggregation search: finds a planted best setting on a toy; reads rows as defined; runs
end to end on a tiny ViT with attentions captured once per image."""

from __future__ import annotations

import pytest
import torch
from _tiny import images, make_model

from vit_course.explain.rollout import rollout
from vit_course.metrics.aggregation import (
    DEFAULT_SETTING, read_rows, search_aggregation, search_maps, settings_grid
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _attentions(L=4, B=3, heads=2, T=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, heads, T, T, generator=g).mul(2).softmax(-1) for _ in range(L)]


def test_read_rows_cls_mean_max():
    R = torch.arange(2 * 3 * 3, dtype=torch.float).view(2, 3, 3)       # T = 3: 1 prefix + 2 patches
    assert torch.equal(read_rows(R, (1, 2), 1, "cls"), R[:, 0, 1:].view(2, 1, 2))
    assert torch.equal(read_rows(R, (1, 2), 1, "mean"), R[:, :, 1:].mean(1).view(2, 1, 2))
    assert torch.equal(read_rows(R, (1, 2), 1, "max"), R[:, 2, 1:].view(2, 1, 2))   # last row largest
    with pytest.raises(ValueError, match="reading"):
        read_rows(R, (1, 2), 1, "min")


def test_search_finds_a_planted_best_setting():
    att = _attentions()
    grid = settings_grid(4, start_layers=(0, 1, 2))
    assert len(grid) == 3 * 3 * 3 * 3 and DEFAULT_SETTING in grid
    planted = dict(head_fusion="max", start_layer=2, discard_ratio=0.5, reading="mean")
    target = read_rows(rollout(att, "max", 0.5, 2), (4, 4), 1, "mean")

    def score(maps):                          # closeness to the planted setting's maps
        return -(maps - target).abs().flatten(1).sum(1)

    scores = search_maps(att, (4, 4), 1, score, grid)
    assert scores.shape == (len(grid), 3)
    best = grid[int(scores.mean(1).argmax())]
    assert best == planted
    assert scores[grid.index(planted)].abs().max() == 0          # exactly the planted maps
    assert (scores.mean(1) < 0).sum() == len(grid) - 1            # every other setting differs


def test_search_aggregation_end_to_end_captures_once_per_image():
    model = make_model("course")
    sel, held = images(4, seed=1), images(3, seed=2)
    settings = [dict(DEFAULT_SETTING), dict(head_fusion="max", start_layer=1, discard_ratio=0.5, reading="max")]
    res = search_aggregation(model, sel, held, settings=settings, steps=4, n_boot=200)
    assert res.selection.shape == (2, 4)
    assert res.forwards["capture"] == 4 + 3                       # one capture per image
    assert res.forwards["metric"] == 2 * 4 * 4 + 2 * 3 * 4
    assert res.best in settings and res.default == DEFAULT_SETTING
    # the best setting is the one with the lowest mean deletion AUC on the selection images
    assert res.best == settings[int(res.selection.mean(1).argmin())]
    lo, hi = res.held_out["best_minus_default"][1:]
    assert lo <= res.held_out["best_minus_default"][0] <= hi
    g = search_aggregation(model, sel[:2], held[:2], method="grad_rollout", metric="insertion",
                           settings=settings[:1], steps=2, n_boot=50)
    assert g.metric == "insertion" and g.selection.shape == (1, 2)      # the default only
