"""CP-LRP and AttnLRP as input × modified gradient: each rule against its definition, exact
conservation where the papers say it holds, every family, batches, torch.no_grad()."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _tiny import images, make_model
from vit_course.explain import METHODS, explain
from vit_course.explain.attn_lrp import (halve_gradient, identity_rule, layer_norm_detached,
                                         lrp_relevance, modified_logits)
from vit_course.explain.families import logits_of
from vit_course.explain.lrp import vit_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _grad(out, inputs, seed=None):
    return torch.autograd.grad(out, inputs, seed)


def test_each_rule_against_its_definition():
    g = gen()
    # uniform rule: a@b with its output gradient halved; both operands together conserve
    a = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)        # ∂y/∂z
    z = halve_gradient(a @ b)
    assert torch.equal(z, a @ b)
    ga, gb = _grad(z, (a, b), w)
    torch.testing.assert_close((a * ga).sum() + (b * gb).sum(), ((a @ b) * w).sum())
    # softmax's plain gradient is AttnLRP's rule R_in = x ⊙ (R_out − s ΣR_out), R_out = s ⊙ g
    x = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    s = x.softmax(-1)
    g_out = torch.randn(3, 6, generator=g, dtype=torch.float64)
    (gx,) = _grad(s, x, g_out)
    r_out = s * g_out
    torch.testing.assert_close(x * gx, x * (r_out - s * r_out.sum(-1, keepdim=True)))
    # identity rule: relevance z ⊙ g passes through an element-wise activation unchanged
    z = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = identity_rule(nn.GELU(), z)
    torch.testing.assert_close(y, nn.GELU()(z))
    g_out = torch.randn(4, 7, generator=g, dtype=torch.float64)
    (gz,) = _grad(y, z, g_out)
    torch.testing.assert_close(z * gz, y.detach() * g_out)
    # LayerNorm with σ constant: same value; with β = 0 it conserves (linear, no bias)
    ln = nn.LayerNorm(7).double()
    nn.init.normal_(ln.weight, generator=g)
    y = layer_norm_detached(ln, z)
    torch.testing.assert_close(y, ln(z))
    r = torch.randn(4, 7, generator=g, dtype=torch.float64)
    (gz,) = _grad(y, z, r)
    torch.testing.assert_close((z * gz).sum(-1), (y * r).sum(-1))


def _bias_free(kind: str) -> nn.Module:
    """A float64 tiny model whose biases, LayerNorm β, class token and position embedding
    are 0: nothing but the pixels can take relevance."""
    model = copy.deepcopy(make_model(kind, class_token_std=None)).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if last == "bias" or last in ("class_token", "class_embedding", "pos_embedding",
                                          "position_embedding", "cls_token", "pos_embed"):
                p.zero_()
    return model


@pytest.mark.parametrize("kind", ["torchvision", "course", "timm"])
def test_cp_lrp_conserves_exactly_without_biases(kind):
    model = _bias_free(kind)
    x = images(3).double()
    relevance, logit = lrp_relevance(model, x, target=1, rule="cp")
    torch.testing.assert_close(relevance.sum((1, 2, 3)), logit, rtol=1e-9, atol=1e-12)
    assert (logit.abs() > 1e-3).all()
    # with the model's biases, some relevance goes to them
    r, y = lrp_relevance(make_model(kind).double(), x, target=1, rule="cp")
    assert ((r.sum((1, 2, 3)) - y).abs() > 1e-4).any()


@pytest.mark.parametrize("kind", ["torchvision", "course"])
def test_attn_lrp_conserves_up_to_the_softmax_terms(kind):
    model = _bias_free(kind)
    x = images(2).double().requires_grad_(True)
    record: list = []
    logits = modified_logits(vit_weights(model), x, "attn", record)
    y = logits[:, 2]
    tensors = [t for pair in record for t in pair]
    grads = _grad(y.sum(), [x] + tensors)
    pixels = (x * grads[0]).sum((1, 2, 3))
    # what the softmax rule does not pass on: Σ R at its output − Σ R at its input
    leak = sum((a * ga).sum((1, 2, 3)) - (s * gs).sum((1, 2, 3))
               for (s, a), gs, ga in zip(record, grads[1::2], grads[2::2]))
    torch.testing.assert_close(pixels + leak, y.detach(), rtol=1e-9, atol=1e-12)
    assert (leak.abs() > 1e-3 * y.abs()).all()             # the softmax terms are real
    r, _ = lrp_relevance(model, x.detach(), target=2, rule="attn")
    torch.testing.assert_close(r.sum((1, 2, 3)), pixels)


@pytest.mark.parametrize("kind", ["torchvision", "course", "timm", "hf"])
@pytest.mark.parametrize("method", ["attn_lrp", "cp_lrp"])
def test_every_family_batch_invariant_class_specific_and_in_no_grad(kind, method):
    model = make_model(kind)
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(modified_logits(vit_weights(model), x, "attn"),
                                   logits_of(model, x), rtol=1e-4, atol=1e-5)
        maps = explain(model, x, method, target=1)
        pixels = explain(model, x, method, target=1, resolution="pixels")
    assert maps.shape == (3, 4, 4) and pixels.shape == (3, 32, 32)
    torch.testing.assert_close(maps, pixels.reshape(3, 4, 8, 4, 8).mean((2, 4)))
    assert (maps.flatten(1).std(1) > 0).all()
    for b in range(3):
        torch.testing.assert_close(explain(model, x[b:b + 1], method, target=1)[0], maps[b],
                                   rtol=1e-5, atol=1e-8)
    assert not torch.allclose(explain(model, x, method, target=0), maps)
    pred = logits_of(model, x).argmax(1)
    torch.testing.assert_close(explain(model, x, method), explain(model, x, method, target=pred))


def test_registered_with_capabilities_and_refusals():
    for name in ("attn_lrp", "cp_lrp"):
        cls = METHODS[name]
        assert cls.needs_grad and cls.class_specific and not cls.supports_capture
    assert not torch.allclose(explain(make_model("course"), images(2), "attn_lrp"),
                              explain(make_model("course"), images(2), "cp_lrp"))
    with pytest.raises(TypeError, match="cp_lrp has no LRP rule.*2 prefix tokens"):
        explain(make_model("timm_distilled"), images(1), "cp_lrp")
    with pytest.raises(ValueError, match="out of range"):
        explain(make_model("course"), images(1), "attn_lrp", target=5)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explain(make_model("course"), images(1), "attn_lrp")
