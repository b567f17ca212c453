"""Transformer attribution (Chefer et al. 2021): LRP rules, conservation, forward, maps.

Tiny models: the course ViT, torchvision VisionTransformer, timm ViT and Hugging Face
ViTForImageClassification (32 px, patch 8, 2 layers, width 32, 2 heads, MLP 64, 3 classes)
with random heads (torchvision zero-initialises its head, which would make every gradient
0), and notebook 03's torchvision classifier whose head was replaced by a bare Linear. One
run on the ViT-B/16 architecture.

Conservation tolerances: every rule is exactly conservative up to the division stabiliser
eps (each division leaks about eps/|z| of the relevance) and rounding. Float64 checks run
with eps = 0 (zero denominators are still masked) at 1e-12; with the default eps = 1e-9
the sums hold to 1e-6, and in float32 to 1e-4. Relevance is lost only where a Linear
output has no positive contribution (z⁺ = 0) or a product is exactly 0; one test pins
that down.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_course.explain import METHODS, capture, explain
from vit_course.explain.families import logits_of
from vit_course.explain.lrp import (
    TransformerAttribution,
    attention_gradients,
    attribution_rollout,
    forward_trace,
    relevance_pass,
    relprop_block,
    vit_weights,
)
from vit_course.explain.lrp_layers import (
    relprop_add,
    relprop_clone,
    relprop_identity,
    relprop_linear,
    relprop_matmul,
    relprop_patch_embedding,
    safe_divide,
)
from _tiny import images
from _tiny import make_model as tiny_model
from vit_course.runtime import set_seed

F64 = dict(rtol=1e-12, atol=1e-12)
EXACT = dict(eps=0.0)                   # no stabiliser: exact sums (zero denominators masked)


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """The shared tiny model; torchvision's zero class token is redrawn to carry relevance."""
    return tiny_model(kind, seed, class_token_std=0.5 if kind == "torchvision" else None)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=["course", "torchvision", "timm", "hf"])
def model(request) -> nn.Module:
    return make_model(request.param)


# ----------------------------------------------------------------------------- rules
def _autograd_share(x_pos, x_neg, w1, w2, R):
    """The authors' formulation (``Linear.relprop`` in hila-chefer/Transformer-Explainability
    ``modules/layers_ours.py``): gradient of the split pre-activations times the input."""
    x_pos, x_neg = x_pos.clone().requires_grad_(), x_neg.clone().requires_grad_()
    z1, z2 = F.linear(x_pos, w1), F.linear(x_neg, w2)
    z = (z1 + z2).detach()
    s = torch.where(z == 0, 0.0, R / z)
    g1, = torch.autograd.grad(z1, x_pos, s)
    g2, = torch.autograd.grad(z2, x_neg, s)
    return x_pos * g1 + x_neg * g2


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_linear_rule_matches_autograd_form_and_conserves(alpha):
    x = torch.randn(4, 5, 7, dtype=torch.float64, generator=gen(0))
    W = torch.randn(6, 7, dtype=torch.float64, generator=gen(1))
    R = torch.rand(4, 5, 6, dtype=torch.float64, generator=gen(2))
    out = relprop_linear(x, W, R, alpha=alpha, **EXACT)
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), W.clamp(min=0), W.clamp(max=0)
    ref = alpha * _autograd_share(xp, xn, wp, wn, R)
    if alpha > 1:
        ref = ref - (alpha - 1) * _autograd_share(xp, xn, wn, wp, R)
    torch.testing.assert_close(out, ref, **F64)
    # conserved per token, except outputs with no positive (negative) contribution at all:
    # z⁺ = 0 (z⁻ = 0) drops their share of the α (β) term; 2 such outputs here
    z_pos = F.linear(xp, wp) + F.linear(xn, wn)
    z_neg = F.linear(xp, wn) + F.linear(xn, wp)
    assert (z_pos == 0).sum() == 2
    kept = alpha * (R * (z_pos > 0)).sum(-1) - (alpha - 1) * (R * (z_neg < 0)).sum(-1)
    torch.testing.assert_close(out.sum(-1), kept, **F64)
    # α1β0 on positive inputs: every z⁺ > 0 here, so fully conserved and non-negative
    pos = relprop_linear(x.abs() + 0.1, W, R, **EXACT)
    assert pos.min() >= 0
    torch.testing.assert_close(pos.sum(-1), R.sum(-1), **F64)


def test_linear_rule_drops_relevance_only_where_no_positive_contribution():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    W = torch.tensor([[1.0, 1.0], [-1.0, -3.0]], dtype=torch.float64)   # output 1: z⁺ = 0
    R = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    out = relprop_linear(x, W, R, **EXACT)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.2]], dtype=torch.float64), **F64)


def test_patch_embedding_rule_is_the_conv_as_linear_and_conserves():
    imgs = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=gen(3))
    W = torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=gen(4))
    R = torch.rand(2, 4, 5, dtype=torch.float64, generator=gen(5))
    out = relprop_patch_embedding(imgs, W, R, **EXACT)
    assert out.shape == imgs.shape
    torch.testing.assert_close(out.sum((1, 2, 3)), R.sum((1, 2)), **F64)
    # patch (row 0, col 1) covers pixels [0:8, 8:16]; its relevance is that patch's alone
    patch = imgs[:, :, :8, 8:16].reshape(2, -1)
    torch.testing.assert_close(out[:, :, :8, 8:16].reshape(2, -1),
                               relprop_linear(patch, W.reshape(5, -1), R[:, 1], **EXACT), **F64)


def test_matmul_rule_is_halved_gradient_times_input_and_conserves():
    a = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=gen(6))
    b = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=gen(7))
    R = torch.randn(2, 3, 4, 6, dtype=torch.float64, generator=gen(8))
    ra, rb = relprop_matmul(a, b, R, **EXACT)
    a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
    z = a_ @ b_
    ga, gb = torch.autograd.grad(z, (a_, b_), (R / z).detach())
    torch.testing.assert_close(ra, a * ga / 2, **F64)
    torch.testing.assert_close(rb, b * gb / 2, **F64)
    torch.testing.assert_close(ra.sum() + rb.sum(), R.sum(), **F64)
    torch.testing.assert_close(ra.sum(), rb.sum(), **F64)               # an even split


def test_add_rule_conserves_per_image_with_shares_by_size():
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen(9))
    y = -0.9 * x + 0.1 * torch.randn(3, 4, 5, dtype=torch.float64, generator=gen(10))
    R = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen(11))
    R[1] *= 100                                                          # images differ
    rx, ry = relprop_add(x, y, R, **EXACT)
    torch.testing.assert_close(rx.sum((1, 2)) + ry.sum((1, 2)), R.sum((1, 2)), **F64)
    # z-rule shares, rescaled: each part keeps its pattern, its sum is |Σ|/(|Σx|+|Σy|)·ΣR
    s = R / (x + y)
    zx, zy = (x * s).sum((1, 2)), (y * s).sum((1, 2))
    frac = zx.abs() / (zx.abs() + zy.abs())
    torch.testing.assert_close(rx.sum((1, 2)), frac * R.sum((1, 2)), **F64)
    torch.testing.assert_close(rx / rx.sum((1, 2), keepdim=True),
                               x * s / zx.view(3, 1, 1), **F64)
    # a batch gives each image what it gets alone (the authors' Add.relprop in
    # layers_ours.py sums over the whole batch)
    rx1, _ = relprop_add(x[1:2], y[1:2], R[1:2], **EXACT)
    torch.testing.assert_close(rx1, rx[1:2], **F64)
    # broadcasting operand (the position embedding)
    px, pp = relprop_add(x, y[:1], R, **EXACT)
    assert pp.shape == R.shape
    torch.testing.assert_close(px.sum((1, 2)) + pp.sum((1, 2)), R.sum((1, 2)), **F64)


def test_clone_identity_and_safe_divide():
    a, b = torch.randn(2, 3, generator=gen(12)), torch.randn(2, 3, generator=gen(13))
    torch.testing.assert_close(relprop_clone(a, b), a + b)
    assert relprop_identity(a) is a
    out = safe_divide(torch.ones(4), torch.tensor([2.0, -1e-9, 0.0, -2.0]))
    assert out[0] == pytest.approx(0.5) and out[3] == pytest.approx(-0.5)
    assert out[1] == pytest.approx(-0.5e9, rel=1e-6)   # pushed away from 0 on its own side
    assert out[2] == 0
    # hila-chefer/Transformer-Explainability layers_ours.py safe_divide, restated: +1e-9
    # whatever the sign, so a denominator of -1e-9 becomes +1e-9 and the sign flips.
    den = torch.tensor([2.0, -1e-9, 0.0, -2.0])
    theirs_den = den.clamp(min=1e-9) + den.clamp(max=1e-9)
    theirs_den = theirs_den + (theirs_den == 0) * 1e-9
    theirs = torch.ones(4) / theirs_den * (den != 0)
    assert theirs[1] == pytest.approx(1e9, rel=1e-6) and out[1] < 0
    assert theirs[3] == pytest.approx(-0.5, rel=1e-6) and theirs[2] == 0


# ----------------------------------------------------------------------------- full model
def test_forward_trace_reproduces_model_logits(model):
    x = images(3)
    with torch.no_grad():
        ref = logits_of(model, x)
    torch.testing.assert_close(forward_trace(vit_weights(model), x).logits.detach(), ref,
                               rtol=1e-5, atol=1e-5)
    m64 = model.double()
    with torch.no_grad():
        ref64 = logits_of(m64, x.double())
    torch.testing.assert_close(forward_trace(vit_weights(m64), x.double()).logits.detach(),
                               ref64, rtol=1e-12, atol=1e-12)


def test_attentions_and_gradients_match_capture(model):
    x, t = images(3), torch.tensor([2, 0, 1])
    cap = capture(model, x, target=t, with_grad=True)
    trace = forward_trace(vit_weights(model), x)
    grads = attention_gradients(trace, t)
    for b, (bt, g) in enumerate(zip(trace.blocks, grads)):
        torch.testing.assert_close(bt.attn.detach(), cap.attentions[b], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, cap.gradients[b], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="already used"):
        attention_gradients(trace, t)


def test_relevance_is_conserved_through_every_block_and_the_embedding(model):
    m = model.double()
    w = vit_weights(m)
    trace = forward_trace(w, images(3).double())
    rel = relevance_pass(w, trace, torch.tensor([0, 1, 2]), to_input=True, **EXACT)
    one = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(rel.output.sum(1), one, **F64)          # one-hot start
    for b, r in enumerate(rel.tokens):                                   # each block's input
        torch.testing.assert_close(r.sum((1, 2)), one, **F64, msg=f"block {b}")
    # position embedding takes its share; patch embedding conserves the patches' share
    pos_share = 1 - rel.embedding.sum((1, 2))
    assert (pos_share.abs() > 1e-3).all()
    torch.testing.assert_close(rel.pixels.sum((1, 2, 3)), rel.embedding[:, 1:].sum((1, 2)),
                               **F64)
    # one block alone, from an arbitrary relevance at its output: attention gets a share
    R = torch.randn_like(trace.last, generator=gen(14))
    bt = trace.blocks[-1]
    r_in, r_attn = relprop_block(w.blocks[-1], bt, R, w.num_heads, **EXACT)
    torch.testing.assert_close(r_in.sum((1, 2)), R.sum((1, 2)), **F64)
    assert r_attn.shape == bt.attn.shape and r_attn.abs().sum() > 0
    # with the default stabiliser eps = 1e-9: each division leaks ~eps/|z|
    rel_eps = relevance_pass(w, forward_trace(w, images(3).double()), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(rel_eps.tokens[1].sum((1, 2)), one, rtol=1e-6, atol=1e-6)
    # float32: the same sums within rounding
    w32 = vit_weights(m.float())
    rel32 = relevance_pass(w32, forward_trace(w32, images(3)), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(rel32.tokens[1].sum((1, 2)), one.float(), rtol=1e-4, atol=1e-4)
    assert rel32.tokens[0] is None and rel32.attention[0] is not None    # stopped at R_A^0


def test_rollout_by_hand_is_gae_rollout_of_relevance():
    # one image, two heads, T = 2: Ā = mean_heads((∇A ⊙ R_A)⁺), negatives dropped per head
    r0 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 2.0], [1.0, 1.0]]]])
    g0 = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]], [[1.0, 1.0], [-1.0, 1.0]]]])
    a0 = torch.tensor([[[0.5, 1.0], [1.5, 2.5]]])
    r1, g1 = torch.ones(1, 2, 2, 2), torch.full((1, 2, 2, 2), 0.5)
    a1 = torch.full((1, 2, 2), 0.5)
    I = torch.eye(2)
    torch.testing.assert_close(attribution_rollout([r0, r1], [g0, g1]),
                               (I + a1) @ (I + a0))
    torch.testing.assert_close(attribution_rollout([r0, r1], [g0, g1], start_layer=1), I + a1)


def test_map_is_row_zero_of_the_rollout(model):
    x, t = images(2), torch.tensor([1, 2])
    w = vit_weights(model)
    trace = forward_trace(w, x.double())                     # the default precision
    grads = attention_gradients(trace, t)
    rel = relevance_pass(w, trace, t)
    R = attribution_rollout(rel.attention, grads)
    maps = explain(model, x, method="transformer_attribution", target=t)
    assert maps.dtype == torch.float32                       # the model's dtype
    torch.testing.assert_close(maps.double(), R[:, 0, 1:].reshape(2, 4, 4), rtol=1e-6,
                               atol=1e-9)
    # start_layer = L-1: only the last block's Ā, so the map is Ā^{L-1}'s CLS row
    top = explain(model, x, method="transformer_attribution", target=t, start_layer=-1)
    last = (grads[-1] * rel.attention[-1]).clamp(min=0).mean(1)
    torch.testing.assert_close(top.double(), last[:, 0, 1:].reshape(2, 4, 4), rtol=1e-6,
                               atol=1e-9)
    # float32 is the same function, up to its rounding
    f32 = explain(model, x, method="transformer_attribution", target=t, precision="float32")
    torch.testing.assert_close(f32, maps, rtol=1e-3, atol=1e-6)


def test_maps_batch_equals_single_and_depend_on_target(model):
    x = images(3)
    explainer = TransformerAttribution(model)
    batch = explainer.attribute(x, target=[0, 1, 2])
    assert batch.shape == (3, 4, 4) and torch.isfinite(batch).all() and batch.min() >= 0
    for i in range(3):
        alone = explainer.attribute(x[i:i + 1], target=i)
        torch.testing.assert_close(alone, batch[i:i + 1], rtol=1e-4, atol=1e-7)
        assert batch[i].std() > 1e-3 * batch[i].mean()                  # not constant
    per_class = [explainer.attribute(x, target=c) for c in range(3)]
    for c in range(3):
        for d in range(c):
            assert not torch.allclose(per_class[c], per_class[d], rtol=1e-3, atol=0)
    # target=None is the prediction
    pred = logits_of(model, x).argmax(1)
    torch.testing.assert_close(explainer.attribute(x), explainer.attribute(x, target=pred))


def test_start_layer_and_model_left_untouched(model):
    x = images(2)
    model.train()                                                  # explained in eval form
    before = [(n, p.requires_grad) for n, p in model.named_parameters()]
    top = explain(model, x, method="transformer_attribution", target=0, start_layer=-1)
    full = explain(model, x, method="transformer_attribution", target=0)
    assert not torch.allclose(top, full)
    assert model.training and all(m.training for m in model.modules())
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(explain(model, x, method="transformer_attribution", target=0),
                               full)


def test_registered_and_bad_input():
    assert METHODS["transformer_attribution"] is TransformerAttribution
    model = make_model("course")
    with pytest.raises(ValueError, match="out of range"):
        explain(model, images(2), method="transformer_attribution", target=3)
    with pytest.raises(ValueError, match="one class index per image"):
        explain(model, images(2), method="transformer_attribution", target=[0, 1, 2])
    with pytest.raises(ValueError, match="32x32"):
        explain(model, torch.rand(1, 3, 64, 64), method="transformer_attribution")
    with pytest.raises(ValueError, match="start_layer"):
        explain(model, images(1), method="transformer_attribution", start_layer=2)
    with pytest.raises(TypeError, match="unknown option"):
        explain(model, images(1), method="transformer_attribution", discard_ratio=0.5)
    assert not TransformerAttribution.supports_capture
    with pytest.raises(TypeError, match="transformer_attribution cannot be computed from a Capture"):
        explain(model, None, method="transformer_attribution",
                capture=capture(model, images(1), with_grad=True))
    with pytest.raises(TypeError, match="support"):
        TransformerAttribution(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="precision"):
        explain(model, images(1), method="transformer_attribution", precision="float16")
    tv = make_model("torchvision")
    tv.heads = nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 3))    # no rule for this head
    with pytest.raises(TypeError, match="pre-logits"):
        TransformerAttribution(tv)


@pytest.mark.parametrize("head", ["bare", "sequential", "pre_logits"])
def test_torchvision_head_shapes(head):
    """Notebook 03's classifier (heads = a bare nn.Linear after
    vit_course.pretrained.attach_head), torchvision's Sequential(head=Linear) and its
    pre-logits Sequential(pre_logits=Linear, act=Tanh, head=Linear)."""
    from torchvision.models import VisionTransformer
    from vit_course.pretrained import attach_head
    set_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=32, mlp_dim=64, num_classes=5,
                              representation_size=16 if head == "pre_logits" else None).eval()
    if head == "bare":
        attach_head(model, nn.Linear(32, 5))
    for m in model.heads.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.5)
    x = images(2)
    w = vit_weights(model)
    with torch.no_grad():
        ref = logits_of(model, x)
    trace = forward_trace(w, x)
    torch.testing.assert_close(trace.logits.detach(), ref, rtol=1e-5, atol=1e-5)
    rel = relevance_pass(w, trace, torch.tensor([4, 1]), stop_layer=1)
    # the head's Linears conserve the one-hot (α = 1 rule), Tanh passes it through
    torch.testing.assert_close(rel.tokens[-1].sum((1, 2)), torch.ones(2), rtol=1e-4, atol=1e-5)
    maps = explain(model, x, method="transformer_attribution", target=4)
    assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all()
    assert (maps.flatten(1).std(1) > 0).all()


def test_timm_parts_without_an_lrp_rule_are_named():
    timm = pytest.importorskip("timm", reason="timm not installed (optional extra)")
    kw = dict(pretrained=False, img_size=32, patch_size=8, depth=2, num_heads=2, embed_dim=32,
              num_classes=3)
    with pytest.raises(TypeError, match=r"block 0 ls1.*gae"):
        vit_weights(timm.create_model("vit_tiny_patch16_224", init_values=1e-5, **kw))
    with pytest.raises(TypeError, match="2 prefix tokens"):
        TransformerAttribution(tiny_model("timm_distilled"))


def test_vit_b_16_map_alone_equals_map_in_a_batch():
    """ViT-B/16's architecture and initialisation (torchvision's vit_b_16 layers: 12 × 12
    heads, width 768; run at 112 px, 50 tokens, to keep the test short), a random head.
    Float32 rounding differs with the batch size and this ill-conditioned method amplifies
    it (at 224 px: up to 1e-3 after min-max normalisation, docs/BENCHMARKS.md); in float64,
    the default, an image's map alone and in a batch agree to 1e-4."""
    from torchvision.models import VisionTransformer
    from vit_course.imaging import normalize_maps
    set_seed(0)
    model = VisionTransformer(image_size=112, patch_size=16, num_layers=12, num_heads=12,
                              hidden_dim=768, mlp_dim=3072, num_classes=3).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.rand(2, 3, 112, 112, generator=gen(15))
    batch = normalize_maps(explain(model, x, method="transformer_attribution", target=0))
    alone = normalize_maps(explain(model, x[:1], method="transformer_attribution", target=0))
    assert batch.shape == (2, 7, 7) and torch.isfinite(batch).all() and batch.std() > 0
    assert (alone[0] - batch[0]).abs().max() <= 1e-4
