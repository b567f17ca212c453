"""Tests for vit_course.metrics.perturbation: deletion / insertion, baselines, auc and the
Chefer et al. perturbation test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vit_course.metrics as M
from vit_course.imaging import IMAGENET_MEAN, IMAGENET_STD

from ._models import G, P, CountModel, PatchModel, count_from_prob, positive_images, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("steps", [1, 3, 5, 16])
def test_deletion_and_insertion_perturb_ceil_k_n_over_steps_tokens(steps):
    x = positive_images()
    maps = torch.rand(3, G, G, generator=torch.Generator().manual_seed(1))
    want = torch.tensor(M.token_counts(steps, G * G))
    dele = M.deletion_curve(CountModel(), x, maps, target=0, steps=steps, baseline="zero", progress=False)
    ins = M.insertion_curve(CountModel(), x, maps, target=0, steps=steps, baseline="zero", progress=False)
    assert dele.shape == ins.shape == (3, steps + 1)
    assert torch.equal(count_from_prob(dele), want.expand(3, -1))           # removed = zero patches
    assert torch.equal(count_from_prob(ins), (G * G - want).expand(3, -1))  # hidden = zero patches


def test_deletion_with_perfect_map_drops_at_the_right_step():
    token = 6
    x = positive_images(2)
    perfect = torch.zeros(2, G, G)
    perfect.view(2, -1)[:, token] = 1.0
    model = PatchModel(token)
    curve = M.deletion_curve(model, x, perfect, steps=16, baseline="zero", progress=False)
    # step 0: patch intact, class 0 (10·mean > 5); from step 1 on it is zero: logits (0, 5, -30)
    assert (curve[:, 0] > 0.5).all()
    expected_after = math.exp(0) / (math.exp(0) + math.exp(5) + math.exp(-30))
    assert torch.allclose(curve[:, 1:], torch.full_like(curve[:, 1:], expected_after), atol=1e-6)
    # constant map: ties by index, so the patch goes at step token + 1
    flat = M.deletion_curve(model, x, torch.ones(2, G, G), target=0, steps=16, baseline="zero",
                            progress=False)
    assert (flat[:, :token + 1] > 0.5).all() and (flat[:, token + 1:] < 0.01).all()
    # insertion with the perfect map: the class appears at step 1
    ins = M.insertion_curve(model, x, perfect, target=0, steps=16, baseline="zero", progress=False)
    assert (ins[:, 0] < 0.01).all() and (ins[:, 1:] > 0.5).all()


def _naive_curve(model, images, maps, target, steps, base, insertion):
    """Per-image, per-step loop with explicit pixel-block copies (the reference)."""
    B, _, H, W = images.shape
    h, w = maps.shape[1:]
    ph, pw = H // h, W // w
    out = torch.zeros(B, steps + 1)
    with torch.no_grad():
        for b in range(B):
            order = sorted(range(h * w), key=lambda t: (-maps[b].flatten()[t].item(), t))
            for k in range(steps + 1):
                n = math.ceil(k * h * w / steps)
                x = (base[b] if insertion else images[b]).clone()
                for t in order[:n]:
                    r, c = divmod(t, w)
                    src = images[b] if insertion else base[b]
                    x[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = src[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
                p = model(x[None]).softmax(-1)[0]
                out[b, k] = p[target[b]]
    return out


@pytest.mark.parametrize("baseline", ["blur", "mean", "zero"])
def test_batched_curves_equal_a_naive_loop(baseline):
    model = tiny_vit()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 32, 32, generator=g)
    maps = torch.rand(3, 4, 4, generator=g)
    maps[0, 0, :2] = maps[0, 0, 2]                        # some ties
    target = model(x).argmax(1)
    base = M.make_baseline(x, baseline)
    for insertion, fn in ((False, M.deletion_curve), (True, M.insertion_curve)):
        got = fn(model, x, maps, steps=5, baseline=baseline, batch_size=4, progress=False)
        want = _naive_curve(model, x, maps, target, 5, base, insertion)
        assert torch.allclose(got, want, atol=1e-6), (insertion, (got - want).abs().max())


def test_baselines():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 20, generator=g)
    assert torch.equal(M.make_baseline(x, "zero"), torch.zeros_like(x))
    mean = M.make_baseline(x, "mean")
    assert torch.allclose(mean, x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    const = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(M.make_baseline(const, "blur"), const, atol=1e-6)
    # blur against a direct 2-D convolution with NumPy reflect padding (σ = 5, 31-px kernel)
    k1 = np.exp(-0.5 * (np.arange(31) - 15) ** 2 / 25.0)
    k1 /= k1.sum()
    k2 = np.outer(k1, k1)
    xp = np.pad(x[0, 1].double().numpy(), 15, mode="reflect")
    ref = np.array([[(xp[i:i + 31, j:j + 31] * k2).sum() for j in range(20)] for i in range(20)])
    assert np.allclose(M.make_baseline(x, "blur")[0, 1].numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"\['blur', 'mean', 'zero'\]"):
        M.make_baseline(x, "noise")
    with pytest.raises(ValueError, match="reflect"):
        M.make_baseline(torch.rand(1, 3, 8, 8), "blur")


def test_auc_of_known_curves():
    assert M.auc(torch.ones(2, 11)).tolist() == pytest.approx([1.0, 1.0])
    assert M.auc(torch.linspace(1, 0, 21)).item() == pytest.approx(0.5)
    assert M.auc([1.0, 0.0, 0.0]).item() == pytest.approx(0.25)
    assert M.auc([0.0, 1.0]).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.auc([1.0])


def test_chefer_auc_is_the_trapezoid_rule_on_0_to_90_percent():
    # hila-chefer/Transformer-Explainability issues #27 and #31: np.trapz(y, x) on
    # x = 0, 0.1, ..., 0.9, y the accuracies after removing 0 %, ..., 90 % of the tokens
    assert M.chefer_auc(torch.ones(10)).item() == pytest.approx(0.9)      # no appended zero
    assert M.chefer_auc([1] * 10).item() == pytest.approx(0.9)
    assert M.chefer_auc(torch.zeros(3, 10)).tolist() == [0.0, 0.0, 0.0]
    # by hand: trapezoids of width 0.1: (1+1)/2 + (1+.5)/2 + (.5+.5)/2 + (.5+0)/2 = 2.5 -> 0.25
    assert M.chefer_auc([1, 1, 0.5, 0.5, 0, 0, 0, 0, 0, 0]).item() == pytest.approx(0.25)
    # a straight line from 1 at 0 % to 0.1 at 90 %: mean height 0.55 over a width of 0.9
    line = [1 - i / 10 for i in range(10)]
    assert M.chefer_auc(line).item() == pytest.approx(0.55 * 0.9)
    x = np.arange(10) / 10
    rollout = [1, 0.94605395, 0.91908092, 0.88911089, 0.84415584, 0.80919081, 0.75624376,
               0.65734266, 0.51548452, 0.29470529]
    assert M.chefer_auc(rollout).item() == pytest.approx(np.trapezoid(rollout, x), abs=1e-12)
    curves = torch.rand(4, 3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = M.chefer_auc(curves)
    assert got.shape == (4, 3) and got.dtype == torch.float64
    assert np.allclose(got.numpy(), np.trapezoid(curves.numpy(), x, axis=-1), atol=1e-12)
    # linear: the mean of per-image AUCs is the AUC of the mean curve (what the tables report)
    assert M.chefer_auc(curves.mean(0)).tolist() == pytest.approx(got.mean(0).tolist())
    with pytest.raises(ValueError, match="10 values"):
        M.chefer_auc(torch.ones(11))


def test_perturbation_test_positive_negative_and_black_pixels():
    token = 5
    x = positive_images(2)
    perfect = torch.zeros(2, G, G)
    perfect.view(2, -1)[:, token] = 1.0
    model = PatchModel(token)
    out = M.perturbation_test(model, x, perfect, labels=[0, 0], mean=(0, 0, 0), std=(1, 1, 1),
                              progress=False)
    assert out["positive"].tolist() == [[1.0] + [0.0] * 9] * 2     # 10 % = 1 token = the patch
    assert out["negative"].tolist() == [[1.0] * 10] * 2            # 90 % = 14 tokens, patch last
    assert out["positive_auc"].tolist() == pytest.approx([0.05, 0.05])
    assert out["negative_auc"].tolist() == pytest.approx([0.9, 0.9])
    # with ImageNet statistics, removed pixels are (0 - mean) / std; 40 % = floor(6.4) = 6 tokens
    spy = PatchModel(token)
    M.perturbation_test(spy, x, perfect, labels=None, batch_size=100, progress=False)
    batch = torch.cat(spy.seen[1:])                                # [0] is the clean batch
    black = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    r, c = divmod(token, G)
    assert torch.allclose(batch[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P][:9],
                          black.expand(9, 3, P, P), atol=1e-6)     # positive rows of image 0
    n_removed = [(row != x[0]).any(dim=0).sum().item() // (P * P) for row in batch[:9]]
    assert n_removed == [1, 3, 4, 6, 8, 9, 11, 12, 14]


def test_input_validation():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    maps = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="one map per image"):
        M.deletion_curve(model, x, maps[:1], progress=False)
    with pytest.raises(ValueError, match="does not tile"):
        M.deletion_curve(model, x, torch.rand(2, 5, 5), progress=False)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        M.insertion_curve(model, x, maps, steps=0, progress=False)
    with pytest.raises(TypeError, match="steps"):
        M.insertion_curve(model, x, maps, steps=2.5, progress=False)
    with pytest.raises(ValueError, match=r"\['blur', 'mean', 'zero', 'token_drop'\]"):
        M.deletion_curve(model, x, maps, baseline="grey", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        M.deletion_curve(model, x, maps, target=3, progress=False)
    with pytest.raises(ValueError, match="one class index per image"):
        M.deletion_curve(model, x, maps, target=[0, 1, 2], progress=False)
    with pytest.raises(ValueError, match="NaN"):
        M.deletion_curve(model, x, torch.full((2, 4, 4), float("nan")), progress=False)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        M.deletion_curve(model, x[0], maps, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        M.perturbation_test(model, x, maps, labels=[0, 7], progress=False)
    with pytest.raises(ValueError, match="one per channel"):
        M.perturbation_test(model, x, maps, labels=[0, 1], mean=(0.5, 0.5), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        M.deletion_curve(model, x, maps, batch_size=0, progress=False)
