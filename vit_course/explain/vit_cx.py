"""ViT-CX (Xie, Li, Zhang, Liu & Zhang, IJCAI 2023): masks from patch embeddings, scored causally.

"ViT-CX: Causal Explanation of Vision Transformers" does not read attention. It uses the
tokens a layer produces as a set of masks and asks what each mask does to the output:

1. **Masks.** The patch tokens entering block ``layer``'s attention (the output of its
   first LayerNorm, (N, D)) give D feature maps on the h × w grid; each is upsampled to
   the image size (bilinear) and min-max normalised to [0, 1].
2. **Merging.** Masks that are nearly the same are merged: agglomerative clustering with
   complete linkage on the cosine distance between masks, merging while the distance is
   below ``distance_threshold`` (0.1); each cluster's masks are summed and the sum is
   min-max normalised again.
3. **Causal impact.** Each mask M_i is applied with Gaussian noise filling the rest:
   x_i = x ⊙ M_i + ε_i ⊙ (1 − M_i), ε_i ~ N(0, σ²), σ = ``noise_std`` (0.1, in the model's
   input space); the score is corrected by the same noise added to the whole image:
   s_i = p_c(x ⊙ M_i + ε_i ⊙ (1 − M_i)) − p_c(x + ε_i ⊙ (1 − M_i)) + p_c(x), with p_c the
   softmax probability of the target class.
4. **Combination, corrected for coverage.** S(u) = (1/M) Σ_i s_i M_i(u) / Σ_j M_j(u): each
   pixel's sum is divided by how much of all masks covers it, so pixels that many masks
   cover are not favoured.

As the authors' code (vaynexie/CausalX-ViT ``ViT_CX/ViT_CX.py``, ``causal_score.py``):
the target layer default ``blocks[-1].norm1``; sklearn's ``AgglomerativeClustering``
(complete linkage, precomputed cosine distance, NaN similarities of constant masks set
to 0) is restated in torch (:func:`cluster_masks`); noise of std 0.1 drawn per mask. Here
the noise comes from a generator seeded with ``seed`` for each image (theirs: the global
RNG), so an image's map is the same alone and in a batch and on every run; constant
feature maps become zero masks (theirs divide 0 by 0); pixels no mask covers get 0.

Cost: per image, one forward for the masks and p_c(x), then 2 forwards per merged mask
(in chunks of ``internal_batch_size`` images). Merging is what makes it affordable: on
ViT-B/16 with random weights, 768 feature maps merged into 25 and 29 masks on two
images (trained weights give other numbers), and one image cost about 21 plain forwards
(docs/BENCHMARKS.md).

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, D width, M masks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_layer_index, check_positive_int, check_targets, resolve_targets
from ..runtime import eval_mode
from .capture import LayerRecorder, prepare_images
from .families import block_parts, logits_of
from .methods import Explainer, register_method


def _min_max_rows(x: Tensor) -> Tensor:
    """Each row of (M, P) scaled to [0, 1]; constant rows become 0."""
    lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.where(span > 0, torch.ones_like(span)), 0.0)


def feature_maps(model: nn.Module, images: Tensor, layer: int = -1) -> tuple[Tensor, Tensor]:
    """Block ``layer``'s first-LayerNorm patch tokens as maps, and the logits.

    Returns:
        ((B, D, h, w) feature maps, (B, K) logits), from one forward pass.
    """
    info, x = prepare_images(model, images)
    h, w = info.grid(*x.shape[-2:])
    with LayerRecorder(block_parts(model, layer).norm1) as rec, torch.no_grad(), \
            eval_mode(model):
        logits = logits_of(model, x)
    tokens = rec.output.detach()[:, info.num_prefix_tokens:]        # (B, N, D)
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w), logits


def masks_from_features(features: Tensor, size: tuple[int, int]) -> Tensor:
    """(D, h, w) feature maps → (D, H·W) masks: upsampled (bilinear), min-max per mask."""
    up = F.interpolate(features[None], size=size, mode="bilinear", align_corners=False)[0]
    return _min_max_rows(up.flatten(1))


def cluster_masks(masks: Tensor, distance_threshold: float = 0.1) -> Tensor:
    """Merge similar masks: complete-linkage agglomerative clustering on cosine distance.

    Merges the two closest clusters (complete linkage: the largest distance between their
    members) while that distance is below ``distance_threshold``; each cluster becomes
    the min-max normalised sum of its masks. Clusters are ordered by their first member.

    Args:
        masks: (n, P) non-negative masks, flattened.
        distance_threshold: in [0, 2]. Default: 0.1 (the paper's).

    Returns:
        (M, P), M ≤ n.
    """
    n = masks.shape[0]
    unit = masks / masks.norm(dim=1, keepdim=True).clamp_min(1e-30)
    dist = (1 - unit @ unit.T).double()                              # zero masks: distance 1
    dist.fill_diagonal_(float("inf"))
    labels = torch.arange(n)
    while n > 1:
        flat = int(dist.argmin())
        a, b = divmod(flat, dist.shape[1])
        if not dist[a, b] < distance_threshold:
            break
        a, b = min(a, b), max(a, b)
        merged = torch.maximum(dist[a], dist[b])                     # complete linkage
        dist[a], dist[:, a] = merged, merged
        dist[b], dist[:, b] = float("inf"), float("inf")
        dist[a, a] = float("inf")
        labels[labels == b] = a
        n -= 1
    ids = labels.unique()                                            # sorted: first members
    sums = torch.zeros(len(ids), masks.shape[1], dtype=masks.dtype, device=masks.device)
    sums.index_add_(0, torch.searchsorted(ids, labels).to(masks.device), masks)
    return _min_max_rows(sums)


def mask_noise(num_masks: int, shape: tuple[int, ...], noise_std: float, seed: int,
               like: Tensor) -> Tensor:
    """The filling noise ε (M, C, H, W) ~ N(0, noise_std²), from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(num_masks, *shape, generator=g) * noise_std).to(like)


def causal_impact(model: nn.Module, image: Tensor, masks: Tensor, noise: Tensor, target: int,
                  internal_batch_size: int = 64, precision: str = "float32") -> Tensor:
    """ViT-CX's saliency of one image from its masks: steps 3 and 4 of the module docstring.

    Args:
        model: a supported ViT. image: (C, H, W), transformed for the model.
        masks: (M, H, W) in [0, 1]. noise: (M, C, H, W), the filling of each mask.
        target: the class c. internal_batch_size: images per forward. Default: 64.
        precision: ``"float32"`` (default) or ``"bfloat16"``: the masked forwards under
            bfloat16 autocast (about 2.7× faster on CPUs with bfloat16 instructions; the
            map moves by a few per cent of its range, docs/BENCHMARKS.md).

    Returns:
        (H, W) saliency S.
    """
    M = masks.shape[0]
    keep = masks[:, None]                                            # (M, 1, H, W)
    fill = noise * (1 - keep)
    stack = torch.cat([image * keep + fill, image + fill])           # (2M, C, H, W)
    with torch.no_grad(), eval_mode(model), torch.autocast(
            image.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        p_x = logits_of(model, image[None]).float().softmax(-1)[0, target]
        p = torch.cat([logits_of(model, stack[i:i + internal_batch_size]).float()
                       .softmax(-1)[:, target] for i in range(0, 2 * M, internal_batch_size)])
    scores = p[:M] - p[M:] + p_x                                     # (M,)
    coverage = masks.sum(0)                                          # (H, W)
    share = masks / coverage.where(coverage > 0, torch.ones_like(coverage))
    return torch.einsum("m,mhw->hw", scores.to(masks.dtype), share) / M


@register_method("vit_cx")
class ViTCX(Explainer):
    """ViT-CX (Xie et al., IJCAI 2023) for a target class: merged patch-embedding masks,
    each scored by its causal impact on the target probability under noise filling.

    Options:
        layer: block whose first LayerNorm gives the masks (negative from the top).
            Default: -1 (the last, as the paper).
        distance_threshold: cosine distance below which masks merge. Default: 0.1.
        noise_std: std of the Gaussian filling, in the model's input space. Default: 0.1.
        seed: seeds each image's noise. Default: 0.
        internal_batch_size: masked images per forward. Default: 64.
        precision: ``"float32"`` (default) or ``"bfloat16"`` (the masked forwards under
            bfloat16 autocast, see :func:`causal_impact`; the masks stay float32).
        resolution: ``"grid"`` (default, patch averages) or ``"pixels"`` (B, H, W).

    Cost: 1 + 2 · (merged masks) forwards of one image each, per image (see the module
    docstring). No gradients (works under ``torch.no_grad()``).
    """

    class_specific = True
    supports_capture = False
    defaults: ClassVar[dict[str, Any]] = {"layer": -1, "distance_threshold": 0.1,
                                          "noise_std": 0.1, "seed": 0,
                                          "internal_batch_size": 64, "precision": "float32",
                                          "resolution": "grid"}

    def check_options(self, layer: int, distance_threshold: float, noise_std: float,
                      seed: int, internal_batch_size: int, precision: str,
                      resolution: str) -> None:
        check_layer_index(layer, self.info.num_layers, "layer")
        for name, value, top in (("distance_threshold", distance_threshold, 2.0),
                                 ("noise_std", noise_std, float("inf"))):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= top:
                raise ValueError(f"{name} must be a number in [0, {top}], got {value!r}; "
                                 f"the paper uses 0.1.")
        check_positive_int(internal_batch_size, "internal_batch_size", "e.g. 64.")
        check_choice(precision, "precision", ("float32", "bfloat16"))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")

    def compute(self, images: Tensor, target: object, layer: int, distance_threshold: float,
                noise_std: float, seed: int, internal_batch_size: int, precision: str) -> Tensor:
        _, x = prepare_images(self.model, images, self.info)
        check_targets(target, x.shape[0], self.info.num_classes)
        features, logits = feature_maps(self.model, x, layer)
        targets = resolve_targets(target, logits)
        size = tuple(x.shape[-2:])
        maps = []
        for b in range(x.shape[0]):
            masks = cluster_masks(masks_from_features(features[b], size), distance_threshold)
            noise = mask_noise(masks.shape[0], tuple(x.shape[1:]), noise_std, seed, x)
            maps.append(causal_impact(self.model, x[b], masks.reshape(-1, *size), noise,
                                      int(targets[b]), internal_batch_size, precision))
        return torch.stack(maps)                                     # (B, H, W)
