"""Explaining ViT decisions: attention capture, raw attention, rollout, gradient rollout,
GAE, transformer attribution (LRP), Grad-CAM, attention flow and input-gradient baselines.

One entry point::

    maps = explain(model, images, method="rollout", discard_ratio=0.9)   # (B, h, w)
    heat = upsample(maps, images.shape[-2:], normalize=True)              # (B, H, W)

``method`` names a class in :data:`METHODS` (``"attention"``, ``"rollout"``,
``"grad_rollout"``, and any method registered later with :func:`register_method`). Maps
are one per image on the model's patch grid (the class token's row, prefix tokens
dropped), not normalised and not upsampled. Every method gives the same map for an image
alone as inside a batch.

For interactive tools, capture once and recompute cheaply::

    cap = capture(model, images, with_grad=True)           # one forward + one backward
    Rollout(model).from_capture(cap, discard_ratio=0.5)    # zero forward passes

Modules: :mod:`.capture` (recording, model restore), :mod:`.rollout` (pure tensor
functions), :mod:`.methods` (the classes and the registry). CLI: ``python -m
vit_course.explain IMAGE ...``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .capture import (
    SUPPORTED_MODELS,
    AttentionRecorder,
    Capture,
    ModelInfo,
    capture,
    describe_model,
    gradients_for_targets,
)
from .methods import (
    METHODS,
    AttentionMap,
    Explainer,
    GradRollout,
    Rollout,
    get_method,
    normalize_maps,
    register_method,
    upsample,
)
from .rollout import (
    HEAD_FUSIONS,
    attention_entropy,
    attention_grid,
    attention_map,
    cls_row_to_grid,
    discard_lowest,
    fuse_heads,
    grad_rollout,
    rollout,
    rollout_step,
)

# Methods beyond rollout register themselves on import (issue 5).
from .flow import AttentionFlow, attention_flow, flow_matrices, max_flow_layered  # noqa: E402
from .gae import GAE, gae_cls_row, gae_layer, gae_rollout  # noqa: E402
from .gradcam import (  # noqa: E402
    AttentionGradCAM,
    GradCAM,
    LayerRecorder,
    attention_gradcam,
    default_gradcam_layer,
    gradcam_from_tokens,
)
from .gradients import (  # noqa: E402
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    integrated_gradients,
    make_baseline,
    pool_to_grid,
    saliency,
    smoothgrad,
)
from .lrp import TransformerAttribution  # noqa: E402
from .norm import NormAttention, norm_contributions  # noqa: E402

__all__ = [
    "explain",
    "METHODS",
    "register_method",
    "get_method",
    "Explainer",
    "AttentionMap",
    "Rollout",
    "GradRollout",
    "capture",
    "Capture",
    "gradients_for_targets",
    "AttentionRecorder",
    "ModelInfo",
    "describe_model",
    "SUPPORTED_MODELS",
    "HEAD_FUSIONS",
    "fuse_heads",
    "discard_lowest",
    "rollout_step",
    "rollout",
    "grad_rollout",
    "cls_row_to_grid",
    "attention_map",
    "attention_grid",
    "attention_entropy",
    "upsample",
    "normalize_maps",
]


def explain(model: nn.Module, images: Tensor, method: str = "rollout", target: Any = None,
            **options: Any) -> Tensor:
    """Explain a batch of images with the method registered as ``method``.

    Args:
        model: course ViT, torchvision ``VisionTransformer`` or timm ViT/DeiT. It is run in
            eval mode and left exactly as it was.
        images: (B, C, H, W), transformed for the model.
        method: a name in :data:`METHODS`. Default: ``"rollout"``.
        target: ``None`` (predicted class), an int, or B ints; used by class-specific
            methods (``grad_rollout``). Default: ``None``.
        **options: the method's options, e.g. ``head_fusion``, ``discard_ratio``,
            ``start_layer`` (rollouts) or ``layer``, ``head`` (attention).

    Returns:
        (B, h, w) maps on the patch grid.

    Raises:
        ValueError: unknown method (the message lists the valid ones), bad option values,
            bad images or targets. TypeError: unsupported model, unknown option names.

    Example::

        maps = explain(model, images, "grad_rollout", target=2, discard_ratio=0.9)
        maps.shape                                   # (B, 14, 14) for ViT-B/16 at 224
    """
    return get_method(method)(model).attribute(images, target=target, **options)
