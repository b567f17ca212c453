"""Tests for vit_course.models: sizes, shapes, attention on request, gradients, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vit_course.models import (
    CONFIGS,
    MLPBlock,
    MultiheadSelfAttentionBlock,
    PatchEmbedding,
    TransformerEncoderBlock,
    ViT,
    build_vit,
    count_parameters,
    format_parameter_table,
    parameter_table,
)

TINY = dict(img_size=32, in_channels=3, patch_size=8, num_transformer_layers=2,
            embedding_dim=32, mlp_size=64, num_heads=2, num_classes=3)


def tiny_vit(seed: int = 0, **overrides) -> ViT:
    torch.manual_seed(seed)
    return ViT(**{**TINY, **overrides})


def images(b: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def check_shape(t: torch.Tensor, expected: tuple, what: str) -> None:
    assert tuple(t.shape) == expected, f"{what}: got shape {tuple(t.shape)}, expected {expected}"


# ----------------------------------------------------------------------------- sizes
def test_vit_base_three_classes_has_85_800_963_parameters_like_torchvision():
    with torch.device("meta"):
        ours = ViT(num_classes=3)
        theirs = torchvision.models.vit_b_16(num_classes=3)
        built = build_vit("vit_base", num_classes=3)
    assert count_parameters(ours) == 85_800_963, f"ours: {count_parameters(ours):,}"
    assert count_parameters(theirs) == 85_800_963, f"torchvision: {count_parameters(theirs):,}"
    assert count_parameters(built) == 85_800_963


@pytest.mark.parametrize("name, tv_builder", [("vit_base", "vit_b_16"), ("vit_large", "vit_l_16"),
                                              ("vit_huge", "vit_h_14")])
def test_configs_match_torchvision_parameter_counts(name, tv_builder):
    with torch.device("meta"):
        ours = build_vit(name, num_classes=1000)
        theirs = getattr(torchvision.models, tv_builder)()
    assert count_parameters(ours) == count_parameters(theirs), (
        f"{name}: ours {count_parameters(ours):,} vs torchvision {tv_builder} "
        f"{count_parameters(theirs):,}")


def test_parameter_table_is_computed_from_the_code():
    rows = {r["name"]: r for r in parameter_table()}
    assert set(rows) == set(CONFIGS)
    assert rows["vit_base"]["params"] == 86_567_656          # ViT-B/16, 1000 classes
    assert rows["vit_large"]["params"] == 304_326_632
    assert rows["vit_huge"]["params"] == 632_045_800         # the paper's "632M"
    assert rows["vit_huge"]["patch_size"] == 14 and rows["vit_huge"]["tokens"] == 257
    assert rows["vit_course_small"]["params"] < 5_000_000
    small3 = parameter_table(["vit_course_small"], num_classes=3)[0]["params"]
    with torch.device("meta"):
        assert small3 == count_parameters(build_vit("vit_course_small"))
    md = format_parameter_table()
    assert "| vit_huge | 32 | 1280 | 5120 | 16 | 14 | 257 | 632,045,800" in md


def test_count_parameters_trainable_only():
    model = tiny_vit()
    total = count_parameters(model)
    model.patch_embedding.requires_grad_(False)
    frozen = sum(p.numel() for p in model.patch_embedding.parameters())
    assert count_parameters(model, trainable_only=True) == total - frozen


def test_same_function_as_torchvision_vision_transformer(tiny_tv_vit):
    """Copy a torchvision ViT's weights into ours: the logits agree, so the architecture
    (token order, q/k/v layout, pre-norm, GELU, class token, head) is the same."""
    tv = tiny_tv_vit(seed=3)
    ours = tiny_vit()
    ours.eval()
    sd = {
        "patch_embedding.patcher.weight": tv.conv_proj.weight,
        "patch_embedding.patcher.bias": tv.conv_proj.bias,
        "class_embedding": tv.class_token,
        "position_embedding": tv.encoder.pos_embedding,
        "norm.weight": tv.encoder.ln.weight, "norm.bias": tv.encoder.ln.bias,
        "head.weight": tv.heads.head.weight, "head.bias": tv.heads.head.bias,
    }
    for i, layer in enumerate(tv.encoder.layers):
        p = f"transformer_encoder.{i}."
        sd.update({
            p + "msa_block.layer_norm.weight": layer.ln_1.weight,
            p + "msa_block.layer_norm.bias": layer.ln_1.bias,
            p + "msa_block.qkv.weight": layer.self_attention.in_proj_weight,
            p + "msa_block.qkv.bias": layer.self_attention.in_proj_bias,
            p + "msa_block.proj.weight": layer.self_attention.out_proj.weight,
            p + "msa_block.proj.bias": layer.self_attention.out_proj.bias,
            p + "mlp_block.layer_norm.weight": layer.ln_2.weight,
            p + "mlp_block.layer_norm.bias": layer.ln_2.bias,
            p + "mlp_block.mlp.0.weight": layer.mlp[0].weight,
            p + "mlp_block.mlp.0.bias": layer.mlp[0].bias,
            p + "mlp_block.mlp.3.weight": layer.mlp[3].weight,
            p + "mlp_block.mlp.3.bias": layer.mlp[3].bias,
        })
    ours.load_state_dict(sd, strict=True)
    for m in ours.modules():               # torchvision uses LayerNorm eps 1e-6, the seed 1e-5
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-6
    x = images(3)
    with torch.no_grad():
        expected = tv(x)
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- shapes
def test_shapes_through_every_module():
    B, D, P, heads = 2, 32, 8, 2
    x = images(B)
    N = (32 // P) ** 2
    pe = PatchEmbedding(in_channels=3, patch_size=P, embedding_dim=D)
    tokens = pe(x)
    check_shape(tokens, (B, N, D), "PatchEmbedding")
    seq = torch.randn(B, 1 + N, D)
    msa = MultiheadSelfAttentionBlock(embedding_dim=D, num_heads=heads)
    check_shape(msa(seq), (B, 1 + N, D), "MultiheadSelfAttentionBlock")
    out, attn = msa(seq, return_attention=True)
    check_shape(out, (B, 1 + N, D), "MultiheadSelfAttentionBlock out")
    check_shape(attn, (B, heads, 1 + N, 1 + N), "MultiheadSelfAttentionBlock attn")
    check_shape(MLPBlock(embedding_dim=D, mlp_size=64)(seq), (B, 1 + N, D), "MLPBlock")
    block = TransformerEncoderBlock(embedding_dim=D, num_heads=heads, mlp_size=64)
    check_shape(block(seq), (B, 1 + N, D), "TransformerEncoderBlock")
    model = tiny_vit().eval()
    feats = model.forward_features(x)
    check_shape(feats, (B, 1 + N, D), "ViT.forward_features")
    check_shape(model.forward_head(feats), (B, 3), "ViT.forward_head")
    check_shape(model(x), (B, 3), "ViT.forward")
    assert model.grid_size == (4, 4) and model.num_prefix_tokens == 1
    assert model.num_patches == N and len(model.blocks) == 2


def test_seed_defaults_are_vit_base():
    with torch.device("meta"):
        model = ViT()
    assert model.config == dict(img_size=224, in_channels=3, patch_size=16,
                                num_transformer_layers=12, embedding_dim=768, mlp_size=3072,
                                num_heads=12, attn_dropout=0.0, mlp_dropout=0.1,
                                embedding_dropout=0.1, num_classes=1000)
    assert model.grid_size == (14, 14)
    check_shape(model.position_embedding, (1, 197, 768), "position_embedding")
    check_shape(model.class_embedding, (1, 1, 768), "class_embedding")
    msa = MultiheadSelfAttentionBlock()
    assert (msa.num_heads, msa.head_dim, msa.attn_dropout, msa.fused_attn) == (12, 64, 0.0, True)
    mlp = MLPBlock()
    assert mlp.mlp[0].out_features == 3072 and mlp.mlp[2].p == 0.1


def test_forward_is_features_then_head():
    model = tiny_vit().eval()
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))
        # the head reads the class token (row 0) only
        feats = model.forward_features(x)
        feats2 = feats.clone()
        feats2[:, 1:] = 0
        torch.testing.assert_close(model.forward_head(feats2), model.forward_head(feats))


def test_head_is_random_not_zero():
    model = tiny_vit()
    assert model.head.weight.abs().sum() > 0
    with torch.no_grad():
        logits = model.eval()(images(2))
    assert logits.std() > 0


def test_course_small_config_runs_at_224():
    model = build_vit("vit_course_small").eval()
    assert model.grid_size == (14, 14) and model.img_size == 224
    with torch.no_grad():
        logits, attns = model(torch.rand(1, 3, 224, 224), return_attentions=True)
    check_shape(logits, (1, 3), "vit_course_small logits")
    check_shape(attns[0], (1, 3, 197, 197), "vit_course_small attention")


# ----------------------------------------------------------------------------- attention
def test_attentions_shape_and_rows_sum_to_one():
    model = tiny_vit().eval()
    with torch.no_grad():
        logits, attns = model(images(3), return_attentions=True)
    assert isinstance(attns, list) and len(attns) == 2
    for attn in attns:
        check_shape(attn, (3, 2, 17, 17), "attention")
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, 17))
        assert (attn >= 0).all()


def test_asking_for_attentions_does_not_change_logits():
    model = tiny_vit().eval()
    x = images(4)
    with torch.no_grad():
        plain = model(x)
        with_attn, _ = model(x, return_attentions=True)
        feats, attns = model.forward_features(x, return_attentions=True)
    torch.testing.assert_close(with_attn, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.forward_head(feats), plain, atol=1e-5, rtol=0)
    assert len(attns) == 2
    assert all(b.msa_block.fused_attn for b in model.blocks), "the flag must be left as it was"


def test_fused_and_explicit_paths_give_the_same_logits():
    model = tiny_vit().eval()
    x = images(4)
    with torch.no_grad():
        fused = model(x)
        for block in model.blocks:
            block.msa_block.fused_attn = False
        explicit = model(x)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)


def test_attention_of_an_image_alone_equals_inside_a_batch():
    model = tiny_vit().eval()
    x = images(3)
    with torch.no_grad():
        _, batch_attns = model(x, return_attentions=True)
        _, single_attns = model(x[1:2], return_attentions=True)
    for a_batch, a_single in zip(batch_attns, single_attns):
        torch.testing.assert_close(a_batch[1:2], a_single, atol=1e-6, rtol=0)


def test_attentions_in_train_mode_with_dropout_still_rows_sum_to_one():
    model = tiny_vit(attn_dropout=0.5).train()
    _, attns = model(images(2), return_attentions=True)
    torch.testing.assert_close(attns[0].sum(-1), torch.ones(2, 2, 17))


def test_no_hooks_are_left_or_needed():
    model = tiny_vit().eval()
    model(images(1), return_attentions=True)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def _manual_logits(model: ViT, x: torch.Tensor, replace: dict[int, torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """The ViT forward written out by hand (eval mode), with layer l's attention
    probabilities replaced by ``replace[l]`` when given."""
    replace = replace or {}
    B = x.shape[0]
    t = model.patch_embedding.patcher(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.class_embedding.expand(B, -1, -1), t], 1) + model.position_embedding
    for l, block in enumerate(model.blocks):
        msa = block.msa_block
        T = t.shape[1]
        q, k, v = msa.qkv(msa.layer_norm(t)).reshape(B, T, 3, msa.num_heads, msa.head_dim) \
            .permute(2, 0, 3, 1, 4)
        attn = replace.get(l)
        if attn is None:
            attn = (q @ k.transpose(-2, -1) / msa.head_dim ** 0.5).softmax(-1)
        a = (attn @ v).transpose(1, 2).reshape(B, T, -1)
        t = t + msa.proj(a)
        t = t + block.mlp_block(t)
    return model.head(model.norm(t)[:, 0])


def test_returned_attentions_are_the_ones_multiplied_with_v():
    model = tiny_vit().eval()
    x = images(2)
    with torch.no_grad():
        logits, attns = model(x, return_attentions=True)
        by_hand = _manual_logits(model, x)
        from_returned = _manual_logits(model, x, replace=dict(enumerate(attns)))
    torch.testing.assert_close(by_hand, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_returned, logits, atol=1e-5, rtol=0)


def test_gradient_wrt_returned_attention_matches_finite_differences():
    """autograd.grad(y_c, attns[l]) is ∂y_c/∂A_l for *its own* layer: compare with central
    differences of the hand-written forward where A_l is replaced (float64)."""
    model = tiny_vit(seed=5).double().eval()
    x = images(2).double()
    target = 1
    logits, attns = model(x, return_attentions=True)
    grads = torch.autograd.grad(logits[:, target].sum(), attns)
    assert all(g is not None for g in grads)
    eps = 1e-6
    gen = torch.Generator().manual_seed(0)
    for l, (attn, grad) in enumerate(zip(attns, grads)):
        check_shape(grad, tuple(attn.shape), f"gradient of layer {l}")
        assert grad.abs().sum() > 0, f"layer {l}: all-zero gradient"
        A = attn.detach()
        for _ in range(4):
            idx = tuple(int(torch.randint(s, (1,), generator=gen)) for s in A.shape)
            plus, minus = A.clone(), A.clone()
            plus[idx] += eps
            minus[idx] -= eps
            with torch.no_grad():
                fd = (_manual_logits(model, x, {l: plus})[:, target].sum()
                      - _manual_logits(model, x, {l: minus})[:, target].sum()) / (2 * eps)
            assert abs(fd.item() - grad[idx].item()) < 1e-6 + 1e-4 * abs(fd.item()), (
                f"layer {l} entry {idx}: autograd {grad[idx].item():.3e} vs finite "
                f"difference {fd.item():.3e}")
        # a whole random direction as well
        direction = torch.randn(A.shape, generator=gen, dtype=A.dtype)
        with torch.no_grad():
            fd = (_manual_logits(model, x, {l: A + eps * direction})[:, target].sum()
                  - _manual_logits(model, x, {l: A - eps * direction})[:, target].sum()) / (2 * eps)
        torch.testing.assert_close((grad * direction).sum(), fd, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x, exc, pattern", [
    (torch.rand(3, 32, 32), ValueError, r"rank 4.*got rank 3.*unsqueeze\(0\)"),
    (torch.rand(2, 1, 32, 32), ValueError, r"3 channels.*got 1"),
    (torch.rand(2, 3, 64, 64), ValueError, r"32x32.*got 64x64.*simple_transform\(32\)"),
    (torch.rand(2, 3, 30, 30), ValueError, r"32x32.*got 30x30.*simple_transform\(32\)"),
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, r"floating point.*uint8"),
    ([[1.0]], TypeError, r"torch.Tensor.*list"),
])
def test_bad_images_are_clear_errors(x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        tiny_vit()(x)


def test_img_size_not_divisible_by_patch_size_fails_in_init():
    with pytest.raises(ValueError, match=r"img_size=30 is not divisible by patch_size=8.*img_size=32"):
        ViT(**{**TINY, "img_size": 30})
    with pytest.raises(ValueError, match=r"img_size=225.*patch_size=16.*simple_transform\(224\)"):
        ViT(img_size=225)


def test_patch_embedding_rejects_indivisible_images():
    pe = PatchEmbedding(patch_size=16, embedding_dim=8)
    with pytest.raises(ValueError, match=r"225x225 is not divisible by patch_size=16.*224"):
        pe(torch.rand(1, 3, 225, 225))
    with pytest.raises(ValueError, match=r"3 channels.*got 4"):
        pe(torch.rand(1, 4, 32, 32))


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(embedding_dim=30, num_heads=4), ValueError, r"embedding_dim=30 .*num_heads=4"),
    (dict(attn_dropout=1.5), ValueError, r"attn_dropout.*\[0, 1\)"),
    (dict(num_classes=0), ValueError, r"num_classes must be a positive int"),
    (dict(patch_size=8.0), TypeError, r"patch_size must be a positive int"),
])
def test_bad_constructor_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ViT(**{**TINY, **kwargs})


def test_build_vit_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"vit_tiny.*vit_base.*vit_course_small"):
        build_vit("vit_tiny")


def test_build_vit_overrides():
    model = build_vit("vit_base", num_classes=5, img_size=32, num_transformer_layers=1)
    assert model.config["num_classes"] == 5 and model.grid_size == (2, 2)
    assert model.config["embedding_dim"] == 768 and len(model.blocks) == 1
