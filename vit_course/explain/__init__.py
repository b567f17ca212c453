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

Every class of every image (e.g. to compare what the model sees for each class)::

    per_class = explain_classes(model, images, "grad_rollout")         # (B, K, h, w)

For interactive tools, capture once and recompute cheaply::

    cap = capture(model, images, with_grad=True)           # one forward + one backward
    Rollout(model).from_capture(cap, discard_ratio=0.5)    # zero forward passes

Modules: :mod:`.capture` (recording, model restore), :mod:`.rollout` (pure tensor
functions), :mod:`.methods` (the classes and the registry). CLI: ``python -m
vit_course.explain IMAGE ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
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
    "explain_classes",
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


def explain_classes(model: nn.Module, images: Tensor, method: str = "grad_rollout",
                    classes: Sequence[int] | None = None, chunk_size: int = 4,
                    **options: Any) -> Tensor:
    """Maps of ``method`` for several classes of every image: one per (image, class).

    Methods that read attention gradients from a capture (``grad_rollout``, ``gae``, ...)
    run one forward pass per chunk of ``chunk_size`` images, keep its graph, and get the
    gradients for all ``classes`` from one vectorised backward pass
    (:func:`gradients_for_targets`). Other methods call :func:`explain` once per class.
    Either way the maps equal ``explain(model, images, method, target=c, **options)``.

    Args:
        model, images, method, **options: as for :func:`explain`.
        classes: class indices; default: every class of the model.
        chunk_size: images per kept forward graph. Small chunks keep the graph in cache:
            on a 2-core CPU, ViT-B/16 with 3 classes ran 16 images in 14 s in chunks of 4
            and 28 s in one chunk of 16 (docs/BENCHMARKS.md). Default: 4.

    Returns:
        (B, K, h, w) for K = len(classes), in the order of ``classes``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    explainer = get_method(method)(model)
    opts = explainer._merge(options)            # bad options fail before any model pass
    from_attention_grads = (explainer.needs_grad and explainer.supports_capture
                            and type(explainer).from_capture is Explainer.from_capture)
    if classes is None:
        K = explainer.info.num_classes
        if K is None:
            raise ValueError("the model does not say how many classes it has; pass classes=[...].")
        classes = range(K)
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("classes is empty; pass at least one class index (or None for all).")
    if not from_attention_grads:
        return torch.stack([explainer.attribute(images, target=c, **opts) for c in classes], dim=1)
    out = []
    for i in range(0, images.shape[0], chunk_size):
        cap = capture(model, images[i:i + chunk_size], keep_graph=True)
        try:
            grads = gradients_for_targets(cap, classes)
            out.append(torch.stack([explainer.from_capture(cap.with_gradients(g, c), **opts)
                                    for c, g in zip(classes, grads)], dim=1))
        finally:
            cap.release()
    return torch.cat(out)
