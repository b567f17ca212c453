"""ViT-CX (Xie et al. 2023): the batched scoring against a per-mask loop, the mask merging
against scipy's complete linkage, and the map's determinism and batch invariance."""

from __future__ import annotations

import pytest
import torch

from _tiny import MODEL_KINDS, images, make_model
from vit_course.explain import explain
from vit_course.explain.vit_cx import (causal_impact, cluster_masks, feature_maps, mask_noise,
                                       masks_from_features)

pytestmark = pytest.mark.usefixtures("one_thread")


def per_mask_loop(model, image, masks, noise, target):
    """The paper's score, one forward per masked image: S = Σ_i s_i M_i / Σ_j M_j / M."""
    with torch.no_grad():
        def prob(z):
            return model(z[None]).softmax(-1)[0, target]
        p_x = prob(image)
        total = torch.zeros(image.shape[-2:])
        for m, eps in zip(masks, noise):
            s = prob(image * m + eps * (1 - m)) - prob(image + eps * (1 - m)) + p_x
            total += s * m
    return total / masks.sum(0) / len(masks)


@pytest.mark.parametrize("kind", ["torchvision", "course"])
def test_batched_scoring_equals_the_per_mask_loop(kind):
    model = make_model(kind)
    x = images(2)
    features, logits = feature_maps(model, x)
    assert features.shape == (2, 32, 4, 4)
    masks = cluster_masks(masks_from_features(features[1], (32, 32))).reshape(-1, 32, 32)
    assert 1 < masks.shape[0] < 32                             # some masks were merged
    assert masks.amin() >= 0 and torch.allclose(masks.flatten(1).amax(1), torch.ones(len(masks)))
    noise = mask_noise(len(masks), (3, 32, 32), 0.1, seed=0, like=x)
    expected = per_mask_loop(model, x[1], masks, noise, target=2)
    got = causal_impact(model, x[1], masks, noise, 2, internal_batch_size=5)
    assert torch.allclose(got, expected, atol=1e-6)
    # bfloat16 forwards: the same saliency up to the rounding of the probabilities
    bf16 = causal_impact(model, x[1], masks, noise, 2, internal_batch_size=5,
                         precision="bfloat16")
    assert (bf16 - expected).abs().max() <= 5e-2 * expected.abs().max()
    assert not torch.equal(bf16, got)
    pixels = explain(model, x, "vit_cx", target=2, resolution="pixels")
    assert pixels.shape == (2, 32, 32)
    assert torch.allclose(pixels[1], expected, atol=1e-6)
    grid = explain(model, x, "vit_cx", target=2)
    assert torch.allclose(grid[1], expected.reshape(4, 8, 4, 8).mean((1, 3)), atol=1e-6)


def test_merging_is_complete_linkage_below_the_threshold():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    from scipy.spatial.distance import squareform
    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 50, generator=g, dtype=torch.float64)
    masks = (base.repeat_interleave(5, 0) + 0.15 * torch.rand(30, 50, generator=g,
                                                             dtype=torch.float64)).clamp(0, 1)
    unit = masks / masks.norm(dim=1, keepdim=True)
    dist = (1 - unit @ unit.T).clamp_min(0).fill_diagonal_(0).numpy()
    for threshold in (0.005, 0.02, 0.08):
        Z = hierarchy.linkage(squareform(dist, checks=False), method="complete")
        labels = torch.as_tensor(hierarchy.fcluster(Z, threshold, criterion="distance"))
        expected = torch.stack([masks[labels == c].sum(0) for c in labels.unique()])
        expected = (expected - expected.amin(1, keepdim=True)) / (
            expected.amax(1, keepdim=True) - expected.amin(1, keepdim=True))
        got = cluster_masks(masks, threshold)
        assert got.shape[0] == len(labels.unique())
        # same set of merged masks, whatever the order
        order = lambda t: t[torch.argsort(t[:, 0])]          # noqa: E731
        assert torch.allclose(order(got), order(expected), atol=1e-12)
    assert cluster_masks(masks, 0.0).shape[0] == 30           # nothing below 0
    constant = torch.zeros(3, 50)                              # constant maps: zero masks
    assert torch.equal(cluster_masks(constant, 0.1), torch.zeros(3, 50))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_family_batch_invariant_deterministic_and_seeded(kind):
    model = make_model(kind)
    x = images(3)
    maps = explain(model, x, "vit_cx", target=1)
    assert maps.shape == (3, 4, 4) and maps.std() > 0
    for b in range(3):
        assert torch.allclose(explain(model, x[b:b + 1], "vit_cx", target=1)[0], maps[b],
                              atol=1e-6)
    assert torch.equal(explain(model, x, "vit_cx", target=1), maps)
    assert not torch.allclose(explain(model, x, "vit_cx", target=1, seed=1), maps)


def test_class_specific_inside_no_grad_and_bad_options():
    model = make_model("torchvision")
    x = images(2)
    with torch.no_grad():
        a = explain(model, x, "vit_cx", target=0)
    assert not torch.allclose(a, explain(model, x, "vit_cx", target=2))
    for bad in ({"distance_threshold": -0.1}, {"noise_std": "big"}, {"layer": 5},
                {"internal_batch_size": 0}, {"resolution": "voxels"}, {"precision": "half"}):
        with pytest.raises(ValueError):
            explain(model, x, "vit_cx", **bad)
