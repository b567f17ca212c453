"""vit_course.inside: definition-level tests on the tiny models of every family (tests/_tiny.py)."""

from __future__ import annotations

import math

import pytest
import torch

from _tiny import MODEL_KINDS, images, make_model
from vit_course.explain.families import block_parts, blocks_of, logits_of
from vit_course.inside import (
    InsideCapture, activation_maximisation, attention_distance, grid_artefact, head_outputs,
    layer_logits, logit_lens, mean_attention_distance, record_inside, token_norms
)

pytestmark = pytest.mark.usefixtures("one_thread")


def model_state(model: torch.nn.Module) -> dict:
    """Everything a function might leave changed: flags, hooks, switches, weights."""
    mods = list(model.modules())
    return dict(
        training=[m.training for m in mods],
        requires_grad=[p.requires_grad for p in model.parameters()],
        hooks=[len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in mods],
        switches=[(getattr(m, "fused_attn", None), "forward" in m.__dict__) for m in mods],
        hf=getattr(getattr(model, "config", None), "_attn_implementation", None),
        weights={k: v.clone() for k, v in model.state_dict().items()},
        grads=[p.grad is None for p in model.parameters()])


def assert_same_state(before: dict, after: dict) -> None:
    weights = before.pop("weights"), after.pop("weights")
    assert before == after
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ----------------------------------------------------------------------------- distance
def test_attention_distance_on_hand_built_matrices():
    # grid 2×2, patches 4 px tall and 6 px wide: centres (0,0) (0,6) (4,0) (4,6); 1 prefix token
    eye = torch.eye(5)
    swap = torch.zeros(5, 5)
    swap[0, 0] = 1
    for q, k in ((1, 4), (2, 3), (3, 2), (4, 1)):                  # to the opposite corner
        swap[q, k] = 1
    uniform = torch.full((5, 5), 0.2)                               # 1/5 on the class token too
    att = torch.stack([eye, swap, uniform])[None]                   # (1, heads=3, 5, 5)
    d = attention_distance([att, att.flip(1)], (2, 2), (4, 6), 1)
    diag = math.hypot(4, 6)
    expect = torch.tensor([0.0, diag, (0 + 4 + 6 + diag) / 4])      # prefix mass renormalised
    assert d.shape == (1, 2, 3)
    assert torch.allclose(d[0, 0], expect) and torch.allclose(d[0, 1], expect.flip(0))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_mean_attention_distance_every_family(kind):
    model = make_model(kind)
    before = model_state(model)
    d = mean_attention_distance(model, images())
    assert_same_state(before, model_state(model))
    assert d.shape == (2, 2) and (d > 0).all() and (d < 8 * math.hypot(3, 3)).all()


# ----------------------------------------------------------------------------- logit lens
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_logit_lens_and_direct_logit_attribution(kind):
    model = make_model(kind)
    x = images()
    before = model_state(model)
    cap = record_inside(model, x)
    lens = logit_lens(model, capture=cap, target=[0, 1, 2])
    assert_same_state(before, model_state(model))
    with torch.no_grad():
        plain = logits_of(model, x)
    # the last layer of the lens is the model's output: bit for bit that of the recorded pass,
    # which differs from a plain forward only by the explicit attention path's rounding
    assert torch.equal(lens.logits[:, -1], cap.logits)
    assert torch.allclose(cap.logits, plain, atol=1e-5)
    assert torch.allclose(lens.probs.sum(-1), torch.ones(3, 2))
    # the parts sum to the target logit exactly with the LayerNorm scale frozen
    assert torch.equal(lens.targets, torch.tensor([0, 1, 2]))
    assert torch.allclose(lens.constant + lens.parts.sum(1), lens.logit, atol=1e-5)
    assert torch.allclose(lens.heads.sum(-1) + lens.attn_bias, lens.attn, atol=1e-5)
    # the approximation error is real (σ does change) and measured against a true ablation:
    # removing the last MLP's output from the stream = running the model with its fc2 zeroed
    fc2 = block_parts(model, -1).fc2
    handle = fc2.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    with torch.no_grad():
        without = logits_of(model, x)[torch.arange(3), lens.targets]
    handle.remove()
    assert torch.allclose(lens.ablation[:, -1], lens.logit - without, atol=1e-4)
    assert (lens.ablation - lens.parts).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["course", "hf"])
def test_head_outputs_sum_to_the_attention_output(kind):
    model = make_model(kind)
    cap = record_inside(model, images())
    for i in range(2):
        heads = head_outputs(model, cap, i)                            # (B, heads, T, D)
        total = heads.sum(1) + block_parts(model, i).proj.bias
        assert heads.shape == (3, 2, 17, 32)
        assert torch.allclose(total, cap.mids[i] - cap.states[i], atol=1e-5)


# ----------------------------------------------------------------------------- token norms
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_token_norms_find_a_planted_outlier(kind):
    model = make_model(kind)
    x = images()
    before = model_state(model)
    plain = token_norms(model, x)
    assert_same_state(before, model_state(model))
    assert not plain.outliers.any()                                # tiny random models: none
    assert torch.equal(plain.rollout, plain.rollout_without)
    P = 2 if kind == "timm_distilled" else 1
    j = 5                                                          # patch 5 of image 1
    def plant(_m, _i, out):
        out = out[0] if isinstance(out, tuple) else out
        out = out.clone()
        out[1, P + j] *= 50.0
        return out
    handle = blocks_of(model)[0].register_forward_hook(plant)
    try:
        cap = record_inside(model, x)
    finally:
        handle.remove()
    tn = token_norms(model, capture=cap)
    assert tn.norms.shape == (3, 2, P + 16) and tn.ratio.shape == (3, 2, 16)
    assert tn.outliers.nonzero().tolist() == [[1, j]]
    cls_attn = torch.stack([a[1, :, 0, P + j].mean() for a in cap.attentions])
    assert torch.allclose(tn.attention_received[1], cls_attn)
    assert (tn.attention_received[[0, 2]] == 0).all()
    assert tn.rollout_without[1].flatten()[j] == 0 and tn.rollout[1].flatten()[j] > 0
    assert torch.equal(tn.rollout_without[0], tn.rollout[0])


def test_explorer_functions_run_no_forward_pass():
    model = make_model("course")
    cap = record_inside(model, images(1))
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        probs = layer_logits(model, cap).softmax(-1)
        tn = token_norms(model, capture=cap)
    finally:
        handle.remove()
    assert calls == [] and probs.shape == (1, 2, 3) and tn.norms.shape == (1, 2, 17)
    other = make_model("course", seed=1)
    with pytest.raises(ValueError, match="same model"):
        token_norms(other, capture=cap)
    assert isinstance(cap, InsideCapture)


# ----------------------------------------------------------------------------- activation max.
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_activation_maximisation_every_family(kind):
    model = make_model(kind)
    model.train()                                                   # a state to come back to
    next(model.parameters()).requires_grad_(False)
    before = model_state(model)
    targets = [0, ("neuron", 1, 3), ("head", 0, 1, 0)]
    with torch.no_grad():                                           # students do this
        v = activation_maximisation(model, targets, steps=24, lr=0.1, progress=False)
    assert_same_state(before, model_state(model))
    assert v.images.shape == (3, 3, 32, 32) and 0 <= v.images.min() and v.images.max() <= 1
    obj = v.objective                                               # (steps, 3)
    assert (obj[-6:].mean(0) > obj[:6].mean(0)).all() and (v.final > obj[0]).all()
    again = activation_maximisation(model, targets, steps=24, lr=0.1, progress=False)
    assert torch.equal(v.images, again.images)                      # same seed, same images
    regular = activation_maximisation(model, 1, steps=24, l2=0.1, tv=0.5, jitter=2, scale=2,
                                      seed=3, progress=False)
    assert regular.objective[-6:].mean() > regular.objective[:6].mean()
    assert not torch.equal(regular.images, v.images[:1])


def test_activation_maximisation_rejects_bad_targets():
    model = make_model("course")
    for bad, match in ((5, "out of range"), (("neuron", 2, 0), "out of range"),
                       (("head", 0, 0), "not one of"), ([], "empty"), (("pixel", 1), "not one of")):
        with pytest.raises(ValueError, match=match):
            activation_maximisation(model, bad, steps=1, progress=False)
    with pytest.raises(ValueError, match="lr"):
        activation_maximisation(model, 0, lr=float("nan"), progress=False)


def test_grid_artefact_separates_a_checkerboard_from_smooth_images():
    smooth = torch.linspace(0, 1, 32).expand(1, 3, 32, 32)
    board = torch.rand(1, 3, 8, 8).repeat(1, 1, 4, 4)               # one patch, tiled
    assert grid_artefact(smooth, 8) < 0.1                          # (8/32)² of a ramp repeats
    assert torch.allclose(grid_artefact(board, 8), torch.ones(1))
