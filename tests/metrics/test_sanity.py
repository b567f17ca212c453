"""Tests for vit_course.metrics.sanity: rank correlation, SSIM and the Adebayo et al. checks.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import vit_course.metrics as M

from ._models import course_vit, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_spearman_with_ties_hand_example():
    assert M.rank_average(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert M.spearman(a, b).item() == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert M.spearman(b, -b).item() == pytest.approx(-1.0)
    assert M.spearman(b, b ** 3).item() == pytest.approx(1.0)
    assert torch.isnan(M.spearman(torch.ones(1, 4), b))


def test_ssim_identical_is_one_and_inverted_is_negative():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 14, 14, generator=g)
    assert torch.allclose(M.ssim(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(M.ssim(a, 3 * a + 2), torch.ones(3, dtype=torch.float64))  # [0,1] scaling
    assert (M.ssim(a, -a) < 0).all()
    assert (M.ssim(a, torch.rand(3, 14, 14, generator=g)) < 0.5).all()


def saliency(model, images, target):
    """|∂logit_t/∂x| summed over each 8×8 patch: a weight-dependent test explainer."""
    x = images.clone().requires_grad_(True)
    t = torch.as_tensor(target).view(-1)
    out = model(x).gather(1, t.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(out, x)
    return grad.abs().sum(1).unfold(1, 8, 8).unfold(2, 8, 8).sum(dim=(-1, -2))


def test_randomization_steps_cover_attention_projections():
    tv = M.randomization_steps(tiny_vit())
    assert [s for s, _ in tv] == ["head", "block 1", "block 0", "embedding"]
    b0 = dict(tv)["block 0"]
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in b0
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj.weight" in b0
    assert set(dict(tv)["head"]) == {"encoder.ln.weight", "encoder.ln.bias", "heads.head.weight", "heads.head.bias"}
    cv = dict(M.randomization_steps(course_vit()))
    assert "transformer_encoder.0.msa_block.qkv.weight" in cv["block 0"]
    assert "transformer_encoder.1.msa_block.proj.weight" in cv["block 1"]
    assert {"class_embedding", "position_embedding"} <= set(cv["embedding"])
    with pytest.raises(TypeError, match="Supported"):
        M.randomization_steps(nn.Linear(3, 3))


def test_cascading_randomization_changes_only_the_copy():
    model = tiny_vit()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = M.cascading_randomization(model, x, saliency, progress=False, seed=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)           # caller untouched
    assert out["steps"] == ["head", "block 1", "block 0", "embedding"]
    assert out["spearman"].shape == out["ssim"].shape == (4, 2)
    assert out["maps"].shape == (5, 2, 4, 4)
    assert not torch.allclose(out["maps"][0], out["maps"][-1])
    again = M.cascading_randomization(model, x, saliency, progress=False, seed=1)
    assert torch.allclose(again["spearman"], out["spearman"], equal_nan=True)      # seeded
    assert torch.allclose(again["ssim"], out["ssim"], equal_nan=True)
    # reinitialize_ really redraws the attention projections (torchvision and course ViT)
    work = copy.deepcopy(model)
    M.reinitialize_(work, dict(M.randomization_steps(work))["block 0"], torch.Generator().manual_seed(0))
    sa = "encoder.layers.encoder_layer_0.self_attention."
    for name in ("in_proj_weight", "out_proj.weight"):
        assert not torch.equal(work.state_dict()[sa + name], before[sa + name])
    cv = course_vit()
    work = copy.deepcopy(cv)
    M.reinitialize_(work, dict(M.randomization_steps(work))["block 0"], torch.Generator().manual_seed(0))
    for name in ("qkv.weight", "proj.weight"):
        key = "transformer_encoder.0.msa_block." + name
        assert not torch.equal(work.state_dict()[key], cv.state_dict()[key])


def test_class_sensitivity():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = M.class_sensitivity(model, x, saliency)
    assert out["spearman"].shape == (2, 2) and out["classes"].shape == (2, 2)
    assert (out["classes"] != out["predicted"].view(-1, 1)).all()

    def agnostic(model, images, target):      # ignores the class entirely
        return images.mean(1).unfold(1, 8, 8).unfold(2, 8, 8).mean(dim=(-1, -2))

    flat = M.class_sensitivity(model, x, agnostic, others="lowest")
    assert flat["spearman"].shape == (2, 1)
    assert torch.allclose(flat["mean"], torch.ones(2, dtype=torch.float64))
