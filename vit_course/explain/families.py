"""What the explainers know about each supported ViT family, in one place.

Every explainer reads a model through this module: how to recognise it, where its blocks,
norms, projections, head and embeddings live, how to record its attention probabilities,
and its sizes. Adding a family is one :class:`Family` entry in :data:`FAMILIES`.

Families (all pre-norm ViTs with a class token):

- ``"vit_course"``: :class:`vit_course.models.ViT`.
- ``"torchvision"``: :class:`torchvision.models.VisionTransformer` (any image or patch
  size; ``heads`` may be ``Sequential(head=Linear)``, a bare ``nn.Linear`` put there by
  :func:`vit_course.pretrained.attach_head`, or ``Sequential(pre_logits, act, head)``).
- ``"timm"``: timm ``VisionTransformer`` and subclasses (ViT, DeiT, distilled DeiT with 2
  prefix tokens, register tokens), if timm is installed.
- ``"hf"``: Hugging Face ``transformers`` ``ViTForImageClassification`` (the module layout
  of transformers 5: ``vit.layers[i].attention.{q,k,v,o}_proj``), if transformers is
  installed. Its forward returns an output object; :func:`logits_of` reads ``.logits``.

How attention is recorded (the post-softmax probabilities A that are multiplied with V, so
``torch.autograd.grad(y, A)`` is ∂y/∂A):

- course ViT and timm: ``fused_attn`` is switched off for the call and a forward hook on
  the attention's ``attn_drop`` records its output (in eval mode the very tensor A; the
  explicit branch computes ``attn_drop(softmax(q kᵀ)) @ v``).
- torchvision: its blocks call ``nn.MultiheadAttention`` with ``need_weights=False`` (a
  fused kernel that never forms A), and the weights it can return are averaged over heads
  and not part of the graph that reaches the output. During the call each attention's
  ``forward`` is replaced by an explicit computation with the module's own
  ``in_proj``/``out_proj`` weights that records the softmax it multiplies with V.
- Hugging Face: the sdpa kernel returns no probabilities, so the config's attention
  implementation is set to ``"eager"`` for the call (``eager_attention_forward`` returns
  the probabilities it multiplies with V), and a forward hook on each ``ViTAttention``
  records that second output.

Every change is undone by the callables the recorder returns (see
:class:`vit_course.explain.capture.AttentionRecorder`).

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, T = P + N, D width.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


Undo = Callable[[], None]


@dataclass(frozen=True)
class ModelInfo:
    """What the explainers need to know about a supported model.

    Attributes:
        family: ``"vit_course"``, ``"torchvision"``, ``"timm"`` or ``"hf"``.
        num_layers: encoder blocks L. num_heads: heads per block.
        num_prefix_tokens: P, tokens before the patches (class token, distillation token,
            registers).
        in_channels: C the patch embedding expects.
        image_size: (H, W) the model requires, or ``None`` if it accepts any multiple of
            the patch size.
        patch_size: (p_h, p_w).
        num_classes: K, or ``None`` when the head does not say (checked on the logits).
        width: D, the token width (the head's input).
    """

    family: str
    num_layers: int
    num_heads: int
    num_prefix_tokens: int
    in_channels: int
    image_size: tuple[int, int] | None
    patch_size: tuple[int, int]
    num_classes: int | None
    width: int

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for images of ``height`` × ``width`` pixels."""
        return (height // self.patch_size[0], width // self.patch_size[1])


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm block x + proj(attn(qkv(norm1 x))), then x + fc2(act(fc1(norm2 x))).

    Attributes:
        norm1: the LayerNorm whose output enters the attention. attn: the attention module.
        qkv_weight: (3D, D), rows ordered q, k, v and within each by head (Hugging Face's
            three projections are concatenated: a copy). qkv_bias: (3D,) or ``None``.
        proj: the output projection (Linear). norm2: the LayerNorm before the MLP.
        fc1, act, fc2: the MLP.
        extras: names of parts outside this scheme that are not identities (timm's
            layer-scale ``ls1``/``ls2``, qk-norm ``attn.q_norm``/``attn.k_norm`` ...).
    """

    norm1: nn.Module
    attn: nn.Module
    qkv_weight: Tensor
    qkv_bias: Tensor | None
    proj: nn.Module
    norm2: nn.Module
    fc1: nn.Module
    act: nn.Module
    fc2: nn.Module
    extras: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """How to read and record one family of ViTs.

    Attributes:
        name: :attr:`ModelInfo.family`. label: what error messages call it.
        model_class: the family's class, or ``None`` when its library is not imported.
        paths: dotted attribute paths of ``blocks``, the final ``norm``, the ``head``,
            the ``patch`` Conv2d, the ``class_token`` and the ``pos_embedding``.
        block: a block → its :class:`BlockParts`.
        sizes: the model → (num_heads, P, C, image_size or None, patch_size); may raise
            TypeError for an unsupported variant.
        record: installs attention recording (appending A per block to the list) and
            returns the callables that undo it.
        extras: the model → names of model-level parts outside the common scheme (for LRP).
        readout: (model, residual stream (B, T, D) after the last block) → logits (B, K):
            the final norm and the head, exactly as the model's forward applies them.
    """

    name: str
    label: str
    model_class: Callable[[], type | None]
    paths: dict[str, str]
    block: Callable[[nn.Module], BlockParts]
    sizes: Callable[[nn.Module], tuple]
    record: Callable[[nn.Module, list[Tensor]], list[Undo]]
    extras: Callable[[nn.Module], list[str]] = lambda model: []
    readout: Callable[[nn.Module, Tensor], Tensor] | None = None


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _get(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``path="a.b"``; ``None`` where an attribute is missing."""
    return reduce(lambda o, name: getattr(o, name, None), path.split("."), obj)


def _loaded(module: str, name: str) -> Callable[[], type | None]:
    """The class ``module.name`` if that module is imported (a model of it exists then)."""
    return lambda: getattr(sys.modules.get(module), name, None)


def _mlp(seq: nn.Module, where: str) -> list[nn.Module]:
    """fc1, activation, fc2 from a Sequential(Linear, act, Dropout, Linear, Dropout)."""
    parts = [m for m in seq.children() if not isinstance(m, nn.Dropout)]
    if len(parts) != 3 or not isinstance(parts[0], nn.Linear) \
            or not isinstance(parts[2], nn.Linear) or isinstance(parts[1], nn.Linear):
        raise TypeError(f"{where} must be Linear, activation, Linear (dropouts aside), got "
                        f"{[type(m).__name__ for m in parts]}")
    return parts


def _not_identity(obj: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if not isinstance(_get(obj, n), (nn.Identity, type(None))))


# ----------------------------------------------------------------------------- recording
def _record_attn_drop(attn: nn.Module, record: list[Tensor]) -> list[Undo]:
    """Explicit branch (``fused_attn`` off) and a hook on ``attn_drop`` (course ViT, timm)."""
    old = attn.fused_attn
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: record.append(out))
    return [lambda: setattr(attn, "fused_attn", old), handle.remove]


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


def _check_mha(mha: nn.Module) -> nn.MultiheadAttention:
    if not isinstance(mha, nn.MultiheadAttention) or not mha.batch_first \
            or not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise TypeError(
            "torchvision VisionTransformer blocks must use a standard batch-first "
            f"nn.MultiheadAttention (packed in_proj, no bias_k/add_zero_attn); got {mha!r}")
    return mha


def _record_torchvision(model: nn.Module, record: list[Tensor]) -> list[Undo]:
    undo: list[Undo] = []
    for blk in model.encoder.layers:
        mha = _check_mha(blk.self_attention)
        old = mha.__dict__.get("forward")          # an instance-level forward, if any
        undo.append(lambda m=mha, o=old: m.__dict__.pop("forward") if o is None
                    else setattr(m, "forward", o))
        mha.forward = _explicit_mha_forward(mha, record)
    return undo


def _record_hf(model: nn.Module, record: list[Tensor]) -> list[Undo]:
    cfg = model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    undo: list[Undo] = [lambda: setattr(cfg, "_attn_implementation", old)]
    for blk in model.vit.layers:        # ViTAttention returns (output, probabilities)
        handle = blk.attention.register_forward_hook(lambda _m, _i, out: record.append(out[1]))
        undo.append(handle.remove)
    return undo


def _record_blocks(model: nn.Module, record: list[Tensor]) -> list[Undo]:
    """:func:`_record_attn_drop` on every block's attention (course ViT, timm)."""
    fam = family_of(model)
    return [u for blk in blocks_of(model) for u in _record_attn_drop(fam.block(blk).attn, record)]


# ----------------------------------------------------------------------------- families
def _course_block(blk: nn.Module) -> BlockParts:
    msa, mlp = blk.msa_block, blk.mlp_block
    fc1, act, fc2 = _mlp(mlp.mlp, "mlp_block.mlp")
    return BlockParts(msa.layer_norm, msa, msa.qkv.weight, msa.qkv.bias, msa.proj,
                      mlp.layer_norm, fc1, act, fc2)


def _torchvision_block(blk: nn.Module) -> BlockParts:
    mha = _check_mha(blk.self_attention)
    fc1, act, fc2 = _mlp(blk.mlp, "encoder layer mlp")
    return BlockParts(blk.ln_1, mha, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj,
                      blk.ln_2, fc1, act, fc2)


def _timm_block(blk: nn.Module) -> BlockParts:
    a, m = blk.attn, blk.mlp
    extras = _not_identity(blk, ("ls1", "ls2", "attn.q_norm", "attn.k_norm", "attn.norm",
                                 "mlp.norm")) if hasattr(m, "fc1") else ("mlp",)
    return BlockParts(blk.norm1, a, a.qkv.weight, a.qkv.bias, a.proj, blk.norm2,
                      getattr(m, "fc1", None), getattr(m, "act", None), getattr(m, "fc2", None),
                      extras)


def _hf_block(blk: nn.Module) -> BlockParts:
    a, m = blk.attention, blk.mlp
    proj = (a.q_proj, a.k_proj, a.v_proj)
    bias = None if a.q_proj.bias is None else torch.cat([p.bias for p in proj])
    return BlockParts(blk.layernorm_before, a, torch.cat([p.weight for p in proj]), bias,
                      a.o_proj, blk.layernorm_after, m.fc1, m.activation_fn, m.fc2)


def _timm_sizes(model: nn.Module) -> tuple:
    if not getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None):
        raise TypeError(
            f"{type(model).__name__} has no class token (class_token=False), so there is no "
            "class-token row to read; use a timm ViT/DeiT built with a class token.")
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not hasattr(attn, "fused_attn") or not hasattr(attn, "attn_drop"):
            raise TypeError(
                f"timm block {i} ({type(blk).__name__}) has no standard 'attn' module with "
                "'fused_attn' and 'attn_drop'; capture supports timm's ViT/DeiT Block "
                "with timm.layers.Attention.")
    pe = model.patch_embed
    dynamic = bool(getattr(pe, "dynamic_img_size", False)
                   or getattr(model, "dynamic_img_size", False))
    return (model.blocks[0].attn.num_heads, int(model.num_prefix_tokens), pe.proj.in_channels,
            None if dynamic else _pair(pe.img_size), _pair(pe.patch_size))


def _timm_extras(model: nn.Module) -> list[str]:
    out = list(_not_identity(model, ("norm_pre", "fc_norm", "patch_embed.norm")))
    if int(model.num_prefix_tokens) != 1:
        out.append(f"{model.num_prefix_tokens} prefix tokens (distillation/register tokens)")
    if getattr(model, "global_pool", "token") != "token":
        out.append(f"global_pool={model.global_pool!r}")
    if getattr(model, "no_embed_class", False):
        out.append("no_embed_class=True")
    return out


FAMILIES: tuple[Family, ...] = (
    Family("vit_course", "vit_course.models.ViT", _loaded("vit_course.models", "ViT"),
           dict(blocks="transformer_encoder", norm="norm", head="head",
                patch="patch_embedding.patcher", class_token="class_embedding",
                pos_embedding="position_embedding"),
           _course_block,
           lambda m: (m.num_heads, int(m.num_prefix_tokens), m.in_channels,
                      (m.img_size, m.img_size), _pair(m.patch_size)),
           _record_blocks, readout=lambda m, x: m.forward_head(m.norm(x))),
    Family("torchvision", "torchvision.models.VisionTransformer",
           _loaded("torchvision.models.vision_transformer", "VisionTransformer"),
           dict(blocks="encoder.layers", norm="encoder.ln", head="heads", patch="conv_proj",
                class_token="class_token", pos_embedding="encoder.pos_embedding"),
           _torchvision_block,
           lambda m: (m.encoder.layers[0].self_attention.num_heads, 1,   # conv stem or not:
                      next(c for c in m.conv_proj.modules() if isinstance(c, nn.Conv2d))
                      .in_channels, (m.image_size, m.image_size), _pair(m.patch_size)),
           _record_torchvision, readout=lambda m, x: m.heads(m.encoder.ln(x)[:, 0])),
    Family("timm", "timm VisionTransformer (ViT, DeiT, distilled DeiT; if timm is installed)",
           _loaded("timm.models.vision_transformer", "VisionTransformer"),
           dict(blocks="blocks", norm="norm", head="head", patch="patch_embed.proj",
                class_token="cls_token", pos_embedding="pos_embed"),
           _timm_block, _timm_sizes, _record_blocks, _timm_extras,
           readout=lambda m, x: m.forward_head(m.norm(x))),    # distilled: both tokens
    Family("hf", "transformers ViTForImageClassification (if transformers is installed)",
           _loaded("transformers.models.vit.modeling_vit", "ViTForImageClassification"),
           dict(blocks="vit.layers", norm="vit.layernorm", head="classifier",
                patch="vit.embeddings.patch_embeddings.projection",
                class_token="vit.embeddings.cls_token",
                pos_embedding="vit.embeddings.position_embeddings"),
           _hf_block,
           lambda m: (m.config.num_attention_heads, 1, m.config.num_channels,
                      _pair(m.config.image_size), _pair(m.config.patch_size)),
           _record_hf, readout=lambda m, x: m.classifier(m.vit.layernorm(x)[:, 0])),
)

#: What the explainers accept, for error messages.
SUPPORTED_MODELS: tuple[str, ...] = tuple(f.label for f in FAMILIES)


# ----------------------------------------------------------------------------- reading
def unwrap(model: object) -> object:
    """The eager module behind ``torch.compile`` (capture needs the eager forward)."""
    return getattr(model, "_orig_mod", model)


def family_of(model: object) -> Family:
    """The :class:`Family` of a supported model.

    Raises:
        TypeError: for any other model, naming the four supported families.
    """
    model = unwrap(model)
    for fam in FAMILIES:
        cls = fam.model_class()
        if cls is not None and isinstance(model, cls):
            return fam
    missing = [lib for lib in ("timm", "transformers") if importlib.util.find_spec(lib) is None]
    note = f" ({' and '.join(missing)} not installed)" if missing else ""
    raise TypeError(
        f"explanations support {', '.join(SUPPORTED_MODELS)}; got {type(model).__module__}."
        f"{type(model).__qualname__}{note}. Wrap or rebuild the model as one of these.")


def part(model: nn.Module, name: str) -> Any:
    """The model's module or parameter ``name`` (a key of :attr:`Family.paths`)."""
    model = unwrap(model)
    return _get(model, family_of(model).paths[name])


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The encoder blocks, input side first."""
    return list(part(model, "blocks"))


def block_parts(model: nn.Module, layer: int) -> BlockParts:
    """Block ``layer``'s norms, attention, projections and MLP (see :class:`BlockParts`)."""
    return family_of(model).block(blocks_of(model)[layer])


def nonplain_parts(model: nn.Module) -> list[str]:
    """Parts of the blocks outside the plain pre-norm scheme of :class:`BlockParts` (the
    extras, norms that are not LayerNorm, projections that are not Linear), as "block i
    name"; empty when every block can be recomputed from its parts."""
    parts = [family_of(model).block(b) for b in blocks_of(model)]
    return [f"block {i} {e}" for i, p in enumerate(parts) for e in p.extras] + [
        f"block {i} {name} ({type(getattr(p, name)).__name__})" for i, p in enumerate(parts)
        for name, kind in (("norm1", nn.LayerNorm), ("norm2", nn.LayerNorm),
                           ("proj", nn.Linear), ("fc1", nn.Linear), ("fc2", nn.Linear))
        if not isinstance(getattr(p, name), kind)]


def head_of(model: nn.Module) -> nn.Module:
    """The classification head, as attached: the module mapping the (B, D) class-token
    feature to the logits (torchvision: ``model.heads``, whatever it holds)."""
    return part(model, "head")


def head_layers(model: nn.Module) -> tuple[nn.Module, ...]:
    """The head as a chain of layers: ``(Linear,)`` or ``(Linear, activation, Linear)``.

    Accepts a bare ``nn.Linear`` (after :func:`vit_course.pretrained.attach_head`),
    ``Sequential(head=Linear)`` and torchvision's ``Sequential(pre_logits, act, head)``
    (``representation_size``); dropouts and identities are skipped.

    Raises:
        TypeError: any other head, naming its layers.
    """
    head = head_of(model)
    kids = [m for m in head.children() if not isinstance(m, (nn.Dropout, nn.Identity))] \
        if isinstance(head, nn.Sequential) else [head]
    linear = [isinstance(m, nn.Linear) for m in kids]
    if linear not in ([True], [True, False, True]) or any(
            next(m.parameters(), None) is not None for m in kids if not isinstance(m, nn.Linear)):
        raise TypeError(
            f"the classification head must be one nn.Linear, alone or in a Sequential, or "
            f"Sequential(Linear, activation, Linear) (torchvision's pre-logits), got {head!r}; "
            "replace it with vit_course.pretrained.attach_head(model, nn.Linear(D, K)).")
    return tuple(kids)


def set_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put ``head`` where :func:`head_of` finds it (in place); returns ``model``."""
    owner, _, name = family_of(model).paths["head"].rpartition(".")
    setattr(_get(unwrap(model), owner) if owner else unwrap(model), name, head)
    return model


def head_param_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the classifier end (final norm and head)."""
    fam = family_of(model)
    extra = ("fc_norm.", "head_dist.") if fam.name == "timm" else ()   # timm's other ends
    return (f"{fam.paths['norm']}.", f"{fam.paths['head']}.") + extra


def describe_model(model: nn.Module) -> ModelInfo:
    """Read layers, heads, prefix tokens, channels, sizes, classes and width from a model.

    Raises:
        TypeError: for an unsupported model (naming the supported ones) or variant.
    """
    model = unwrap(model)
    fam = family_of(model)
    heads, prefix, channels, image_size, patch_size = fam.sizes(model)
    linears = [m for m in head_of(model).modules() if isinstance(m, nn.Linear)]
    return ModelInfo(fam.name, len(blocks_of(model)), int(heads), prefix, int(channels),
                     image_size, patch_size, linears[-1].out_features if linears else None,
                     int(part(model, "pos_embedding").shape[-1]))


# ----------------------------------------------------------------------------- running
def logits_of(model: nn.Module, images: Tensor) -> Tensor:
    """``model(images)`` as a logits tensor (B, K), whatever the family returns.

    Hugging Face models return an output object (``.logits``); a distilled DeiT in
    training mode returns a tuple (its first element: the class-token head).
    """
    out = model(images)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return getattr(out, "logits", out)


def readout(model: nn.Module, tokens: Tensor) -> Tensor:
    """Logits (B, K) from a residual stream ``tokens`` (B, T, D): the model's final norm and
    head, as its forward applies them to the last block's output (the logit lens uses it on
    earlier blocks' outputs)."""
    model = unwrap(model)
    return family_of(model).readout(model, tokens)


def linear_as(module: nn.Linear, x: Tensor) -> Tensor:
    """``module(x)`` with the weights cast to ``x``'s dtype (a float64 pass of a float32 model)."""
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.linear(x, module.weight.to(x.dtype), bias)


def layer_norm_as(module: nn.LayerNorm, x: Tensor) -> Tensor:
    """``module(x)`` (an ``nn.LayerNorm``) with its affine parameters cast to ``x``'s dtype."""
    w, b = (None if p is None else p.to(x.dtype) for p in (module.weight, module.bias))
    return F.layer_norm(x, module.normalized_shape, w, b, module.eps)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter (CPU, float32 without any)."""
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


# ----------------------------------------------------------------------------- token drop
class TokenDrop:
    """While active (``with TokenDrop(model) as drop:``), the model runs on a shorter sequence.

    Setting ``drop.keep`` to (B, k) patch-token indices (row-major on the patch grid) makes the
    first block receive the P prefix tokens (class token, distillation/register tokens) and only
    those k patch tokens, each with its own position embedding already added; every later block,
    the final norm and the head see that sequence of P + k tokens. ``keep = None`` runs the full
    sequence. The patch embedding still runs over the whole image (its cost is < 1 % of a block
    stack for ViT-B/16); the blocks cost about (P + k) / (P + N) of a full forward, less for
    the attention. The same for every family: a forward pre-hook on block 0.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap(model)
        self.prefix = describe_model(self.model).num_prefix_tokens
        self.keep: Tensor | None = None
        self._handle: Any = None

    def _hook(self, _module: nn.Module, args: tuple) -> tuple | None:
        if self.keep is None:
            return None
        x, keep = args[0], self.keep                                    # (B, P+N, D), (B, k)
        if keep.ndim != 2 or keep.shape[0] != x.shape[0]:
            raise RuntimeError(f"TokenDrop.keep must be (B, k) = ({x.shape[0]}, k), got {tuple(keep.shape)}")
        P = self.prefix
        kept = x[:, P:].gather(1, keep.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return (torch.cat([x[:, :P], kept], dim=1),) + tuple(args[1:])

    def __enter__(self) -> TokenDrop:
        self._handle = blocks_of(self.model)[0].register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        self.keep = None
