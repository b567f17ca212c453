"""Attention flow: the layered push-relabel max-flow against Edmonds-Karp and min-cut
enumeration, the paper's matrices, and the registered method on tiny models."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
import torch
from torch import nn

from _tiny import images, make_model
from vit_course.explain import capture, explain
from vit_course.explain.flow import attention_flow, flow_matrices, max_flow_layered

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["torchvision", "course"])
def model(request) -> nn.Module:
    return make_model(request.param)


def _edmonds_karp(cap: np.ndarray, s: int, t: int) -> float:
    """Shortest augmenting paths on a dense capacity matrix (independent reference)."""
    n = cap.shape[0]
    res = cap.astype(np.float64).copy()
    total = 0.0
    while True:
        parent = [-1] * n
        parent[s] = s
        queue = deque([s])
        while queue and parent[t] == -1:
            u = queue.popleft()
            for v in range(n):
                if parent[v] == -1 and res[u, v] > 1e-14:
                    parent[v] = u
                    queue.append(v)
        if parent[t] == -1:
            return total
        v, bottleneck = t, np.inf
        while v != s:
            bottleneck = min(bottleneck, res[parent[v], v])
            v = parent[v]
        v = t
        while v != s:
            res[parent[v], v] -= bottleneck
            res[v, parent[v]] += bottleneck
            v = parent[v]
        total += bottleneck

def _dense_layered(C: np.ndarray) -> np.ndarray:
    """Dense (n, n) capacity matrix of the layered graph; node (l, j) = l * T + j."""
    L, T, _ = C.shape
    cap = np.zeros(((L + 1) * T, (L + 1) * T))
    for layer in range(L):
        for i in range(T):
            for j in range(T):
                cap[layer * T + j, (layer + 1) * T + i] = C[layer, i, j]
    return cap

def _min_cut_by_enumeration(cap: np.ndarray, s: int, t: int) -> float:
    """Minimum over every s-t cut (max-flow = min-cut)."""
    others = [v for v in range(cap.shape[0]) if v not in (s, t)]
    best = np.inf
    for bits in itertools.product([False, True], repeat=len(others)):
        side = np.zeros(cap.shape[0], dtype=bool)
        side[s] = True
        side[[v for v, b in zip(others, bits) if b]] = True
        best = min(best, cap[side][:, ~side].sum())
    return best

@pytest.mark.parametrize("L,T,kind", [(1, 3, "random"), (2, 3, "random"), (3, 3, "sparse"),
                                      (2, 4, "attention"), (3, 3, "attention")])
def test_max_flow_equals_min_cut_enumeration(L, T, kind):
    rng = np.random.default_rng(L * 10 + T)
    C = rng.random((L, T, T))
    if kind == "sparse":
        C *= rng.random((L, T, T)) < 0.4              # many missing edges, maybe no path
    if kind == "attention":
        A = [torch.from_numpy(rng.random((1, 2, T, T))).softmax(-1) for _ in range(L)]
        C = flow_matrices(A)[0].numpy()
    cap = _dense_layered(C)
    got = max_flow_layered(C, sink=0)
    for j in range(T):
        expect = _min_cut_by_enumeration(cap, j, L * T)
        assert abs(got[j] - expect) < 1e-9, (j, got[j], expect)

@pytest.mark.parametrize("seed", range(4))
def test_max_flow_equals_edmonds_karp(seed):
    rng = np.random.default_rng(seed)
    L, T = [(4, 5), (5, 6), (6, 4), (4, 7)][seed]
    A = [torch.from_numpy(rng.normal(size=(1, 2, T, T)) * 3).softmax(-1) for _ in range(L)]
    C = flow_matrices(A)[0].numpy()
    if seed == 3:
        C[1] *= rng.random((T, T)) < 0.5              # saturating bottlenecks
    cap = _dense_layered(C)
    got = max_flow_layered(C, sources=range(1, T), sink=0)
    expect = [_edmonds_karp(cap, j, L * T) for j in range(1, T)]
    assert np.allclose(got, expect, atol=1e-9)

def test_flow_matrices_follow_the_paper():
    A = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(2)]
    M = flow_matrices(A)
    assert M.shape == (2, 2, 5, 5) and M.dtype == torch.float64
    expect = 0.5 * A[1].double().mean(1) + 0.5 * torch.eye(5, dtype=torch.float64)
    assert torch.allclose(M[:, 1], expect)                 # rows already sum to 1
    assert torch.allclose(M.sum(-1), torch.ones(2, 2, 5, dtype=torch.float64))

def test_attention_flow_explainer_on_model(model):
    x = images(2)
    cap = capture(model, x)
    mats = flow_matrices(cap.attentions)
    maps = explain(model, x, "attention_flow")
    for b in range(2):
        ref = max_flow_layered(mats[b].numpy(), sources=range(1, 17), sink=0)
        assert np.allclose(maps[b].flatten().numpy(), ref, atol=1e-6)
    assert ((maps >= 0) & (maps <= 1 + 1e-6)).all()
    row = attention_flow(cap.attentions)
    assert row.shape == (2, 17) and torch.equal(row[:, 0], torch.zeros(2))

def test_max_flow_bad_input():
    with pytest.raises(ValueError, match=r"\(L, T, T\)"):
        max_flow_layered(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        max_flow_layered(-np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="out of range"):
        max_flow_layered(np.ones((1, 2, 2)), sources=[5])


def _bfs_reference(cap: np.ndarray, t: int) -> np.ndarray:
    """Edges from every node to ``t`` in the residual graph ``cap`` (inf if none)."""
    n = cap.shape[0]
    d = np.full(n, np.inf)
    d[t] = 0
    queue = deque([t])
    while queue:
        v = queue.popleft()
        for u in range(n):
            if d[u] == np.inf and cap[u, v] > 1e-12:
                d[u] = d[v] + 1
                queue.append(u)
    return d


@pytest.mark.parametrize("seed", range(3))
def test_distance_labels_match_plain_bfs(seed):
    """Zero-flow labels computed once (shared by all sources) and the level-by-level
    relabelling on the kept residual masks equal a plain BFS on the dense residual graph."""
    from vit_course.explain.flow import _bfs, _zero_flow_heights
    rng = np.random.default_rng(seed)
    L, T = 5, 4
    C = rng.random((L, T, T)) * (rng.random((L, T, T)) < 0.5)
    cup = np.ascontiguousarray(C[1:L - 1].transpose(0, 2, 1))
    ct = C[L - 1, 0, :]
    flow = cup * rng.random(cup.shape) * (rng.random(cup.shape) < 0.5)
    saturated = rng.random(cup.shape) < 0.3
    flow[saturated] = cup[saturated]
    ft = ct * (rng.random(T) < 0.5)
    M = L - 1
    for fl, f_top, got in [(np.zeros_like(cup), np.zeros(T), _zero_flow_heights(cup, ct, 1e-12)),
                           (flow, ft, _bfs(cup - flow > 1e-12, flow > 1e-12, ct - ft > 1e-12,
                                           M * T + 2))]:
        res = np.zeros((M * T + 1, M * T + 1))                 # node (m, k) = m * T + k
        for m in range(M - 1):
            for k in range(T):
                for i in range(T):
                    res[m * T + k, (m + 1) * T + i] = cup[m, k, i] - fl[m, k, i]
                    res[(m + 1) * T + i, m * T + k] = fl[m, k, i]
        res[(M - 1) * T:M * T, M * T] = ct - f_top
        expect = _bfs_reference(res, M * T)[:-1].reshape(M, T)
        expect[expect == np.inf] = M * T + 2
        assert np.array_equal(got, expect), (got, expect)
