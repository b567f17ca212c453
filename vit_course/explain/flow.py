"""Attention flow (Abnar & Zuidema 2020) with an exact max-flow solver in NumPy.

"Quantifying Attention Flow in Transformers" treats the network as a layered graph: a
node for every token at every layer boundary (L + 1 copies of the T tokens), and an edge
from token j below layer l to token i above it with capacity Ã_l[i, j], where

    Ã_l = 0.5 · mean_heads(A_l) + 0.5 · I,  every row normalised to sum 1

(the residual connection counted as much as attention, as in the paper). The attention
flow of input token j is the value of a maximum flow from node (0, j) to the class token
at the top, node (L, 0). Rollout (:func:`vit_course.explain.rollout.rollout`) multiplies
the same matrices, i.e. it adds up *all* paths; flow instead respects that every edge can
carry only its capacity, so mass routed along one path is not available to another.

Values: the CLS node receives capacity 1 in total (its row of Ã_{L-1}), so every flow
lies in [0, 1]; this module returns the raw values. (The authors' code,
samiraabnar/attention_flow ``attention_graph_util.py`` ``compute_flows()`` and
``compute_node_flow()``, divides each output node's flows by their sum over input tokens,
class token included — a per-image factor that does not change the map's shape.)

Solver: :func:`max_flow_layered` is push–relabel (Goldberg & Tarjan 1988), written for
the layered structure: edges only join consecutive layers, so all active nodes of one
layer can push at once (their edges are disjoint) with whole-row NumPy operations, and
exact distance labels are recomputed regularly ("global relabelling": distances to the
sink in the residual graph, by relaxation sweeps over the layers). Only the first phase
runs (flow *value*, not a flow decomposition): it stops when no node below the top that
can still reach the sink holds excess, or when the flow reaches min(capacity out of the
source, capacity into the sink). Capacities are float64; residuals and excesses below ``tol`` (1e-12) count as
zero, so values are exact up to about 1e-9. Tests check it against Edmonds–Karp
(Ford–Fulkerson with shortest augmenting paths) and against enumeration of every cut on
small graphs.

Cost: one max-flow per patch. On the course machine (2 shared CPU cores) ViT-B/16
(12 layers, 197 tokens) takes 10–20 s per image; see docs/BENCHMARKS.md. The authors'
code calls networkx's ``maximum_flow_value`` with Edmonds–Karp once per (output node,
input token) pair; the course does not need networkx.

Shapes: B batch, L layers, H heads, T = P + N tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np
import torch
from torch import Tensor

from ..checks import check_attentions
from .capture import Capture
from .methods import Explainer, register_method


#: Residuals and excesses below this count as zero (capacities are at most 1).
TOL = 1e-12


def flow_matrices(attentions: Sequence[Tensor]) -> Tensor:
    """The paper's residual-augmented, row-normalised attention per layer.

    Args:
        attentions: per-layer attention, input side first, each (B, H, T, T).

    Returns:
        (B, L, T, T) float64 with Ã_l = row-normalised(0.5 · mean_heads(A_l) + 0.5 · I).
    """
    layers = check_attentions(attentions)
    fused = torch.stack([a.detach().double().mean(dim=1) for a in layers], dim=1)
    T = fused.shape[-1]
    mixed = 0.5 * fused + 0.5 * torch.eye(T, dtype=torch.float64, device=fused.device)
    return mixed / mixed.sum(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- solver
class _LayeredFlow:
    """Push–relabel for one source on a layered graph (see the module docstring).

    Inner layers m = 0..M-1 are the graph's layers 1..L-1 (the source's layer 0 holds only
    the source, the sink's layer L only the sink). ``cs[k]``: source → (0, k);
    ``cup[m][k, i]``: (m, k) → (m + 1, i); ``ct[k]``: (M - 1, k) → sink.
    """

    def __init__(self, cs: np.ndarray, cup: np.ndarray, ct: np.ndarray, tol: float,
                 max_sweeps: int):
        self.cs, self.cup, self.ct, self.tol = cs, cup, ct, tol
        self.M = cup.shape[0] + 1
        self.T = cs.shape[0]
        self.INF = self.M * self.T + 2           # more than any finite distance
        self.max_sweeps = max_sweeps

    def run(self) -> float:
        M, T, tol = self.M, self.T, self.tol
        cup, ct = self.cup, self.ct
        flow = np.zeros_like(cup)                # flow[m][k, i]: (m, k) → (m + 1, i)
        ft = np.zeros(T)                         # (M - 1, k) → sink
        excess = np.zeros((M, T))
        excess[0] = self.cs                      # the source saturates its edges
        bound = min(float(self.cs.sum()), float(ct.sum())) - 1e-12
        sweeps = 0
        while ft.sum() < bound:
            height = self._distances(flow, ft)
            if not ((excess > tol) & (height < self.INF)).any():
                break
            for _ in range(8):                   # sweeps between global relabels
                sweeps += 1
                if sweeps > self.max_sweeps:
                    raise RuntimeError(f"max-flow did not converge in {self.max_sweeps} "
                                       "sweeps; please report this attention input.")
                moved = False
                order = range(M) if sweeps % 2 else range(M - 1, -1, -1)
                for m in order:
                    moved |= self._discharge(m, flow, ft, excess, height)
                if not moved or ft.sum() >= bound:
                    break
        return float(ft.sum())

    def _distances(self, flow: np.ndarray, ft: np.ndarray) -> np.ndarray:
        """Exact distance (in edges) of every node to the sink in the residual graph."""
        M, T, INF, tol = self.M, self.T, self.INF, self.tol
        d = np.full((M, T), INF, dtype=np.int64)
        d[M - 1][self.ct - ft > tol] = 1
        up = [(self.cup[m] - flow[m]) > tol for m in range(M - 1)]    # (k, i) residual up
        down = [flow[m] > tol for m in range(M - 1)]                  # (k, i): i → k back
        changed = True
        while changed:
            changed = False
            for m in range(M - 2, -1, -1):       # (m, k) → (m + 1, i) along residual up
                cand = np.where(up[m], d[m + 1][None, :], INF).min(axis=1) + 1
                if (cand < d[m]).any():
                    d[m] = np.minimum(d[m], cand)
                    changed = True
            for m in range(M - 1):               # (m + 1, i) → (m, k) along flow
                cand = np.where(down[m], d[m][:, None], INF).min(axis=0) + 1
                if (cand < d[m + 1]).any():
                    d[m + 1] = np.minimum(d[m + 1], cand)
                    changed = True
        return np.minimum(d, INF)

    def _discharge(self, m: int, flow: np.ndarray, ft: np.ndarray, excess: np.ndarray,
                   height: np.ndarray) -> bool:
        """Push from every active node of inner layer m at once, then relabel."""
        M, INF, tol = self.M, self.INF, self.tol
        act = np.flatnonzero((excess[m] > tol) & (height[m] < INF))
        if act.size == 0:
            return False
        ex = excess[m, act]
        h = height[m, act]
        if m == M - 1:                           # up: to the sink (height 0)
            r = np.where(h == 1, self.ct[act] - ft[act], 0.0)
            p = np.clip(r, 0.0, None)
            p = np.minimum(ex, np.where(p > tol, p, 0.0))
            ft[act] += p
            ex = ex - p
        else:                                    # up: to layer m + 1, greedily
            f = flow[m][act]                                           # (a, T)
            r = self.cup[m][act]
            r -= f
            ok = height[m + 1][None, :] == (h - 1)[:, None]
            ok &= r > tol
            r *= ok
            p = _fill(ex, r, axis=1)
            f += p
            flow[m][act] = f
            excess[m + 1] += p.sum(axis=0)
            ex = ex - p.sum(axis=1)
        if m > 0:                                # down: undo flow that came from layer m-1
            f = flow[m - 1][:, act]                                    # (T, a)
            ok = height[m - 1][:, None] == (h - 1)[None, :]
            ok &= f > tol
            p = _fill(ex, f * ok, axis=0)
            f -= p
            flow[m - 1][:, act] = f
            excess[m - 1] += p.sum(axis=1)
            ex = ex - p.sum(axis=0)
        excess[m, act] = ex
        stuck = ex > tol
        if stuck.any():                          # relabel: 1 + lowest residual neighbour
            nodes = act[stuck]
            if m == M - 1:
                up = np.where(self.ct[nodes] - ft[nodes] > tol, 0, INF)
            else:
                resid = (self.cup[m][nodes] - flow[m][nodes]) > tol
                up = np.where(resid, height[m + 1][None, :], INF).min(axis=1)
            if m > 0:
                down = np.where(flow[m - 1][:, nodes] > tol, height[m - 1][:, None],
                                INF).min(axis=0)
            else:
                down = np.full(nodes.size, INF)
            new = np.minimum(np.minimum(up, down) + 1, INF)
            height[m, nodes] = np.maximum(new, height[m, nodes])
        return True


def _fill(excess: np.ndarray, r: np.ndarray, axis: int) -> np.ndarray:
    """Greedy pushes: each node's ``excess`` fills its arcs ``r`` (along ``axis``) in order."""
    p = np.cumsum(r, axis=axis)
    p -= r                                       # capacity of the arcs before each arc
    np.subtract(np.expand_dims(excess, axis), p, out=p)
    return np.clip(p, 0.0, r, out=p)


def max_flow_layered(capacities: np.ndarray | Tensor, sources: Sequence[int] | None = None,
                     sink: int = 0, tol: float = TOL, max_sweeps: int = 100_000
                     ) -> np.ndarray:
    """Maximum flow from input tokens to one output token through a layered graph.

    Nodes are (layer, token) for layers 0..L; the edge (l, j) → (l + 1, i) has capacity
    ``capacities[l, i, j]`` (row i of a layer's matrix lists the capacities *into* token
    i, as attention rows do).

    Args:
        capacities: (L, T, T), non-negative, finite.
        sources: tokens j at layer 0 to compute (one max-flow each). Default: all T.
        sink: the token at layer L. Default: 0 (the class token).
        tol: residuals and excesses below it count as zero. Default: 1e-12.
        max_sweeps: safety limit on push sweeps per source. Default: 100 000.

    Returns:
        (len(sources),) float64 max-flow values.

    Raises:
        ValueError: bad shapes, negative or non-finite capacities, token out of range.
    """
    C = capacities.detach().cpu().double().numpy() if isinstance(capacities, Tensor) \
        else np.asarray(capacities, dtype=np.float64)
    if C.ndim != 3 or C.shape[1] != C.shape[2] or C.shape[0] < 1:
        raise ValueError(f"capacities must be (L, T, T) with L >= 1, got shape {C.shape}")
    if not np.isfinite(C).all() or (C < 0).any():
        raise ValueError("capacities must be finite and non-negative")
    L, T, _ = C.shape
    srcs = list(range(T)) if sources is None else [int(s) for s in sources]
    for tok, name in [(s, "source") for s in srcs] + [(sink, "sink")]:
        if not 0 <= tok < T:
            raise ValueError(f"{name} token {tok} is out of range for T = {T} tokens")
    if L == 1:                                   # one edge from each source to the sink
        return np.array([C[0, sink, s] for s in srcs], dtype=np.float64)
    cup = np.ascontiguousarray(C[1:L - 1].transpose(0, 2, 1))    # (L-2, k, i): lower → upper
    ct = np.ascontiguousarray(C[L - 1, sink, :])
    out = np.empty(len(srcs), dtype=np.float64)
    for n, s in enumerate(srcs):
        cs = np.ascontiguousarray(C[0, :, s])
        out[n] = _LayeredFlow(cs, cup, ct, tol, max_sweeps).run()
    return out


def attention_flow(attentions: Sequence[Tensor], num_prefix_tokens: int = 1) -> Tensor:
    """Attention flow from every patch token to the class token at the top.

    Args:
        attentions: per-layer attention, input side first, each (B, H, T, T).
        num_prefix_tokens: P; prefix tokens are not computed (their entries are 0).
            Default: 1.

    Returns:
        (B, T) float32 (same device as the input): entry j is the max-flow value from
        input token j to the output class token, in [0, 1].
    """
    mats = flow_matrices(attentions)             # (B, L, T, T) float64
    B, _, T, _ = mats.shape
    P = int(num_prefix_tokens)
    if not 1 <= P < T:
        raise ValueError(f"num_prefix_tokens must be in [1, {T - 1}], got {num_prefix_tokens}")
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        out[b, P:] = torch.from_numpy(max_flow_layered(mats[b].cpu().numpy(),
                                                       range(P, T), sink=0))
    return out.to(dtype=attentions[0].dtype if attentions[0].is_floating_point()
                  else torch.float32, device=attentions[0].device)


@register_method("attention_flow")
class AttentionFlow(Explainer):
    """Attention flow (Abnar & Zuidema 2020): max-flow from each patch to the class token.

    No options. Class-agnostic: ``target`` is checked but does not change the map. One
    forward pass, then one max-flow per patch on the CPU (slow for ViT-B/16: tens of
    seconds per image; see docs/BENCHMARKS.md). Works from a Capture (no forward pass).
    """

    def compute(self, cap: Capture, target: object) -> Tensor:
        return attention_flow(cap.attentions, cap.num_prefix_tokens)
