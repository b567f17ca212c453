"""capture(): attention (and gradients) recorded per family, and the model restored exactly.

Tiny models of every family (tests/_tiny.py). Restoring means: training flags, patched
forwards, fused-attention flags, hooks, parameters' requires_grad and grads, and, for
Hugging Face, the config's attention implementation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _tiny import MODEL_KINDS, images, make_model
from vit_course.explain.capture import AttentionRecorder, LayerRecorder, capture
from vit_course.explain.families import block_parts, describe_model, logits_of

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
