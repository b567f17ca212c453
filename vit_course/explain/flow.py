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
sink in the residual graph, by a breadth-first search one level at a time, with boolean
matrix–vector products on residual masks that the pushes keep up to date). The labels at
zero flow do not depend on the source, so they are computed once for all sources. Only
the first phase runs (flow *value*, not a flow decomposition): it stops when no node
below the top that can still reach the sink holds excess, or when the flow reaches
min(capacity out of the source, capacity into the sink). Capacities are float64;
residuals and excesses below ``tol`` (1e-12) count as zero, so values are exact up to
about 1e-9. Tests check it against Edmonds–Karp (Ford–Fulkerson with shortest augmenting
paths) and against enumeration of every cut on small graphs.

Cost: one max-flow per patch. On the course machine (2 shared CPU cores, not idle)
ViT-B/16 (12 layers, 197 tokens) takes about 4–6 s of CPU time per image (10–13 s
before the breadth-first relabelling); see docs/BENCHMARKS.md. The authors'
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
    ``cup[m][k, i]``: (m, k) → (m + 1, i), ``cupT[m]`` its transpose; ``ct[k]``:
    (M - 1, k) → sink. ``height0``: the distance labels at zero flow (they do not depend
    on the source), from :func:`_zero_flow_heights`.
    """

    def __init__(self, cs: np.ndarray, cup: np.ndarray, cupT: np.ndarray, ct: np.ndarray,
                 tol: float, max_sweeps: int, height0: np.ndarray):
        self.cs, self.cup, self.cupT, self.ct, self.tol = cs, cup, cupT, ct, tol
        self.M = cup.shape[0] + 1
        self.T = cs.shape[0]
        self.INF = self.M * self.T + 2           # more than any finite distance
        self.max_sweeps = max_sweeps
        self.height0 = height0

    def run(self) -> float:
        M, T, tol = self.M, self.T, self.tol
        self.flow = np.zeros_like(self.cup)      # flow[m][k, i]: (m, k) → (m + 1, i)
        self.up = self.cup > tol                 # (M-1, k, i): cup - flow > tol, kept current
        self.down = np.zeros(self.cup.shape, dtype=bool)     # (M-1, k, i): flow > tol
        self.ft = np.zeros(T)                    # (M - 1, k) → sink
        self.excess = np.zeros((M, T))
        self.excess[0] = self.cs                 # the source saturates its edges
        bound = min(float(self.cs.sum()), float(self.ct.sum())) - 1e-12
        sweeps = 0
        self.height = self.height0.copy()
        while self.ft.sum() < bound:
            if sweeps:
                self.height = self._distances()
            if not ((self.excess > tol) & (self.height < self.INF)).any():
                break
            for _ in range(8):                   # sweeps between global relabels
                sweeps += 1
                if sweeps > self.max_sweeps:
                    raise RuntimeError(f"max-flow did not converge in {self.max_sweeps} "
                                       "sweeps; please report this attention input.")
                moved = False
                order = range(M) if sweeps % 2 else range(M - 1, -1, -1)
                for m in order:
                    moved |= self._discharge(m)
                if not moved or self.ft.sum() >= bound:
                    break
        return float(self.ft.sum())

    def _distances(self) -> np.ndarray:
        """Exact distance (in edges) of every node to the sink in the residual graph, (M, T).

        Breadth-first from the sink, one level at a time, on the residual masks.
        """
        return _bfs(self.up, self.down, self.ct - self.ft > self.tol, self.INF)

    def _discharge(self, m: int) -> bool:
        """Push from every active node of inner layer m at once, then relabel."""
        M, INF, tol = self.M, self.INF, self.tol
        flow, excess, height = self.flow, self.excess, self.height
        act = np.nonzero((excess[m] > tol) & (height[m] < INF))[0]
        if act.size == 0:
            return False
        ex = excess[m, act]
        h = height[m, act]
        if m == M - 1:                           # up: to the sink (height 0)
            r = np.where(h == 1, self.ct[act] - self.ft[act], 0.0)
            p = np.minimum(ex, np.where(r > tol, r, 0.0))
            self.ft[act] += p
            ex = ex - p
        else:                                    # up: to layer m + 1, greedily
            f = flow[m][act]                                           # (a, T)
            c = self.cup[m][act]
            ok = height[m + 1][None, :] == (h - 1)[:, None]
            ok &= self.up[m][act]
            p = _fill(ex, (c - f) * ok)
            f += p
            flow[m][act] = f
            self.up[m][act] = (c - f) > tol
            self.down[m][act] = f > tol
            excess[m + 1] += p.sum(axis=0)
            ex = ex - p.sum(axis=1)
        if m > 0:                                # down: undo flow that came from layer m-1
            f = flow[m - 1][:, act].T                                  # (a, T)
            ok = height[m - 1][None, :] == (h - 1)[:, None]
            ok &= self.down[m - 1][:, act].T
            p = _fill(ex, f * ok)
            f -= p
            flow[m - 1][:, act] = f.T
            self.up[m - 1][:, act] = (self.cupT[m - 1][act] - f).T > tol
            self.down[m - 1][:, act] = f.T > tol
            excess[m - 1] += p.sum(axis=0)
            ex = ex - p.sum(axis=1)
        excess[m, act] = ex
        stuck = ex > tol
        if stuck.any():                          # relabel: 1 + lowest residual neighbour
            nodes = act[stuck]
            if m == M - 1:
                up = np.where(self.ct[nodes] - self.ft[nodes] > tol, 0, INF)
            else:
                up = np.where(self.up[m][nodes], height[m + 1][None, :], INF).min(axis=1)
            if m > 0:
                down = np.where(self.down[m - 1][:, nodes].T, height[m - 1][None, :],
                                INF).min(axis=1)
            else:
                down = np.full(nodes.size, INF)
            new = np.minimum(np.minimum(up, down) + 1, INF)
            height[m, nodes] = np.maximum(new, height[m, nodes])
        return True


def _bfs(up: np.ndarray, down: np.ndarray, to_sink: np.ndarray, INF: int) -> np.ndarray:
    """Distances to the sink, (M, T) int64, INF where unreachable, from the residual masks.

    ``up[m][k, i]``: arc (m, k) → (m + 1, i); ``down[m][k, i]``: arc (m + 1, i) → (m, k);
    ``to_sink[k]``: arc (M - 1, k) → sink. Level by level; only layers holding nodes of
    the current level are expanded (boolean matrix–vector products).
    """
    M, T = up.shape[0] + 1, up.shape[1]
    d = np.full((M, T), INF, dtype=np.int64)
    front = np.zeros((M, T), dtype=bool)
    front[M - 1] = to_sink
    seen = front.copy()
    layers = [M - 1] if to_sink.any() else []
    level = 1
    while layers:
        for m in layers:
            d[m, front[m]] = level
        level += 1
        new = np.zeros((M, T), dtype=bool)
        for m in layers:
            if m > 0:                            # (m-1, k) reaches (m, i) along a residual arc
                new[m - 1] |= up[m - 1] @ front[m]
            if m < M - 1:                        # (m+1, i) reaches (m, k) back along flow
                new[m + 1] |= front[m] @ down[m]
        new &= ~seen
        seen |= new
        front = new
        layers = [m for m in range(M) if front[m].any()]
    return d


def _zero_flow_heights(cup: np.ndarray, ct: np.ndarray, tol: float) -> np.ndarray:
    """Distance labels (M, T) before any flow: the same for every source."""
    M, T = cup.shape[0] + 1, ct.shape[0]
    return _bfs(cup > tol, np.zeros(cup.shape, dtype=bool), ct > tol, M * T + 2)


def _fill(excess: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Greedy pushes (a, T): each node's ``excess`` (a,) fills its arcs ``r`` (a, T) in order."""
    p = np.empty_like(r)                         # torch.cumsum: as np.cumsum, but faster;
    step = max(1, 16384 // r.shape[1])           # blocks below its grain size stay 1-thread
    for i in range(0, r.shape[0], step):
        torch.cumsum(torch.from_numpy(r[i:i + step]), dim=1, out=torch.from_numpy(p[i:i + step]))
    p -= r                                       # capacity of the arcs before each arc
    np.subtract(excess[:, None], p, out=p)
    np.maximum(p, 0.0, out=p)
    return np.minimum(p, r, out=p)


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
    cupT = np.ascontiguousarray(C[1:L - 1])                       # (L-2, i, k)
    ct = np.ascontiguousarray(C[L - 1, sink, :])
    height0 = _zero_flow_heights(cup, ct, tol)
    out = np.empty(len(srcs), dtype=np.float64)
    for n, s in enumerate(srcs):
        cs = np.ascontiguousarray(C[0, :, s])
        out[n] = _LayeredFlow(cs, cup, cupT, ct, tol, max_sweeps, height0).run()
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
    forward pass, then one max-flow per patch on the CPU (slow for ViT-B/16: several
    seconds per image; see docs/BENCHMARKS.md). Works from a Capture (no forward pass).
    """

    def compute(self, cap: Capture, target: object) -> Tensor:
        return attention_flow(cap.attentions, cap.num_prefix_tokens)
