"""Attention rollout and its relatives as pure tensor functions: no hooks, no models.

Everything here takes per-layer attention tensors (as :func:`vit_course.explain.capture`
records them) and returns tensors, so each step can be checked on matrices worked out by
hand and recomputed cheaply from cached attentions (the slider explorer does exactly that).

Shapes: B batch, L layers, H heads (here *heads*, not pixels), T = P + N tokens with P
prefix tokens (1 class token; 2 for distilled DeiT) and N = h·w patches.

The steps, each defined once and in this order: :func:`fuse_heads` (step 1),
:func:`discard_lowest` (step 2, per image), :func:`rollout_step` (step 3: add the residual
identity and normalise rows), :func:`chain_layers` (step 4: multiply the layers) and
:func:`cls_row_to_grid` (step 5: read the class token's row). :func:`rollout` and
:func:`grad_rollout` compose them; argument checks live in :mod:`vit_course.checks`.

Definitions and how they differ from jacobgil/vit-explain (the reference code the course
seeds use; ``vit_rollout.py`` ``rollout()`` and ``vit_grad_rollout.py`` ``grad_rollout()``,
restated on small tensors in ``tests/explain/test_rollout.py``):

- **Rollout** (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"):
  each layer's attention is mixed with the identity for the residual connection,
  Ã_l = (A_l + I) with every row normalised to sum 1 (the paper's 0.5·A + 0.5·I, which is
  the same thing when the rows of A sum to 1; the authors' samiraabnar/attention_flow
  ``attention_graph_util.py`` ``compute_joint_attention()`` also adds I and divides each
  row by its sum), and the layers are chained from the input side up:
  R = Ã_{L-1} · … · Ã_{start_layer}. Row 0 of R says how much each input token flows into
  the class token at the top.
- vit-explain (both functions) normalises with ``a / a.sum(dim=-1)`` **without**
  ``keepdim``: the (B, T) sums broadcast along the last axis, so for one image column j
  is divided by the sum of row j and the rows no longer sum to 1 (for B > 1 the shapes
  only broadcast when B = T). Here rows are normalised (``keepdim=True``).
- vit-explain's discard (``rollout()``) takes the lowest indices of every image (``topk``
  over (B, T²)), flattens them into one list (``indices[indices != 0]``) and zeroes that
  list in batch element 0 only (``flat[0, indices] = 0``; ``flat`` is a view of the fused
  attention): image 0 loses the union of all images' lowest entries and every other image
  loses nothing. Here each image discards its *own* lowest entries. The [0, 0] (CLS→CLS)
  entry is never discarded: ``rollout()`` drops flat index 0 from the list under the
  comment "don't drop the class token"; ``grad_rollout()`` has that line commented out, so
  there [0, 0] can be zeroed. (When [0, 0] is among the lowest, ``rollout()`` zeroes one
  entry fewer than ``floor(ratio · T²)``; here the next-lowest entry goes instead.)
- vit-explain's gradient rollout (``VITAttentionGradRollout``) records gradients with
  ``register_backward_hook`` on every ``attn_drop`` module, whose calls come from the last
  layer to the first, and ``grad_rollout()`` zips that reversed list with the
  forward-ordered attentions, so A_l is weighted by the gradient of layer L-1-l. Here
  G_l = ∂y/∂A_l is paired with its own layer (the capture returns both in forward order).
  vit-explain also fuses gradient-weighted heads by mean only
  (``(attention*weights).mean(axis=1)``); all three fusions are offered here.
- vit-explain divides the final map by its maximum (``mask / np.max(mask)``); the
  functions here return raw values and :func:`vit_course.explain.upsample` normalises for
  display when asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..checks import check_attentions, check_fusion, check_gradients, check_head_index, \
    check_layer_index, check_ratio


def _shape_or_type(x: object) -> object:
    """What an error message says a wrong argument was: its shape, or its type's name."""
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


# ----------------------------------------------------------------------------- the steps
def fuse_heads(attn: Tensor, mode: str = "mean") -> Tensor:
    """Step 1: fuse the heads of one layer.

    Args:
        attn: one layer's attention (or attention⊙gradient) (B, heads, T, T); extra
            leading dimensions, e.g. stacked layers (L, B, heads, T, T), are kept.
        mode: ``"mean"``, ``"max"`` or ``"min"`` over heads. Default: ``"mean"``.

    Returns:
        (B, T, T) (or (L, B, T, T)).
    """
    mode = check_fusion(mode)
    if not isinstance(attn, Tensor) or attn.ndim not in (4, 5) \
            or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"attn must have shape (B, heads, T, T) (or stacked (L, B, heads, T, T)) with "
            f"square (T, T) attention, got {_shape_or_type(attn)}; pass one layer of "
            "Capture.attentions (add a batch dimension with .unsqueeze(0) for one image).")
    return _fuse(attn, mode)


def _fuse(attn: Tensor, mode: str) -> Tensor:
    return {"mean": attn.mean, "max": attn.amax, "min": attn.amin}[mode](dim=-3)


def discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Step 2: set each image's lowest ``ratio`` fraction of entries to zero, never CLS→CLS.

    For every image separately, ``floor(ratio · T²)`` entries are zeroed: the smallest ones
    among all entries except [0, 0] (what the comment "don't drop the class token" in
    jacobgil/vit-explain ``vit_rollout.py`` ``rollout()`` asks for; that code zeroes the
    lowest entries of *all* images in batch element 0 only). Ties at the threshold are
    broken by the selection (``numpy.argpartition`` on the CPU, ``torch.topk`` elsewhere).

    Args:
        fused: fused attention (B, T, T); extra leading dimensions (e.g. layers,
            (L, B, T, T)) are allowed and every (T, T) matrix is treated on its own.
        ratio: fraction in [0, 1) to discard.

    Returns:
        a new tensor shaped like ``fused`` (the input is not modified); the input itself
        when nothing is discarded.
    """
    ratio = check_ratio(ratio)
    if not isinstance(fused, Tensor) or fused.ndim < 3 or fused.shape[-1] != fused.shape[-2]:
        raise ValueError(f"fused must have shape (B, T, T), got {_shape_or_type(fused)}; "
                         "fuse the heads first with fuse_heads().")
    return _discard(fused, ratio)


#: Select the lowest entries with ``numpy.argpartition`` for CPU tensors (tests switch it off
#: to check the ``torch.topk`` path that other devices take).
NUMPY_SELECTION = True


def _discard(fused: Tensor, ratio: float) -> Tensor:
    T = fused.shape[-1]
    n = T * T
    k = int(ratio * n)                             # floor; at most n - 1 since ratio < 1
    if k == 0:
        return fused
    flat = fused.reshape(-1, n)                    # one row per (T, T) matrix
    ranking = flat.detach().clone()
    ranking[:, 0] = float("inf")                   # entry [0, 0] is never among the lowest
    if flat.device.type == "cpu" and NUMPY_SELECTION:    # ~7× torch.topk's speed on a CPU
        exact = torch.float64 if flat.dtype == torch.float64 else torch.float32
        lowest = np.argpartition(ranking.to(exact).numpy(), k - 1, axis=1)[:, :k]
        drop = np.zeros(flat.shape, dtype=bool)
        np.put_along_axis(drop, lowest, True, axis=1)
        drop = torch.from_numpy(drop)
    elif 2 * k <= n - 1:                           # the k lowest
        lowest = ranking.topk(k, dim=1, largest=False, sorted=False).indices
        drop = torch.zeros_like(flat, dtype=torch.bool).scatter(1, lowest, True)
    else:                                          # the same set: all but the n - k highest
        keep = ranking.topk(n - k, dim=1, largest=True, sorted=False).indices
        drop = torch.ones_like(flat, dtype=torch.bool).scatter(1, keep, False)
    return flat.masked_fill(drop, 0.0).view(fused.shape)


def rollout_step(fused: Tensor, discard_ratio: float = 0.0) -> Tensor:
    """Steps 2 and 3 for one layer: discard, add the identity, normalise every row to 1.

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
    return _step(discard_lowest(fused, discard_ratio))


def _step(a: Tensor) -> Tensor:
    a = a.clone()
    a.diagonal(dim1=-2, dim2=-1).add_(1.0)         # + I
    sums = a.sum(dim=-1, keepdim=True)             # keepdim: divide rows, not columns
    return a / torch.where(sums == 0, torch.ones_like(sums), sums)


def chain_layers(steps: Sequence[Tensor]) -> Tensor:
    """Step 4: R = Ã_last · … · Ã_first, input side first in ``steps`` (each (B, T, T))."""
    result = steps[0]
    for a in steps[1:]:
        result = a @ result                         # later layer on the left
    return result


# ----------------------------------------------------------------------------- rollouts
def rollout(attentions: Sequence[Tensor] | Tensor, head_fusion: str = "mean",
            discard_ratio: float = 0.0, start_layer: int = 0) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020), with vit-explain's fusion and discard.

    Fusion and discard as in jacobgil/vit-explain ``vit_rollout.py`` ``rollout()``
    (``head_fusion`` mean/max/min, ``discard_ratio``), with the discard done per image and
    rows normalised (see the module docstring).

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
    layers, start = _check_rollout(attentions, head_fusion, discard_ratio, start_layer)
    return chain_layers([_step(_discard(_fuse(a, head_fusion), discard_ratio))
                         for a in layers[start:]])


def _check_rollout(attentions: object, head_fusion: object, discard_ratio: object,
                   start_layer: object) -> tuple[list[Tensor], int]:
    # the checks of rollout and grad_rollout, once per call (the steps above re-check
    # their inputs only when called on their own)
    layers = check_attentions(attentions)
    check_fusion(head_fusion)
    check_ratio(discard_ratio)
    return layers, check_layer_index(start_layer, len(layers), "start_layer")


def grad_rollout(attentions: Sequence[Tensor] | Tensor, gradients: Sequence[Tensor] | Tensor,
                 head_fusion: str = "mean", discard_ratio: float = 0.0,
                 start_layer: int = 0) -> Tensor:
    """Gradient attention rollout (vit-explain's method with its layer pairing fixed).

    Per layer: fuse A_l ⊙ G_l over heads, where G_l = ∂y_c/∂A_l is the gradient of the
    target logit with respect to *that* layer's post-softmax attention; set negatives to 0;
    then discard / add I / normalise rows / multiply as in :func:`rollout`. Negatives are
    clamped after the head fusion, as in jacobgil/vit-explain ``vit_grad_rollout.py``
    ``grad_rollout()`` (``attention_heads_fused[attention_heads_fused < 0] = 0`` after the
    mean); Chefer et al.'s generic attention explanation clamps each head before averaging
    (``avg_heads`` in hila-chefer/Transformer-MM-Explainability's ViT notebook): a
    different method, :mod:`vit_course.explain.gae`.

    Args:
        attentions: per-layer attention, input side first, each (B, heads, T, T).
        gradients: ∂y/∂A_l in the same order and shapes (``Capture.gradients``).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"``. Default: ``"mean"``.
        discard_ratio: fraction in [0, 1) of each fused matrix set to 0. Default: 0.
        start_layer: first layer included. Default: 0.

    Returns:
        R (B, T, T); every row sums to 1.
    """
    layers, start = _check_rollout(attentions, head_fusion, discard_ratio, start_layer)
    grads = check_gradients(gradients, layers)
    return chain_layers([_step(_discard(_fuse(a * g, head_fusion).clamp(min=0), discard_ratio))
                         for a, g in zip(layers[start:], grads[start:])])


# ----------------------------------------------------------------------------- readout
def cls_row_to_grid(R: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Step 5: read the class token's row and lay the patch columns out on the patch grid.

    Args:
        R: a (B, T, T) token-to-token matrix (row 0 is read) or (B, T) rows already read.
        grid: patch grid (h, w) from the model (``Capture.grid``), not guessed from √N.
        num_prefix_tokens: P, the leading non-patch tokens to drop (1; 2 for distilled
            DeiT). Default: 1.

    Returns:
        (B, h, w).
    """
    if not isinstance(R, Tensor) or R.ndim not in (2, 3):
        raise ValueError(f"R must be (B, T, T) or (B, T), got {_shape_or_type(R)}")
    row = R[:, 0] if R.ndim == 3 else R
    h, w = (int(g) for g in grid)
    if num_prefix_tokens < 1 or row.shape[-1] != num_prefix_tokens + h * w:
        raise ValueError(
            f"R has {row.shape[-1]} tokens but grid {(h, w)} with {num_prefix_tokens} prefix "
            f"token(s) needs {num_prefix_tokens + h * w} (and at least one prefix token to "
            "read); pass Capture.grid and Capture.num_prefix_tokens from the same capture.")
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
    layers = check_attentions(attentions)
    attn = layers[check_layer_index(layer, len(layers), "layer")]
    if head is None:
        return fuse_heads(attn, head_fusion)
    return attn[:, check_head_index(head, attn.shape[1])]


def attention_grid(attentions: Sequence[Tensor] | Tensor, grid: tuple[int, int],
                   num_prefix_tokens: int = 1) -> Tensor:
    """Every layer's and every head's class-token attention on the patch grid.

    Args:
        attentions: per-layer attention, each (B, heads, T, T).
        grid: patch grid (h, w). num_prefix_tokens: P. Default: 1.

    Returns:
        (B, L, heads, h, w); ``[b, l, k]`` is image b's CLS row of layer l, head k.
    """
    layers = check_attentions(attentions)
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
        raise ValueError("maps must be a tensor (B, h, w) of non-negative maps, got "
                         f"{_shape_or_type(maps)}")
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
