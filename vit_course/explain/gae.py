"""Generic attention-model explainability (GAE), Chefer, Gur, Wolf, ICCV 2021.

"Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers", the rule for self-attention (their Eq. 5–6, used for ViT in their
hila-chefer/Transformer-MM-Explainability ``Transformer_MM_explainability_ViT.ipynb``,
whose ``avg_heads`` and ``apply_self_attention_rules`` carry the comments "rule 5 from
paper" and "rule 6 from paper"). Relevance starts as the identity,
R = I (T × T: every token is relevant to itself), and each layer l, from the input side
up, adds the relevance carried by its attention:

    Ā_l = mean_heads((∇A_l ⊙ A_l)⁺)        (B, T, T)
    R   ← R + Ā_l · R

where ∇A_l = ∂y_c/∂A_l is the gradient of the target logit with respect to layer l's
post-softmax attention. The map is the class token's row of R with the prefix columns
dropped.

How it differs from gradient rollout (:func:`vit_course.explain.rollout.grad_rollout`):
the positive part is taken per head *before* averaging (grad rollout clamps after fusing
the heads); no row normalisation (grad rollout uses (Ā + I)/rowsum); no discard; and the
identity is added once, at the start, instead of to every layer's matrix
(R_L = (I + Ā_{L-1})···(I + Ā_0)).

Shapes: B batch, H heads, T = P + N tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import check_attentions, check_gradients, check_layer_index
from .capture import Capture
from .methods import Explainer, register_method


def gae_layer(attn: Tensor, grad: Tensor) -> Tensor:
    """One layer's Ā = mean over heads of (∇A ⊙ A)⁺.

    Args:
        attn: (B, H, T, T) post-softmax attention.
        grad: ∂y_c/∂attn, same shape.

    Returns:
        (B, T, T), non-negative.
    """
    if attn.shape != grad.shape:
        raise ValueError(f"attention {tuple(attn.shape)} and gradient {tuple(grad.shape)} "
                         "must have the same shape (B, heads, T, T)")
    return (grad * attn).clamp(min=0).mean(dim=1)


def gae_rollout(attentions: Sequence[Tensor], gradients: Sequence[Tensor],
                start_layer: int = 0) -> Tensor:
    """The full GAE relevance matrix R = (I + Ā_{L-1}) ··· (I + Ā_start).

    Args:
        attentions: per-layer attention, input side first, each (B, H, T, T).
        gradients: ∂y_c/∂A_l in the same order and shapes (``Capture.gradients``).
        start_layer: first layer used (negative counts from the top). Default: 0.

    Returns:
        R (B, T, T). Row 0 is the class token's relevance over all tokens.

    Example::

        R = gae_rollout(cap.attentions, cap.gradients)        # (B, 197, 197)
        maps = cls_row_to_grid(R, cap.grid, cap.num_prefix_tokens)
    """
    layers = check_attentions(attentions)
    grads = check_gradients(gradients, layers)
    start = check_layer_index(start_layer, len(layers), "start_layer")
    B, _, T, _ = layers[0].shape
    R = torch.eye(T, dtype=layers[0].dtype, device=layers[0].device).expand(B, T, T).clone()
    for a, g in zip(layers[start:], grads[start:]):
        R = R + gae_layer(a, g) @ R
    return R


@register_method("gae")
class GAE(Explainer):
    """Chefer et al.'s generic attention explainability (ICCV 2021); see :func:`gae_rollout`.

    Options:
        start_layer: first layer used (negative from the top). Default: 0 (all layers).

    One forward and one backward pass for the batch, one target per image; from a Capture
    with gradients, no pass at all. The class token's own entry (always ≥ 1) is dropped
    with the prefix columns.
    """

    needs_grad = True
    class_specific = True
    defaults: ClassVar[dict[str, Any]] = {"start_layer": 0}

    def check_options(self, start_layer: int) -> None:
        check_layer_index(start_layer, self.info.num_layers, "start_layer")

    def compute(self, cap: Capture, target: object, start_layer: int) -> Tensor:
        return gae_rollout(cap.attentions, cap.gradients, start_layer)[:, 0]
