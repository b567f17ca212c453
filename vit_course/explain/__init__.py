"""Explaining ViT decisions: attention capture, raw attention, rollout, gradient rollout,
GAE, transformer attribution (LRP), CP-LRP and AttnLRP, Grad-CAM, attention flow,
norm-based attention, value zeroing, ViT-CX, input-gradient baselines and the two controls.

One entry point::

    maps = explain(model, images, method="rollout", discard_ratio=0.9)   # (B, h, w)
    heat = upsample(maps, images.shape[-2:], normalize=True)              # (B, H, W)

``method`` names a class in :data:`METHODS` (``"attention"``, ``"rollout"``,
``"grad_rollout"``, ..., ``"random"``, ``"center_gaussian"``, and any method registered
later with :func:`register_method`). Maps are one per image on the model's patch grid
(the class token's row, prefix tokens dropped), not normalised and not upsampled. Every
method except ``"random"`` gives the same map for an image alone as inside a batch, up to
float rounding (transformer attribution and value zeroing, whose maps amplify rounding,
compute in float64 by default for that reason).

Every class of every image (e.g. to compare what the model sees for each class)::

    per_class = explain_classes(model, images, "grad_rollout")         # (B, K, h, w)

For interactive tools, capture once and recompute cheaply::

    cap = capture(model, images, with_grad=True)           # one forward + one backward
    explain(model, images, "rollout", capture=cap, discard_ratio=0.5)   # zero passes

Modules: :mod:`.capture` (recording, model restore), :mod:`.rollout` (pure tensor
functions), :mod:`.methods` (the protocol, the registry, :func:`explain`), one module per
method family, :mod:`.controls`. CLI: ``python -m vit_course.explain IMAGE ...``.
"""

from __future__ import annotations

from ..checks import HEAD_FUSIONS
from ..imaging import normalize_maps, upsample
from .capture import (
    SUPPORTED_MODELS, AttentionRecorder, Capture, LayerRecorder, ModelInfo, capture,
    describe_model, gradients_for_targets
)
from .methods import (
    METHODS, AttentionMap, ExplainFn, Explainer, GradRollout, Rollout, explain, explain_classes,
    get_method, pool_to_grid, register_method
)
from .rollout import (
    attention_entropy, attention_grid, attention_map, chain_layers, cls_row_to_grid,
    discard_lowest, fuse_heads, grad_rollout, rollout, rollout_step
)

# Methods beyond rollout register themselves on import.
from .controls import CenterGaussianExplainer, RandomExplainer, center_gaussian_map, random_map
from .flow import AttentionFlow, attention_flow, flow_matrices, max_flow_layered
from .gae import GAE, gae_layer, gae_rollout
from .gradcam import (
    AttentionGradCAM, GradCAM, attention_gradcam, default_gradcam_layer, gradcam_from_tokens
)
from .gradients import (
    IntegratedGradients, Saliency, SmoothGrad, ig_baseline, integrated_gradients, saliency,
    smoothgrad
)
from .lrp import TransformerAttribution
from .norm import NormAttention, norm_contributions
from .value_zeroing import ValueZeroing
from .vit_cx import ViTCX
from .attn_lrp import AttnLRP, CPLRP, lrp_relevance
