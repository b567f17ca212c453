"""Tiny ViTs and images shared by the explanation tests (tests/explain/...): 32-px images,
8-px patches (a 4×4 grid, N = 16), 2 layers, width 32, MLP 64, 2 heads, 3 classes, for each
model family (:data:`MODEL_KINDS`; the timm and Hugging Face kinds skip without their library).

Every model gets a *random* head: torchvision zero-initialises its head, and with a zero
head every logit and every gradient is 0, so a gradient method would prove nothing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vit_course.models import ViT
from vit_course.runtime import set_seed

MODEL_KINDS = ["torchvision", "course", "timm", "timm_distilled", "hf"]


def make_model(kind: str, seed: int = 0, class_token_std: float | None = None) -> nn.Module:
    """A tiny ViT of ``kind`` (one of :data:`MODEL_KINDS`) in eval mode, random head.

    ``class_token_std`` redraws torchvision's class token (zero by default), for tests that
    need relevance to reach it. The timm and hf kinds skip the test when timm / transformers
    is not installed.
    """
    set_seed(seed)
    if kind == "torchvision":
        from torchvision.models import VisionTransformer
        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                  hidden_dim=32, mlp_dim=64, num_classes=3)
        head = model.heads.head
        if class_token_std is not None:
            nn.init.normal_(model.class_token, std=class_token_std)
    elif kind == "course":
        model = ViT(img_size=32, patch_size=8, num_transformer_layers=2, embedding_dim=32,
                    mlp_size=64, num_heads=2, num_classes=3)
        head = model.head
    elif kind in ("timm", "timm_distilled"):
        timm = pytest.importorskip("timm", reason="timm not installed (optional extra)")
        name = "vit_tiny_patch16_224" if kind == "timm" else "deit_tiny_distilled_patch16_224"
        model = timm.create_model(name, pretrained=False, img_size=32, patch_size=8, depth=2,
                                  num_heads=2, embed_dim=32, num_classes=3)
        head = model.head
    elif kind == "hf":
        transformers = pytest.importorskip("transformers", reason="transformers not installed "
                                           "(optional extra 'hf')")
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, num_labels=3)
        model = transformers.ViTForImageClassification(config)
        head = model.classifier
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; valid: {MODEL_KINDS}")
    nn.init.normal_(head.weight, std=0.5)
    nn.init.normal_(head.bias, std=0.5)
    return model.eval()


def images(B: int = 3, seed: int = 1, size: int = 32) -> torch.Tensor:
    """(B, 3, size, size) uniform [0, 1) images from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, size, size, generator=g)


def assert_rejected_before_any_forward(model: nn.Module, call, exc: type, message: str) -> None:
    """``call()`` raises ``exc`` matching ``message`` without running ``model`` even once."""
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(exc, match=message):
            call()
    finally:
        handle.remove()
    assert calls == []
