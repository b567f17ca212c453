"""families.py: every supported ViT family recognised and read alike.

Tiny models of every family (tests/_tiny.py): 2 blocks, 2 heads, 4×4 grid, width 32,
3 classes; the distilled DeiT has 2 prefix tokens.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _tiny import MODEL_KINDS, images, make_model
from vit_course.explain.families import (
    FAMILIES,
    SUPPORTED_MODELS,
    block_parts,
    blocks_of,
    describe_model,
    family_of,
    head_layers,
    head_of,
    head_param_prefixes,
    logits_of,
    part,
    set_head,
)
from vit_course.pretrained import attach_head

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY = {"course": "vit_course", "torchvision": "torchvision", "timm": "timm",
          "timm_distilled": "timm", "hf": "hf"}


def tiny_torchvision(**kwargs) -> nn.Module:
    from torchvision.models import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=3, **kwargs).eval()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_each_family_recognised_with_blocks_prefix_tokens_and_grid(kind):
    model = make_model(kind)
    info = describe_model(model)
    assert info.family == family_of(model).name == FAMILY[kind]
    assert info.num_layers == len(blocks_of(model)) == 2 and info.num_heads == 2
    assert info.num_prefix_tokens == (2 if kind == "timm_distilled" else 1)
    assert (info.in_channels, info.patch_size, info.num_classes, info.width) == (3, (8, 8), 3, 32)
    assert info.image_size == (32, 32) and info.grid(32, 32) == (4, 4)
    assert part(model, "pos_embedding").shape == (1, info.num_prefix_tokens + 16, 32)
    assert part(model, "class_token").shape == (1, 1, 32)
    assert tuple(part(model, "patch").kernel_size) == (8, 8)
    p = block_parts(model, 0)
    assert p.qkv_weight.shape == (96, 32) and p.proj.weight.shape == (32, 32)
    assert isinstance(p.norm1, nn.LayerNorm) and isinstance(p.norm2, nn.LayerNorm)
    assert p.fc1.out_features == p.fc2.in_features and p.fc2.out_features == 32
    assert p.extras == ()
    logits = logits_of(model, images(2))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)
    assert all(n.startswith(head_param_prefixes(model)) for n, _ in
               head_of(model).named_parameters(prefix=family_of(model).paths["head"]))


def test_hf_qkv_rows_are_q_k_v_projections_and_norm_gradcam_read_them():
    model = make_model("hf")
    attn = model.vit.layers[1].attention
    p = block_parts(model, 1)
    torch.testing.assert_close(p.qkv_weight, torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                                        attn.v_proj.weight]))
    torch.testing.assert_close(p.qkv_bias[64:], attn.v_proj.bias)
    assert p.proj is attn.o_proj and p.norm1 is model.vit.layers[1].layernorm_before
    # what norm.py and gradcam.py read through the family
    from vit_course.explain.gradcam import default_gradcam_layer
    from vit_course.explain.norm import value_output_weights
    ln, w_v, b_v, w_o = value_output_weights(model, 1)
    assert ln is p.norm1 and w_o is attn.o_proj.weight
    torch.testing.assert_close(w_v, attn.v_proj.weight)
    torch.testing.assert_close(b_v, attn.v_proj.bias)
    assert default_gradcam_layer(model) is model.vit.layers[-1].layernorm_before


def test_unsupported_model_error_lists_all_four_families():
    assert len(FAMILIES) == len(SUPPORTED_MODELS) == 4
    with pytest.raises(TypeError) as err:
        describe_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    msg = str(err.value)
    for name in ("vit_course.models.ViT", "torchvision.models.VisionTransformer",
                 "timm VisionTransformer", "transformers ViTForImageClassification",
                 "Sequential"):
        assert name in msg


def test_head_of_for_the_three_torchvision_head_shapes():
    model = tiny_torchvision()                                     # Sequential(head=Linear)
    assert head_of(model) is model.heads and head_layers(model) == (model.heads.head,)
    bare = nn.Linear(32, 5)
    attach_head(model, bare)                                       # a bare Linear
    assert head_of(model) is bare and head_layers(model) == (bare,)
    assert describe_model(model).num_classes == 5
    other = nn.Linear(32, 4)
    assert set_head(model, other) is model and model.heads is other
    pre_logits = tiny_torchvision(representation_size=16)          # Sequential(pre, act, head)
    assert head_of(pre_logits) is pre_logits.heads
    assert describe_model(pre_logits).num_classes == 3
    heads = pre_logits.heads
    assert head_layers(pre_logits) == (heads.pre_logits, heads.act, heads.head)
    attach_head(pre_logits, nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 3)))
    with pytest.raises(TypeError, match="pre-logits"):
        head_layers(pre_logits)


def test_timm_layer_scale_and_qk_norm_are_named_as_extras():
    timm = pytest.importorskip("timm", reason="timm not installed (optional extra)")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=2, num_heads=2, embed_dim=32, num_classes=3,
                              init_values=1e-5, qk_norm=True)
    assert {"ls1", "ls2", "attn.q_norm", "attn.k_norm"} <= set(block_parts(model, 0).extras)
