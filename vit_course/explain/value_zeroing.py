"""Value zeroing (Mohebbi, Zuidema, Chrupała & Alishahi, EACL 2023).

"Quantifying Context Mixing in Transformers" asks how much token i's output of a layer
depends on token j: zero j's value vectors (in every head) and measure how far each
token's output of the *whole* layer (attention, residuals, LayerNorm and MLP) moves:

    C^l_ij = 1 − cos(x̃^l_i(¬j), x̃^l_i),        C^l ← C^l / Σ_j C^l_ij   (rows sum to 1)

where x̃^l_i is block l's output for token i and x̃^l_i(¬j) the same block recomputed from
its own input with v_j = 0. The layers are then chained by rollout without a residual
term (the mixing matrix already contains the residual path):
R = C^{L−1} ··· C^1 C^0, and the map is the class token's row of R.

Choices, as in the authors' code (hmohebbi/ValueZeroing ``scoring/value_zeroing.py``):
each layer is recomputed from that layer's input of the unmodified forward pass (the
change is never carried to later layers); the value vector is zeroed whole (bias
included) in all heads; the distance is the cosine distance; rows are normalised by
their sum; ``compute_joint_attention(..., res=False)``. Differences: theirs loops over
tokens one forward at a time, per sentence; here a layer is recomputed for a chunk of
zeroed tokens at once, from the closed form of the zeroed attention output
(ctx_i(¬j) = ctx_i − A_ij v_j per head: q, k and A are not recomputed), batched over
images. Their model is BERT (post-norm); here the blocks are the pre-norm ViT blocks of
:mod:`vit_course.explain.families`.

Cost: one forward pass to record the blocks' inputs, then per layer T recomputations of
the attention output projection and the MLP for all T tokens (q, k and A are shared):
measured on ViT-B/16 (197 tokens, one image, loaded CPU) about 95 plain forwards in
float64 (the default); one layer timed alone gave 83 for float64 and 23 for float32
(docs/BENCHMARKS.md). Class-agnostic.

Shapes: B batch, T = P + N tokens, D width, H heads, d = D / H, L layers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_targets
from ..runtime import eval_mode
from .capture import prepare_images
from .families import BlockParts, blocks_of, family_of, layer_norm_as, linear_as, logits_of
from .methods import Explainer, register_method

#: What the ``precision`` option accepts: the dtype the layers are recomputed in.
PRECISIONS: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}

#: Elements of the widest intermediate (B · J · T · MLP width) per recomputation chunk.
CHUNK_ELEMENTS = 2 ** 24


def block_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Every block's input tokens (B, T, D) in one plain forward pass (no gradients)."""
    seen: list[Tensor] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args[0] if args else kwargs["hidden_states"]).detach())

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in blocks_of(model)]
    try:
        with torch.no_grad(), eval_mode(model):
            logits_of(model, x)
    finally:
        for h in handles:
            h.remove()
    return seen


def check_plain_blocks(model: nn.Module, what: str) -> list[BlockParts]:
    """The blocks' parts; TypeError naming parts outside the plain pre-norm scheme."""
    fam = family_of(model)
    parts = [fam.block(b) for b in blocks_of(model)]
    bad = [f"block {i} {e}" for i, p in enumerate(parts) for e in p.extras] + [
        f"block {i} {name} ({type(getattr(p, name)).__name__})" for i, p in enumerate(parts)
        for name, kind in (("norm1", nn.LayerNorm), ("norm2", nn.LayerNorm),
                           ("proj", nn.Linear), ("fc1", nn.Linear), ("fc2", nn.Linear))
        if not isinstance(getattr(p, name), kind)]
    if bad:
        raise TypeError(f"{what} recomputes plain pre-norm blocks and has no rule for "
                        f"{', '.join(bad)} of this {fam.name} model; use 'rollout' or 'gae'.")
    return parts


def _split_heads(p: BlockParts, x: Tensor, num_heads: int) -> tuple[Tensor, Tensor]:
    """Attention probabilities (B, H, T, T) and values (B, H, T, d) of block input x."""
    B, T, D = x.shape
    bias = None if p.qkv_bias is None else p.qkv_bias.to(x.dtype)
    qkv = F.linear(layer_norm_as(p.norm1, x), p.qkv_weight.to(x.dtype), bias)
    q, k, v = qkv.reshape(B, T, 3, num_heads, D // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q * (D // num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn, v


def _rest_of_block(p: BlockParts, x: Tensor, ctx: Tensor) -> Tensor:
    """Block output from its input x (..., T, D) and the merged attention context."""
    mid = x + linear_as(p.proj, ctx)
    return mid + linear_as(p.fc2, p.act(linear_as(p.fc1, layer_norm_as(p.norm2, mid))))


def block_output(p: BlockParts, x: Tensor, num_heads: int) -> Tensor:
    """Block output (B, T, D) recomputed from its input, in x's dtype (the model's, eval mode)."""
    attn, v = _split_heads(p, x, num_heads)
    return _rest_of_block(p, x, (attn @ v).transpose(1, 2).flatten(2))


def mixing_matrix(p: BlockParts, x: Tensor, num_heads: int) -> Tensor:
    """Value-zeroing scores of one block, before row normalisation.

    Args:
        p: the block's parts. x: its input (B, T, D). num_heads: H.

    Returns:
        (B, T, T): entry [b, i, j] = 1 − cos(out_i with v_j = 0, out_i).
    """
    B, T, D = x.shape
    attn, v = _split_heads(p, x, num_heads)                        # (B,H,T,T), (B,H,T,d)
    ctx = attn @ v                                                 # (B, H, T, d)
    out = _rest_of_block(p, x, ctx.transpose(1, 2).flatten(2))     # (B, T, D)
    chunk = max(1, CHUNK_ELEMENTS // (B * T * p.fc1.out_features))
    scores = []
    for j0 in range(0, T, chunk):
        js = slice(j0, min(T, j0 + chunk))
        # ctx_i(¬j) = ctx_i − A_ij v_j per head: (B, J, H, T, d)
        removed = attn[..., js].permute(0, 3, 1, 2).unsqueeze(-1) \
            * v[:, :, js].transpose(1, 2).unsqueeze(3)
        zeroed = (ctx.unsqueeze(1) - removed).transpose(2, 3).flatten(3)   # (B, J, T, D)
        out_j = _rest_of_block(p, x.unsqueeze(1), zeroed)
        scores.append(1 - F.cosine_similarity(out_j, out.unsqueeze(1), dim=-1))  # (B, J, T)
    return torch.cat(scores, dim=1).transpose(1, 2)                # (B, T_i, T_j)


def value_zeroing_matrices(model: nn.Module, images: Tensor, precision: str = "float64"
                           ) -> list[Tensor]:
    """Row-normalised context-mixing matrices C^l (B, T, T) of every layer, input first.

    ``precision``: the dtype each layer is recomputed in (:data:`PRECISIONS`). The scores
    are cosine distances between nearly equal vectors, 1 − cos ≈ 1e-4 on a tiny random
    model, so float32 rounding moves them by about 1e-3 of their size; float64 (default)
    makes the map the same alone and in a batch. The recorded inputs come from the
    model's own forward pass in its dtype.
    """
    dtype = PRECISIONS[check_choice(precision, "precision", tuple(PRECISIONS))]
    parts = check_plain_blocks(model, "value_zeroing")
    info, x = prepare_images(model, images)
    inputs = block_inputs(model, x)
    out = []
    with torch.no_grad():
        for p, h in zip(parts, inputs):
            c = mixing_matrix(p, h.to(dtype), info.num_heads)
            out.append(c / c.sum(-1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny))
    return out


def value_zeroing_rollout(matrices: list[Tensor]) -> Tensor:
    """R = C^{L−1} ··· C^0 (no residual term, as the paper): (B, T, T)."""
    joint = matrices[0]
    for c in matrices[1:]:
        joint = c @ joint
    return joint


@register_method("value_zeroing")
class ValueZeroing(Explainer):
    """Value zeroing (Mohebbi et al., EACL 2023), rolled out over layers.

    Per layer, token j's values are zeroed and the cosine distance of every token's
    layer output measured (recomputing that layer only, chunks of j at once); rows are
    normalised and the layers chained by rollout; the map is the class token's row. See
    the module docstring for every choice. Class-agnostic (``target`` checked, unused).

    Options:
        precision: ``"float64"`` (default) or ``"float32"``, the dtype the layers are
            recomputed in (see :func:`value_zeroing_matrices`).

    About 95 plain forwards on ViT-B/16 in float64, about 23 in float32 (module docstring). Works for the plain pre-norm blocks of every
    family in :mod:`vit_course.explain.families` (timm layer-scale or qk-norm: TypeError).
    """

    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"precision": "float64"}

    def __init__(self, model: nn.Module, **options: Any):
        super().__init__(model, **options)
        check_plain_blocks(model, "value_zeroing")       # unsupported variants fail here

    def check_options(self, precision: str) -> None:
        check_choice(precision, "precision", tuple(PRECISIONS))

    def compute(self, images: Tensor, target: object, precision: str) -> Tensor:
        _, x = prepare_images(self.model, images, self.info)
        check_targets(target, x.shape[0], self.info.num_classes)
        rows = value_zeroing_rollout(value_zeroing_matrices(self.model, x, precision))[:, 0]
        return rows.to(x.dtype)
