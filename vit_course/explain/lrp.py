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
:func:`relevance_pass` applies the rules backwards, batched, in float64 by default (see
"Precision" below). Cost on ViT-B/16 for a batch of 16 on CPU, in float32: about 6–8 plain
forward passes, about twice that in float64 (two runs on a busy 2-core machine; gradient
rollout took 1.8 in the same run). The traced forward is ≈ 1 and the backward for ∇A
≈ 1.1; the rest is the relevance pass, where each Linear costs four matrix products (its
input's positive and negative parts against the weight's).

Differences from the authors' code (hila-chefer/Transformer-Explainability,
``baselines/ViT/ViT_LRP.py``, ``modules/layers_ours.py``, ``ViT_explanation_generator.py``):

- Batches: their code is CUDA-only (``LRP.generate_LRP`` puts the one-hot on
  ``.cuda()``) and reads ``cam[0]`` (image 0 of the batch; ``VisionTransformer.relprop``,
  ``method="transformer_attribution"``, called ``"grad"`` in earlier commits); their
  residual rule (``Add.relprop``) normalises with sums over the whole batch. Here every
  step is per image, on any device.
- Precision: theirs runs in the model's float32. The method is ill-conditioned (see
  :class:`TransformerAttribution`), so float32 rounding alone changes the map, also
  between an image alone and inside a batch; here the passes run in float64 by default,
  which makes an image's map the same alone and in a batch (to 1e-4 after min-max
  normalisation, tested on a random ViT-B/16).
- Start of the relevance: a one-hot vector for the target class, as theirs
  (``relprop(one_hot_vector)`` in ``LRP.generate_LRP``), not the one-hot times the logit.
  The gradient ∇A is of the target logit itself, as theirs.
- Rollout: the same as theirs (``compute_rollout_attention`` in ``ViT_LRP.py`` adds I to
  each Ā and multiplies, without the row normalisation that the copy in
  ``ViT_explanation_generator.py`` applies for plain attention rollout).
- Stabiliser: ``safe_divide`` here pushes a denominator away from 0 on its own side;
  theirs (``safe_divide`` in ``layers_ours.py``) adds +1e-9 whatever the sign.
- The relevance pass stops at block ``start_layer``'s attention: nothing below it enters
  the map. (Set ``to_input=True`` in :func:`relevance_pass` for the full pass down to the
  pixels, which uses LRP-αβ on the patch embedding where their "full" LRP baseline uses the
  z^B rule for the first layer: ``Conv2d.relprop`` in ``layers_ours.py`` switches to it
  when the input has 3 channels.)
- Supported models: every family of :mod:`vit_course.explain.families` whose blocks are
  plain pre-norm blocks: the course ViT, torchvision ``VisionTransformer`` (any image or
  patch size, no conv stem; ``heads`` one Linear, bare or in a Sequential, as after
  :func:`vit_course.pretrained.attach_head`, or the pre-logits ``Sequential(Linear, Tanh,
  Linear)``, whose activation passes relevance through like GELU), timm ViT/DeiT and
  Hugging Face ``ViTForImageClassification`` (GELU MLP). Parts without a rule here raise
  ``TypeError`` naming them: timm's layer-scale and qk-norm, distilled DeiT's second head
  and register tokens.

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, T = 1+N tokens, D width,
M MLP width, K classes, L blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_layer_index, check_targets, resolve_targets
from .capture import _backward, prepare_images, require_autograd
from .families import (BlockParts, blocks_of, describe_model, family_of, head_layers,
                       layer_norm_as, linear_as, part)
from .gae import gae_rollout
from .lrp_layers import (EPS, relprop_add, relprop_clone, relprop_identity, relprop_linear,
                         relprop_matmul, relprop_patch_embedding)
from .methods import Explainer, register_method
from .value_zeroing import PRECISIONS


# ----------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class ViTWeights:
    """A ViT's parts in one layout for every supported family (no copies but HF's qkv).

    The blocks and the head are the families' own modules, whose parameters the functional
    forward pass casts to the dtype it runs in; the embeddings are detached tensors.

    Attributes:
        family: :attr:`~vit_course.explain.families.ModelInfo.family`.
        patch_weight: patch-embedding Conv2d weight (D, C, p_h, p_w). patch_bias: (D,) or None.
        class_token: (1, 1, D). pos_embedding: (1, 1+N, D).
        blocks: one :class:`~vit_course.explain.families.BlockParts` per encoder block,
            input side first (LayerNorms, qkv (3D, D), Linears, the MLP activation).
        norm: the final LayerNorm. head: ``(Linear,)`` or ``(Linear, activation, Linear)``
            (:func:`~vit_course.explain.families.head_layers`).
        num_heads: attention heads per block.
    """

    family: str
    patch_weight: Tensor
    patch_bias: Tensor | None
    class_token: Tensor
    pos_embedding: Tensor
    blocks: tuple[BlockParts, ...]
    norm: nn.Module
    head: tuple[nn.Module, ...]
    num_heads: int

    @property
    def patch_size(self) -> tuple[int, int]:
        return (int(self.patch_weight.shape[-2]), int(self.patch_weight.shape[-1]))


#: The module type each rule here expects, per part of a block.
_RULE_TYPES = (("norm1", nn.LayerNorm), ("proj", nn.Linear), ("norm2", nn.LayerNorm),
               ("fc1", nn.Linear), ("fc2", nn.Linear))


def vit_weights(model: nn.Module, method: str = "transformer_attribution") -> ViTWeights:
    """Read a supported ViT's parts into :class:`ViTWeights` (no copies except Hugging
    Face's q/k/v concatenated into one qkv weight).

    Everything is read through :mod:`vit_course.explain.families`, so every family whose
    blocks fit :class:`~vit_course.explain.families.BlockParts` works: the course ViT,
    torchvision, timm ViT/DeiT (not distilled) and Hugging Face ``ViTForImageClassification``.

    Args:
        model: a supported ViT with a plain patch embedding and a head of one Linear
            or torchvision's pre-logits ``Sequential(Linear, activation, Linear)``.
        method: the method's name, for the error messages.

    Returns:
        the weights, in the model's device and dtype.

    Raises:
        TypeError: an unsupported model or variant: conv stem, another head, or parts
            without an LRP rule here (timm layer-scale, qk-norm, distillation or register
            tokens, average pooling, another MLP or norm type), named in the message.
    """
    fam = family_of(model)
    blocks = [fam.block(blk) for blk in blocks_of(model)]
    norm = part(model, "norm")
    bad = list(fam.extras(model)) + ([] if isinstance(norm, nn.LayerNorm) else ["final norm"])
    for i, p in enumerate(blocks):
        bad += [f"block {i} {e}" for e in p.extras] + [
            f"block {i} {name} ({type(getattr(p, name)).__name__}, not {kind.__name__})"
            for name, kind in _RULE_TYPES if not isinstance(getattr(p, name), kind)]
    if bad:
        raise TypeError(
            f"{method} has no LRP rule for {', '.join(bad)} of this "
            f"{fam.name} model ({type(model).__name__}); use 'gae' or 'grad_rollout', which "
            "need only attention and gradients.")
    conv = part(model, "patch")
    if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != tuple(conv.stride) \
            or any(conv.padding) or conv.groups != 1 or tuple(conv.dilation) != (1, 1):
        raise TypeError(f"the patch embedding must be a Conv2d with kernel_size == stride, no "
                        f"padding (a plain patch embedding), got {conv!r}; models with a conv "
                        f"stem are not supported by {method}.")
    return ViTWeights(fam.name, conv.weight.detach(),
                      None if conv.bias is None else conv.bias.detach(),
                      part(model, "class_token").detach(),
                      part(model, "pos_embedding").detach(), tuple(blocks), norm,
                      head_layers(model), describe_model(model).num_heads)


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
        head_inputs: the input of each head layer, pooled first (B, D) or (B, D').
        logits: (B, K).
    """

    images: Tensor
    patches: Tensor
    tokens: Tensor
    blocks: list[BlockTrace]
    last: Tensor
    pooled: Tensor
    head_inputs: list[Tensor]
    logits: Tensor
    _graph: bool = field(default=False, repr=False)


def _as(t: Tensor | None, like: Tensor) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


def _block_forward(w: BlockParts, x: Tensor, num_heads: int) -> BlockTrace:
    B, T, D = x.shape
    d = D // num_heads
    h = layer_norm_as(w.norm1, x)                                    # in x's dtype
    qkv = F.linear(h, _as(w.qkv_weight, x), _as(w.qkv_bias, x))      # (B, T, 3D)
    q, k, v = qkv.reshape(B, T, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q * d ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)   # (B, heads, T, T)
    ctx = (attn @ v).transpose(1, 2).reshape(B, T, D)                # (B, T, D)
    a = linear_as(w.proj, ctx)
    mid = x + a
    m = layer_norm_as(w.norm2, mid)
    g = w.act(linear_as(w.fc1, m))                                   # (B, T, M)
    y = linear_as(w.fc2, g)
    return BlockTrace(x, h, q, k, v, attn, ctx, a, mid, m, g, y)


def forward_trace(weights: ViTWeights, images: Tensor) -> Trace:
    """Run the ViT functionally from ``weights`` and keep every tensor the rules need.

    This is the model's eval-mode forward pass (dropout off) with explicit attention. The
    autograd graph from the (internally marked) embedded tokens to the logits is kept so
    :func:`attention_gradients` can compute ∂y/∂A without a second forward; it asks for
    ∂y/∂A only, so no parameter gradients are ever computed or stored.

    Args:
        weights: from :func:`vit_weights`.
        images: (B, C, H, W) on the weights' device, sides multiples of the patch size,
            T = 1 + (H/p_h)(W/p_w) matching the position embedding. The pass runs in the
            images' dtype (weights cast to it: float64 for a float32 model is allowed).

    Returns:
        a :class:`Trace`; ``trace.logits`` equals the model's logits up to float rounding.
    """
    require_autograd("transformer_attribution")
    B = images.shape[0]
    with torch.enable_grad():
        emb = F.conv2d(images, _as(weights.patch_weight, images),
                       _as(weights.patch_bias, images), stride=weights.patch_size)  # (B,D,h,w)
        patches = emb.flatten(2).transpose(1, 2)                      # (B, N, D)
        tokens = torch.cat([_as(weights.class_token, images).expand(B, -1, -1), patches], 1)
        if tokens.shape[1:] != weights.pos_embedding.shape[1:]:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} give {tokens.shape[1]} tokens but "
                f"the position embedding has {weights.pos_embedding.shape[1]}; resize the "
                "images to the model's size.")
        x = (tokens + _as(weights.pos_embedding, images)).detach().requires_grad_(True)
        blocks = []
        for w in weights.blocks:
            bt = _block_forward(w, x, weights.num_heads)
            blocks.append(bt)
            x = bt.mid + bt.y
        pooled = layer_norm_as(weights.norm, x)[:, 0]                 # (B, D)
        logits, head_inputs = pooled, []
        for layer in weights.head:                # Linear, or Linear, activation, Linear
            head_inputs.append(logits)
            logits = linear_as(layer, logits) if isinstance(layer, nn.Linear) else layer(logits)
    return Trace(images, patches.detach(), tokens.detach(), blocks, x, pooled,
                 head_inputs, logits, _graph=True)


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
    grads = _backward(trace.logits, [bt.attn for bt in trace.blocks],
                      targets.to(trace.logits.device), retain_graph=False)
    trace._graph = False
    return grads


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


def relprop_block(w: BlockParts, bt: BlockTrace, relevance: Tensor, num_heads: int,
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
    r_g = relprop_linear(bt.g, _as(w.fc2.weight, bt.g), r_y, alpha, eps)
    r_u = relprop_identity(r_g)                                      # GELU
    r_m = relprop_linear(bt.m, _as(w.fc1.weight, bt.m), r_u, alpha, eps)
    r_mid = relprop_clone(r_mid_skip, relprop_identity(r_m))         # LayerNorm, branch
    # mid = x + a, a = proj(attn @ v): attention branch
    r_x_skip, r_a = relprop_add(bt.x, bt.a, r_mid, eps)
    r_ctx = relprop_linear(bt.ctx, _as(w.proj.weight, bt.ctx), r_a, alpha, eps)
    r_ctx = r_ctx.reshape(B, T, num_heads, D // num_heads).transpose(1, 2)  # (B, H, T, d)
    r_attn, r_v = relprop_matmul(bt.attn, bt.v, r_ctx, eps)          # each half of Σ R
    if stop_at_attention:
        return None, r_attn
    r_scores = relprop_identity(r_attn)                              # softmax
    r_q, r_kt = relprop_matmul(bt.q, bt.k.transpose(-2, -1), r_scores, eps)
    r_qkv = torch.stack([r_q, r_kt.transpose(-2, -1), r_v])          # (3, B, H, T, d)
    r_qkv = r_qkv.permute(1, 3, 0, 2, 4).reshape(B, T, 3 * D)        # q, k, v by head
    r_h = relprop_linear(bt.h, _as(w.qkv_weight, bt.h), r_qkv, alpha, eps)
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
    stop = 0 if to_input else check_layer_index(stop_layer, L, "stop_layer")
    with torch.no_grad():
        logits = trace.logits.detach()
        B, K = logits.shape
        onehot = F.one_hot(targets.to(logits.device), K).to(logits.dtype)
        r_pooled = onehot
        for layer, inp in zip(reversed(weights.head), reversed(trace.head_inputs)):
            r_pooled = (relprop_linear(inp.detach(), _as(layer.weight, inp), r_pooled, alpha, eps)
                        if isinstance(layer, nn.Linear) else relprop_identity(r_pooled))
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
            r_tokens, _ = relprop_add(trace.tokens, _as(weights.pos_embedding, r), r, eps)
            out.embedding = r_tokens
            out.pixels = relprop_patch_embedding(trace.images.detach(),
                                                 _as(weights.patch_weight, r),
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
        precision: ``"float64"`` (default) or ``"float32"``: the dtype of the functional
            forward, backward and relevance passes (the model is not copied or changed).

    One functional forward, one backward and one relevance pass for the whole batch (about
    6–8 forward passes of cost in float32, about 12 measured in float64). The model is
    read, never modified. Works for the course ViT, torchvision, timm ViT/DeiT and Hugging
    Face ViTs (see :func:`vit_weights`); on CPU or GPU.

    Conditioning: every step is per image, but the rules divide by sums that pass near 0,
    so the map is ill-conditioned. On a random ViT-B/16 (torchvision's initialisation, a
    random head) a relative change of 1e-9 in the input moves the float64 map by about
    6e-4, and float32 rounding (which differs with the batch size, as matrix products are
    blocked differently) moves it by O(1): an image's min-max normalised map alone and in
    a batch differed by up to 0.8 in float32. In float64 (the default) they agree to
    1e-4 (``tests/explain/test_lrp.py``; figures in docs/BENCHMARKS.md).

    Not available from a :class:`~vit_course.explain.capture.Capture`: the relevance needs
    every layer's activations, not just attention (``supports_capture = False``:
    ``explain(..., capture=cap)`` raises TypeError).
    """

    needs_grad = True
    class_specific = True
    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"start_layer": 0, "precision": "float64"}

    def __init__(self, model: nn.Module, **options: Any):
        super().__init__(model, **options)
        vit_weights(model)                    # unsupported families fail here, early

    def check_options(self, start_layer: int, precision: str) -> None:
        check_layer_index(start_layer, self.info.num_layers, "start_layer")
        check_choice(precision, "precision", tuple(PRECISIONS))

    def compute(self, images: Tensor, target: object, start_layer: int, precision: str
                ) -> Tensor:
        weights = vit_weights(self.model)
        _, x = prepare_images(self.model, images)
        check_targets(target, x.shape[0], self.info.num_classes)
        trace = forward_trace(weights, x.to(PRECISIONS[precision]))
        targets = resolve_targets(target, trace.logits.detach())
        grads = attention_gradients(trace, targets)
        rel = relevance_pass(weights, trace, targets, stop_layer=start_layer)
        with torch.no_grad():   # start_layer < 0 slices from the top, as relevance_pass stops
            rows = gae_rollout(rel.attention[start_layer:], grads[start_layer:])[:, 0]  # (B, T)
        return rows.to(x.dtype)

