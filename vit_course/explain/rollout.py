"""Attention rollout and its relatives as pure tensor functions: no hooks, no models.

Everything here takes per-layer attention tensors (as :func:`vit_course.explain.capture`
records them) and returns tensors, so each step can be checked on matrices worked out by
hand and recomputed cheaply from cached attentions (the slider explorer does exactly that).

Shapes: B batch, L layers, H heads (here *heads*, not pixels), T = P + N tokens with P
prefix tokens (1 class token; 2 for distilled DeiT) and N = h·w patches.

Definitions and how they differ from jacobgil/vit-explain (the reference code the course
seeds use):

- **Rollout** (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): each
  layer's attention is mixed with the identity for the residual connection, Ã_l = (A_l + I)
  with every row normalised to sum 1 (the paper's 0.5·A + 0.5·I, which is the same thing
  when the rows of A sum to 1), and the layers are chained from the input side up:
  R = Ã_{L-1} · … · Ã_{start_layer}. Row 0 of R says how much each input token flows into
  the class token at the top.
- vit-explain normalises with ``a / a.sum(dim=-1)`` **without** ``keepdim``: the (B, T)
  sums broadcast along the last axis, so column j is divided by the sum of row j and the
  rows no longer sum to 1. Here rows are normalised (``keepdim=True``).
- vit-explain's discard takes the lowest indices of every image (``topk`` over (B, T²)),
  flattens them into one list (``indices[indices != 0]``) and zeroes that list in batch
  element 0 only (``flat[0, indices] = 0``): image 0 loses the union of all images' lowest
  entries and every other image loses nothing. Here each image discards its *own* lowest
  entries. The [0, 0] (CLS→CLS) entry is never discarded, as vit-explain's rollout
  intends (its gradient rollout has that line commented out).
- vit-explain's gradient rollout records gradients with backward hooks, which fire from
  the last layer to the first, and zips that reversed list with the forward-ordered
  attentions, so A_l is weighted by the gradient of layer L-1-l. Here G_l = ∂y/∂A_l is
  paired with its own layer (the capture returns both in forward order). vit-explain
  also fuses gradient-weighted heads by mean only; all three fusions are offered here.
- vit-explain divides the final map by its maximum; the functions here return raw
  values and :func:`vit_course.explain.upsample` normalises for display when asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "HEAD_FUSIONS",
    "fuse_heads",
    "discard_lowest",
    "rollout_step",
    "rollout",
    "grad_rollout",
    "cls_row_to_grid",
    "attention_map",
    "attention_grid",
    "attention_entropy",
]

#: Ways to fuse the heads of one layer into one (T, T) matrix.
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


# ----------------------------------------------------------------------------- checks
def _check_fusion(mode: object) -> str:
    if not isinstance(mode, str) or mode not in HEAD_FUSIONS:
        raise ValueError(
            f"head_fusion must be one of {list(HEAD_FUSIONS)}, got {mode!r}; "
            "'mean' averages the heads (the default), 'max'/'min' take the largest/smallest "
            "value of any head."
        )
    return mode


def _check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"discard_ratio must be a float in [0, 1), got "
                        f"{type(ratio).__name__}: {ratio!r}")
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(
            f"discard_ratio must be in [0, 1), got {ratio}; it is the fraction of each "
            "fused attention matrix set to zero (0 keeps everything, 0.9 keeps the top 10 %). "
            "1.0 would discard everything, so it is not allowed."
        )
    return float(ratio)


def _check_attn(attn: object, name: str = "attn") -> Tensor:
    if not isinstance(attn, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, heads, T, T), "
                        f"got {type(attn).__name__}")
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"{name} must have shape (B, heads, T, T) with square (T, T) attention, got "
            f"{tuple(attn.shape)}; pass one layer of Capture.attentions (add a batch "
            "dimension with .unsqueeze(0) for a single image)."
        )
    return attn


def _check_layers(attentions: object, name: str = "attentions") -> list[Tensor]:
    if isinstance(attentions, Tensor) and attentions.ndim == 5:
        return list(attentions.unbind(0))
    if isinstance(attentions, Tensor) or not isinstance(attentions, Sequence) or not attentions:
        raise TypeError(
            f"{name} must be a non-empty list of per-layer tensors (B, heads, T, T) or one "
            f"stacked tensor (L, B, heads, T, T), got {type(attentions).__name__}"
            + (f" of shape {tuple(attentions.shape)}" if isinstance(attentions, Tensor) else "")
            + "; use Capture.attentions."
        )
    layers = [_check_attn(a, f"{name}[{i}]") for i, a in enumerate(attentions)]
    shape = layers[0].shape
    for i, a in enumerate(layers):
        if a.shape != shape:
            raise ValueError(f"all layers must have the same shape; {name}[0] is "
                             f"{tuple(shape)} but {name}[{i}] is {tuple(a.shape)}")
    return layers


def _check_layer_index(index: object, num_layers: int, name: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"{name} must be an int layer index, got {type(index).__name__}: "
                        f"{index!r}")
    if not -num_layers <= index < num_layers:
        raise ValueError(f"{name} must be in [{-num_layers}, {num_layers - 1}] for a model "
                         f"with {num_layers} layers, got {index}")
    return index % num_layers


# ----------------------------------------------------------------------------- steps
def fuse_heads(attn: Tensor, mode: str = "mean") -> Tensor:
    """Fuse the heads of one layer.

    Args:
        attn: one layer's attention (or attention⊙gradient) (B, heads, T, T); extra
            leading dimensions, e.g. stacked layers (L, B, heads, T, T), are kept.
        mode: ``"mean"``, ``"max"`` or ``"min"`` over heads. Default: ``"mean"``.

    Returns:
        (B, T, T) (or (L, B, T, T)).
    """
    mode = _check_fusion(mode)
    if not isinstance(attn, Tensor):
        raise TypeError(f"attn must be a torch.Tensor (B, heads, T, T), got "
                        f"{type(attn).__name__}")
    if attn.ndim not in (4, 5) or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"attn must have shape (B, heads, T, T) (or stacked (L, B, heads, T, T)) with "
            f"square (T, T) attention, got {tuple(attn.shape)}; pass one layer of "
            "Capture.attentions (add a batch dimension with .unsqueeze(0) for one image)."
        )
    if mode == "mean":
        return attn.mean(dim=-3)
    if mode == "max":
        return attn.amax(dim=-3)
    return attn.amin(dim=-3)


def discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Set each image's lowest ``ratio`` fraction of entries to zero, never the CLS→CLS one.

    For every image separately, ``floor(ratio · T²)`` entries are zeroed: the smallest ones
    among all entries except [0, 0] (vit-explain's intent; its code zeroes the lowest
    entries of *all* images in batch element 0 only). Ties at the threshold are broken by
    ``torch.topk``.

    Args:
        fused: fused attention (B, T, T); extra leading dimensions (e.g. layers,
            (L, B, T, T)) are allowed and every (T, T) matrix is treated on its own.
        ratio: fraction in [0, 1) to discard.

    Returns:
        a new tensor shaped like ``fused`` (the input is not modified); the input itself
        when nothing is discarded.
    """
    ratio = _check_ratio(ratio)
    if not isinstance(fused, Tensor) or fused.ndim < 3 or fused.shape[-1] != fused.shape[-2]:
        got = tuple(fused.shape) if isinstance(fused, Tensor) else type(fused).__name__
        raise ValueError(f"fused must have shape (B, T, T), got {got}; fuse the heads "
                         "first with fuse_heads().")
    T = fused.shape[-1]
    n = T * T
    k = int(ratio * n)                             # floor; at most n - 1 since ratio < 1
    if k == 0:
        return fused
    flat = fused.reshape(-1, n)                    # one row per (T, T) matrix
    ranking = flat.clone()
    if 2 * k <= n - 1:                             # zero the k lowest of the n - 1 others
        ranking[:, 0] = float("inf")               # entry [0, 0] is never among the lowest
        idx = ranking.topk(k, dim=1, largest=False, sorted=False).indices
        return flat.scatter(1, idx, 0.0).view(fused.shape)
    # Same set, cheaper for large ratios: keep the n - 1 - k highest others and [0, 0].
    ranking[:, 0] = float("-inf")
    keep = ranking.topk(n - 1 - k, dim=1, largest=True, sorted=False).indices
    out = torch.zeros_like(flat).scatter(1, keep, flat.gather(1, keep))
    out[:, 0] = flat[:, 0]
    return out.view(fused.shape)


def rollout_step(fused: Tensor, discard_ratio: float = 0.0) -> Tensor:
    """One layer's rollout matrix: discard, add the identity, normalise every row to 1.

    Ã = (D + I) / rowsum(D + I) where D is ``fused`` after :func:`discard_lowest`. With
    non-negative input every row of D + I sums to at least 1, so an all-zero matrix (e.g.
    after discarding 99 %) gives the identity, never NaN; a row that still sums to 0
    (only possible with negative input) is left at 0.

    Args:
        fused: fused attention (B, T, T), non-negative; extra leading dimensions (stacked
            layers (L, B, T, T)) are allowed.
        discard_ratio: fraction in [0, 1) to discard first. Default: 0.

    Returns:
        same shape as ``fused``, every row summing to 1.
    """
    a = discard_lowest(fused, discard_ratio)
    a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    sums = a.sum(dim=-1, keepdim=True)             # keepdim: divide rows, not columns
    return a / torch.where(sums == 0, torch.ones_like(sums), sums)


def _chain(steps: Tensor) -> Tensor:
    """R = Ã_last · … · Ã_first for stacked steps (L, B, T, T), input side first."""
    result = steps[0]
    for a in steps[1:]:
        result = a @ result                         # later layer on the left
    return result


def _chain_row(steps: Tensor, row: int = 0) -> Tensor:
    """Row ``row`` of the chained product, (B, T), as a vector-matrix chain from the top.

    Same value as ``_chain(steps)[:, row]`` without the T³ matrix products.
    """
    vec = steps[-1][:, row].unsqueeze(1)             # (B, 1, T)
    for a in steps[:-1].flip(0):
        vec = vec @ a                                # (B, 1, T) @ (B, T, T)
    return vec.squeeze(1)


def _fused_layers(attentions: Sequence[Tensor] | Tensor, head_fusion: str,
                  gradients: Sequence[Tensor] | Tensor | None = None) -> Tensor:
    """Every layer's fused matrix, stacked (L, B, T, T).

    Rollout: fuse(A_l). Gradient rollout: max(fuse(A_l ⊙ G_l), 0), with G_l paired with
    its own layer A_l (vit-explain pairs reversed lists). Layer by layer, so no stacked
    copy of the (much larger) per-head tensors is ever made.
    """
    head_fusion = _check_fusion(head_fusion)
    layers = _check_layers(attentions)
    if gradients is None:
        return torch.stack([fuse_heads(a, head_fusion) for a in layers])
    grads = _check_layers(gradients, "gradients")
    if len(grads) != len(layers) or grads[0].shape != layers[0].shape:
        raise ValueError(
            f"gradients must match attentions layer by layer: got {len(grads)} layers of "
            f"{tuple(grads[0].shape)} for {len(layers)} layers of {tuple(layers[0].shape)}; "
            "use Capture.gradients from capture(..., with_grad=True)."
        )
    return torch.stack([fuse_heads(a * g, head_fusion).clamp(min=0)
                        for a, g in zip(layers, grads)])


def _steps_from_fused(fused: Tensor, discard_ratio: float, start_layer: int) -> Tensor:
    """Ã for layers ``start_layer``.. from fused (L, B, T, T): stacked (L', B, T, T)."""
    discard_ratio = _check_ratio(discard_ratio)
    start = _check_layer_index(start_layer, fused.shape[0], "start_layer")
    return rollout_step(fused[start:], discard_ratio)


def _rollout_steps(attentions: Sequence[Tensor] | Tensor, head_fusion: str,
                   discard_ratio: float, start_layer: int,
                   gradients: Sequence[Tensor] | Tensor | None = None) -> Tensor:
    """Every layer's Ã from ``start_layer`` up, stacked (L', B, T, T)."""
    _check_fusion(head_fusion)
    _check_ratio(discard_ratio)
    layers = _check_layers(attentions)
    start = _check_layer_index(start_layer, len(layers), "start_layer")
    grads = None if gradients is None else _check_layers(gradients, "gradients")
    if grads is not None and len(grads) != len(layers):
        raise ValueError(f"gradients must match attentions layer by layer: got {len(grads)} "
                         f"layers for {len(layers)}; use Capture.gradients.")
    fused = _fused_layers(layers[start:], head_fusion, None if grads is None else grads[start:])
    return rollout_step(fused, discard_ratio)


# ----------------------------------------------------------------------------- rollouts
def rollout(attentions: Sequence[Tensor] | Tensor, head_fusion: str = "mean",
            discard_ratio: float = 0.0, start_layer: int = 0) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020), with vit-explain's fusion and discard.

    Per layer from ``start_layer`` up: fuse heads, discard the lowest ``discard_ratio``
    per image (never CLS→CLS), add I, normalise rows; then R = Ã_{L-1} · … · Ã_start.

    Args:
        attentions: per-layer post-softmax attention, input side first, each
            (B, heads, T, T) (or one stacked (L, B, heads, T, T) tensor).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"``. Default: ``"mean"``.
        discard_ratio: fraction in [0, 1) of each fused matrix set to 0. Default: 0.
        start_layer: first layer included (negative counts from the top). Default: 0.

    Returns:
        R (B, T, T); every row sums to 1. Row 0 is the class token's map
        (see :func:`cls_row_to_grid`).

    Example::

        R = rollout(cap.attentions, discard_ratio=0.9)          # (B, 197, 197)
        maps = cls_row_to_grid(R, cap.grid, cap.num_prefix_tokens)   # (B, 14, 14)
    """
    return _chain(_rollout_steps(attentions, head_fusion, discard_ratio, start_layer))


def grad_rollout(attentions: Sequence[Tensor] | Tensor, gradients: Sequence[Tensor] | Tensor,
                 head_fusion: str = "mean", discard_ratio: float = 0.0,
                 start_layer: int = 0) -> Tensor:
    """Gradient attention rollout (vit-explain's method with its layer pairing fixed).

    Per layer: fuse A_l ⊙ G_l over heads, where G_l = ∂y_c/∂A_l is the gradient of the
    target logit with respect to *that* layer's post-softmax attention; set negatives to 0;
    then discard / add I / normalise rows / multiply as in :func:`rollout`. Negatives are
    clamped after the head fusion, as in vit-explain (Chefer et al.'s generic attention
    explanation clamps each head before averaging: a different method).

    Args:
        attentions: per-layer attention, input side first, each (B, heads, T, T).
        gradients: ∂y/∂A_l in the same order and shapes (``Capture.gradients``).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"``. Default: ``"mean"``.
        discard_ratio: fraction in [0, 1) of each fused matrix set to 0. Default: 0.
        start_layer: first layer included. Default: 0.

    Returns:
        R (B, T, T); every row sums to 1.
    """
    return _chain(_rollout_steps(attentions, head_fusion, discard_ratio, start_layer,
                                 gradients))


def _rollout_cls(attentions: Sequence[Tensor] | Tensor,
                 gradients: Sequence[Tensor] | Tensor | None = None,
                 head_fusion: str = "mean", discard_ratio: float = 0.0,
                 start_layer: int = 0) -> Tensor:
    """Row 0 of :func:`rollout` (or :func:`grad_rollout` with ``gradients``), (B, T).

    The same numbers without the T³ matrix products.
    """
    steps = _rollout_steps(attentions, head_fusion, discard_ratio, start_layer, gradients)
    return _chain_row(steps, row=0)


def _rollout_cls_from_fused(fused: Tensor, discard_ratio: float = 0.0,
                            start_layer: int = 0) -> Tensor:
    """Row 0 of the rollout from already fused layers (L, B, T, T) (see ``_fused_layers``).

    The explainers cache the fused layers, so a discard-ratio or start-layer change costs
    only the discard, the normalisation and a vector-matrix chain.
    """
    return _chain_row(_steps_from_fused(fused, discard_ratio, start_layer), row=0)


# ----------------------------------------------------------------------------- readout
def cls_row_to_grid(R: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Read the class token's row and lay the patch columns out on the patch grid.

    Args:
        R: a (B, T, T) token-to-token matrix (row 0 is read) or (B, T) rows already read.
        grid: patch grid (h, w) from the model (``Capture.grid``), not guessed from √N.
        num_prefix_tokens: P, the leading non-patch tokens to drop (1; 2 for distilled
            DeiT). Default: 1.

    Returns:
        (B, h, w).
    """
    if not isinstance(R, Tensor) or R.ndim not in (2, 3):
        got = tuple(R.shape) if isinstance(R, Tensor) else type(R).__name__
        raise ValueError(f"R must be (B, T, T) or (B, T), got {got}")
    row = R[:, 0] if R.ndim == 3 else R
    h, w = (int(g) for g in grid)
    if num_prefix_tokens < 1 or row.shape[-1] != num_prefix_tokens + h * w:
        raise ValueError(
            f"R has {row.shape[-1]} tokens but grid {(h, w)} with {num_prefix_tokens} prefix "
            f"token(s) needs {num_prefix_tokens + h * w} (and at least one prefix token to "
            "read); pass Capture.grid and Capture.num_prefix_tokens from the same capture."
        )
    return row[:, num_prefix_tokens:].reshape(row.shape[0], h, w)


# ----------------------------------------------------------------------------- raw attention
def attention_map(attentions: Sequence[Tensor] | Tensor, layer: int = -1,
                  head: int | None = None, head_fusion: str = "mean") -> Tensor:
    """Raw attention of one layer: one head, or the heads fused.

    Args:
        attentions: per-layer attention, each (B, heads, T, T).
        layer: layer index; negative counts from the top. Default: -1 (last layer).
        head: one head's index, or ``None`` to fuse all heads. Default: ``None``.
        head_fusion: fusion when ``head`` is ``None``. Default: ``"mean"``.

    Returns:
        (B, T, T).
    """
    layers = _check_layers(attentions)
    attn = layers[_check_layer_index(layer, len(layers), "layer")]
    if head is None:
        return fuse_heads(attn, head_fusion)
    H = attn.shape[1]
    if isinstance(head, bool) or not isinstance(head, int) or not -H <= head < H:
        raise ValueError(f"head must be None (fuse all heads) or an int in [{-H}, {H - 1}] "
                         f"for {H} heads, got {head!r}")
    return attn[:, head]


def attention_grid(attentions: Sequence[Tensor] | Tensor, grid: tuple[int, int],
                   num_prefix_tokens: int = 1) -> Tensor:
    """Every layer's and every head's class-token attention on the patch grid.

    Args:
        attentions: per-layer attention, each (B, heads, T, T).
        grid: patch grid (h, w). num_prefix_tokens: P. Default: 1.

    Returns:
        (B, L, heads, h, w); ``[b, l, k]`` is image b's CLS row of layer l, head k.
    """
    layers = _check_layers(attentions)
    B, H, T, _ = layers[0].shape
    rows = torch.stack([a[:, :, 0] for a in layers], dim=1)      # (B, L, H, T)
    maps = cls_row_to_grid(rows.reshape(-1, T), grid, num_prefix_tokens)
    return maps.reshape(B, len(layers), H, *maps.shape[-2:])


def attention_entropy(maps: Tensor) -> Tensor:
    """Normalised entropy of each map: 0 = all mass on one patch, 1 = spread evenly.

    Each map is divided by its sum and treated as a distribution p over its N cells;
    the result is -Σ p log p / log N. Sort images by it to find the most focused ones.
    An all-zero map has no focus and counts as spread (1.0).

    Args:
        maps: non-negative maps (B, h, w) (any trailing shape; all but dim 0 are cells).

    Returns:
        (B,) in [0, 1].
    """
    if not isinstance(maps, Tensor) or maps.ndim < 2:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a tensor (B, h, w) of non-negative maps, got {got}")
    flat = maps.reshape(maps.shape[0], -1).double()
    if (flat < 0).any():
        raise ValueError("attention_entropy needs non-negative maps (attention, rollout); got "
                         f"a minimum of {flat.min().item():.3g}; clamp or shift signed maps first.")
    N = flat.shape[1]
    total = flat.sum(dim=1, keepdim=True)
    p = torch.where(total > 0, flat / total.clamp(min=torch.finfo(flat.dtype).tiny),
                    torch.full_like(flat, 1.0 / N))
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=1)
    out = ent / torch.log(torch.tensor(float(N), dtype=ent.dtype)) if N > 1 else ent * 0
    return out.clamp(0, 1).to(maps.dtype if maps.is_floating_point() else torch.float32)
