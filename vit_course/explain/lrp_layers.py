"""Layer-wise relevance propagation (LRP) rules as pure tensor functions.

Each ``relprop_*`` function takes what a layer saw in the forward pass and the relevance
R arriving at its output, and returns the relevance of its input(s). These are the rules
Chefer, Gur & Wolf (CVPR 2021, "Transformer Interpretability Beyond Attention
Visualization") use for a ViT, written batched and explicitly (no autograd, no hooks) so
each can be checked on small tensors. Each restates the ``relprop`` of a class in
hila-chefer/Transformer-Explainability ``modules/layers_ours.py`` as their
``baselines/ViT/ViT_LRP.py`` uses it (``Linear``, ``einsum`` with ``Attention.relprop``'s
halving, ``Add``, ``Clone``, and the pass-through ``RelProp.relprop``); each docstring
names its class.

Conservation (Σ R_in = Σ R_out, per image) is what makes LRP relevance a decomposition.
How each rule stands:

- :func:`relprop_linear` (LRP-αβ with α − β = 1; α = 1, β = 0 by default): exact. Bias
  terms take no relevance (the denominators leave them out). Relevance of an output j
  whose positive pre-activation z⁺_j is exactly 0 (no positive contribution at all) is
  dropped, as in every z⁺ rule.
- :func:`relprop_patch_embedding`: the same rule on the flattened patches (a Conv2d with
  kernel = stride is one Linear shared by all patches); exact in the same sense.
- :func:`relprop_matmul`: gradient × input for each operand of a bilinear product; each
  operand's share sums to Σ R, so both are halved: exact except where the product is 0.
- :func:`relprop_add` (skip connections, the position embedding): the z-rule, then each
  operand's share rescaled so the two sum to Σ R in proportion to |Σ share|: exact
  unless both shares sum to 0.
- :func:`relprop_clone` (a tensor used twice): the sum; exact.
- :func:`relprop_identity` for softmax, LayerNorm, GELU and dropout, as in the authors'
  code (those classes inherit ``RelProp.relprop``, which returns R): trivially
  conservative, but the relevance is passed through as if the layer were not there (the
  generic gradient × input rule applied to GELU or softmax would not).

"Exact" is up to the stabiliser ``eps`` in every division, which leaks about eps/|z| of
the relevance (whole-model sums in float64: 1e-7 off with the default eps = 1e-9, 1e-15
with eps = 0), and float rounding (float32: about 1e-5).

Shapes: B batch, T tokens, D width, H heads (attention), d = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


#: Default stabiliser for the divisions R / z.
EPS = 1e-9


def safe_divide(num: Tensor, den: Tensor, eps: float = EPS) -> Tensor:
    """``num / den`` with ``den`` pushed ``eps`` away from 0 on its own side; 0 where den == 0.

    The authors' ``safe_divide`` (``layers_ours.py``) adds +1e-9 whatever the sign
    (``b.clamp(min=1e-9) + b.clamp(max=1e-9)``), which blows up, with the wrong sign, for
    a denominator near -1e-9; here the stabiliser follows the sign of ``den``
    (``tests/explain/test_lrp.py`` restates both).

    Args:
        num, den: broadcastable tensors.
        eps: stabiliser. Default: :data:`EPS`.

    Returns:
        the broadcast shape.
    """
    stable = torch.where(den >= 0, den + eps, den - eps) if eps else den
    return (num / stable).masked_fill_(den == 0, 0.0)


def _share(x_pos: Tensor, x_neg: Tensor, w1: Tensor, w2: Tensor, relevance: Tensor,
           eps: float) -> Tensor:
    """Relevance of x for the contributions x⁺·w1 + x⁻·w2, redistributed in proportion."""
    z = F.linear(x_pos, w1).add_(F.linear(x_neg, w2))        # (..., out)
    s = safe_divide(relevance, z, eps)                       # (..., out)
    return (s @ w1).mul_(x_pos).addcmul_(s @ w2, x_neg)      # (..., in)


def relprop_linear(x: Tensor, weight: Tensor, relevance: Tensor, alpha: float = 1.0,
                   eps: float = EPS) -> Tensor:
    """LRP-αβ through ``y = x Wᵀ + b`` (Bach et al. 2015; ``Linear.relprop`` in the
    authors' ``layers_ours.py``, run with ``alpha=1`` by ``LRP.generate_LRP``).

    With contributions c_ij = x_i W_ji split into their positive and negative parts,
    R_i = Σ_j (α c⁺_ij / Σ_i' c⁺_i'j − β c⁻_ij / Σ_i' c⁻_i'j) R_j with β = α − 1. The
    default α = 1, β = 0 keeps positive contributions only (the deep-Taylor z⁺ rule for
    non-negative inputs). Inputs may have any sign: x⁺W⁺ and x⁻W⁻ are the positive
    contributions. Four matrix products per rule (two forward-sized, two backward-sized),
    computed on the split parts so that an output with no positive contribution gets
    exactly z⁺ = 0 (the shortcut z⁺ = (xW + |x||W|)/2 would save one product but cancels
    badly there).

    Args:
        x: the layer's input (..., in).
        weight: (out, in).
        relevance: R at the output (..., out).
        alpha: α ≥ 1. Default: 1.
        eps: stabiliser. Default: :data:`EPS`.

    Returns:
        R at the input (..., in); Σ over ``in`` equals Σ over ``out`` per row.
    """
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1 (beta = alpha - 1 >= 0), got {alpha}; "
                         "alpha=1 is the rule the paper uses.")
    w_pos = weight.clamp(min=0)
    x_pos = x.clamp(min=0)
    w_neg, x_neg = weight - w_pos, x - x_pos
    activators = _share(x_pos, x_neg, w_pos, w_neg, relevance, eps)
    beta = alpha - 1.0
    if beta == 0:
        return activators
    inhibitors = _share(x_pos, x_neg, w_neg, w_pos, relevance, eps)
    return alpha * activators - beta * inhibitors


def relprop_patch_embedding(images: Tensor, weight: Tensor, relevance: Tensor,
                            alpha: float = 1.0, eps: float = EPS) -> Tensor:
    """LRP-αβ through the patch embedding Conv2d (kernel = stride = patch size).

    Such a convolution is one Linear applied to every flattened patch, so the rule is
    :func:`relprop_linear` on the patches, folded back onto the pixels.

    Args:
        images: the input (B, C, H, W).
        weight: the Conv2d weight (D, C, p_h, p_w).
        relevance: R at the patch tokens (B, N, D), patches in row-major order.
        alpha: α ≥ 1. Default: 1.
        eps: stabiliser. Default: :data:`EPS`.

    Returns:
        R at the pixels (B, C, H, W).
    """
    B, C, H, W = images.shape
    D, _, ph, pw = weight.shape
    patches = F.unfold(images, (ph, pw), stride=(ph, pw)).transpose(1, 2)  # (B, N, C·ph·pw)
    r = relprop_linear(patches, weight.reshape(D, -1), relevance, alpha, eps)
    return F.fold(r.transpose(1, 2), (H, W), (ph, pw), stride=(ph, pw))     # (B, C, H, W)


def relprop_matmul(a: Tensor, b: Tensor, relevance: Tensor, eps: float = EPS
                   ) -> tuple[Tensor, Tensor]:
    """Relevance through ``z = a @ b`` to both operands (attention·V, Q·Kᵀ).

    Gradient × input for each operand: R_a = a ⊙ (S bᵀ), R_b = b ⊙ (aᵀ S) with
    S = R / z. Each of these sums to Σ R, so both are halved (the authors' split:
    ``cam1 /= 2``, ``cam_v /= 2`` and the same for q, k in ``Attention.relprop``,
    ``ViT_LRP.py``; the product itself is their ``einsum`` class) and
    together they conserve Σ R. A constant scale on z (1/√d in attention) cancels.

    Args:
        a: (..., n, k). b: (..., k, m).
        relevance: R at z (..., n, m).
        eps: stabiliser. Default: :data:`EPS`.

    Returns:
        (R_a, R_b) shaped like ``a`` and ``b``.
    """
    s = safe_divide(relevance, a @ b, eps)                   # (..., n, m)
    r_a = a * (s @ b.transpose(-2, -1))
    r_b = b * (a.transpose(-2, -1) @ s)
    return r_a / 2, r_b / 2


def relprop_add(x: Tensor, y: Tensor, relevance: Tensor, eps: float = EPS
                ) -> tuple[Tensor, Tensor]:
    """Relevance through ``z = x + y`` (residual connections, position embedding).

    The z-rule gives r_x = x ⊙ R/z and r_y = y ⊙ R/z. Cancelling terms can make their
    sums large and of opposite signs, so (the authors' rule, ``Add.relprop`` in
    ``layers_ours.py``) each is rescaled to carry a
    share of Σ R proportional to the size of its own sum:
    R_x = r_x · (|Σr_x| / (|Σr_x| + |Σr_y|)) Σ R / Σr_x, likewise R_y. Sums are taken
    per image (the authors' code sums over the whole batch, ``a.sum()``, which is the
    same for the batch of 1 it runs on).

    Args:
        x, y: the summands, broadcastable to R's shape (B, ...).
        relevance: R at z (B, ...).
        eps: stabiliser. Default: :data:`EPS`.

    Returns:
        (R_x, R_y), both shaped like ``relevance``; Σ R_x + Σ R_y = Σ R per image.
    """
    x, y = x.expand_as(relevance), y.expand_as(relevance)
    s = safe_divide(relevance, x + y, eps)
    r_x, r_y = x * s, y * s
    dims = tuple(range(1, relevance.ndim))
    sum_x = r_x.sum(dims, keepdim=True)
    sum_y = r_y.sum(dims, keepdim=True)
    total = relevance.sum(dims, keepdim=True)
    size = sum_x.abs() + sum_y.abs()
    share_x = safe_divide(sum_x.abs(), size, eps) * total
    share_y = safe_divide(sum_y.abs(), size, eps) * total
    return r_x * safe_divide(share_x, sum_x, eps), r_y * safe_divide(share_y, sum_y, eps)


def relprop_clone(*relevances: Tensor) -> Tensor:
    """Relevance of a tensor used by several branches: the sum of the branches' relevance."""
    if not relevances:
        raise ValueError("relprop_clone needs the relevance of at least one branch")
    return sum(relevances[1:], relevances[0])


def relprop_identity(relevance: Tensor) -> Tensor:
    """Softmax, LayerNorm, GELU, dropout: relevance passes through unchanged.

    This is what the authors' code does for these layers (``RelProp.relprop`` returns R;
    their ``Softmax``, ``LayerNorm``, ``GELU`` and ``Dropout`` inherit it). It conserves
    trivially, but it
    is a choice, not a decomposition: the layer is treated as if it were not there.
    """
    return relevance
