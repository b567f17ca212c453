"""Tests for vit_course.metrics.road: linear imputation against dense solves, and ROAD curves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vit_course.metrics as M
from vit_course.metrics.road import NEIGHBOUR_WEIGHTS

from ._models import G, P, PatchModel

pytestmark = pytest.mark.usefixtures("one_thread")


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
