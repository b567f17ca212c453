"""Tests for vit_course.metrics (and vit_course.viz_metrics).

Models are tiny: a torchvision VisionTransformer (32 px, 8-px patches, 2 layers) with a random
head, or hand-made models whose logits depend only on chosen patches, so curves can be worked
out by hand.
"""

from __future__ import annotations

import copy
import math

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import vit_course.metrics as M
from vit_course.metrics.road import NEIGHBOUR_WEIGHTS

matplotlib.use("Agg")

P = 2          # patch size of the hand-made models
G = 4          # their grid is 4×4 on 8×8 images, N = 16


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- models
def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                             hidden_dim=32, mlp_dim=64, num_classes=3)
    nn.init.normal_(m.heads.head.weight, std=1.0)       # torchvision zero-inits the head
    nn.init.normal_(m.heads.head.bias, std=0.1)
    return m.eval()


class PatchModel(nn.Module):
    """logit_0 = scale · (mean of patch ``token``), logit_1 = ``bias``, logit_2 = -inf-ish."""

    def __init__(self, token: int, scale: float = 10.0, bias: float = 5.0):
        super().__init__()
        self.token, self.scale, self.bias = token, scale, bias
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        r, c = divmod(self.token, G)
        v = x[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P].mean(dim=(1, 2, 3))
        return torch.stack([self.scale * v, torch.full_like(v, self.bias), torch.full_like(v, -30.0)], 1)


class CountModel(nn.Module):
    """logits = (number of all-zero patches, 0): the probability reveals the count."""

    def forward(self, x):
        B = x.shape[0]
        patches = x.reshape(B, 3, G, P, G, P).abs().sum(dim=(1, 3, 5))       # (B, G, G)
        n = (patches == 0).sum(dim=(1, 2)).double()
        return torch.stack([n, torch.zeros_like(n)], 1)


def count_from_prob(p):
    return torch.log(p / (1 - p)).round().long()


def positive_images(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, G * P, G * P, generator=g) + 0.5


# ----------------------------------------------------------------------------- ranking / counts
def test_rank_tokens_breaks_ties_by_index():
    maps = torch.tensor([[[1.0, 3.0], [3.0, 1.0]]])
    assert M.rank_tokens(maps).tolist() == [[1, 2, 0, 3]]
    assert M.rank_tokens(maps, descending=False).tolist() == [[0, 3, 1, 2]]


def test_token_counts_are_ceil():
    assert M.token_counts(3, 16) == [0, 6, 11, 16]
    assert M.token_counts(4, 16) == [0, 4, 8, 12, 16]
    assert M.token_counts(5, 3) == [0, 1, 2, 2, 3, 3]
    assert M.token_counts(16, 16) == list(range(17))


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


def test_curves_do_not_depend_on_batch_size_and_restore_train_mode():
    model = tiny_vit().train()
    x = torch.randn(4, 3, 32, 32)
    maps = torch.rand(4, 4, 4)
    a = M.deletion_curve(model, x, maps, steps=4, batch_size=1, progress=False)
    b = M.deletion_curve(model, x, maps, steps=4, batch_size=64, progress=False)
    assert torch.allclose(a, b, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())


def _head_dtypes(model: nn.Module) -> list[torch.dtype]:
    """Record the dtype the classification head computes in, on every forward."""
    seen: list[torch.dtype] = []
    model.heads.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


def test_bfloat16_precision_runs_forwards_in_bfloat16_and_stays_close():
    model = tiny_vit()
    seen = _head_dtypes(model)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 32, 32, generator=g)
    maps = torch.rand(3, 4, 4, generator=g)
    full = M.deletion_curve(model, x, maps, steps=4, progress=False)
    assert set(seen) == {torch.float32}
    seen.clear()
    fast = M.deletion_curve(model, x, maps, steps=4, progress=False, precision="bfloat16")
    assert set(seen) == {torch.bfloat16}
    assert fast.dtype == torch.float32 and fast.shape == full.shape
    assert not torch.equal(fast, full)                  # really a different arithmetic ...
    assert (fast - full).abs().max() < 0.05             # ... giving nearly the same curve
    seen.clear()
    chef = M.perturbation_test(model, x, maps, [0, 1, 2], progress=False, precision="bfloat16")
    assert set(seen) == {torch.bfloat16} and chef["positive"].shape == (3, 10)
    with pytest.raises(ValueError, match=r"precision.*\['float32', 'bfloat16'\]"):
        M.insertion_curve(model, x, maps, progress=False, precision="float16")


# ----------------------------------------------------------------------------- baselines, auc
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


def test_chefer_auc_matches_the_authors_formula_and_figure():
    assert M.chefer_auc(torch.ones(10)).item() == pytest.approx(0.95)
    assert M.chefer_auc(torch.zeros(3, 10)).tolist() == [0.0, 0.0, 0.0]
    # one of the authors' rollout curves (0 %..90 %); their script reports AUC 0.7131
    rollout = [1, 0.94605395, 0.91908092, 0.88911089, 0.84415584, 0.80919081, 0.75624376,
               0.65734266, 0.51548452, 0.29470529]
    assert M.chefer_auc(rollout).item() == pytest.approx(0.7131, abs=5e-5)
    assert M.chefer_auc(rollout).item() == pytest.approx(np.trapezoid(rollout + [0], dx=0.1))
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
    assert out["negative_auc"].tolist() == pytest.approx([0.95, 0.95])
    # with ImageNet statistics, removed pixels are (0 - mean) / std; 40 % = floor(6.4) = 6 tokens
    spy = PatchModel(token)
    M.perturbation_test(spy, x, perfect, labels=None, batch_size=100, progress=False)
    batch = torch.cat(spy.seen[1:])                                # [0] is the clean batch
    black = (-torch.tensor(M.IMAGENET_MEAN) / torch.tensor(M.IMAGENET_STD)).view(3, 1, 1)
    r, c = divmod(token, G)
    assert torch.allclose(batch[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P][:9],
                          black.expand(9, 3, P, P), atol=1e-6)     # positive rows of image 0
    n_removed = [(row != x[0]).any(dim=0).sum().item() // (P * P) for row in batch[:9]]
    assert n_removed == [1, 3, 4, 6, 8, 9, 11, 12, 14]


# ----------------------------------------------------------------------------- ROAD
def _dense_impute(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    C, H, W = img.shape
    miss = [(i, j) for i in range(H) for j in range(W) if not known[i, j]]
    idx = {p: n for n, p in enumerate(miss)}
    A = np.zeros((len(miss), len(miss)))
    b = np.zeros((len(miss), C))
    for n, (i, j) in enumerate(miss):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                w = NEIGHBOUR_WEIGHTS[di + 1][dj + 1]
                ii, jj = i + di, j + dj
                if w == 0 or not (0 <= ii < H and 0 <= jj < W):
                    continue
                A[n, n] += w
                if known[ii, jj]:
                    b[n] += w * img[:, ii, jj]
                else:
                    A[n, idx[(ii, jj)]] -= w
    x = np.linalg.solve(A, b)
    out = img.copy()
    for n, (i, j) in enumerate(miss):
        out[:, i, j] = x[n]
    return out


def test_linear_impute_hand_example():
    img = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3).expand(1, 3, 3, 3).clone()
    known = torch.ones(1, 3, 3, dtype=torch.bool)
    known[0, 1, 1] = False                    # centre: 1/6·(1+3+5+7) + 1/12·(0+2+6+8) = 4
    known[0, 0, 0] = False                    # corner: (1/6·1 + 1/6·3 + 1/12·4) / (5/12) = 2.4 with centre
    out = M.linear_impute(img, known, tol=1e-12)
    # two coupled unknowns: c = 1/6·(1+3+5+7) + 1/12·(a+2+6+8); a = (1/6·(1+3) + 1/12·c) / (5/12)
    A = np.array([[1.0, -1 / 12], [-1 / 12, 5 / 12]])
    rhs = np.array([16 / 6 + 16 / 12, 4 / 6])
    c, a = np.linalg.solve(A, rhs)
    assert out[0, 0, 1, 1].item() == pytest.approx(c, abs=1e-10)
    assert out[0, 0, 0, 0].item() == pytest.approx(a, abs=1e-10)
    assert torch.equal(out[0][:, known[0]], img[0][:, known[0]])


def test_linear_impute_matches_a_dense_solve():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 9, 7, generator=g, dtype=torch.float64)
    known = torch.rand(2, 9, 7, generator=g) > 0.7
    got = M.linear_impute(img, known, tol=1e-12)
    for b in range(2):
        ref = _dense_impute(img[b].numpy(), known[b].numpy())
        assert np.abs(got[b].numpy() - ref).max() < 1e-9
    # float32 converges too, to float32 accuracy
    got32 = M.linear_impute(img.float(), known, tol=1e-6)
    assert (got32.double() - got).abs().max() < 1e-5


def test_noisy_imputation_keeps_known_pixels_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 40, 40, generator=g)
    known = torch.ones(1, 40, 40, dtype=torch.bool)
    known[0, 10:30, 10:30] = False
    clean = M.linear_impute(img, known, tol=1e-6)
    a = M.noisy_linear_impute(img, known, generator=torch.Generator().manual_seed(1))
    b = M.noisy_linear_impute(img, known, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(a[:, :, known[0]], img[:, :, known[0]])
    noise = (a - clean)[:, :, ~known[0]]
    assert noise.std().item() == pytest.approx(0.01, rel=0.1)
    assert abs(noise.mean().item()) < 2e-3


def test_road_curve_morf_vs_lerf_and_batch_independence():
    token = 9
    x = torch.zeros(2, 3, G * P, G * P)
    r, c = divmod(token, G)
    x[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P] = 1.0          # one bright patch drives class 0
    perfect = torch.zeros(2, G, G)
    perfect.view(2, -1)[:, token] = 1.0
    model = PatchModel(token, scale=10.0, bias=5.0)
    kw = dict(mean=(0, 0, 0), std=(1, 1, 1), labels=[0, 0], progress=False)
    morf = M.road_curve(model, x, perfect, order="morf", **kw)
    lerf = M.road_curve(model, x, perfect, order="lerf", **kw)
    assert morf["correct"].shape == (2, 9)
    assert morf["correct"].sum() == 0                 # the patch is imputed from dark neighbours
    assert lerf["correct"].sum() == 18                # the patch is never removed
    one = M.road_curve(model, x, perfect, order="morf", batch_size=1, seed=7, **kw)
    many = M.road_curve(model, x, perfect, order="morf", batch_size=64, seed=7, **kw)
    assert torch.allclose(one["probs"], many["probs"], atol=1e-6)   # same noise per image
    other = M.road_curve(model, x, perfect, order="morf", seed=8, **kw)
    assert not torch.allclose(other["probs"], many["probs"], atol=1e-6)   # the noise is there
    with pytest.raises(ValueError, match="morf"):
        M.road_curve(model, x, perfect, order="best", **kw)


# ----------------------------------------------------------------------------- grid pointing game
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


# ----------------------------------------------------------------------------- ground-truth masks
def test_mask_to_grid_coverage_threshold_and_small_objects():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :2, :1] = True        # token (0,0) half covered (2 of 4 pixels) → inside
    masks[0, 2:3, 2:3] = True      # token (1,1) a quarter covered → outside
    masks[1, 5, 5] = True          # tiny object: falls back to its best-covered token
    grid = M.mask_to_grid(masks, (4, 4))
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


# ----------------------------------------------------------------------------- sanity checks
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


def course_vit():
    from vit_course.models import ViT

    torch.manual_seed(0)
    return ViT(img_size=32, patch_size=8, num_transformer_layers=2, embedding_dim=32, mlp_size=64,
               num_heads=2, num_classes=3).eval()


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


# ----------------------------------------------------------------------------- controls, summaries
def test_controls():
    a = M.random_map((2, 4, 4), seed=3)
    assert torch.equal(a, M.random_map((2, 4, 4), seed=3)) and (a >= 0).all() and (a < 1).all()
    gmap = M.center_gaussian_map(5, 5, sigma=1.0)
    assert gmap[2, 2] == gmap.max() == 1.0
    assert torch.allclose(gmap, gmap.flip(0)) and torch.allclose(gmap, gmap.T)
    model = tiny_vit()
    x = torch.randn(3, 3, 32, 32)
    assert M.RandomExplainer(0)(model, x, None).shape == (3, 4, 4)
    assert M.CenterGaussianExplainer()(course_vit(), x, None).shape == (3, 4, 4)
    r = M.RandomExplainer(0)
    assert not torch.equal(r(model, x, None), r(model, x, None))   # the stream continues


def test_bootstrap_ci_deterministic_and_contains_mean():
    v = torch.arange(20, dtype=torch.float64)
    a = M.bootstrap_ci(v, n_boot=500, seed=1)
    assert a == M.bootstrap_ci(v, n_boot=500, seed=1)
    mean, lo, hi = a
    assert mean == pytest.approx(9.5) and lo < mean < hi
    assert M.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert M.bootstrap_ci([1.0, float("nan"), 3.0], seed=0)[0] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        M.bootstrap_ci(v, ci=95)


def test_summarise_and_format_table():
    rows = M.summarise({"a": {"deletion_auc": [0.1, 0.2], "grid_pointing": [1.0]},
                        "b": {"deletion_auc": [0.3, 0.5]}}, n_boot=50)
    assert [(r["metric"], r["method"]) for r in rows] == [("deletion_auc", "a"), ("deletion_auc", "b"),
                                                          ("grid_pointing", "a")]
    assert rows[1]["mean"] == pytest.approx(0.4) and rows[0]["better"] == "lower"
    text = M.format_table(rows)
    assert "deletion_auc" in text and "0.400" in text and "↓" in text


# ----------------------------------------------------------------------------- suite
class ChannelModel(nn.Module):
    """Predicts the channel with the largest mean: a model whose answer is known."""

    def forward(self, x):
        return 10 * x.mean(dim=(2, 3))


def channel_images(n=12):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.2
    labels = torch.arange(n) % 3
    x[torch.arange(n), labels] += 0.6
    return x, labels


def target_channel(model, images, target):
    t = torch.as_tensor(target).view(-1)
    ch = images[torch.arange(images.shape[0]), t]
    return ch.unfold(1, 8, 8).unfold(2, 8, 8).mean(dim=(-1, -2))


def test_run_suite_scores_explainers_and_controls_consistently():
    model = ChannelModel()
    x, labels = channel_images()
    res = M.run_suite(model, x, labels, {"channel": target_channel}, steps=4, n_grids=6,
                      batch_size=16, progress=False, mean=(0, 0, 0), std=(1, 1, 1))
    assert res.methods == ["channel", "random", "center_gaussian"]
    metrics = {"deletion_auc", "insertion_auc", "chefer_positive_auc", "chefer_negative_auc", "grid_pointing"}
    for name in res.methods:
        assert set(res.scores[name]) == metrics
        assert res.scores[name]["deletion_auc"].shape == (12,)
        assert res.scores[name]["grid_pointing"].shape == (6,)
    # the suite's shared cache gives the same numbers as the standalone functions
    alone = M.deletion_curve(model, x, res.maps["channel"], steps=4, progress=False)
    assert torch.allclose(res.curves["channel"]["deletion"], alone, atol=1e-6)
    chef = M.perturbation_test(model, x, res.maps["channel"], labels, mean=(0, 0, 0), std=(1, 1, 1),
                               progress=False)
    assert torch.equal(res.curves["channel"]["chefer_positive"], chef["positive"])
    # the target-channel map points at the target tile: only that tile is bright in its channel
    assert res.scores["channel"]["grid_pointing"].mean() > 0.6
    assert res.scores["center_gaussian"]["grid_pointing"].tolist() == pytest.approx([0.25] * 6)
    # clean, baseline and all perturbed rows: 12 + 12 + 3 methods × 12 × (3 + 3 + 9 + 9)
    assert res.forwards == 24 + 3 * 12 * 24
    rows = res.table(n_boot=50)
    assert len(rows) == 15 and "channel" in res.format(n_boot=50)


def test_run_suite_in_bfloat16_is_close_to_float32():
    model = tiny_vit()
    seen = _head_dtypes(model)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 3, 32, 32, generator=g)
    labels = model(x).argmax(1)
    fns = {"grad": lambda m, images, target=None: images.abs().mean(1).unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2))}
    kw = dict(steps=4, grid_game=False, controls=("random",), progress=False)
    full = M.run_suite(model, x, labels, fns, **kw)
    seen.clear()
    fast = M.run_suite(model, x, labels, fns, precision="bfloat16", **kw)
    assert set(seen) == {torch.bfloat16}
    assert (full.precision, fast.precision) == ("float32", "bfloat16")
    assert fast.forwards == full.forwards
    for name in full.methods:
        for metric in ("deletion_auc", "insertion_auc"):
            assert (fast.scores[name][metric] - full.scores[name][metric]).abs().max() < 0.05
    with pytest.raises(ValueError, match="precision"):
        M.run_suite(model, x, labels, fns, precision="half", **kw)


# ----------------------------------------------------------------------------- bad input
def test_input_validation():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    maps = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="one map per image"):
        M.deletion_curve(model, x, maps[:1], progress=False)
    with pytest.raises(ValueError, match="does not tile"):
        M.deletion_curve(model, x, torch.rand(2, 5, 5), progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        M.insertion_curve(model, x, maps, steps=0, progress=False)
    with pytest.raises(TypeError, match="steps"):
        M.insertion_curve(model, x, maps, steps=2.5, progress=False)
    with pytest.raises(ValueError, match=r"\['blur', 'mean', 'zero'\]"):
        M.deletion_curve(model, x, maps, baseline="grey", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        M.deletion_curve(model, x, maps, target=3, progress=False)
    with pytest.raises(ValueError, match="one per image"):
        M.deletion_curve(model, x, maps, target=[0, 1, 2], progress=False)
    with pytest.raises(ValueError, match="NaN"):
        M.deletion_curve(model, x, torch.full((2, 4, 4), float("nan")), progress=False)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        M.deletion_curve(model, x[0], maps, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        M.perturbation_test(model, x, maps, labels=[0, 7], progress=False)
    with pytest.raises(ValueError, match="one value per channel"):
        M.perturbation_test(model, x, maps, labels=[0, 1], mean=(0.5, 0.5), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        M.deletion_curve(model, x, maps, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="control"):
        M.run_suite(model, x, [0, 1], {}, controls=("oracle",), progress=False)


# ----------------------------------------------------------------------------- plots
def test_plots_return_figures():
    import matplotlib.pyplot as plt

    from vit_course import viz_metrics as V

    curves = {"a": {"deletion": torch.rand(3, 5), "insertion": torch.rand(3, 5)},
              "b": {"deletion": torch.rand(3, 5), "insertion": torch.rand(3, 5)}}
    fig = V.plot_deletion_insertion(curves)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    plt.close(fig)
    x, labels = channel_images(8)
    grids = M.make_grid_images(x, labels, n_grids=3, seed=0)
    fig = V.plot_grid_examples(grids.grids, {"m": torch.rand(3, 4, 4)}, grids.target_tile, n=2,
                               mean=(0, 0, 0), std=(1, 1, 1))
    assert len(fig.axes) == 4
    plt.close(fig)
    rows = M.summarise({"a": {"deletion_auc": [0.1, 0.2]}, "b": {"deletion_auc": [0.3, 0.4]}}, n_boot=20)
    fig = V.plot_summary(rows, chance={"deletion_auc": 0.5})
    assert fig.axes[0].get_title().startswith("deletion_auc")
    plt.close(fig)
