"""Norm-based attention (Kobayashi, Kuribayashi, Yokoi, Inui 2020).

"Attention is Not Only a Weight: Analyzing Transformers with Vector Norms" (EMNLP 2020)
rewrites multi-head attention's output for token i as a sum over the tokens j it
attends to:

    y_i = Σ_j Σ_h α^h_ij f^h(x_j) + b_O,     f^h(x) = (x W_V^h + b_V^h) W_O^h

where x_j is token j's input to the attention (after the block's LayerNorm), α^h the
head's attention probabilities, W_V^h the head's slice of the value projection and W_O^h
the matching columns of the output projection. The weight α says how much token i
*looks* at token j; the norm ‖Σ_h α^h_ij f^h(x_j)‖ says how much token j actually
*changes* token i — a token with a large weight but a small transformed vector
contributes little. The map (method ``"attention_norm"``) is that norm for the class token
(i = 0) over the patch tokens, for one layer (default: the last).

Needs the attention's input tokens, which a :class:`~vit_course.explain.capture.Capture`
does not hold, so the explainer records them with a forward hook (removed afterwards)
during its own capture; it has no Capture path (``supports_capture = False``).

Shapes: B batch, H heads, T = P + N tokens, D width, d = D / H per head.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..checks import check_layer_index
from .capture import LayerRecorder, capture
from .families import block_parts
from .methods import Explainer, register_method


def value_output_weights(model: nn.Module, layer: int
                         ) -> tuple[nn.Module, Tensor, Tensor | None, Tensor]:
    """The pieces of block ``layer``'s attention the decomposition needs (any family).

    Returns:
        (the LayerNorm whose output enters the attention, W_V (D, D) as
        ``nn.Linear`` stores it (out × in), b_V (D,) or ``None``, W_O (D, D) out × in).
    """
    p = block_parts(model, layer)
    D = p.qkv_weight.shape[1]
    b_v = None if p.qkv_bias is None else p.qkv_bias[2 * D:]
    return p.norm1, p.qkv_weight[2 * D:], b_v, p.proj.weight


def norm_contributions(tokens: Tensor, attn: Tensor, w_v: Tensor, b_v: Tensor | None,
                       w_o: Tensor, row: int = 0) -> Tensor:
    """Token j's transformed, weighted vector Σ_h α^h_{row,j} f^h(x_j) for every j.

    Args:
        tokens: x, the attention's input (B, T, D) (after the LayerNorm).
        attn: the layer's attention probabilities (B, H, T, T).
        w_v: value projection (D, D), ``nn.Linear`` layout (out × in). b_v: (D,) or None.
        w_o: output projection (D, D), out × in (its bias is left out: it does not
            depend on j).
        row: the attending token i. Default: 0 (class token).

    Returns:
        (B, T, D); summed over j and plus b_O it is the attention output of token ``row``.
    """
    B, T, D = tokens.shape
    H = attn.shape[1]
    v = tokens @ w_v.T                                          # (B, T, D)
    if b_v is not None:
        v = v + b_v
    v = v.view(B, T, H, D // H)                                 # (B, T, H, d)
    weighted = attn[:, :, row, :].transpose(1, 2).unsqueeze(-1) * v   # α^h_{row,j} v^h_j
    return weighted.reshape(B, T, D) @ w_o.T                    # Σ_h (·) W_O^h


@register_method("attention_norm")
class NormAttention(Explainer):
    """Norm-based attention (Kobayashi et al. 2020): ‖Σ_h α^h_0j f^h(x_j)‖ per patch.

    Options:
        layer: layer index (negative from the top). Default: -1 (the last).

    Class-agnostic (``target`` is checked, not used). One forward pass.
    """

    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"layer": -1}

    def check_options(self, layer: int) -> None:
        check_layer_index(layer, self.info.num_layers, "layer")

    def compute(self, images: Tensor, target: object, layer: int) -> Tensor:
        ln, w_v, b_v, w_o = value_output_weights(self.model, layer)
        with LayerRecorder(ln) as rec:
            cap = capture(self.model, images, target=target)
            tokens = rec.output.detach()
        with torch.no_grad():
            contrib = norm_contributions(tokens, cap.attentions[layer], w_v, b_v, w_o)
        return contrib.norm(dim=-1)                                 # (B, T)
