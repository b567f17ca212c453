"""Argument checks for the public functions of the course, in one place.

Each option is checked once, at the public boundary (``explain``, the metrics, the
explorer, the CLIs), by one of these functions. Every error names the problem and the fix.
Functions return the checked value (converted where the conversion is documented), so a
caller writes ``ratio = check_ratio(ratio)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: Ways to fuse the heads of one layer into one (T, T) matrix (rollout-style methods).
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


# ----------------------------------------------------------------------------- numbers
def check_int(value: Any, name: str, fix: str = "", minimum: int = 1) -> int:
    """An int ≥ ``minimum`` (bools refused); the message says "a positive int" for 1."""
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}: {value!r}"
                        + (f"; {fix}" if fix else "."))
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value}" + (f"; {fix}" if fix else "."))
    return value


def check_positive_int(value: Any, name: str, fix: str = "") -> int:
    """An int ≥ 1 (bools refused)."""
    return check_int(value, name, fix)


def check_nonnegative_int(value: Any, name: str, fix: str = "") -> int:
    """An int ≥ 0 (bools refused): a count that may be zero (workers, retries) or a seed."""
    return check_int(value, name, fix, minimum=0)


def check_ratio(value: Any, name: str = "discard_ratio", fix: str = "") -> float:
    """A fraction in [0, 1) (the discard ratio of rollout, a dropout probability)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}: {value!r}")
    if not 0.0 <= float(value) < 1.0:
        if not fix and name == "discard_ratio":
            fix = ("it is the fraction of each fused attention matrix set to zero (0 keeps "
                   "everything, 0.9 keeps the top 10 %). 1.0 would discard everything, so it "
                   "is not allowed.")
        raise ValueError(f"{name} must be in [0, 1), got {value}" + (f"; {fix}" if fix else "."))
    return float(value)


def check_choice(value: Any, name: str, choices: Sequence[str], fix: str = "") -> str:
    """One of ``choices``; the message lists them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}"
                         + (f"; {fix}" if fix else "."))
    return value


def check_fusion(mode: Any) -> str:
    """A head fusion name in :data:`HEAD_FUSIONS`."""
    return check_choice(mode, "head_fusion", HEAD_FUSIONS,
                        "'mean' averages the heads (the default), 'max'/'min' take the "
                        "largest/smallest value of any head.")


def check_index(index: Any, size: int, name: str, what: str = "layers") -> int:
    """An int index into ``size`` items, negative counting from the end; returns it in [0, size)."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"{name} must be an int index, got {type(index).__name__}: {index!r}")
    if not -size <= index < size:
        raise ValueError(f"{name} must be in [{-size}, {size - 1}] for a model with {size} "
                         f"{what}, got {index}")
    return index % size


def check_layer_index(index: Any, num_layers: int, name: str = "layer") -> int:
    """A layer index (negative from the end) → [0, num_layers)."""
    return check_index(index, num_layers, name, "layers")


def check_head_index(index: Any, num_heads: int, name: str = "head") -> int | None:
    """``None`` (all heads) or a head index → [0, num_heads)."""
    return None if index is None else check_index(index, num_heads, name, "heads")


def check_fractions(fractions: Any, name: str = "fractions") -> tuple[float, ...]:
    """A non-empty sequence of fractions in [0, 1), as a tuple of floats."""
    try:
        out = tuple(float(f) for f in (None if isinstance(fractions, str) else fractions))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers in [0, 1), got {fractions!r}.") from None
    if not out or any(not 0.0 <= f < 1.0 for f in out):
        raise ValueError(f"{name} must be a non-empty sequence of numbers in [0, 1), got {out}.")
    return out


def channel_stats(value: Any, channels: int, name: str, like: Tensor) -> Tensor:
    """A ``mean``/``std`` argument (one number, or one per channel) → (1, C, 1, 1) on ``like``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).flatten()
    if t.numel() == 1:
        t = t.repeat(channels)
    if t.numel() != channels:
        raise ValueError(f"{name} must be one number or one per channel ({channels}), got "
                         f"{tuple(t.tolist())}.")
    if not torch.isfinite(t).all() or (name == "std" and (t <= 0).any()):
        raise ValueError(f"{name} must be " + ("> 0 and finite" if name == "std" else "finite")
                         + f" per channel, got {tuple(t.tolist())}; pass the transform's values.")
    return t.view(1, channels, 1, 1)


# ----------------------------------------------------------------------------- tensors
def check_images(images: Any, name: str = "images", *, channels: int | None = None,
                 image_size: tuple[int, int] | None = None,
                 patch_size: tuple[int, int] | None = None, finite: bool = False) -> Tensor:
    """A float image batch (B, C, H, W); optionally with C, H×W or a patch multiple required,
    and with ``finite=True`` no NaN or inf (one pass over the pixels; the error names the images).

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: rank other than 4, empty batch, wrong channels or size, the meta
            device (no data), NaN or inf pixels with ``finite=True``.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, H, W), got "
                        f"{type(images).__name__}; convert PIL images with the model's "
                        "transform (e.g. vit_course.data.imagenet_transform()) and stack them "
                        "with torch.stack(list_of_images).")
    if images.ndim != 4:
        fix = ("add a batch dimension with images.unsqueeze(0)" if images.ndim == 3
               else "pass a batch shaped (B, C, H, W)")
        raise ValueError(f"{name} must have rank 4 (B, C, H, W), got rank {images.ndim} with "
                         f"shape {tuple(images.shape)}; {fix}.")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {images.dtype}; use ToTensor "
                        "or images.float() / 255 (and normalise as the model expects).")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0); pass at least one image.")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels for this model, got "
            f"{images.shape[1]} in shape {tuple(images.shape)}; convert to RGB "
            "(vit_course.data.load_image does) before the transform.")
    H, W = images.shape[-2:]
    if image_size is not None and (H, W) != tuple(image_size):
        raise ValueError(
            f"{name} must be {image_size[0]}x{image_size[1]} for this model, got "
            f"{H}x{W} in shape {tuple(images.shape)}; resize them with the model's transform.")
    if image_size is None and patch_size is not None and (H % patch_size[0] or W % patch_size[1]):
        raise ValueError(f"image size {H}x{W} must be a multiple of the patch size "
                         f"{tuple(patch_size)}; resize or pad the images.")
    if images.is_meta:
        raise ValueError(f"{name} are on the meta device (a shape without data); load real "
                         "pixel values (on the CPU or a GPU) with the model's transform.")
    if finite and (bad := nonfinite_rows(images)):
        raise ValueError(f"{name} {bad[:8]} (batch index) contain NaN or inf pixels; an "
                         "explanation or score of them would be NaN. Drop or repair those images "
                         "(e.g. torch.nan_to_num(images)) before explaining or scoring.")
    return images


def nonfinite_rows(values: Tensor) -> list[int]:
    """Batch indices of the items of ``values`` (B, ...) that hold NaN or ±inf."""
    return (~torch.isfinite(values).flatten(1).all(1)).nonzero().flatten().tolist()


def check_maps(maps: Any, images: Tensor | None = None, name: str = "maps") -> Tensor:
    """Explanation maps (B, h, w), one per image of ``images`` on a grid that tiles them.

    Returns them as float.
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, h, w) on the patch grid, "
                        f"got {type(maps).__name__}.")
    if maps.ndim != 3:
        raise ValueError(f"{name} must have shape (B, h, w) (one map per image on the patch grid), "
                         f"got shape {tuple(maps.shape)}; for a single map use maps.unsqueeze(0).")
    if bad := nonfinite_rows(maps):
        raise ValueError(f"{name} contains NaN or inf in map(s) {bad[:8]} (batch index); replace them "
                         "(e.g. torch.nan_to_num(maps, posinf=0.0)) or drop those images before scoring.")
    if images is not None:
        B, _, H, W = images.shape
        if maps.shape[0] != B:
            raise ValueError(f"{name} has {maps.shape[0]} maps but images has {B} images "
                             f"(maps {tuple(maps.shape)}, images {tuple(images.shape)}); pass one map per image.")
        h, w = maps.shape[1:]
        if H % h or W % w:
            raise ValueError(f"{name} grid {h}x{w} does not tile the {H}x{W} images "
                             f"(H % h and W % w must be 0); pass maps on the model's patch grid "
                             f"(e.g. 14x14 for a 224-px ViT with 16-px patches), not upsampled maps.")
    return maps.float() if not maps.is_floating_point() else maps


def check_attentions(attentions: Any, name: str = "attentions") -> list[Tensor]:
    """Per-layer attention (list of (B, heads, T, T), or one stacked (L, B, heads, T, T))."""
    if isinstance(attentions, Tensor) and attentions.ndim == 5:
        attentions = list(attentions.unbind(0))
    if isinstance(attentions, Tensor) or not isinstance(attentions, Sequence) or not attentions:
        raise TypeError(
            f"{name} must be a non-empty list of per-layer tensors (B, heads, T, T) or one "
            f"stacked tensor (L, B, heads, T, T), got {type(attentions).__name__}"
            + (f" of shape {tuple(attentions.shape)}" if isinstance(attentions, Tensor) else "")
            + "; use Capture.attentions.")
    layers = []
    for i, a in enumerate(attentions):
        if not isinstance(a, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor (B, heads, T, T), "
                            f"got {type(a).__name__}")
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"{name}[{i}] must have shape (B, heads, T, T) with square (T, T) attention, "
                f"got {tuple(a.shape)}; pass one layer of Capture.attentions (add a batch "
                "dimension with .unsqueeze(0) for a single image).")
        if a.shape != attentions[0].shape:
            raise ValueError(f"all layers must have the same shape; {name}[0] is "
                             f"{tuple(attentions[0].shape)} but {name}[{i}] is {tuple(a.shape)}")
        layers.append(a)
    return layers


# ----------------------------------------------------------------------------- targets
def check_targets(target: Any, batch_size: int, num_classes: int | None = None,
                  name: str = "target") -> Tensor | None:
    """A target spec → (B,) long on the CPU, or ``None`` (each image's predicted class).

    ``target`` is ``None``, an int (the same class for every image; NumPy integers count),
    or a list / tensor of B ints. Bools and floats are refused (``True`` is not class 1).
    """
    if target is None:
        return None
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"{name} must be None, an int class index or one index per image, "
                        "got a bool")
    if isinstance(target, (int, np.integer)):
        t = torch.full((batch_size,), int(target), dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{name} tensor must hold integer class indices, got {target.dtype}")
        t = target.detach().to("cpu", torch.long)
    elif isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in target):
            raise TypeError(f"{name} list must hold int class indices, got {list(target)!r}")
        t = torch.tensor([int(v) for v in target], dtype=torch.long)
    else:
        raise TypeError(f"{name} must be None (predicted class), an int, or a tensor/list "
                        f"of one int per image; got {type(target).__name__}")
    if t.ndim == 0:
        t = t.expand(batch_size).clone()
    if t.ndim != 1 or t.shape[0] != batch_size:
        raise ValueError(f"{name} must hold one class index per image ({batch_size}), got "
                         f"shape {tuple(t.shape)}; pass an int to use one class for all.")
    if num_classes is not None:
        bad = t[(t < 0) | (t >= num_classes)]
        if bad.numel():
            raise ValueError(f"{name} class {bad[0].item()} is out of range for a model with "
                             f"num_classes={num_classes}; use indices in [0, {num_classes - 1}].")
    return t


def resolve_targets(target: Any, logits: Tensor, name: str = "target") -> Tensor:
    """A target spec → one class index per image, (B,) long on the logits' device.

    ``None`` picks each image's predicted class from ``logits`` (B, K).
    """
    B, K = logits.shape
    t = check_targets(target, B, K, name)
    if t is None:
        return logits.detach().argmax(dim=1)
    return t.to(logits.device)


def check_labels(labels: Any, batch_size: int, num_classes: int | None = None,
                 name: str = "labels") -> Tensor:
    """B integer class labels → (B,) long (range-checked when ``num_classes`` is given)."""
    if labels is None:
        raise TypeError(f"{name} must be B integer class labels, got None.")
    try:
        t = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be B integer class labels, got {type(labels).__name__}.") from None
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}.")
    t = t.long().flatten()
    if t.numel() != batch_size:
        raise ValueError(f"{name} must have one label per image ({batch_size}), got {t.numel()}.")
    if num_classes is not None and ((t < 0).any() or (t >= num_classes).any()):
        raise ValueError(f"{name} out of range: the model has {num_classes} classes "
                         f"(valid 0..{num_classes - 1}), got {sorted(set(t.tolist()))}.")
    return t


def check_gradients(gradients: Any, attentions: Sequence[Tensor],
                    name: str = "gradients") -> list[Tensor]:
    """Per-layer attention gradients that match ``attentions`` layer by layer (shape and count)."""
    grads = check_attentions(gradients, name)
    if len(grads) != len(attentions) or grads[0].shape != attentions[0].shape:
        raise ValueError(
            f"{name} must match attentions layer by layer: got {len(grads)} layers of "
            f"{tuple(grads[0].shape)} for {len(attentions)} layers of "
            f"{tuple(attentions[0].shape)}; use Capture.gradients from "
            "capture(..., with_grad=True).")
    return grads


def check_numbers(values: Any, name: str, allow_nan: bool = False) -> Tensor:
    """Numbers (tensor, array, list) → float64 tensor; inf, and NaN unless ``allow_nan``, refused."""
    try:
        t = torch.as_tensor(values.detach() if isinstance(values, Tensor) else values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be numbers (a tensor, NumPy array or list), got {values!r:.40}.") from None
    bad = (t.isinf() if allow_nan else ~t.isfinite()).nonzero()
    if bad.numel():
        raise ValueError(f"{name} holds {'inf' if allow_nan else 'NaN or inf'} at index {bad[0].tolist()}; drop "
                         "or repair the images or maps that produced it (or use torch.nan_to_num) first.")
    return t
