"""Record per-layer attention (and its gradients) from a ViT in one pass, then restore it.

One call, :func:`capture`, runs the model once on a batch and returns a :class:`Capture`:
the logits, every layer's post-softmax attention (B, heads, T, T) with T = P + N, the
model's patch grid (h, w) and its number P of prefix tokens. With ``with_grad=True`` it
also runs one backward pass for the whole batch and stores G_l = ∂y_t/∂A_l for each
image's own target t. Everything an explanation needs afterwards is in the Capture, so
maps for new options (discard ratio, head fusion, start layer, layer, head) are
recomputed from cached tensors without touching the model again.

Supported models and how attention is recorded:

- the course ViT (:class:`vit_course.models.ViT`): ``model(x, return_attentions=True)``.
- torchvision :class:`~torchvision.models.VisionTransformer` (any image or patch size):
  its encoder blocks call ``nn.MultiheadAttention`` with ``need_weights=False`` (a fused
  kernel that never forms the attention matrix), and the weights it can return are
  averaged over heads and not part of the graph that reaches the output. During capture
  each attention module's ``forward`` is replaced by an explicit computation with the
  module's own ``in_proj``/``out_proj`` weights; the recorded softmax is the very tensor
  multiplied with V. The original ``forward`` is restored afterwards.
- timm ``VisionTransformer`` and its subclasses (ViT, DeiT, distilled DeiT with 2 prefix
  tokens, register tokens) when timm is installed: ``fused_attn`` is switched off for the
  call and a forward hook on each ``attn.attn_drop`` records the probabilities that are
  multiplied with V; flags and hooks are restored afterwards.

The model is put in eval mode for the call; every module's training flag, every patched
``forward``, every ``fused_attn`` flag and every hook are restored on exit, also when the
forward raises. Parameters' ``requires_grad`` are never touched: for gradients the input
gets ``requires_grad`` instead, so frozen backbones work too.

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, T = P + N tokens,
K classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Capture",
    "ModelInfo",
    "AttentionRecorder",
    "capture",
    "gradients_for_targets",
    "describe_model",
    "check_images",
    "resolve_targets",
    "SUPPORTED_MODELS",
]

#: What :func:`capture` accepts, for error messages.
SUPPORTED_MODELS = ("vit_course.models.ViT", "torchvision.models.VisionTransformer",
                    "timm VisionTransformer (ViT, DeiT, distilled DeiT; if timm is installed)")


# ----------------------------------------------------------------------------- model families
@dataclass(frozen=True)
class ModelInfo:
    """What the explainers need to know about a supported model.

    Attributes:
        family: ``"vit_course"``, ``"torchvision"`` or ``"timm"``.
        num_layers: encoder blocks L. num_heads: heads per block.
        num_prefix_tokens: P, tokens before the patches (class token, distillation token,
            registers).
        in_channels: C the patch embedding expects.
        image_size: (H, W) the model requires, or ``None`` if it accepts any multiple of
            the patch size.
        patch_size: (p_h, p_w).
        num_classes: K, or ``None`` when the head does not say (checked on the logits).
    """

    family: str
    num_layers: int
    num_heads: int
    num_prefix_tokens: int
    in_channels: int
    image_size: tuple[int, int] | None
    patch_size: tuple[int, int]
    num_classes: int | None

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for images of ``height`` × ``width`` pixels."""
        return (height // self.patch_size[0], width // self.patch_size[1])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _course_vit_class() -> type | None:
    try:
        from vit_course.models import ViT
    except ImportError:  # pragma: no cover - models.py is part of the package
        return None
    return ViT


def _timm_vit_class() -> type | None:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except Exception:  # timm missing or broken: treat as absent
        return None
    return VisionTransformer


def _unwrap(model: object) -> object:
    """The eager module behind ``torch.compile`` (capture needs the eager forward)."""
    return getattr(model, "_orig_mod", model)


def _family(model: object) -> str:
    course = _course_vit_class()
    if course is not None and isinstance(model, course):
        return "vit_course"
    from torchvision.models import VisionTransformer as TVViT
    if isinstance(model, TVViT):
        return "torchvision"
    timm_cls = _timm_vit_class()
    if timm_cls is not None and isinstance(model, timm_cls):
        return "timm"
    timm_note = "" if timm_cls is not None else " (timm is not installed)"
    raise TypeError(
        f"explanations support {', '.join(SUPPORTED_MODELS)}; got {type(model).__module__}."
        f"{type(model).__qualname__}{timm_note}. Wrap or rebuild the model as one of these."
    )


def _blocks(model: nn.Module, family: str) -> list[nn.Module]:
    if family == "vit_course":
        return list(model.transformer_encoder)
    if family == "torchvision":
        return list(model.encoder.layers)
    return list(model.blocks)


def describe_model(model: nn.Module) -> ModelInfo:
    """Read layers, heads, prefix tokens, channels, sizes and classes from a supported model.

    Raises:
        TypeError: for any other model, naming the supported ones.
    """
    model = _unwrap(model)
    family = _family(model)
    blocks = _blocks(model, family)
    if family == "vit_course":
        return ModelInfo(family, len(blocks), model.num_heads, int(model.num_prefix_tokens),
                         model.in_channels, (model.img_size, model.img_size),
                         _pair(model.patch_size), model.num_classes)
    if family == "torchvision":
        stem = model.conv_proj
        first_conv = stem if isinstance(stem, nn.Conv2d) else next(
            m for m in stem.modules() if isinstance(m, nn.Conv2d))
        heads = model.heads        # Sequential(head=Linear), or a bare head put there later
        head = heads if isinstance(heads, nn.Linear) else (
            list(heads.children())[-1] if len(list(heads.children())) else None)
        return ModelInfo(family, len(blocks), blocks[0].self_attention.num_heads, 1,
                         first_conv.in_channels, (model.image_size, model.image_size),
                         _pair(model.patch_size),
                         head.out_features if isinstance(head, nn.Linear) else None)
    # timm
    pe = model.patch_embed
    if not getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None):
        raise TypeError(
            f"{type(model).__name__} has no class token (class_token=False), so there is no "
            "class-token row to read; use a timm ViT/DeiT built with a class token.")
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not hasattr(attn, "fused_attn") or not hasattr(attn, "attn_drop"):
            raise TypeError(
                f"timm block {i} ({type(blk).__name__}) has no standard 'attn' module with "
                "'fused_attn' and 'attn_drop'; capture supports timm's ViT/DeiT Block "
                "with timm.layers.Attention.")
    dynamic = bool(getattr(pe, "dynamic_img_size", False) or getattr(model, "dynamic_img_size",
                                                                      False))
    num_classes = int(getattr(model, "num_classes", 0)) or None
    return ModelInfo(family, len(blocks), blocks[0].attn.num_heads,
                     int(model.num_prefix_tokens), pe.proj.in_channels,
                     None if dynamic else _pair(pe.img_size), _pair(pe.patch_size), num_classes)


# ----------------------------------------------------------------------------- recording
def _explicit_mha_forward(mha: nn.MultiheadAttention, record: list[Tensor]) -> Callable:
    """A drop-in ``forward`` for torchvision's self-attention that records the softmax.

    Same maths as ``F.multi_head_attention_forward`` (batch_first, packed in_proj), written
    out so the (B, heads, T, T) probabilities are formed, recorded and multiplied with V.
    """
    H = mha.num_heads

    def forward(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None,
                average_attn_weights: bool = True, is_causal: bool = False):
        if not (query is key is value) or key_padding_mask is not None or attn_mask is not None \
                or is_causal:
            raise RuntimeError("the attention-recording path handles unmasked self-attention "
                               "only (as in torchvision's VisionTransformer)")
        B, T, D = query.shape
        qkv = F.linear(query, mha.in_proj_weight, mha.in_proj_bias)       # (B, T, 3D)
        qkv = qkv.reshape(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                           # (B, H, T, D/H)
        attn = (q * math.sqrt(1.0 / (D // H))) @ k.transpose(-2, -1)       # (B, H, T, T)
        attn = attn.softmax(dim=-1)
        attn = F.dropout(attn, mha.dropout, training=mha.training)
        record.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(B, T, D)                 # (B, T, D)
        out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
        return out, None

    return forward


class AttentionRecorder:
    """Context manager that prepares a supported model to record attention, and undoes it.

    On enter: eval mode, and the family's recording path (see the module docstring). On
    exit (also after an exception): every module's training flag, patched ``forward``,
    ``fused_attn`` flag and hook exactly as before.

    Args:
        model: a supported ViT (see :data:`SUPPORTED_MODELS`).

    Example::

        with AttentionRecorder(model) as rec:
            logits, attentions = rec.forward(images)   # (B, K), L × (B, heads, T, T)
    """

    def __init__(self, model: nn.Module):
        self.model = _unwrap(model)
        self.info = describe_model(self.model)
        self._undo: list[Callable[[], None]] = []
        self._record: list[Tensor] = []
        self._active = False

    def __enter__(self) -> AttentionRecorder:
        if self._active:
            raise RuntimeError("AttentionRecorder is already active; it is not re-entrant")
        self._active = True
        try:
            self._install()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _install(self) -> None:
        flags = [(m, m.training) for m in self.model.modules()]
        self._undo.append(lambda: [setattr(m, "training", t) for m, t in flags])
        self.model.eval()
        family = self.info.family
        for blk in _blocks(self.model, family):
            if family == "torchvision":
                self._patch_forward(blk.self_attention)
            elif family == "timm":
                attn = blk.attn
                old = attn.fused_attn
                self._undo.append(lambda a=attn, o=old: setattr(a, "fused_attn", o))
                attn.fused_attn = False
                handle = attn.attn_drop.register_forward_hook(
                    lambda _m, _i, out: self._record.append(out))
                self._undo.append(handle.remove)

    def _patch_forward(self, mha: nn.Module) -> None:
        if not isinstance(mha, nn.MultiheadAttention) or not mha.batch_first \
                or not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise TypeError(
                "torchvision VisionTransformer blocks must use a standard batch-first "
                f"nn.MultiheadAttention (packed in_proj, no bias_k/add_zero_attn); got {mha!r}")
        had = "forward" in mha.__dict__
        old = mha.__dict__.get("forward")

        def undo() -> None:
            if had:
                mha.forward = old
            else:
                mha.__dict__.pop("forward", None)

        self._undo.append(undo)
        mha.forward = _explicit_mha_forward(mha, self._record)

    def _restore(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._record.clear()
        self._active = False

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Run the model once; return logits (B, K) and L attentions (B, heads, T, T)."""
        if not self._active:
            raise RuntimeError("use AttentionRecorder as a context manager: "
                               "`with AttentionRecorder(model) as rec: rec.forward(x)`")
        self._record.clear()
        try:
            if self.info.family == "vit_course":
                logits, attentions = self.model(images, return_attentions=True)
                attentions = list(attentions)
            else:
                logits = self.model(images)
                attentions = list(self._record)
        finally:
            self._record.clear()
        if len(attentions) != self.info.num_layers:
            raise RuntimeError(
                f"recorded {len(attentions)} attention tensors for {self.info.num_layers} "
                f"layers of {type(self.model).__name__}; its attention code path is not the "
                "one capture knows (a timm/torchvision version change?)")
        return logits, attentions


# ----------------------------------------------------------------------------- checks
def check_images(info: ModelInfo, images: object, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> Tensor:
    """Validate a batch for the model described by ``info``; move it to device/dtype.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: rank other than 4, wrong channel count, wrong size for the model.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got "
                        f"{type(images).__name__}; convert PIL images with the model's "
                        "transform (e.g. vit_course.data.imagenet_transform()).")
    if images.ndim != 4:
        fix = ("add a batch dimension with images.unsqueeze(0)" if images.ndim == 3
               else "pass a batch shaped (B, C, H, W)")
        raise ValueError(f"images must have rank 4 (B, C, H, W), got rank {images.ndim} with "
                         f"shape {tuple(images.shape)}; {fix}.")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}; use ToTensor "
                        "or images.float() / 255.")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch (B = 0); pass at least one image.")
    if images.shape[1] != info.in_channels:
        raise ValueError(
            f"images must have {info.in_channels} channels for this model, got "
            f"{images.shape[1]} in shape {tuple(images.shape)}; convert to RGB "
            "(vit_course.data.load_image does) before the transform.")
    H, W = images.shape[-2:]
    if info.image_size is not None and (H, W) != info.image_size:
        raise ValueError(
            f"images must be {info.image_size[0]}x{info.image_size[1]} for this model, got "
            f"{H}x{W} in shape {tuple(images.shape)}; resize them with the model's transform.")
    if info.image_size is None and (H % info.patch_size[0] or W % info.patch_size[1]):
        raise ValueError(f"image size {H}x{W} must be a multiple of the patch size "
                         f"{info.patch_size}; resize or pad the images.")
    return images.to(device=device, dtype=dtype) if device is not None else images


def _target_tensor(target: object, batch_size: int) -> Tensor | None:
    """Shape/type check of a target spec; returns (B,) long or None (argmax)."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be None, an int class index or one index per image, "
                        "got a bool")
    if isinstance(target, int):
        return torch.full((batch_size,), target, dtype=torch.long)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target tensor must hold integer class indices, got {target.dtype}")
        t = target.detach().to("cpu", torch.long)
    elif isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in target):
            raise TypeError(f"target list must hold int class indices, got {list(target)!r}")
        t = torch.tensor(list(target), dtype=torch.long)
    else:
        raise TypeError(f"target must be None (predicted class), an int, or a tensor/list "
                        f"of one int per image; got {type(target).__name__}")
    if t.ndim == 0:
        return t.expand(batch_size).clone()
    if t.ndim != 1 or t.shape[0] != batch_size:
        raise ValueError(f"target must hold one class index per image ({batch_size}), got "
                         f"shape {tuple(t.shape)}; pass an int to use one class for all.")
    return t


def _check_target_range(t: Tensor, num_classes: int) -> None:
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise ValueError(f"target class {bad[0].item()} is out of range for a model with "
                         f"num_classes={num_classes}; use indices in [0, {num_classes - 1}].")


def resolve_targets(target: object, logits: Tensor) -> Tensor:
    """Turn a target spec into one class index per image.

    Args:
        target: ``None`` (each image's predicted class), an int (same class for all), or
            a list/tensor of B ints.
        logits: (B, K).

    Returns:
        (B,) long tensor on the logits' device.
    """
    B, K = logits.shape
    t = _target_tensor(target, B)
    if t is None:
        return logits.detach().argmax(dim=1)
    _check_target_range(t, K)
    return t.to(logits.device)


# ----------------------------------------------------------------------------- capture
@dataclass
class Capture:
    """Everything one forward (and backward) pass of a batch leaves for the explainers.

    Attributes:
        logits: (B, K), detached.
        attentions: L tensors (B, heads, T, T), input side first, detached.
        grid: patch grid (h, w) from the model.
        num_prefix_tokens: P (1 class token; 2 for distilled DeiT).
        targets: (B,) class per image (given, else the prediction).
        gradients: L tensors ∂y_t/∂A_l (B, heads, T, T) for ``targets``, or ``None``.

    The tensors are detached but share memory with what the model computed; treat them as
    read-only (with ``keep_graph=True`` an in-place change makes autograd refuse the
    next backward pass).
    """

    logits: Tensor
    attentions: list[Tensor]
    grid: tuple[int, int]
    num_prefix_tokens: int
    targets: Tensor
    gradients: list[Tensor] | None = None
    _graph: tuple[Tensor, list[Tensor]] | None = field(default=None, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        return self.attentions[0].shape[1]

    @property
    def num_tokens(self) -> int:
        return self.attentions[0].shape[-1]

    @property
    def has_graph(self) -> bool:
        """Whether :func:`gradients_for_targets` can still run (``keep_graph=True``)."""
        return self._graph is not None

    def release(self) -> None:
        """Drop the autograd graph kept by ``keep_graph=True`` (frees its memory)."""
        self._graph = None

    def with_gradients(self, gradients: Sequence[Tensor], targets: object) -> Capture:
        """A copy whose ``gradients``/``targets`` are the given ones (no model passes).

        Use with :func:`gradients_for_targets` to switch the explained class cheaply.
        """
        t = _target_tensor(targets, self.batch_size)
        if t is None:
            raise ValueError("targets must name the class the gradients belong to, got None")
        _check_target_range(t, self.num_classes)
        grads = list(gradients)
        if len(grads) != self.num_layers or any(
                not isinstance(g, Tensor) or g.shape != a.shape
                for g, a in zip(grads, self.attentions)):
            raise ValueError("gradients must match the capture's attentions layer by layer "
                             f"({self.num_layers} × {tuple(self.attentions[0].shape)})")
        grads = [g.detach() for g in grads]
        return replace(self, gradients=grads, targets=t.to(self.logits.device), _graph=None)

    def select(self, index: int | slice | Sequence[int] | Tensor) -> Capture:
        """The capture of a sub-batch (images ``index``), without the autograd graph."""
        B = self.batch_size
        if isinstance(index, int) and not isinstance(index, bool):
            if not -B <= index < B:
                raise IndexError(f"image index {index} is out of range for a batch of {B}")
            index = slice(index % B, index % B + 1)          # keep the batch dimension

        def pick(t: Tensor) -> Tensor:
            return t[index]

        return Capture(
            logits=pick(self.logits), attentions=[pick(a) for a in self.attentions],
            grid=self.grid, num_prefix_tokens=self.num_prefix_tokens,
            targets=pick(self.targets),
            gradients=None if self.gradients is None
            else [pick(g) for g in self.gradients])


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def capture(model: nn.Module, images: Tensor, *, target: object = None,
            with_grad: bool = False, keep_graph: bool = False) -> Capture:
    """Run ``model`` once on ``images`` and record logits and per-layer attention.

    The model is put in eval mode for the call and restored exactly afterwards (training
    flags, forwards, ``fused_attn`` flags, hooks), also on exceptions. The logits are those
    of a plain forward pass (up to float rounding of the explicit attention path).

    With ``with_grad=True`` it runs one backward pass for the whole batch on
    Σ_b logits[b, target_b]. Images do not interact in a ViT, so each image's slice of the
    gradient is ∂(its own target logit)/∂A_l.

    Args:
        model: a supported ViT (see :data:`SUPPORTED_MODELS`).
        images: (B, C, H, W) floating point, already transformed for the model. Moved to
            the model's device and dtype.
        target: ``None`` (predicted class), an int, or B ints. Default: ``None``.
        with_grad: also compute ``gradients`` for ``targets``. Default: ``False``.
        keep_graph: keep the autograd graph so :func:`gradients_for_targets` can compute
            gradients for more targets without another forward. Call
            :meth:`Capture.release` when done. Default: ``False``.

    Returns:
        a :class:`Capture`.

    Raises:
        TypeError: unsupported model or image dtype, bad target type.
        ValueError: bad image rank/channels/size, target out of range.

    Example::

        cap = capture(model, images, with_grad=True)      # 1 forward + 1 backward
        cap.attentions[0].shape                            # (B, heads, 1+N, 1+N)
    """
    info = describe_model(model)
    device, dtype = _model_device_dtype(model)
    x = check_images(info, images, device, dtype)
    t = _target_tensor(target, x.shape[0])
    if t is not None and info.num_classes is not None:
        _check_target_range(t, info.num_classes)
    need_graph = bool(with_grad or keep_graph)
    if need_graph and torch.is_inference_mode_enabled():
        raise RuntimeError("gradients cannot be computed inside torch.inference_mode(); "
                           "call capture(..., with_grad=True) outside it.")
    grid = info.grid(*x.shape[-2:])
    with AttentionRecorder(model) as rec:
        if need_graph:
            with torch.enable_grad():
                logits, attentions = rec.forward(x.detach().requires_grad_(True))
        else:
            with torch.no_grad():
                logits, attentions = rec.forward(x)
    targets = resolve_targets(target, logits)
    cap = Capture(logits=logits.detach(), attentions=[a.detach() for a in attentions],
                  grid=grid, num_prefix_tokens=info.num_prefix_tokens, targets=targets,
                  _graph=(logits, attentions) if keep_graph else None)
    if with_grad:
        cap.gradients = _backward(logits, attentions, targets, retain_graph=keep_graph)
    return cap


def _backward(logits: Tensor, attentions: list[Tensor], targets: Tensor,
              retain_graph: bool) -> list[Tensor]:
    selected = logits.gather(1, targets.view(-1, 1)).sum()
    grads = torch.autograd.grad(selected, attentions, retain_graph=retain_graph,
                                allow_unused=True)
    return [torch.zeros_like(a) if g is None else g.detach() for a, g in zip(attentions, grads)]


def gradients_for_targets(cap: Capture, targets: Sequence[object],
                          chunk_size: int = 8) -> list[list[Tensor]]:
    """Gradients ∂y_t/∂A_l for several target sets from one kept forward pass.

    No forward passes: the kept graph is differentiated once per chunk of up to
    ``chunk_size`` target sets, vectorised over the chunk (``torch.autograd.grad`` with
    ``is_grads_batched=True``: the one-hot seeds of the chunk go through a single batched
    backward pass). The results equal one backward pass per target set; e.g.
    ``targets=range(K)`` gives every class for every image of the batch.

    Args:
        cap: a capture made with ``keep_graph=True``.
        targets: a sequence of target specs (each an int or B ints).
        chunk_size: target sets per batched backward pass; memory for the gradients
            grows with it. Default: 8.

    Returns:
        one list of L gradients (B, heads, T, T) per entry of ``targets``; combine with
        ``cap.with_gradients(grads, target)`` to explain that target.

    Example::

        cap = capture(model, images, keep_graph=True)
        per_class = gradients_for_targets(cap, range(cap.num_classes))
        maps = [GradRollout(model).from_capture(cap.with_gradients(g, c))
                for c, g in enumerate(per_class)]
    """
    if not isinstance(cap, Capture):
        raise TypeError(f"cap must be a Capture, got {type(cap).__name__}")
    if cap._graph is None:
        raise ValueError("this capture has no autograd graph; make it with "
                         "capture(model, images, keep_graph=True) (and do not release() it).")
    if isinstance(targets, (int, Tensor)) and (not isinstance(targets, Tensor) or
                                               targets.ndim == 0):
        raise TypeError("targets must be a sequence of target specs, e.g. [0, 1, 2]; "
                        f"got a single target {targets!r} (wrap it in a list)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    logits, attentions = cap._graph
    resolved = []
    for spec in targets:
        t = _target_tensor(spec, cap.batch_size)
        if t is None:
            raise ValueError("each entry of targets must be an int or B ints, got None")
        _check_target_range(t, cap.num_classes)
        resolved.append(t.to(logits.device))
    out: list[list[Tensor]] = []
    for i in range(0, len(resolved), chunk_size):
        out.extend(_backward_batched(logits, attentions, resolved[i:i + chunk_size]))
    return out


def _backward_batched(logits: Tensor, attentions: list[Tensor], group: list[Tensor]
                      ) -> list[list[Tensor]]:
    """One vectorised backward pass for several target sets (graph retained)."""
    if len(group) == 1:
        return [_backward(logits, attentions, group[0], retain_graph=True)]
    B = logits.shape[0]
    seeds = torch.zeros(len(group), *logits.shape, dtype=logits.dtype, device=logits.device)
    for j, t in enumerate(group):
        seeds[j, torch.arange(B, device=logits.device), t] = 1.0     # one-hot per image
    try:
        grads = torch.autograd.grad(logits, attentions, grad_outputs=seeds, retain_graph=True,
                                    is_grads_batched=True, allow_unused=True)
    except RuntimeError:   # an op without a batching rule: one backward per target set
        return [_backward(logits, attentions, t, retain_graph=True) for t in group]
    return [[torch.zeros_like(a) if g is None else g[j].detach()
             for a, g in zip(attentions, grads)] for j in range(len(group))]
