"""The planted shortcut: the head learns the square, a map on the square scores 1, a random
map about 1/N, and the model's own head is put back."""

from __future__ import annotations

import functools

import pytest
import torch
from _tiny import make_model

from vit_course.explain import explain
from vit_course.metrics.shortcut import (
    head_features, paint_square, plant_shortcut, random_tokens, shortcut_scores, square_masks
)

pytestmark = pytest.mark.usefixtures("one_thread")
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * 0.5, torch.arange(n) % 3   # no class signal


def test_paint_square_fills_exactly_the_tokens_patch():
    x = torch.zeros(2, 3, 32, 32)
    out = paint_square(x, torch.tensor([0, 5]), (4, 4), colour=(1.0, 0.0, 1.0), mean=0.5, std=0.5)
    assert torch.equal(out[0, :, :8, :8], torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 8, 8))
    assert torch.equal(out[1, :, 8:16, 8:16], out[0, :, :8, :8])          # token 5 = row 1, col 1
    assert (out[0, :, 8:, :] == 0).all() and (out[1, :, :8, :] == 0).all() and torch.equal(x, torch.zeros_like(x))
    assert square_masks(torch.tensor([5]), (4, 4))[0].nonzero().tolist() == [[1, 1]]


@pytest.mark.parametrize("kind", ["torchvision", "course", "hf"])
def test_head_features_are_the_heads_input(kind):
    model, x = make_model(kind), _data(4, 0)[0]
    f = head_features(model, x, batch_size=3)
    from vit_course.explain.families import head_of, logits_of
    with torch.no_grad():
        torch.testing.assert_close(head_of(model)(f), logits_of(model, x))


def test_the_head_learns_the_square_and_the_control_does_not():
    model = make_model("course")
    (xtr, ytr), (xte, yte) = _data(120, 1), _data(60, 2)
    sc = plant_shortcut(model, xtr, ytr, xte, yte, shortcut_class=0, epochs=40, lr=3e-2, **PLAIN)
    # the square pulls to class 0 (features of a random tiny backbone carry it only in part)
    assert sc.square_rate["shortcut"] > 0.5 and sc.square_rate["shortcut"] > sc.square_rate["control"] + 0.3, sc.square_rate
    assert sc.square_rate["control"] < 0.6, sc.square_rate
    assert sc.square_images.shape == (40, 3, 32, 32) and sc.square_tokens.shape == (40,)
    old = model.head
    explainers = {"random": functools.partial(explain, method="random", seed=0),
                  "rollout": functools.partial(explain, method="rollout")}
    scores = shortcut_scores(model, sc, explainers)
    assert model.head is old                                      # the model's own head is back
    assert set(scores) == {"shortcut", "control"}
    assert abs(scores["shortcut"]["random"].mean().item() - 1 / 16) < 0.03   # uniform random: 1/N


def test_a_map_covering_only_the_square_scores_one():
    model = make_model("torchvision")
    (xtr, ytr), (xte, yte) = _data(30, 1), _data(9, 2)
    sc = plant_shortcut(model, xtr, ytr, xte, yte, epochs=2, **PLAIN)
    perfect = lambda model, images, target: square_masks(sc.square_tokens, sc.grid).float()[:images.shape[0]]  # noqa: E731
    elsewhere = lambda model, images, target: 1.0 - square_masks(sc.square_tokens, sc.grid).float()[:images.shape[0]]  # noqa: E731
    scores = shortcut_scores(model, sc, {"perfect": perfect, "elsewhere": elsewhere}, batch_size=100)
    for head in ("shortcut", "control"):
        assert torch.equal(scores[head]["perfect"], torch.ones(6, dtype=torch.float64))
        assert torch.equal(scores[head]["elsewhere"], torch.zeros(6, dtype=torch.float64))


def test_random_tokens_are_seeded_and_cover_the_grid():
    a, b = random_tokens(500, (4, 4), seed=3), random_tokens(500, (4, 4), seed=3)
    assert torch.equal(a, b) and set(a.tolist()) == set(range(16))
    with pytest.raises(ValueError, match="shortcut_class"):
        plant_shortcut(make_model("course"), *_data(6, 0), *_data(3, 1), shortcut_class=3, **PLAIN)
