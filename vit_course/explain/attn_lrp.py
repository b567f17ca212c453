"""CP-LRP (Ali et al., ICML 2022) and AttnLRP (Achtibat et al., ICML 2024) as input × modified gradient.

Both are layer-wise relevance propagation (LRP) for transformers, written in the
"input × gradient" form (Arras et al. 2022, used by both papers' code): with rules chosen
so that, for every layer, relevance = input ⊙ (modified gradient), the relevance of the
pixels for class c is ``x ⊙ ∂̃y_c/∂x``, one forward and one backward pass whose backward
is changed at a few places. The forward values are never changed. The rules:

- **Linear layers, convolution, additions** (residuals, position embedding): the plain
  gradient, i.e. LRP-0 (z-rule; AttnLRP's LRP-ε with ε → 0: here ε = 0).
- **LayerNorm**: the normalising σ = √(Var x + ε) treated as a constant (detached); the
  centring and the affine part stay linear (Ali et al. Sec. 3.2; AttnLRP Sec. 3.3, the
  identity rule on the normalisation).
- **GELU and the pre-logits Tanh** (element-wise): the identity rule, gradient
  replaced by f(z)/z, so relevance passes through unchanged (AttnLRP eq. 9; standard LRP,
  also in CP-LRP).
- **Attention, CP-LRP**: the attention probabilities A are detached: relevance flows
  through the values only, out = A·V with A a constant (Ali et al. eq. 9).
- **Attention, AttnLRP**: A is kept. The two bilinear products, q·kᵀ and A·V, use the
  uniform rule: their output gradient is halved, so each operand receives half the
  relevance (AttnLRP eq. 7). The softmax uses its plain gradient, which in this form is
  AttnLRP's softmax rule R_in = x ⊙ (R_out − s Σ R_out) (Prop. 3.1).

Conservation (Σ_pixels R = y_c): every bias absorbs relevance (Linear and convolution
biases, LayerNorm's β, the class token and position embedding are inputs the map does
not show). Without them, CP-LRP is exact: with A, σ and the f(z)/z factors frozen the
network is linear in x, and x·∇ of a linear function is the function. AttnLRP is exact up
to the softmax, whose rule is not conservative: the term x ⊙ s Σ R_out acts like a bias
(the paper's discussion of Prop. 3.1). ``tests/explain/test_attn_lrp.py`` checks both.

How this relates to ``lxt`` (rachtibat/LRP-eXplains-Transformers, the AttnLRP authors'
package, not a dependency here): lxt patches a model's modules and functions with
autograd functions whose backward applies the same rules (``identity_rule_implicit`` for
GELU, ``divide_gradient`` after a matmul, ``stop_gradient`` on A for CP-LRP, a LayerNorm
forward with σ detached; its torchvision ViT composite, ``lxt/efficient/models/
vit_torch.py``, is CP-LRP), then takes input × gradient. Here nothing is patched: the
forward pass is re-run functionally from the model's own weights (read through
:mod:`vit_course.explain.families` as for transformer attribution, :func:`.lrp.vit_weights`),
so every supported family gets the same rules; lxt's identity rule adds ε = 1e-10 to the
denominator, here z = 0 gets gradient 0. lxt also offers γ-rules for Linear layers
(for ViTs); they are not used here.

Shapes: B batch, C channels, H×W pixels, T tokens, D width, K classes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_targets, resolve_targets
from .capture import prepare_images, require_autograd
from .families import BlockParts, linear_as
from .lrp import ViTWeights, vit_weights
from .methods import Explainer, register_method

#: The attention rule of each method: ``"cp"`` (A detached) or ``"attn"`` (uniform rule).
ATTENTION_RULES: tuple[str, ...] = ("cp", "attn")


def keep_value(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass, ``surrogate``'s gradient in the backward pass."""
    return value.detach() + (surrogate - surrogate.detach())


def halve_gradient(t: Tensor) -> Tensor:
    """The uniform rule for a bilinear product's output: same value, gradient ÷ 2."""
    return keep_value(t, t / 2)


def identity_rule(fn: nn.Module, z: Tensor) -> Tensor:
    """``fn(z)`` for an element-wise ``fn``, with gradient f(z)/z (0 where z = 0)."""
    y = fn(z)
    ratio = torch.where(z != 0, y / torch.where(z != 0, z, 1), 0).detach()
    return keep_value(y, z * ratio)


def layer_norm_detached(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm with σ treated as a constant in the backward pass (value unchanged)."""
    dims = tuple(range(-len(norm.normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    sigma = (x.var(dims, keepdim=True, unbiased=False) + norm.eps).sqrt().detach()
    y = (x - mean) / sigma
    if norm.weight is not None:
        y = y * norm.weight.to(x.dtype)
    if norm.bias is not None:
        y = y + norm.bias.to(x.dtype)
    return y


def _block(p: BlockParts, x: Tensor, num_heads: int, rule: str,
           record: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
    B, T, D = x.shape
    d = D // num_heads
    bias = None if p.qkv_bias is None else p.qkv_bias.to(x.dtype)
    qkv = F.linear(layer_norm_detached(p.norm1, x), p.qkv_weight.to(x.dtype), bias)
    q, k, v = qkv.reshape(B, T, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    if rule == "cp":
        attn = ((q * d ** -0.5) @ k.transpose(-2, -1)).softmax(-1).detach()
        ctx = attn @ v                                               # linear in v
    else:
        scores = halve_gradient((q * d ** -0.5) @ k.transpose(-2, -1))
        attn = scores.softmax(-1)                                    # plain gradient
        ctx = halve_gradient(attn @ v)                               # (B, H, T, d)
        if record is not None:
            record.append((scores, attn))
    mid = x + linear_as(p.proj, ctx.transpose(1, 2).reshape(B, T, D))
    z = linear_as(p.fc1, layer_norm_detached(p.norm2, mid))
    return mid + linear_as(p.fc2, identity_rule(p.act, z))


def modified_logits(weights: ViTWeights, images: Tensor, rule: str,
                    record: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """The model's logits (B, K), computed so that their backward pass applies the rules.

    Args:
        weights: from :func:`vit_course.explain.lrp.vit_weights`.
        images: (B, C, H, W); the pass runs in their dtype.
        rule: one of :data:`ATTENTION_RULES`.
        record: AttnLRP only: a list that receives each block's softmax input and output
            ((B, H, T, T) each), to measure what the softmax rule does not conserve.
    """
    B = images.shape[0]
    emb = F.conv2d(images, weights.patch_weight.to(images.dtype),
                   None if weights.patch_bias is None else weights.patch_bias.to(images.dtype),
                   stride=weights.patch_size)
    tokens = torch.cat([weights.class_token.to(images.dtype).expand(B, -1, -1),
                        emb.flatten(2).transpose(1, 2)], dim=1)
    if tokens.shape[1:] != weights.pos_embedding.shape[1:]:
        raise ValueError(f"images of size {tuple(images.shape[-2:])} give {tokens.shape[1]} "
                         f"tokens but the position embedding has "
                         f"{weights.pos_embedding.shape[1]}; resize them to the model's size.")
    x = tokens + weights.pos_embedding.to(images.dtype)
    for p in weights.blocks:
        x = _block(p, x, weights.num_heads, rule, record)
    out = layer_norm_detached(weights.norm, x)[:, 0]                 # (B, D)
    for layer in weights.head:
        out = linear_as(layer, out) if isinstance(layer, nn.Linear) else identity_rule(layer, out)
    return out


def lrp_relevance(model: nn.Module, images: Tensor, target: object = None,
                  rule: str = "attn") -> tuple[Tensor, Tensor]:
    """Pixel relevance x ⊙ ∂̃y_c/∂x for each image's target, one forward + one backward.

    Works inside ``torch.no_grad()`` (gradients are enabled for the call).

    Returns:
        (relevance (B, C, H, W), the target logits y_c (B,)).
    """
    require_autograd(f"{rule}-LRP")
    weights = vit_weights(model, "attn_lrp" if rule == "attn" else "cp_lrp")
    info, x = prepare_images(model, images)
    check_targets(target, x.shape[0], info.num_classes)        # before any model pass
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = modified_logits(weights, x, rule)
        targets = resolve_targets(target, logits.detach())
        chosen = logits.gather(1, targets.to(logits.device)[:, None])[:, 0]
        (grad,) = torch.autograd.grad(chosen.sum(), x)
    return (x * grad).detach(), chosen.detach()


class _LRPExplainer(Explainer):
    needs_grad = True
    class_specific = True
    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"resolution": "grid"}
    rule: ClassVar[str] = "attn"

    def __init__(self, model: nn.Module, **options: Any):
        super().__init__(model, **options)
        vit_weights(model, self.name)                   # unsupported variants fail here

    def compute(self, images: Tensor, target: object) -> Tensor:
        relevance, _ = lrp_relevance(self.model, images, target, self.rule)
        return relevance.sum(1)                                      # (B, H, W)


@register_method("attn_lrp")
class AttnLRP(_LRPExplainer):
    """AttnLRP (Achtibat et al., ICML 2024): LRP through attention with the uniform rule
    for q·kᵀ and A·V and the softmax rule; LayerNorm σ constant; identity rule for GELU.

    Signed relevance summed over channels: pixel maps with ``resolution="pixels"``, else
    patch means. One forward and one backward pass (≈ 3 plain forwards), any family of
    :func:`vit_course.explain.lrp.vit_weights`; works inside ``torch.no_grad()``. See the
    module docstring for the rules, conservation and how it relates to ``lxt``.
    """

    rule = "attn"


@register_method("cp_lrp")
class CPLRP(_LRPExplainer):
    """CP-LRP (Ali et al., ICML 2022, "XAI for Transformers: Better Explanations through
    Conservative Propagation"): attention probabilities and LayerNorm σ detached,
    identity rule for GELU, input × gradient. Conservative up to the bias terms.

    As :class:`AttnLRP` otherwise (options, cost, output).
    """

    rule = "cp"
