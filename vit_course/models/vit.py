"""The course's Vision Transformer, built from scratch.

The classes and constructor arguments follow the seed course (mrdbourke
pytorch-deep-learning, notebook 08 "paper replicating") so learners can read both side by
side: :class:`PatchEmbedding`, :class:`MultiheadSelfAttentionBlock`, :class:`MLPBlock`,
:class:`TransformerEncoderBlock` and :class:`ViT`, with ViT-Base defaults (Dosovitskiy et
al. 2021, Table 1). Differences from the seed, all compatible with its call signatures:

- Attention computes q, k, v itself (one ``qkv`` Linear D→3D, one ``proj`` Linear D→D,
  both with bias: the same parameter count as ``nn.MultiheadAttention``) so the
  post-softmax probabilities can be returned without hooks. ``fused_attn`` (per block)
  picks ``F.scaled_dot_product_attention``; asking for attention takes the explicit path
  softmax(QKᵀ/√d) for that call only. Both paths give the same logits.
- The seed's ``classifier = Sequential(LayerNorm, Linear)`` is split into ``norm`` and
  ``head`` so that :meth:`ViT.forward_features` returns normed tokens (B, 1+N, D) and
  :meth:`ViT.forward_head` classifies the class token (the split of timm's
  ``VisionTransformer.forward_features`` / ``forward_head``).
- The class token and position embeddings start from a truncated normal (std 0.02)
  instead of the seed's ``torch.randn`` (std 1), and Linear layers from a truncated normal
  (std 0.02) with zero bias. For the position embeddings and Linear layers that is timm's
  ``VisionTransformer.init_weights`` (``trunc_normal_(pos_embed, std=.02)``,
  ``init_weights_vit_timm``); timm starts the class token at ``normal_(std=1e-6)``, while
  here it shares the position embeddings' std 0.02 (as in timm's early versions, e.g. the
  copy of Ross Wightman's code in hila-chefer/Transformer-Explainability
  ``baselines/ViT/ViT_LRP.py``). The head is random, not zero (torchvision
  zero-initialises it, which makes gradients of an untrained model vanish).
- Inputs are checked (:func:`vit_course.checks.check_images`) and bad ones raise
  ``ValueError``/``TypeError`` that say what to do.

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, D width; with the class
token the sequence is 1+N long.

Example::

    model = ViT(num_classes=3)                      # ViT-B/16, 85,800,963 parameters
    logits = model(images)                          # (B, 3)
    logits, attns = model(images, return_attentions=True)
    attns[-1].shape                                 # (B, 12, 197, 197)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_images, check_positive_int, check_ratio

__all__ = ["PatchEmbedding", "MultiheadSelfAttentionBlock", "MLPBlock", "TransformerEncoderBlock",
           "ViT", "CONFIGS", "build_vit", "count_parameters", "parameter_table",
           "format_parameter_table"]

_RESIZE_FIX = "resize the images first, e.g. with vit_course.data.simple_transform({size})"


# ----------------------------------------------------------------------------- blocks
class PatchEmbedding(nn.Module):
    """Cut images into non-overlapping patches and project each to a D-dim vector.

    A Conv2d with kernel = stride = ``patch_size`` is the same as flattening every patch
    and applying one shared Linear layer.

    Args:
        in_channels: image channels C. Default: 3.
        patch_size: side P of each square patch in pixels. Default: 16.
        embedding_dim: width D of each patch embedding. Default: 768.

    Shapes:
        (B, C, H, W) → (B, N, D) with N = (H/P)·(W/P), patches in row-major order.
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, embedding_dim: int = 768):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.patch_size = check_positive_int(patch_size, "patch_size")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        self.patcher = nn.Conv2d(in_channels, embedding_dim, kernel_size=patch_size,
                                 stride=patch_size, padding=0)
        self.flatten = nn.Flatten(start_dim=2, end_dim=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, channels=self.in_channels)
        H, W = x.shape[-2:]
        P = self.patch_size
        if H % P or W % P:
            good = max(P, round(max(H, W) / P) * P)
            raise ValueError(
                f"PatchEmbedding: image size {H}x{W} is not divisible by patch_size={P}; "
                f"expected H and W to be multiples of {P} (e.g. {good}x{good}); "
                + _RESIZE_FIX.format(size=good) + "."
            )
        x = self.patcher(x)                # (B, D, h, w)
        x = self.flatten(x)                # (B, D, N)
        return x.transpose(1, 2)           # (B, N, D)


class MultiheadSelfAttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention: LayerNorm, then attention (no residual here).

    Args:
        embedding_dim: token width D. Default: 768.
        num_heads: number of heads; must divide ``embedding_dim``. Default: 12.
        attn_dropout: dropout on the attention probabilities. Default: 0.0.
        fused_attn: use ``F.scaled_dot_product_attention`` when attention is not requested.
            Explainers may set ``block.fused_attn = False``; results are the same.
            Default: True.

    Shapes:
        (B, 1+N, D) → (B, 1+N, D); with ``return_attention=True`` also the attention
        probabilities (B, heads, 1+N, 1+N).
    """

    def __init__(self, embedding_dim: int = 768, num_heads: int = 12, attn_dropout: float = 0.0,
                 fused_attn: bool = True):
        super().__init__()
        check_positive_int(embedding_dim, "embedding_dim")
        check_positive_int(num_heads, "num_heads")
        if embedding_dim % num_heads:
            raise ValueError(
                f"embedding_dim={embedding_dim} must be divisible by num_heads={num_heads} "
                f"(each head gets embedding_dim / num_heads features); choose num_heads among "
                f"{[h for h in range(1, min(embedding_dim, 64) + 1) if embedding_dim % h == 0]}."
            )
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.head_dim = embedding_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_dropout = check_ratio(attn_dropout, "attn_dropout")
        self.fused_attn = bool(fused_attn)
        self.layer_norm = nn.LayerNorm(embedding_dim)
        self.qkv = nn.Linear(embedding_dim, 3 * embedding_dim, bias=True)
        self.attn_drop = nn.Dropout(self.attn_dropout)
        self.proj = nn.Linear(embedding_dim, embedding_dim, bias=True)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: tokens (B, 1+N, D).
            return_attention: also return the post-softmax attention (B, heads, 1+N, 1+N).
                This call then takes the explicit path, and the returned tensor is the very
                one multiplied with V (taken before attention dropout, which is 0 by
                default), so ``autograd.grad(y, attn)`` is ∂y/∂A.

        Returns:
            out (B, 1+N, D), or ``(out, attn)``.
        """
        B, T, D = x.shape                                   # T = 1+N tokens
        if D != self.embedding_dim:
            raise ValueError(f"MultiheadSelfAttentionBlock expects width {self.embedding_dim}, "
                             f"got tokens of shape {tuple(x.shape)}")
        qkv = self.qkv(self.layer_norm(x))                  # (B, T, 3D)
        qkv = qkv.reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                             # each (B, heads, T, head_dim)
        attn = None
        if self.fused_attn and not return_attention:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)   # (B, heads, T, T)
            attn = attn.softmax(dim=-1)
            out = self.attn_drop(attn) @ v                  # (B, heads, T, head_dim)
        out = out.transpose(1, 2).reshape(B, T, D)          # (B, T, D)
        out = self.proj(out)
        return (out, attn) if return_attention else out


class MLPBlock(nn.Module):
    """Pre-norm MLP: LayerNorm, Linear D→mlp_size, GELU, Dropout, Linear mlp_size→D, Dropout.

    Args:
        embedding_dim: token width D. Default: 768.
        mlp_size: hidden width. Default: 3072.
        dropout: dropout after each Linear. Default: 0.1.

    Shapes:
        (B, 1+N, D) → (B, 1+N, D).
    """

    def __init__(self, embedding_dim: int = 768, mlp_size: int = 3072, dropout: float = 0.1):
        super().__init__()
        check_positive_int(embedding_dim, "embedding_dim")
        check_positive_int(mlp_size, "mlp_size")
        dropout = check_ratio(dropout, "dropout")
        self.layer_norm = nn.LayerNorm(embedding_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, mlp_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_size, embedding_dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.layer_norm(x))


class TransformerEncoderBlock(nn.Module):
    """One pre-norm encoder block: ``x + MSA(LN(x))``, then ``x + MLP(LN(x))``.

    Args:
        embedding_dim: token width D. Default: 768.
        num_heads: attention heads. Default: 12.
        mlp_size: MLP hidden width. Default: 3072.
        mlp_dropout: dropout in the MLP. Default: 0.1.
        attn_dropout: dropout on attention probabilities. Default: 0.0.

    Shapes:
        (B, 1+N, D) → (B, 1+N, D); with ``return_attention=True`` also
        (B, heads, 1+N, 1+N).
    """

    def __init__(self, embedding_dim: int = 768, num_heads: int = 12, mlp_size: int = 3072,
                 mlp_dropout: float = 0.1, attn_dropout: float = 0.0):
        super().__init__()
        self.msa_block = MultiheadSelfAttentionBlock(embedding_dim, num_heads, attn_dropout)
        self.mlp_block = MLPBlock(embedding_dim, mlp_size, mlp_dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.msa_block(x, return_attention=return_attention)
        a, attn = out if return_attention else (out, None)
        x = x + a
        x = x + self.mlp_block(x)
        return (x, attn) if return_attention else x


# ----------------------------------------------------------------------------- model
class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021) with the seed course's arguments.

    Patch embedding, a learned class token, learned position embeddings, embedding
    dropout, ``num_transformer_layers`` pre-norm encoder blocks, a final LayerNorm and a
    Linear head on the class token. Defaults are ViT-B/16 at 224×224; with
    ``num_classes=3`` the model has 85,800,963 parameters, exactly as torchvision's
    ``vit_b_16(num_classes=3)``.

    Args:
        img_size: side of the square input images in pixels. Default: 224.
        in_channels: image channels. Default: 3.
        patch_size: patch side; must divide ``img_size``. Default: 16.
        num_transformer_layers: encoder depth. Default: 12.
        embedding_dim: token width D. Default: 768.
        mlp_size: MLP hidden width. Default: 3072.
        num_heads: attention heads; must divide ``embedding_dim``. Default: 12.
        attn_dropout: dropout on attention probabilities. Default: 0.0.
        mlp_dropout: dropout in the MLPs. Default: 0.1.
        embedding_dropout: dropout after adding position embeddings. Default: 0.1.
        num_classes: output classes. Default: 1000.

    Attributes:
        config: the constructor arguments (a JSON-able dict; saved with checkpoints).
        grid_size: patch grid (h, w). num_prefix_tokens: 1 (the class token).
    """

    num_prefix_tokens: int = 1

    def __init__(self, img_size: int = 224, in_channels: int = 3, patch_size: int = 16,
                 num_transformer_layers: int = 12, embedding_dim: int = 768, mlp_size: int = 3072,
                 num_heads: int = 12, attn_dropout: float = 0.0, mlp_dropout: float = 0.1,
                 embedding_dropout: float = 0.1, num_classes: int = 1000):
        super().__init__()
        check_positive_int(img_size, "img_size")
        check_positive_int(patch_size, "patch_size")
        check_positive_int(num_transformer_layers, "num_transformer_layers")
        check_positive_int(num_classes, "num_classes")
        if img_size % patch_size:
            good = max(patch_size, round(img_size / patch_size) * patch_size)
            raise ValueError(
                f"img_size={img_size} is not divisible by patch_size={patch_size}; the image "
                f"must split into whole patches. Use img_size={good} (and "
                f"vit_course.data.simple_transform({good}) for the data) or a patch_size "
                f"that divides {img_size}."
            )
        self.config: dict[str, Any] = dict(
            img_size=img_size, in_channels=in_channels, patch_size=patch_size,
            num_transformer_layers=num_transformer_layers, embedding_dim=embedding_dim,
            mlp_size=mlp_size, num_heads=num_heads, attn_dropout=attn_dropout,
            mlp_dropout=mlp_dropout, embedding_dropout=embedding_dropout, num_classes=num_classes,
        )
        self.img_size = img_size
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.num_patches = (img_size // patch_size) ** 2

        self.patch_embedding = PatchEmbedding(in_channels, patch_size, embedding_dim)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, embedding_dim))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embedding_dim))
        self.embedding_dropout = nn.Dropout(check_ratio(embedding_dropout, "embedding_dropout"))
        self.transformer_encoder = nn.Sequential(*[
            TransformerEncoderBlock(embedding_dim, num_heads, mlp_size, mlp_dropout, attn_dropout)
            for _ in range(num_transformer_layers)
        ])
        self.norm = nn.LayerNorm(embedding_dim)
        self.head = nn.Linear(embedding_dim, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) tokens and Linear weights, zero Linear biases."""
        nn.init.trunc_normal_(self.class_embedding, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid (h, w) = (img_size / patch_size, img_size / patch_size)."""
        g = self.img_size // self.patch_size
        return (g, g)

    @property
    def blocks(self) -> nn.Sequential:
        """The encoder blocks (alias of ``transformer_encoder``, timm's name)."""
        return self.transformer_encoder

    def _check_input(self, x: Any) -> None:
        check_images(x, channels=self.in_channels)
        H, W = x.shape[-2:]
        if (H, W) != (self.img_size, self.img_size):
            rebuild = (f" or build the model with img_size={H}"
                       if H == W and H % self.patch_size == 0 else "")
            raise ValueError(
                f"ViT was built for {self.img_size}x{self.img_size} images "
                f"(img_size={self.img_size}), got {H}x{W} in shape {tuple(x.shape)}; "
                + _RESIZE_FIX.format(size=self.img_size) + rebuild + "."
            )

    def forward_features(self, x: torch.Tensor, return_attentions: bool = False
                         ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Embed, encode and normalise the tokens.

        Args:
            x: images (B, C, img_size, img_size), float.
            return_attentions: also return each layer's attention probabilities.

        Returns:
            tokens (B, 1+N, D) after the final LayerNorm (row 0 is the class token), or
            ``(tokens, attentions)`` with ``attentions`` a list of ``num_transformer_layers``
            tensors (B, heads, 1+N, 1+N).
        """
        self._check_input(x)
        B = x.shape[0]
        x = self.patch_embedding(x)                                   # (B, N, D)
        cls = self.class_embedding.expand(B, -1, -1)                  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.position_embedding      # (B, 1+N, D)
        x = self.embedding_dropout(x)
        attentions: list[torch.Tensor] = []
        for block in self.transformer_encoder:
            if return_attentions:
                x, attn = block(x, return_attention=True)
                attentions.append(attn)
            else:
                x = block(x)
        x = self.norm(x)
        return (x, attentions) if return_attentions else x

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Classify the class token: (B, 1+N, D) → logits (B, num_classes)."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.embedding_dim:
            raise ValueError(f"forward_head expects tokens (B, 1+N, {self.embedding_dim}) from "
                             f"forward_features, got shape {tuple(tokens.shape)}")
        return self.head(tokens[:, 0])

    def forward(self, x: torch.Tensor, return_attentions: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Args:
            x: images (B, C, img_size, img_size), float.
            return_attentions: also return the per-layer attention probabilities.

        Returns:
            logits (B, num_classes), or ``(logits, attentions)`` where ``attentions`` is a
            list (one per layer, input side first) of (B, heads, 1+N, 1+N) tensors whose
            rows sum to 1. They are the tensors multiplied with V, so
            ``torch.autograd.grad(logits[:, c].sum(), attentions)`` gives ∂y_c/∂A_l.
            Asking for them does not change the logits.
        """
        if return_attentions:
            tokens, attentions = self.forward_features(x, return_attentions=True)
            return self.forward_head(tokens), attentions
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------- configs
CONFIGS: dict[str, dict[str, Any]] = {
    # Dosovitskiy et al. 2021, Table 1; patch 16 for B and L (ViT-B/16, ViT-L/16) and
    # patch 14 for H (ViT-H/14), as in the paper's headline models.
    "vit_base": dict(img_size=224, patch_size=16, num_transformer_layers=12,
                     embedding_dim=768, mlp_size=3072, num_heads=12),
    "vit_large": dict(img_size=224, patch_size=16, num_transformer_layers=24,
                      embedding_dim=1024, mlp_size=4096, num_heads=16),
    "vit_huge": dict(img_size=224, patch_size=14, num_transformer_layers=32,
                     embedding_dim=1280, mlp_size=5120, num_heads=16),
    # The course's small model: the ViT-Tiny width (D=192, 3 heads of 64, as in DeiT-Ti)
    # at a third of its depth (4 blocks), MLP ratio 4 (768). It keeps the 224×224 input and
    # 16×16 patches, so its 14×14 grid and attention maps line up with ViT-B/16 and the same
    # transform serves both. About 2.0M parameters (43× fewer than ViT-B, ~1/20 of its
    # compute): one epoch over the 225 training images took about 20 s on one core of the
    # course's 2-core build machine, so ten epochs fit in a few minutes on a laptop CPU.
    # It will not learn pizza/steak/sushi well from 225 images either — the point of
    # notebook 02 — but it trains fast enough to watch that happen.
    "vit_course_small": dict(img_size=224, patch_size=16, num_transformer_layers=4,
                             embedding_dim=192, mlp_size=768, num_heads=3),
}


def build_vit(name: str, num_classes: int = 3, **overrides: Any) -> ViT:
    """Build a :class:`ViT` from a named configuration in :data:`CONFIGS`.

    Args:
        name: one of ``"vit_base"``, ``"vit_large"``, ``"vit_huge"``, ``"vit_course_small"``.
        num_classes: output classes. Default: 3 (pizza, steak, sushi).
        **overrides: any other :class:`ViT` argument (e.g. ``img_size=32``).

    Returns:
        the model, randomly initialised.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown ViT config {name!r}; choose one of {sorted(CONFIGS)}.")
    kwargs = {**CONFIGS[name], "num_classes": num_classes, **overrides}
    return ViT(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``; works on the meta device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(names: list[str] | None = None, num_classes: int = 1000
                    ) -> list[dict[str, Any]]:
    """Hyperparameters and parameter counts of the named configs, computed from the code.

    Models are built on the meta device, so even ViT-H costs no memory or time.

    Args:
        names: configs to include. Default: all of :data:`CONFIGS`.
        num_classes: head size used for the count. Default: 1000 (ImageNet, as in the paper).

    Returns:
        one dict per config with keys ``name, layers, hidden_size, mlp_size, heads,
        patch_size, img_size, tokens, params``.
    """
    rows = []
    for name in names or list(CONFIGS):
        with torch.device("meta"):
            model = build_vit(name, num_classes=num_classes)
        cfg = model.config
        rows.append(dict(
            name=name, layers=cfg["num_transformer_layers"], hidden_size=cfg["embedding_dim"],
            mlp_size=cfg["mlp_size"], heads=cfg["num_heads"], patch_size=cfg["patch_size"],
            img_size=cfg["img_size"], tokens=1 + model.num_patches,
            params=count_parameters(model),
        ))
    return rows


def format_parameter_table(rows: list[dict[str, Any]] | None = None) -> str:
    """Render :func:`parameter_table` rows as a Markdown table (parameters in millions too)."""
    rows = parameter_table() if rows is None else rows
    lines = ["| model | layers | hidden D | MLP | heads | patch | tokens | parameters |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['layers']} | {r['hidden_size']} | {r['mlp_size']} | "
            f"{r['heads']} | {r['patch_size']} | {r['tokens']} | "
            f"{r['params']:,} ({r['params'] / 1e6:.1f}M) |"
        )
    return "\n".join(lines)
