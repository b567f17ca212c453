"""Record per-layer attention (and its gradients) from a ViT in one pass, then restore it.

One call, :func:`capture`, runs the model once on a batch and returns a :class:`Capture`:
the logits, every layer's post-softmax attention (B, heads, T, T) with T = P + N, the
model's patch grid (h, w) and its number P of prefix tokens. With ``with_grad=True`` it
also runs one backward pass for the whole batch and stores G_l = ∂y_t/∂A_l for each
image's own target t. Everything an explanation needs afterwards is in the Capture, so
maps for new options (discard ratio, head fusion, start layer, layer, head) are
recomputed from cached tensors without touching the model again.

Supported models (course ViT, torchvision, timm, Hugging Face) and how each one's
attention is recorded are described in :mod:`vit_course.explain.families`, which holds all
model-family knowledge; this module only runs the recording and restores the model.

The model is put in eval mode for the call; every module's training flag, every patched
``forward``, every ``fused_attn`` flag and every hook are restored on exit, also when the
forward raises. Parameters' ``requires_grad`` are never touched: for gradients the input
gets ``requires_grad`` instead, so frozen backbones work too.

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, T = P + N tokens,
K classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import (check_images, check_positive_int, check_targets, nonfinite_rows,
                      resolve_targets)
from .families import (SUPPORTED_MODELS, ModelInfo, describe_model, family_of, logits_of,
                       model_device_dtype, unwrap)


# ----------------------------------------------------------------------------- recording
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

    def __init__(self, model: nn.Module, info: ModelInfo | None = None):
        self.model = unwrap(model)
        self.info = info if info is not None else describe_model(self.model)
        self._undo: list[Callable[[], None]] = []
        self._record: list[Tensor] = []
        self._active = False

    def __enter__(self) -> AttentionRecorder:
        if self._active:
            raise RuntimeError("AttentionRecorder is already active; it is not re-entrant")
        self._active = True
        try:
            flags = [(m, m.training) for m in self.model.modules()]
            self._undo.append(lambda: [setattr(m, "training", t) for m, t in flags])
            self.model.eval()
            self._undo.extend(family_of(self.model).record(self.model, self._record))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

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
            logits = logits_of(self.model, images)
            attentions = list(self._record)
        finally:
            self._record.clear()
        if len(attentions) != self.info.num_layers:
            raise RuntimeError(
                f"recorded {len(attentions)} attention tensors for {self.info.num_layers} "
                f"layers of {type(self.model).__name__}; its attention code path is not the "
                "one capture knows (a timm/torchvision/transformers version change?)")
        return logits, attentions


class LayerRecorder:
    """Record the outputs of one module during forward passes; remove the hook on exit.

    Args:
        module: the layer to watch.

    Example::

        with LayerRecorder(model.encoder.layers[-1].ln_1) as rec:
            logits = model(x)
        tokens = rec.output            # (B, T, D), still in the autograd graph
        # the hook is gone here, also if the block raised
    """

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise TypeError(f"LayerRecorder needs an nn.Module, got {type(module).__name__}")
        self.module = module
        self.outputs: list[Tensor] = []
        self._handle: Any = None

    def __enter__(self) -> LayerRecorder:
        if self._handle is not None:
            raise RuntimeError("LayerRecorder is already active; it is not re-entrant")
        self.outputs.clear()
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.outputs.append(output[0] if isinstance(output, (tuple, list)) else output)

    def release(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def active(self) -> bool:
        return self._handle is not None

    @property
    def output(self) -> Tensor:
        """The single recorded output; an error if the layer ran zero or several times."""
        if len(self.outputs) != 1:
            raise RuntimeError(
                f"the target layer {type(self.module).__name__} ran {len(self.outputs)} times "
                "in one forward pass (expected once); pick a layer that is not reused.")
        return self.outputs[0]


def prepare_images(model: nn.Module, images: object,
                   info: ModelInfo | None = None) -> tuple[ModelInfo, Tensor]:
    """Check ``images`` for a supported model and move them to its device and dtype.

    ``info`` is the model's description when the caller has it already (it is not
    described again).

    Returns:
        the model's :class:`ModelInfo` and the images (B, C, H, W).

    Raises:
        TypeError: unsupported model, images not a floating-point tensor.
        ValueError: wrong rank, channels or size for the model, NaN or inf pixels (the
            message names the images), images or model on the meta device.
    """
    info = info if info is not None else describe_model(model)
    x = check_images(images, channels=info.in_channels, image_size=info.image_size,
                     patch_size=info.patch_size, finite=True)
    device, dtype = model_device_dtype(model)
    if device.type == "meta":
        raise ValueError("the model's parameters are on the meta device (no weights); load them "
                         "(model.to_empty(device='cpu'), then model.load_state_dict(...)).")
    return info, x.to(device=device, dtype=dtype)


def require_autograd(what: str) -> None:
    """Refuse ``torch.inference_mode()``, in which ``what`` cannot get its gradients."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} needs gradients, which torch.inference_mode() cannot record; "
                           "call explain outside torch.inference_mode(), or use torch.no_grad().")


def require_finite(values: Tensor, what: str = "the maps") -> Tensor:
    """Refuse NaN or inf in per-image ``values`` (B, ...) computed from finite images."""
    if bad := nonfinite_rows(values):
        raise ValueError(f"{what} of images {bad[:8]} (batch index) are NaN or inf from finite "
                         "images: the model's weights hold NaN/inf (a diverged training?) or "
                         "float16 overflowed; reload the weights, or run the model in float32.")
    return values


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
    #: ``id`` of the (unwrapped) model it was captured from, checked by ``explain(capture=)``.
    model_id: int | None = field(default=None, repr=False, compare=False)

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

    def release(self) -> None:
        """Drop the autograd graph kept by ``keep_graph=True`` (frees its memory)."""
        self._graph = None

    def with_gradients(self, gradients: Sequence[Tensor], targets: object) -> Capture:
        """A copy whose ``gradients``/``targets`` are the given ones (no model passes).

        Use with :func:`gradients_for_targets` to switch the explained class cheaply.
        """
        t = check_targets(targets, self.batch_size, self.num_classes, "targets")
        if t is None:
            raise ValueError("targets must name the class the gradients belong to, got None")
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
        grads = None if self.gradients is None else [g[index] for g in self.gradients]
        return Capture(self.logits[index], [a[index] for a in self.attentions], self.grid,
                       self.num_prefix_tokens, self.targets[index], grads,
                       model_id=self.model_id)


def capture(model: nn.Module, images: Tensor, *, target: object = None,
            with_grad: bool = False, keep_graph: bool = False,
            info: ModelInfo | None = None) -> Capture:
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
        info: the model's :class:`ModelInfo`, when the caller has described it already
            (an :class:`~vit_course.explain.methods.Explainer` has); it is not described
            again. Default: ``None``.

    Returns:
        a :class:`Capture`.

    Raises:
        TypeError: unsupported model or image dtype, bad target type.
        ValueError: bad image rank/channels/size, target out of range.

    Example::

        cap = capture(model, images, with_grad=True)      # 1 forward + 1 backward
        cap.attentions[0].shape                            # (B, heads, 1+N, 1+N)
    """
    info, x = prepare_images(model, images, info)
    check_targets(target, x.shape[0], info.num_classes)
    need_graph = bool(with_grad or keep_graph)
    if need_graph:
        require_autograd("capture(..., with_grad=True or keep_graph=True)")
    grid = info.grid(*x.shape[-2:])
    with AttentionRecorder(model, info) as rec:
        if need_graph:
            with torch.enable_grad():
                logits, attentions = rec.forward(x.detach().requires_grad_(True))
        else:
            with torch.no_grad():
                logits, attentions = rec.forward(x)
    targets = resolve_targets(target, require_finite(logits.detach(), "the logits"))
    cap = Capture(logits=logits.detach(), attentions=[a.detach() for a in attentions],
                  grid=grid, num_prefix_tokens=info.num_prefix_tokens, targets=targets,
                  _graph=(logits, attentions) if keep_graph else None,
                  model_id=id(unwrap(model)))
    if with_grad:
        cap.gradients = _backward(logits, attentions, targets, retain_graph=keep_graph)
    return cap


def _backward(logits: Tensor, attentions: list[Tensor], targets: Tensor,
              retain_graph: bool) -> list[Tensor]:
    with torch.enable_grad():                      # also inside torch.no_grad()
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
        maps = [explain(model, None, "grad_rollout", capture=cap.with_gradients(g, c))
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
    check_positive_int(chunk_size, "chunk_size")
    logits, attentions = cap._graph
    resolved = []
    for spec in targets:
        t = check_targets(spec, cap.batch_size, cap.num_classes)
        if t is None:
            raise ValueError("each entry of targets must be an int or B ints, got None")
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
