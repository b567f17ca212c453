"""Transformer attribution (Chefer, Gur & Wolf, CVPR 2021): LRP relevance × gradient, rolled out.

"Transformer Interpretability Beyond Attention Visualization" explains a ViT's decision
for a class c in three steps:

1. **Relevance.** Start with a one-hot vector for c at the logits and propagate it back
   through the network with LRP rules (:mod:`.lrp_layers`): LRP-αβ (α = 1, β = 0) for
   every Linear, gradient × input halved for the two matmuls of attention, the
   normalised z-rule for residual additions, sums where a tensor branches, and
   pass-through for LayerNorm, GELU, softmax and dropout. R_A^b is the relevance that
   arrives at block b's attention probabilities A^b (B, heads, T, T).
2. **Gradient weighting.** Ā^b = mean_heads((∇A^b ⊙ R_A^b)⁺), where ∇A^b = ∂y_c/∂A^b is
   the gradient of the target logit; negative values are dropped per head, then heads
   are averaged.
3. **Rollout.** R = I, then R ← R + Ā^b · R for b = start_layer … L−1 (no row
   normalisation), and the class token's row, without prefix columns, is the map.

How it runs here: the model is not modified or hooked. :func:`vit_weights` reads a
supported model's own weights into a common per-block structure (:class:`ViTWeights`,
one adapter per model family), :func:`forward_trace` re-implements the ViT forward pass
with them and keeps the tensors the rules need (its logits equal the model's), and
:func:`relevance_pass` applies the rules backwards, batched. Cost on ViT-B/16 for a batch
of 16 on CPU: about 6–8 plain forward passes (two runs on a busy 2-core machine; gradient
rollout took 1.8 in the same run). The traced forward is ≈ 1 and the backward for ∇A
≈ 1.1; the rest is the relevance pass, where each Linear costs four matrix products (its
input's positive and negative parts against the weight's).

Differences from the authors' code (hila-chefer/Transformer-Explainability,
``baselines/ViT/ViT_LRP.py``, ``modules/layers_ours.py``, ``ViT_explanation_generator.py``):

- Batches: their code is CUDA-only and reads ``cam[0]`` (image 0 of the batch); their
  residual rule normalises with sums over the whole batch. Here every step is per image,
  on any device, so an image's map is the same alone or in a batch.
- Start of the relevance: a one-hot vector for the target class, as theirs
  (``relprop(one_hot_vector)``), not the one-hot times the logit. The gradient ∇A is of
  the target logit itself, as theirs.
- Rollout: the same as theirs (``compute_rollout_attention`` in ``ViT_LRP.py`` adds I to
  each Ā and multiplies, without the row normalisation that the copy in
  ``ViT_explanation_generator.py`` applies for plain attention rollout).
- Stabiliser: ``safe_divide`` here pushes a denominator away from 0 on its own side;
  theirs adds +1e-9 whatever the sign.
- The relevance pass stops at block ``start_layer``'s attention: nothing below it enters
  the map. (Set ``to_input=True`` in :func:`relevance_pass` for the full pass down to the
  pixels, which uses LRP-αβ on the patch embedding where their "full" LRP baseline uses the
  z^B rule for the first layer.)
- Supported models: the course ViT and torchvision ``VisionTransformer`` (any image or
  patch size, no conv stem, plain Linear head). timm models raise ``TypeError``.

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, T = 1+N tokens, D width,
M MLP width, K classes, L blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import (
    Capture,
    _check_target_range,
    _target_tensor,
    check_images,
    describe_model,
    resolve_targets,
)
from .gae import gae_cls_row, gae_rollout
from .lrp_layers import (
    EPS,
    relprop_add,
    relprop_clone,
    relprop_identity,
    relprop_linear,
    relprop_matmul,
    relprop_patch_embedding,
)
from .methods import Explainer, register_method
from .rollout import _check_layer_index, cls_row_to_grid

__all__ = [
    "LayerNormWeights",
    "BlockWeights",
    "ViTWeights",
    "vit_weights",
    "BlockTrace",
    "Trace",
    "forward_trace",
    "attention_gradients",
    "Relevance",
    "relprop_block",
    "relevance_pass",
    "attribution_rollout",
    "TransformerAttribution",
]


# ----------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class LayerNormWeights:
    """A LayerNorm's affine parameters and eps; calling it normalises the last dim."""

    weight: Tensor | None
    bias: Tensor | None
    eps: float

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class BlockWeights:
    """One pre-norm encoder block: x + proj(attn(qkv(norm1 x))), then x + fc2(act(fc1(norm2 x))).

    Attributes:
        norm1, norm2: the two LayerNorms.
        qkv_weight: (3D, D), rows ordered q, k, v and within each head by head.
        qkv_bias: (3D,) or None. proj_weight: (D, D). proj_bias: (D,) or None.
        fc1_weight: (M, D). fc1_bias: (M,) or None. act: the MLP activation (GELU).
        fc2_weight: (D, M). fc2_bias: (D,) or None.
    """

    norm1: LayerNormWeights
    qkv_weight: Tensor
    qkv_bias: Tensor | None
    proj_weight: Tensor
    proj_bias: Tensor | None
    norm2: LayerNormWeights
    fc1_weight: Tensor
    fc1_bias: Tensor | None
    act: Callable[[Tensor], Tensor]
    fc2_weight: Tensor
    fc2_bias: Tensor | None


@dataclass(frozen=True)
class ViTWeights:
    """A ViT's weights in one layout for every supported family (detached, shared storage).

    Attributes:
        family: ``"vit_course"`` or ``"torchvision"``.
        patch_weight: patch-embedding Conv2d weight (D, C, p_h, p_w). patch_bias: (D,) or None.
        class_token: (1, 1, D). pos_embedding: (1, 1+N, D).
        blocks: one :class:`BlockWeights` per encoder block, input side first.
        norm: the final LayerNorm. head_weight: (K, D). head_bias: (K,) or None.
        num_heads: attention heads per block.
    """

    family: str
    patch_weight: Tensor
    patch_bias: Tensor | None
    class_token: Tensor
    pos_embedding: Tensor
    blocks: tuple[BlockWeights, ...]
    norm: LayerNormWeights
    head_weight: Tensor
    head_bias: Tensor | None
    num_heads: int

    @property
    def patch_size(self) -> tuple[int, int]:
        return (int(self.patch_weight.shape[-2]), int(self.patch_weight.shape[-1]))


def _d(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _norm(ln: nn.Module, where: str) -> LayerNormWeights:
    if not isinstance(ln, nn.LayerNorm) or len(ln.normalized_shape) != 1:
        raise TypeError(f"{where} must be an nn.LayerNorm over the token width, got {ln!r}")
    return LayerNormWeights(_d(ln.weight), _d(ln.bias), float(ln.eps))


def _linear(m: nn.Module, where: str) -> tuple[Tensor, Tensor | None]:
    if not isinstance(m, nn.Linear):
        raise TypeError(f"{where} must be an nn.Linear, got {m!r}")
    return m.weight.detach(), _d(m.bias)


def _mlp(seq: nn.Module, where: str) -> tuple[Tensor, Tensor | None, Callable, Tensor,
                                             Tensor | None]:
    """fc1, activation, fc2 from a Sequential(Linear, act, Dropout, Linear, Dropout)."""
    parts = [m for m in seq.children() if not isinstance(m, nn.Dropout)]
    if len(parts) != 3 or not isinstance(parts[0], nn.Linear) \
            or not isinstance(parts[2], nn.Linear) or isinstance(parts[1], nn.Linear):
        raise TypeError(f"{where} must be Linear, activation, Linear (dropouts aside), got "
                        f"{[type(m).__name__ for m in parts]}")
    fc1_w, fc1_b = _linear(parts[0], f"{where}[0]")
    fc2_w, fc2_b = _linear(parts[2], f"{where}[-1]")
    return fc1_w, fc1_b, parts[1], fc2_w, fc2_b


def _patch_conv(conv: nn.Module, where: str) -> tuple[Tensor, Tensor | None]:
    if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != tuple(conv.stride) \
            or any(conv.padding) or conv.groups != 1 or tuple(conv.dilation) != (1, 1):
        raise TypeError(f"{where} must be a Conv2d with kernel_size == stride, no padding "
                        f"(a plain patch embedding), got {conv!r}; models with a conv stem "
                        "are not supported by transformer_attribution.")
    return conv.weight.detach(), _d(conv.bias)


def _course_weights(model: nn.Module) -> ViTWeights:
    blocks = []
    for i, blk in enumerate(model.transformer_encoder):
        msa, mlp = blk.msa_block, blk.mlp_block
        qkv_w, qkv_b = _linear(msa.qkv, f"block {i} msa_block.qkv")
        proj_w, proj_b = _linear(msa.proj, f"block {i} msa_block.proj")
        fc1_w, fc1_b, act, fc2_w, fc2_b = _mlp(mlp.mlp, f"block {i} mlp_block.mlp")
        blocks.append(BlockWeights(
            _norm(msa.layer_norm, f"block {i} msa_block.layer_norm"), qkv_w, qkv_b, proj_w,
            proj_b, _norm(mlp.layer_norm, f"block {i} mlp_block.layer_norm"), fc1_w, fc1_b,
            act, fc2_w, fc2_b))
    patch_w, patch_b = _patch_conv(model.patch_embedding.patcher, "patch_embedding.patcher")
    head_w, head_b = _linear(model.head, "head")
    return ViTWeights("vit_course", patch_w, patch_b, model.class_embedding.detach(),
                      model.position_embedding.detach(), tuple(blocks),
                      _norm(model.norm, "norm"), head_w, head_b, int(model.num_heads))


def _torchvision_weights(model: nn.Module) -> ViTWeights:
    blocks = []
    for i, blk in enumerate(model.encoder.layers):
        mha = blk.self_attention
        if not isinstance(mha, nn.MultiheadAttention) or not mha._qkv_same_embed_dim \
                or mha.bias_k is not None or mha.add_zero_attn or not mha.batch_first:
            raise TypeError(f"encoder layer {i}: expected a batch-first nn.MultiheadAttention "
                            f"with packed in_proj, got {mha!r}")
        proj_w, proj_b = _linear(mha.out_proj, f"encoder layer {i} out_proj")
        fc1_w, fc1_b, act, fc2_w, fc2_b = _mlp(blk.mlp, f"encoder layer {i} mlp")
        blocks.append(BlockWeights(
            _norm(blk.ln_1, f"encoder layer {i} ln_1"), mha.in_proj_weight.detach(),
            _d(mha.in_proj_bias), proj_w, proj_b, _norm(blk.ln_2, f"encoder layer {i} ln_2"),
            fc1_w, fc1_b, act, fc2_w, fc2_b))
    patch_w, patch_b = _patch_conv(model.conv_proj, "conv_proj")
    heads = list(model.heads.children())
    if len(heads) != 1:
        raise TypeError("torchvision VisionTransformer with a pre-logits layer "
                        "(representation_size) is not supported by transformer_attribution; "
                        "its heads must be one Linear.")
    head_w, head_b = _linear(heads[0], "heads.head")
    return ViTWeights("torchvision", patch_w, patch_b, model.class_token.detach(),
                      model.encoder.pos_embedding.detach(), tuple(blocks),
                      _norm(model.encoder.ln, "encoder.ln"), head_w, head_b,
                      int(model.encoder.layers[0].self_attention.num_heads))


def vit_weights(model: nn.Module) -> ViTWeights:
    """Read a supported ViT's weights into :class:`ViTWeights` (no copies, detached).

    Args:
        model: the course :class:`~vit_course.models.ViT` or a torchvision
            ``VisionTransformer``.

    Returns:
        the weights, in the model's device and dtype.

    Raises:
        TypeError: another model (timm included) or an unsupported variant (conv stem,
            pre-logits head).
    """
    family = describe_model(model).family
    if family == "vit_course":
        return _course_weights(model)
    if family == "torchvision":
        return _torchvision_weights(model)
    raise TypeError(f"transformer_attribution supports the course ViT and torchvision's "
                    f"VisionTransformer, got a {family} model ({type(model).__name__}); use "
                    "'gae' or 'grad_rollout' for it, which need only attention and gradients.")


# ----------------------------------------------------------------------------- forward
@dataclass
class BlockTrace:
    """What one block's forward pass leaves for the relevance rules.

    Attributes:
        x: block input (B, T, D). h: norm1(x), the qkv input (B, T, D).
        q, k, v: (B, heads, T, d). attn: softmax(q kᵀ/√d) (B, heads, T, T).
        ctx: attn @ v with heads merged, the proj input (B, T, D).
        a: attention branch output (B, T, D). mid: x + a (B, T, D).
        m: norm2(mid), the fc1 input (B, T, D). g: act(fc1(m)), the fc2 input (B, T, M).
        y: MLP branch output (B, T, D); the block output is mid + y.
    """

    x: Tensor
    h: Tensor
    q: Tensor
    k: Tensor
    v: Tensor
    attn: Tensor
    ctx: Tensor
    a: Tensor
    mid: Tensor
    m: Tensor
    g: Tensor
    y: Tensor


@dataclass
class Trace:
    """The functional forward pass of a batch.

    Attributes:
        images: (B, C, H, W). patches: patch tokens before the class token (B, N, D).
        tokens: class token and patches before the position embedding (B, T, D).
        blocks: one :class:`BlockTrace` per block, input side first.
        last: output of the last block (B, T, D).
        pooled: the final LayerNorm's class-token row, the head input (B, D).
        logits: (B, K).
    """

    images: Tensor
    patches: Tensor
    tokens: Tensor
    blocks: list[BlockTrace]
    last: Tensor
    pooled: Tensor
    logits: Tensor
    _graph: bool = field(default=False, repr=False)


def _block_forward(w: BlockWeights, x: Tensor, num_heads: int) -> BlockTrace:
    B, T, D = x.shape
    d = D // num_heads
    h = w.norm1(x)
    qkv = F.linear(h, w.qkv_weight, w.qkv_bias)                      # (B, T, 3D)
    q, k, v = qkv.reshape(B, T, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q * d ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)   # (B, heads, T, T)
    ctx = (attn @ v).transpose(1, 2).reshape(B, T, D)                # (B, T, D)
    a = F.linear(ctx, w.proj_weight, w.proj_bias)
    mid = x + a
    m = w.norm2(mid)
    g = w.act(F.linear(m, w.fc1_weight, w.fc1_bias))                 # (B, T, M)
    y = F.linear(g, w.fc2_weight, w.fc2_bias)
    return BlockTrace(x, h, q, k, v, attn, ctx, a, mid, m, g, y)


def forward_trace(weights: ViTWeights, images: Tensor) -> Trace:
    """Run the ViT functionally from ``weights`` and keep every tensor the rules need.

    This is the model's eval-mode forward pass (dropout off) with explicit attention. The
    autograd graph from the (internally marked) embedded tokens to the logits is kept so
    :func:`attention_gradients` can compute ∂y/∂A without a second forward; weights are
    detached, so no parameter gradients are ever computed or stored.

    Args:
        weights: from :func:`vit_weights`.
        images: (B, C, H, W) on the weights' device and dtype, sides multiples of the
            patch size, T = 1 + (H/p_h)(W/p_w) matching the position embedding.

    Returns:
        a :class:`Trace`; ``trace.logits`` equals the model's logits up to float rounding.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("transformer_attribution needs gradients, which cannot be computed "
                           "inside torch.inference_mode(); call it outside.")
    B = images.shape[0]
    with torch.enable_grad():
        emb = F.conv2d(images, weights.patch_weight, weights.patch_bias,
                       stride=weights.patch_size)                     # (B, D, h, w)
        patches = emb.flatten(2).transpose(1, 2)                      # (B, N, D)
        tokens = torch.cat([weights.class_token.expand(B, -1, -1), patches], dim=1)
        if tokens.shape[1:] != weights.pos_embedding.shape[1:]:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} give {tokens.shape[1]} tokens but "
                f"the position embedding has {weights.pos_embedding.shape[1]}; resize the "
                "images to the model's size.")
        x = (tokens + weights.pos_embedding).detach().requires_grad_(True)
        blocks = []
        for w in weights.blocks:
            bt = _block_forward(w, x, weights.num_heads)
            blocks.append(bt)
            x = bt.mid + bt.y
        pooled = weights.norm(x)[:, 0]                                # (B, D)
        logits = F.linear(pooled, weights.head_weight, weights.head_bias)
    return Trace(images, patches.detach(), tokens.detach(), blocks, x, pooled, logits,
                 _graph=True)


def attention_gradients(trace: Trace, targets: Tensor) -> list[Tensor]:
    """∂y_t/∂A^b for every block, one backward pass for the batch; frees the graph.

    Args:
        trace: from :func:`forward_trace`, not used for gradients before.
        targets: (B,) class per image.

    Returns:
        L tensors (B, heads, T, T), input side first, detached.
    """
    if not trace._graph:
        raise ValueError("this trace's autograd graph was already used; run forward_trace "
                         "again to get gradients for other targets.")
    attns = [bt.attn for bt in trace.blocks]
    selected = trace.logits.gather(1, targets.view(-1, 1).to(trace.logits.device)).sum()
    grads = torch.autograd.grad(selected, attns, allow_unused=True)
    trace._graph = False
    return [torch.zeros_like(a) if g is None else g.detach() for a, g in zip(attns, grads)]


# ----------------------------------------------------------------------------- relevance
@dataclass
class Relevance:
    """Relevance of one backward LRP pass.

    Attributes:
        output: the starting relevance at the logits (B, K), one-hot per image.
        attention: R_A^b per block (B, heads, T, T), input side first; ``None`` for
            blocks below the one the pass stopped at.
        tokens: relevance at each block's input (B, T, D) for b = 0 … L−1, then at the
            last block's output (index L); ``None`` where the pass did not get there.
        embedding: at the class token and patch tokens before the position embedding
            (B, T, D), with ``to_input=True``; else ``None``.
        pixels: at the input pixels (B, C, H, W), with ``to_input=True``; else ``None``.
    """

    output: Tensor
    attention: list[Tensor | None]
    tokens: list[Tensor | None]
    embedding: Tensor | None = None
    pixels: Tensor | None = None


def relprop_block(w: BlockWeights, bt: BlockTrace, relevance: Tensor, num_heads: int,
                  alpha: float = 1.0, eps: float = EPS, stop_at_attention: bool = False
                  ) -> tuple[Tensor | None, Tensor]:
    """Propagate relevance through one encoder block, top to bottom.

    Args:
        w: the block's weights. bt: its forward trace.
        relevance: R at the block output (B, T, D).
        num_heads: attention heads.
        alpha: α of the LRP-αβ rule for the Linears. Default: 1.
        eps: stabiliser. Default: :data:`~vit_course.explain.lrp_layers.EPS`.
        stop_at_attention: return once R_A is known (the input relevance is then
            ``None``). Default: ``False``.

    Returns:
        (R at the block input (B, T, D) or ``None``, R_A at the attention
        probabilities (B, heads, T, T)).
    """
    B, T, D = relevance.shape
    # out = mid + y, y = fc2(act(fc1(norm2(mid)))): MLP branch
    r_mid_skip, r_y = relprop_add(bt.mid, bt.y, relevance, eps)
    r_g = relprop_linear(bt.g, w.fc2_weight, r_y, alpha, eps)
    r_u = relprop_identity(r_g)                                      # GELU
    r_m = relprop_linear(bt.m, w.fc1_weight, r_u, alpha, eps)
    r_mid = relprop_clone(r_mid_skip, relprop_identity(r_m))         # LayerNorm, branch
    # mid = x + a, a = proj(attn @ v): attention branch
    r_x_skip, r_a = relprop_add(bt.x, bt.a, r_mid, eps)
    r_ctx = relprop_linear(bt.ctx, w.proj_weight, r_a, alpha, eps)
    r_ctx = r_ctx.reshape(B, T, num_heads, D // num_heads).transpose(1, 2)  # (B, H, T, d)
    r_attn, r_v = relprop_matmul(bt.attn, bt.v, r_ctx, eps)          # each half of Σ R
    if stop_at_attention:
        return None, r_attn
    r_scores = relprop_identity(r_attn)                              # softmax
    r_q, r_kt = relprop_matmul(bt.q, bt.k.transpose(-2, -1), r_scores, eps)
    r_qkv = torch.stack([r_q, r_kt.transpose(-2, -1), r_v])          # (3, B, H, T, d)
    r_qkv = r_qkv.permute(1, 3, 0, 2, 4).reshape(B, T, 3 * D)        # q, k, v by head
    r_h = relprop_linear(bt.h, w.qkv_weight, r_qkv, alpha, eps)
    r_x = relprop_clone(r_x_skip, relprop_identity(r_h))             # LayerNorm, branch
    return r_x, r_attn


def relevance_pass(weights: ViTWeights, trace: Trace, targets: Tensor, *,
                   stop_layer: int = 0, to_input: bool = False, alpha: float = 1.0,
                   eps: float = EPS) -> Relevance:
    """LRP from a one-hot at the logits down to the attention of every block ≥ ``stop_layer``.

    Args:
        weights: from :func:`vit_weights`. trace: from :func:`forward_trace` (same
            weights and batch).
        targets: (B,) class per image; R starts as its one-hot (B, K).
        stop_layer: lowest block whose R_A is needed; the pass ends there. Default: 0.
        to_input: go on through every block, the position embedding and the patch
            embedding down to the pixels (ignores ``stop_layer``). Default: ``False``.
        alpha: α of the LRP-αβ rule (β = α − 1). Default: 1.
        eps: stabiliser. Default: :data:`~vit_course.explain.lrp_layers.EPS`.

    Returns:
        a :class:`Relevance`.
    """
    L = len(weights.blocks)
    stop = 0 if to_input else _check_layer_index(stop_layer, L, "stop_layer")
    with torch.no_grad():
        logits = trace.logits.detach()
        B, K = logits.shape
        onehot = F.one_hot(targets.to(logits.device), K).to(logits.dtype)
        r_pooled = relprop_linear(trace.pooled.detach(), weights.head_weight, onehot, alpha,
                                  eps)                                # (B, D)
        r = torch.zeros_like(trace.last)
        r[:, 0] = r_pooled                                            # class-token readout
        r = relprop_identity(r)                                       # final LayerNorm
        attention: list[Tensor | None] = [None] * L
        tokens: list[Tensor | None] = [None] * (L + 1)
        tokens[L] = r
        for b in range(L - 1, stop - 1, -1):
            bt = _detached(trace.blocks[b])
            r, attention[b] = relprop_block(weights.blocks[b], bt, r, weights.num_heads,
                                            alpha, eps, stop_at_attention=(b == stop
                                                                           and not to_input))
            tokens[b] = r
        out = Relevance(onehot, attention, tokens)
        if to_input:
            r_tokens, _ = relprop_add(trace.tokens, weights.pos_embedding, r, eps)
            out.embedding = r_tokens
            out.pixels = relprop_patch_embedding(trace.images.detach(), weights.patch_weight,
                                                 r_tokens[:, 1:], alpha, eps)
    return out


def _detached(bt: BlockTrace) -> BlockTrace:
    return BlockTrace(*(getattr(bt, f).detach() for f in bt.__dataclass_fields__))


# ----------------------------------------------------------------------------- the map
def attribution_rollout(relevances: Sequence[Tensor], gradients: Sequence[Tensor],
                        start_layer: int = 0) -> Tensor:
    """The relevance matrix R = (I + Ā^{L−1}) ··· (I + Ā^start), Ā = mean_heads((∇A ⊙ R_A)⁺).

    This is GAE's rollout (:func:`vit_course.explain.gae.gae_rollout`) with the LRP
    relevance R_A in place of the attention A: the two papers share steps 2 and 3.

    Args:
        relevances: R_A^b per block (B, heads, T, T), input side first
            (``Relevance.attention``, all blocks from ``start_layer`` present).
        gradients: ∂y/∂A^b, same order and shapes.
        start_layer: first block used (negative counts from the top). Default: 0.

    Returns:
        (B, T, T); row 0 is the class token's relevance over the tokens.
    """
    return gae_rollout(relevances, gradients, start_layer)


# ----------------------------------------------------------------------------- explainer
@register_method("transformer_attribution")
class TransformerAttribution(Explainer):
    """Transformer attribution (Chefer, Gur & Wolf, CVPR 2021) for a target class.

    LRP relevance at each block's attention, weighted by the attention gradient, positive
    part averaged over heads, rolled out as R ← R + Ā·R; see the module docstring.

    Options:
        start_layer: first block of the rollout (negative counts from the top); the
            relevance pass stops there. Default: 0.

    One functional forward, one backward and one relevance pass for the whole batch (about
    6–8 forward passes of cost). The model is read, never modified. Works for the course
    ViT and torchvision ``VisionTransformer``; on CPU or GPU; per image, so a batch gives
    each image's map alone.

    Not available from a :class:`~vit_course.explain.capture.Capture`: the relevance needs
    every layer's activations, not just attention (``supports_capture = False``;
    ``from_capture`` raises TypeError).
    """

    needs_grad = True
    supports_capture: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {"start_layer": 0}

    def __init__(self, model: nn.Module, **options: Any):
        super().__init__(model, **options)
        vit_weights(model)                    # unsupported families fail here, early

    def check_options(self, start_layer: int) -> None:
        _check_layer_index(start_layer, self.info.num_layers, "start_layer")

    def attribute(self, images: Tensor, target: object = None, **options: Any) -> Tensor:
        """Explain ``images`` for ``target``.

        Args:
            images: (B, C, H, W), transformed for the model.
            target: ``None`` (each image's predicted class), an int, or B ints.
                Default: ``None``.
            **options: ``start_layer``.

        Returns:
            (B, h, w) maps on the patch grid, non-negative, not normalised.
        """
        opts = self._merge(options)
        start = _check_layer_index(opts["start_layer"], self.info.num_layers, "start_layer")
        weights = vit_weights(self.model)
        x = check_images(self.info, images, weights.head_weight.device,
                         weights.head_weight.dtype)
        t = _target_tensor(target, x.shape[0])
        if t is not None and self.info.num_classes is not None:
            _check_target_range(t, self.info.num_classes)
        trace = forward_trace(weights, x)
        targets = resolve_targets(target, trace.logits.detach())
        grads = attention_gradients(trace, targets)
        rel = relevance_pass(weights, trace, targets, stop_layer=start)
        with torch.no_grad():
            row = gae_cls_row(rel.attention[start:], grads[start:])  # row 0, (B, T)
        return cls_row_to_grid(row, self.info.grid(*x.shape[-2:]), self.info.num_prefix_tokens)

    def token_scores(self, cap: Capture, **options: Any) -> Tensor:
        raise TypeError(self._no_capture())

    def from_capture(self, cap: Capture, **options: Any) -> Tensor:
        """Not available: raises TypeError (use :meth:`attribute`)."""
        raise TypeError(self._no_capture())

    @staticmethod
    def _no_capture() -> str:
        return ("transformer_attribution cannot be computed from a Capture: its relevance "
                "pass needs every layer's activations, which a capture does not keep; call "
                "TransformerAttribution(model).attribute(images, target=...) or "
                "explain(model, images, method='transformer_attribution', target=...).")

