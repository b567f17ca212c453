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
their sum; ``compute_joint_attention(..., res=False)``. Their model is BERT (post-norm);
here the blocks are the pre-norm ViT blocks of :mod:`vit_course.explain.families`.

How it is computed (the same numbers, not their loop of one forward per token): zeroing
v_j changes each head's context by −A_ij v_j (q, k and A stay), so after the output
projection mid_i(¬j) = mid_i − Σ_h A^h_ij u^h_j with u^h_j = W_o^h v^h_j. The MLP's
LayerNorm and first Linear are then closed forms in those few vectors (a mean, a variance
from Gram matrices, and z_ij = (a_i − Σ_h A^h_ij b^h_j)/σ_ij + e), so the only work per
(i, j) pair is the activation and fc2 of the MLP's *change* act(z_ij) − act(z_i). The
distance is taken from the changes themselves (:func:`_cosine_distance`), not as 1 − cos
of two recomputed outputs, which loses most digits of a score of about 1e-4: in float32
the map keeps about 1e-6 of its size (the direct form kept about 1e-3). The top layer
computes only the class token's row. Tests check it against the paper's loop.

Cost: one forward pass to record the blocks' inputs, then per layer T² evaluations of
the MLP's activation and fc2 (fc2 alone is a third of a plain forward's arithmetic, times
T); measured for one ViT-B/16 image in docs/BENCHMARKS.md. ``precision="bfloat16"`` runs
that fc2 in bfloat16 (about 2× faster than float32 on CPUs with bfloat16 instructions,
within about 1e-4 of the float64 map on ViT-B/16). Class-agnostic.

Shapes: B batch, T = P + N tokens, I rows computed, D width, F MLP width, H heads,
d = D / H, L layers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_targets
from ..runtime import eval_mode
from .capture import prepare_images
from .families import (BlockParts, blocks_of, family_of, layer_norm_as, linear_as, logits_of,
                       nonplain_parts)
from .methods import Explainer, register_method

#: The dtype a recomputation runs in, by name (also the LRP rules' ``precision``).
PRECISIONS: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
#: What value zeroing's ``precision`` accepts: :data:`PRECISIONS`, and ``"bfloat16"``
#: (float32 with the MLP's large product in bfloat16).
CHOICES = (*PRECISIONS, "bfloat16")

#: Elements (J zeroed tokens · I rows · MLP width) per fc2 product (large: few products),
#: and per activation pass (small: stays in the CPU's cache; large fresh buffers cost
#: page faults that made the activation 5× slower per element).
CHUNK_ELEMENTS = 2 ** 24
ACT_ELEMENTS = 2 ** 19


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
    bad = nonplain_parts(model)
    if bad:
        raise TypeError(f"{what} recomputes plain pre-norm blocks and has no rule for "
                        f"{', '.join(bad)} of this {family_of(model).name} model; use 'rollout' or 'gae'.")
    return [family_of(model).block(b) for b in blocks_of(model)]


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


def _cosine_distance(o: Tensor, d: Tensor) -> Tensor:
    """1 − cos(o + d, o) for o (I, D) and changes d (J, I, D), as (J, I), without cancellation.

    1 − cos(a, b) = |a/|a| − b/|b||² / 2, and with a = o + d, b = o the difference of the
    unit vectors is d/|a| + o (1/|a| − 1/|o|), where 1/|a| − 1/|o| = −(2⟨o, d⟩ + |d|²) /
    (|o| |a| (|o| + |a|)): every term is of the size of d, so a small change keeps its digits.
    """
    tiny = torch.finfo(o.dtype).tiny
    o2 = (o * o).sum(-1)                                             # (I,)
    od = torch.einsum("jid,id->ji", d, o)                            # (J, I)
    dd = torch.linalg.vector_norm(d, dim=-1).square()
    on = o2.sqrt().clamp_min(tiny)
    an = (o2 + 2 * od + dd).clamp_min(0).sqrt().clamp_min(tiny)      # |o + d|
    s = -(2 * od + dd) / (on * an * (on + an))
    w = torch.addcmul(d / an.unsqueeze(-1), o, s.unsqueeze(-1))
    return 0.5 * torch.linalg.vector_norm(w, dim=-1).square()


def _mixing_rows(p: BlockParts, A: Tensor, v: Tensor, mid: Tensor, fc2_dtype: torch.dtype
                 ) -> Tensor:
    """Value-zeroing scores of one image's rows i (before normalisation), in closed form.

    Args:
        p: the block's parts. A: attention rows (H, I, T). v: values (H, T, d).
        mid: the rows' residual stream after attention, mid_i = x_i + proj(ctx_i), (I, D).
        fc2_dtype: dtype of the one large product, fc2 of the MLP's changes.

    Returns:
        (I, T): entry [i, j] = 1 − cos(out_i with v_j = 0, out_i).
    """
    H, I, T = A.shape
    D, dt = mid.shape[-1], mid.dtype
    u = torch.einsum("htk,ehk->hte", v, p.proj.weight.to(dt).view(D, H, D // H))  # (H, T, D)
    gamma = mid.new_ones(D) if p.norm2.weight is None else p.norm2.weight.to(dt)
    beta = mid.new_zeros(D) if p.norm2.bias is None else p.norm2.bias.to(dt)
    W1 = p.fc1.weight.to(dt)
    e = W1 @ beta + (0 if p.fc1.bias is None else p.fc1.bias.to(dt))  # (F,)
    # LayerNorm of mid_i(¬j) = mid_i − Σ_h A^h_ij u^h_j: its centred part and variance
    c, cu = mid - mid.mean(-1, keepdim=True), u - u.mean(-1, keepdim=True)
    var = c.pow(2).mean(-1)                                          # (I,)
    cross = (A * torch.einsum("id,hjd->hij", c, cu)).sum(0)          # Σ_h A ⟨c_i, cu_j^h⟩
    gram = torch.einsum("hjd,kjd->jhk", cu, cu)                      # (T, H, H)
    quad = (A * torch.einsum("hij,jhk->kij", A, gram)).sum(0)        # |Σ_h A cu_j^h|²
    inv = (var.unsqueeze(1) + (quad - 2 * cross) / D + p.norm2.eps).rsqrt()   # (I, T): 1/σ_ij
    # fc1 is linear: z_ij = (a_i − Σ_h A^h_ij b^h_j) / σ_ij + e
    a, b = (c * gamma) @ W1.T, (cu * gamma) @ W1.T                   # (I, F), (H, T, F)
    act_z = p.act(a * (var + p.norm2.eps).rsqrt().unsqueeze(1) + e)  # (I, F)
    out = mid + linear_as(p.fc2, act_z)                              # (I, D)
    W2 = p.fc2.weight.to(fc2_dtype)
    b_e = torch.cat([b, e.expand(1, T, -1)]).transpose(0, 1)          # (T, H + 1, F)
    coef = torch.cat([A * -inv, torch.ones_like(A[:1])]).permute(2, 1, 0).contiguous()  # (T, I, H+1)
    A_j, u_j = A.permute(2, 1, 0).contiguous(), u.transpose(0, 1).contiguous()  # (T, I, H), (T, H, D)
    scores = mid.new_empty(I, T)
    hidden = W1.shape[0]                               # F, the MLP width
    big = max(1, CHUNK_ELEMENTS // (I * hidden))          # zeroed tokens per fc2 product
    small = max(1, ACT_ELEMENTS // (I * hidden))          # per activation pass, cache-sized
    for j0 in range(0, T, big):
        j1 = min(T, j0 + big)
        g = mid.new_empty(j1 - j0, I, hidden, dtype=fc2_dtype)      # the MLP's changes
        for s0 in range(j0, j1, small):
            js = slice(s0, min(j1, s0 + small))
            z = torch.bmm(coef[js], b_e[js])                         # e − Σ_h A b / σ_ij
            z.addcmul_(inv[:, js].T.unsqueeze(-1), a)                # (S, I, F): + a_i / σ_ij
            torch.sub(p.act(z), act_z, out=g[s0 - j0:js.stop - j0])  # act(z_ij) − act(z_i)
        d = (g @ W2.T).to(dt) - torch.bmm(A_j[j0:j1], u_j[j0:j1])   # (J, I, D)
        scores[:, j0:j1] = _cosine_distance(out, d).T               # d: out_i(¬j) − out_i
    return scores


def mixing_matrix(p: BlockParts, x: Tensor, num_heads: int, fc2_dtype: torch.dtype | None = None,
                  rows: slice = slice(None)) -> Tensor:
    """Value-zeroing scores of one block, before row normalisation.

    Args:
        p: the block's parts. x: its input (B, T, D). num_heads: H.
        fc2_dtype: dtype of the product fc2(Δ act) (default: x's). rows: the rows i to
            compute (default: all; the top layer needs only the class token's).

    Returns:
        (B, I, T): entry [b, i, j] = 1 − cos(out_i with v_j = 0, out_i).
    """
    attn, v = _split_heads(p, x, num_heads)                          # (B,H,T,T), (B,H,T,d)
    mid = x + linear_as(p.proj, (attn @ v).transpose(1, 2).flatten(2))
    return torch.stack([_mixing_rows(p, attn[b, :, rows], v[b], mid[b, rows],
                                     fc2_dtype or x.dtype) for b in range(x.shape[0])])


def value_zeroing_matrices(model: nn.Module, images: Tensor, precision: str = "float64",
                           top_rows: slice = slice(None)) -> list[Tensor]:
    """Row-normalised context-mixing matrices C^l (B, T, T) of every layer, input first.

    ``precision`` (:data:`CHOICES`): ``"float64"`` or ``"float32"``, the dtype each layer
    is recomputed in; ``"bfloat16"``: float32 with the one large product (fc2 of the MLP's
    changes, about 80 % of the work) in bfloat16, about 2× faster on CPUs with bfloat16
    instructions and within about 1e-3 of the float64 scores (docs/BENCHMARKS.md). The
    scores are cosine distances between nearly equal vectors, computed from the changes
    themselves (:func:`_cosine_distance`), so float32 keeps about 1e-6 of their size.
    ``top_rows``: rows of the top layer's matrix to compute, (B, I, T) (the map needs only
    the class token's, ``slice(0, 1)``). The recorded inputs come from the model's own
    forward pass in its dtype.
    """
    check_choice(precision, "precision", CHOICES)
    dtype = PRECISIONS.get(precision, torch.float32)
    fc2_dtype = torch.bfloat16 if precision == "bfloat16" else dtype
    parts = check_plain_blocks(model, "value_zeroing")
    info, x = prepare_images(model, images)
    inputs = block_inputs(model, x)
    out = []
    with torch.no_grad():
        for layer, (p, h) in enumerate(zip(parts, inputs)):
            rows = top_rows if layer == len(parts) - 1 else slice(None)
            c = mixing_matrix(p, h.to(dtype), info.num_heads, fc2_dtype, rows)
            out.append(c / c.sum(-1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny))
    return out


def value_zeroing_rollout(matrices: list[Tensor]) -> Tensor:
    """R = C^{L−1} ··· C^0 (no residual term, as the paper): (B, I, T), I the top's rows."""
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
        precision: ``"float64"`` (default), ``"float32"`` or ``"bfloat16"`` (float32 with
            the MLP's large product in bfloat16; see :func:`value_zeroing_matrices`).

    Cost: module docstring and docs/BENCHMARKS.md. Works for the plain pre-norm blocks of
    every family in :mod:`vit_course.explain.families` (timm layer-scale or qk-norm:
    TypeError).
    """

    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"precision": "float64"}

    def __init__(self, model: nn.Module, **options: Any):
        super().__init__(model, **options)
        check_plain_blocks(model, "value_zeroing")       # unsupported variants fail here

    def check_options(self, precision: str) -> None:
        check_choice(precision, "precision", CHOICES)

    def compute(self, images: Tensor, target: object, precision: str) -> Tensor:
        _, x = prepare_images(self.model, images, self.info)
        check_targets(target, x.shape[0], self.info.num_classes)
        mats = value_zeroing_matrices(self.model, x, precision, top_rows=slice(0, 1))
        return value_zeroing_rollout(mats)[:, 0].to(x.dtype)
