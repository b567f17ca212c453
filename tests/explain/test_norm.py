"""Norm-based attention (Kobayashi et al. 2020): the decomposition sums to the attention
output, and the registered method reads it for the class token."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _tiny import images, make_model
from vit_course.explain import LayerRecorder, capture, describe_model, explain
from vit_course.explain.norm import norm_contributions, value_output_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["torchvision", "course"])
def model(request) -> nn.Module:
    return make_model(request.param)


def test_norm_contributions_sum_to_the_attention_output(model):
    x = images(2)
    family = describe_model(model).family
    ln, w_v, b_v, w_o = value_output_weights(model, 1)
    attn_module = (model.encoder.layers[1].self_attention if family == "torchvision"
                   else model.transformer_encoder[1].msa_block)
    out_bias = (attn_module.out_proj.bias if family == "torchvision" else attn_module.proj.bias)
    with LayerRecorder(ln) as tokens, LayerRecorder(attn_module) as output:
        cap = capture(model, x)
    contrib = norm_contributions(tokens.output, cap.attentions[1], w_v, b_v, w_o)
    # Kobayashi et al.'s decomposition: y_0 = Σ_j Σ_h α^h_0j f^h(x_j) + b_O
    assert torch.allclose(contrib.sum(1) + out_bias, output.output[:, 0], atol=1e-5)
    maps = explain(model, x, "attention_norm", layer=1)
    assert torch.allclose(maps, contrib.norm(dim=-1)[:, 1:].reshape(2, 4, 4), atol=1e-6)
    assert torch.allclose(explain(model, x, "attention_norm"), maps)   # -1 is layer 1
    for b in range(2):
        assert torch.allclose(explain(model, x[b:b + 1], "attention_norm")[0], maps[b],
                              atol=1e-6)
    with pytest.raises(TypeError, match="cannot be computed from a Capture"):
        explain(model, None, "attention_norm", capture=cap)
    with pytest.raises(ValueError, match="layer must be in"):
        explain(model, x, "attention_norm", layer=3)
