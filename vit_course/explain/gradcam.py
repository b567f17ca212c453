"""Grad-CAM for ViTs, on token features and on the last layer's attention.

The name "Grad-CAM for ViT" is used for two different methods; both are here.

``gradcam`` — Grad-CAM (Selvaraju et al. 2017) on token features, as jacobgil/pytorch-grad-cam
does it for ViTs (its ``tutorials/vision_transformers.md``: ``reshape_transform`` drops
the class token and lays the rest out as a grid; target layer ``blocks[-1].norm1``). A
layer's output tokens (B, P+N, D) play the role of a CNN feature map: the P prefix tokens
are dropped and the N patch tokens are laid out as (B, D, h, w). With the gradients G of
the target logit with respect to that output, each channel d gets the weight w_d = mean
over the grid of G_d (``GradCAM.get_cam_weights`` in ``pytorch_grad_cam/grad_cam.py``),
and the map is ReLU(Σ_d w_d A_d) (``np.maximum(cam, 0)`` in ``base_cam.py``; the library
then scales each map to [0, 1] and resizes it, which the functions here leave to
:func:`vit_course.explain.upsample`). The default layer is the last block's *first*
LayerNorm (course ViT: ``blocks[-1].msa_block.layer_norm``, torchvision:
``encoder.layers[-1].ln_1``, timm: ``blocks[-1].norm1``, Hugging Face:
``vit.layers[-1].layernorm_before``): after the last block only the
class token reaches the head, so the patch tokens' output there has zero gradient (the
tutorial's reason for ``norm1``), while the input of the last attention still feeds the
class token through attention.

``attention_gradcam`` — the Grad-CAM baseline of Chefer, Gur, Wolf (CVPR 2021,
"Transformer Interpretability Beyond Attention Visualization"; ``generate_cam_attn`` of
class ``Baselines`` (``GradCam`` in earlier commits) in hila-chefer/Transformer-Explainability
``baselines/ViT/ViT_explanation_generator.py``): the heads of the last layer's attention
(``blocks[-1]``) are the channels and the class token's attention row is the feature map.
Each head k gets the weight w_k = mean over patch columns of ∂y_c/∂A[k, 0, P:], and the
map is (mean_k w_k · A[k, 0, P:])⁺. (Their code multiplies, averages over heads and then
clamps, ``(cam * grad).mean(0).clamp(min=0)``; so does this. It then min-max normalises
image 0's map and hard-codes a 14 × 14 grid; here maps are raw, per image, on the
model's grid.) It reads a :class:`~vit_course.explain.capture.Capture`, so maps
for other layers come without another forward pass.

Hooks: :class:`~vit_course.explain.capture.LayerRecorder` is the one place that registers
them; it is a context manager that removes its handle on exit, also when the forward or
backward raises.

Shapes: B batch, P prefix tokens, N = h·w patches, T = P + N, D width, K classes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..checks import check_attentions, check_gradients, check_layer_index, check_targets, \
    resolve_targets
from ..runtime import eval_mode
from .capture import Capture, LayerRecorder
from .families import block_parts, logits_of
from .methods import Explainer, gradient_inputs, register_method


# ----------------------------------------------------------------------------- layer
def default_gradcam_layer(model: nn.Module) -> nn.Module:
    """The last block's first LayerNorm (``target_layers = [model.blocks[-1].norm1]`` in
    jacobgil/pytorch-grad-cam ``tutorials/vision_transformers.md``).

    Returns:
        course ViT: ``blocks[-1].msa_block.layer_norm``; torchvision:
        ``encoder.layers[-1].ln_1``; timm: ``blocks[-1].norm1``; Hugging Face:
        ``vit.layers[-1].layernorm_before`` (:func:`~vit_course.explain.families.block_parts`).
    """
    return block_parts(model, -1).norm1


# ----------------------------------------------------------------------------- maths
def gradcam_from_tokens(activations: Tensor, gradients: Tensor, grid: tuple[int, int],
                        num_prefix_tokens: int = 1) -> Tensor:
    """Grad-CAM from a layer's token outputs and their gradients.

    Args:
        activations: (B, T, D) tokens, T = P + h·w.
        gradients: ∂y_c/∂activations, (B, T, D).
        grid: patch grid (h, w).
        num_prefix_tokens: P, dropped before averaging. Default: 1.

    Returns:
        (B, h, w) = ReLU(Σ_d w_d A_d) with w_d = mean over the patches of G_d.
    """
    if activations.ndim != 3 or activations.shape != gradients.shape:
        raise ValueError(f"activations and gradients must both be (B, T, D); got "
                         f"{tuple(activations.shape)} and {tuple(gradients.shape)}")
    h, w = grid
    P = num_prefix_tokens
    if activations.shape[1] != P + h * w:
        raise ValueError(
            f"the layer outputs {activations.shape[1]} tokens but grid {grid} with {P} "
            f"prefix token(s) needs {P + h * w}; Grad-CAM needs a layer whose output is the "
            "token sequence (B, T, D), e.g. a block's LayerNorm.")
    A = activations[:, P:]                               # (B, N, D)
    weights = gradients[:, P:].mean(dim=1, keepdim=True)  # (B, 1, D): mean over the grid
    cam = (A * weights).sum(dim=-1).clamp(min=0)         # (B, N)
    return cam.reshape(-1, h, w)


def attention_gradcam(attentions: list[Tensor], gradients: list[Tensor], layer: int = -1,
                      num_prefix_tokens: int = 1) -> Tensor:
    """Chefer et al.'s attention Grad-CAM: (mean_k w_k · A_k[0, P:])⁺.

    Args:
        attentions: per-layer attention (B, heads, T, T), input side first.
        gradients: ∂y_c/∂A_l, same shapes.
        layer: which layer. Default: -1 (the last, ``blocks[-1]`` in their
            ``generate_cam_attn``).
        num_prefix_tokens: P. Default: 1.

    Returns:
        (B, N) scores over the patch tokens.
    """
    layers = check_attentions(attentions)
    grads = check_gradients(gradients, layers)
    i = check_layer_index(layer, len(layers), "layer")
    P = num_prefix_tokens
    a = layers[i][:, :, 0, P:]                         # (B, heads, N): class-token row
    g = grads[i][:, :, 0, P:]
    w = g.mean(dim=-1, keepdim=True)                    # (B, heads, 1): one weight per head
    return (a * w).mean(dim=1).clamp(min=0)             # (B, N)


# ----------------------------------------------------------------------------- explainers
@register_method("gradcam")
class GradCAM(Explainer):
    """Grad-CAM on a layer's token features (jacobgil/pytorch-grad-cam's ViT recipe,
    ``tutorials/vision_transformers.md``; tested against ``pytorch_grad_cam.GradCAM``).

    Options:
        layer: the module whose output tokens (B, T, D) are used, or ``None`` for the last
            block's first LayerNorm (:func:`default_gradcam_layer`). Default: ``None``.

    One forward pass for the batch and a backward pass that stops at the layer (about 1.2
    plain forwards for ViT-B/16); one target per image. The layer's activations are not in
    a :class:`Capture`, so there is no Capture path (``attention_gradcam`` has one).
    """

    needs_grad = True
    class_specific = True
    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"layer": None}

    def check_options(self, layer: nn.Module | None) -> None:
        if layer is None:
            return
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be None (the last block's first LayerNorm) or a "
                            f"module of the model, got {type(layer).__name__}")
        if not any(m is layer for m in self.model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a module of this "
                             f"{type(self.model).__name__}; pass one of its layers, e.g. "
                             "vit_course.explain.gradcam.default_gradcam_layer(model).")

    def compute(self, images: Tensor, target: object, layer: nn.Module | None) -> Tensor:
        layer = default_gradcam_layer(self.model) if layer is None else layer
        info, x = gradient_inputs(self.model, images)
        B = x.shape[0]
        check_targets(target, B, info.num_classes)              # before any pass
        with eval_mode(self.model), LayerRecorder(layer) as rec, torch.enable_grad():
            logits = logits_of(self.model, x.detach().requires_grad_(True))
            tokens = rec.output
            t = resolve_targets(target, logits)
            if not tokens.requires_grad:
                raise RuntimeError(f"the output of {type(layer).__name__} is not part of the "
                                   "graph that reaches the logits; pick a layer before the head.")
            (grads,) = torch.autograd.grad(logits.gather(1, t.view(-1, 1)).sum(), tokens)
        if tokens.ndim != 3 or tokens.shape[0] != B:
            raise ValueError(f"layer {type(layer).__name__} outputs {tuple(tokens.shape)}; "
                             "Grad-CAM needs token outputs (B, T, D).")
        return gradcam_from_tokens(tokens.detach(), grads.detach(), info.grid(*x.shape[-2:]),
                                   info.num_prefix_tokens)


@register_method("attention_gradcam")
class AttentionGradCAM(Explainer):
    """Chefer et al.'s Grad-CAM on attention: heads as channels, class-token row as map.

    Options:
        layer: layer index (negative from the top). Default: -1 (the last, as
            ``blocks[-1]`` in their ``generate_cam_attn``).

    One forward and one backward pass; works from a Capture with gradients.
    """

    needs_grad = True
    class_specific = True
    defaults: ClassVar[dict[str, Any]] = {"layer": -1}

    def check_options(self, layer: int) -> None:
        check_layer_index(layer, self.info.num_layers, "layer")

    def compute(self, cap: Capture, target: object, layer: int) -> Tensor:
        P = cap.num_prefix_tokens
        scores = attention_gradcam(cap.attentions, cap.gradients, layer, P)   # (B, N)
        return torch.cat([scores.new_zeros(scores.shape[0], P), scores], dim=1)  # (B, P + N)
