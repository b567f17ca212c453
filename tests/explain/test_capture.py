"""capture(): attention (and gradients) recorded per family, and the model restored exactly.

Tiny models of every family (tests/_tiny.py). Restoring means: training flags, patched
forwards, fused-attention flags, hooks, parameters' requires_grad and grads, and, for
Hugging Face, the config's attention implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _tiny import MODEL_KINDS, images, make_model
from vit_course.explain.capture import (AttentionRecorder, LayerRecorder, capture,
                                        gradients_for_targets)
from vit_course.explain.families import block_parts, describe_model, logits_of
from vit_course.explain.methods import explain
from vit_course.models import ViT

pytestmark = pytest.mark.usefixtures("one_thread")


def model_state(model: nn.Module) -> dict:
    """Everything capture may touch, per module (and HF's attention implementation)."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (
            m.training,
            m.__dict__.get("forward"),
            type(m).forward,
            getattr(m, "fused_attn", None),
            len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
            len(getattr(m, "_backward_pre_hooks", {})),
        )
    out["params"] = [(n, p.requires_grad, p.grad is None) for n, p in model.named_parameters()]
    config = getattr(model, "config", None)
    out["attn_implementation"] = getattr(config, "_attn_implementation", None)
    return out


@pytest.fixture(params=MODEL_KINDS)
def model(request) -> nn.Module:
    return make_model(request.param)


def test_family_model_restored_after_capture_and_after_a_failing_forward(model):
    model.train()                               # capture runs in eval mode, then restores
    for m in list(model.modules())[::3]:
        m.training = False                      # a mixed state must come back exactly
    before = model_state(model)
    cap = capture(model, images(2), with_grad=True, keep_graph=True)
    cap.release()
    assert model_state(model) == before
    mlp = block_parts(model, 1).fc1             # a module inside block 1, any family

    def boom(*_):
        raise RuntimeError("boom in block 1")

    handle = mlp.register_forward_hook(boom)
    try:
        before = model_state(model)
        with pytest.raises(RuntimeError, match="boom in block 1"):
            capture(model, images(2), with_grad=True)
        assert model_state(model) == before
    finally:
        handle.remove()
    model.eval()
    with torch.no_grad():
        plain = logits_of(model, images(2))
    torch.testing.assert_close(capture(model, images(2)).logits, plain, rtol=1e-5, atol=1e-5)


def test_recorded_attention_is_the_tensor_multiplied_with_v(model):
    """Rows sum to 1, and ∂y/∂A from capture equals autograd through the recorder."""
    x = images(2)
    with AttentionRecorder(model) as rec:
        logits, attentions = rec.forward(x)
        y = logits[:, 0].sum()
        grads = torch.autograd.grad(y, attentions)
    cap = capture(model, x, target=0, with_grad=True)
    P = describe_model(model).num_prefix_tokens
    for a, g, ca, cg in zip(attentions, grads, cap.attentions, cap.gradients):
        assert a.shape == (2, 2, P + 16, P + 16)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, P + 16), atol=1e-5, rtol=0)
        torch.testing.assert_close(ca, a.detach())
        torch.testing.assert_close(cg, g)
        assert g.abs().sum() > 0


def test_hf_attention_equals_its_own_eager_output_attentions():
    model = make_model("hf")
    x = images(2)
    assert model.config._attn_implementation != "eager"     # sdpa: no probabilities
    cap = capture(model, x)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(x, output_attentions=True)
    assert len(out.attentions) == len(cap.attentions) == 2
    for ref, a in zip(out.attentions, cap.attentions):
        torch.testing.assert_close(a, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cap.logits, out.logits, rtol=1e-5, atol=1e-6)


def test_layer_recorder_releases_its_hook():
    model = make_model("course")
    layer = block_parts(model, -1).norm1
    with LayerRecorder(layer) as rec:
        model(images(1))
        assert rec.active and rec.output.shape == (1, 17, 32)
    assert not rec.active and not layer._forward_hooks
    with pytest.raises(TypeError, match="nn.Module"):
        LayerRecorder("norm1")


# ----------------------------------------------------------------------------- moved from tests/test_explain.py
# (capture's shapes, logits, restore, gradients and sub-batches; written before families.py)


def test_capture_shapes_grid_and_prefix_from_model(model):
    info = describe_model(model)
    cap = capture(model, images(2), with_grad=True)
    P = info.num_prefix_tokens
    assert cap.grid == (4, 4)
    assert cap.num_prefix_tokens == P
    assert cap.logits.shape == (2, 3)
    assert len(cap.attentions) == len(cap.gradients) == 2
    for a, g in zip(cap.attentions, cap.gradients):
        assert a.shape == g.shape == (2, 2, P + 16, P + 16)
        assert torch.allclose(a.sum(-1), torch.ones(2, 2, P + 16), atol=1e-5)
        assert g.abs().sum() > 0
    assert torch.equal(cap.targets, cap.logits.argmax(1))

def test_distilled_deit_has_two_prefix_tokens():
    model = make_model("timm_distilled")
    cap = capture(model, images(1))
    assert cap.num_prefix_tokens == 2 and cap.num_tokens == 18
    assert explain(model, images(1)).shape == (1, 4, 4)

def test_capture_does_not_change_logits(model):
    x = images(3)
    with torch.no_grad():
        plain = logits_of(model, x)
    for with_grad in (False, True):
        cap = capture(model, x, with_grad=with_grad)
        assert torch.allclose(cap.logits, plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(logits_of(model, x), plain, atol=1e-6)

def test_model_restored_after_capture(model):
    model.train()                               # capture runs in eval mode, then restores
    for m in list(model.modules())[::3]:
        m.training = False                      # a mixed state must come back exactly
    before = model_state(model)
    capture(model, images(2), with_grad=True)
    explain(model, images(2), "grad_rollout")
    assert model_state(model) == before


def _functional_logits(model: nn.Module, x: torch.Tensor, deltas: list[torch.Tensor]
                       ) -> torch.Tensor:
    """An independent forward pass that adds deltas[l] to layer l's attention probabilities.

    ∂y/∂delta_l at delta = 0 is ∂y/∂A_l, computed without the package's recording code.
    """
    def attend(h, wqkv, bqkv, wo, bo, heads, delta):
        B, T, D = h.shape
        q, k, v = F.linear(h, wqkv, bqkv).chunk(3, dim=-1)
        q, k, v = (z.view(B, T, heads, D // heads).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1) + delta
        return F.linear((a @ v).transpose(1, 2).reshape(B, T, D), wo, bo)

    if isinstance(model, ViT):
        B = x.shape[0]
        t = torch.cat([model.class_embedding.expand(B, -1, -1), model.patch_embedding(x)], 1)
        t = t + model.position_embedding
        for blk, delta in zip(model.transformer_encoder, deltas):
            msa = blk.msa_block
            t = t + attend(msa.layer_norm(t), msa.qkv.weight, msa.qkv.bias, msa.proj.weight,
                           msa.proj.bias, msa.num_heads, delta)
            t = t + blk.mlp_block(t)
        return model.head(model.norm(t)[:, 0])
    B = x.shape[0]                                          # torchvision
    t = model.conv_proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.class_token.expand(B, -1, -1), t], 1) + model.encoder.pos_embedding
    for blk, delta in zip(model.encoder.layers, deltas):
        mha = blk.self_attention
        t = t + attend(blk.ln_1(t), mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight,
                       mha.out_proj.bias, mha.num_heads, delta)
        t = t + blk.mlp(blk.ln_2(t))
    return model.heads(model.encoder.ln(t)[:, 0])

@pytest.mark.parametrize("kind", ["torchvision", "course"])
def test_gradients_match_autograd_layer_by_layer(kind):
    model = make_model(kind)
    x = images(3)
    targets = torch.tensor([0, 2, 1])
    cap = capture(model, x, target=targets, with_grad=True)
    T = cap.num_tokens
    deltas = [torch.zeros(3, 2, T, T, requires_grad=True) for _ in range(2)]
    logits = _functional_logits(model, x, deltas)
    assert torch.allclose(logits, cap.logits, atol=1e-5)     # the re-implementation is right
    expected = torch.autograd.grad(logits[torch.arange(3), targets].sum(), deltas)
    for layer, (got, want) in enumerate(zip(cap.gradients, expected)):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), f"layer {layer}"
    # The layers' gradients differ, so a reversed pairing would fail the check above.
    assert not torch.allclose(expected[0], expected[1], atol=1e-6)

def test_each_image_gets_its_own_targets_gradient(model):
    x = images(3)
    cap = capture(model, x, target=[2, 0, 1], with_grad=True)
    for b, c in enumerate([2, 0, 1]):
        single = capture(model, x[b:b + 1], target=c, with_grad=True)
        for g_batch, g_single in zip(cap.gradients, single.gradients):
            assert torch.allclose(g_batch[b:b + 1], g_single, atol=1e-6, rtol=1e-4)

def test_gradients_for_targets_match_separate_captures(model):
    x = images(2)
    cap = capture(model, x, keep_graph=True)
    per_class = gradients_for_targets(cap, [0, 1, 2])          # one vectorised backward
    assert len(per_class) == 3
    chunked = gradients_for_targets(cap, [0, 1, 2], chunk_size=2)
    for a, b in zip(per_class, chunked):
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="chunk_size"):
        gradients_for_targets(cap, [0], chunk_size=0)
    for c, grads in enumerate(per_class):
        ref = capture(model, x, target=c, with_grad=True)
        for g, r in zip(grads, ref.gradients):
            assert torch.allclose(g, r, atol=1e-6, rtol=1e-4)
        maps = explain(model, None, "grad_rollout", capture=cap.with_gradients(grads, c),
                       discard_ratio=0.5)
        assert torch.allclose(maps, explain(model, x, "grad_rollout", target=c,
                                            discard_ratio=0.5), atol=1e-5)
    cap.release()
    with pytest.raises(ValueError, match="keep_graph=True"):
        gradients_for_targets(cap, [0])

def test_capture_select_and_training_mode_model():
    model = make_model("course").train()
    x = images(3)
    cap = capture(model, x, with_grad=True)
    assert model.training
    sub = cap.select(1)
    with pytest.raises(IndexError, match="out of range"):
        cap.select(3)
    assert torch.allclose(explain(model, None, "grad_rollout", capture=sub),
                          explain(model, x[1:2], "grad_rollout"), atol=1e-5)


def test_layer_recorder_context_and_reuse_error():
    lin = nn.Linear(2, 2)
    with LayerRecorder(lin) as rec:
        assert rec.active and len(lin._forward_hooks) == 1
        lin(torch.zeros(1, 2))
        lin(torch.zeros(1, 2))
        with pytest.raises(RuntimeError, match="ran 2 times"):
            rec.output
    assert not rec.active and len(lin._forward_hooks) == 0
    rec.release()                                          # idempotent
    with pytest.raises(ValueError, match="boom"), LayerRecorder(lin):
        raise ValueError("boom")
    assert len(lin._forward_hooks) == 0
