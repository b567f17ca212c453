"""Issue 5's explanation methods: GAE, Grad-CAM (token and attention), attention flow,
saliency, SmoothGrad, integrated gradients.

Pure functions are checked on matrices worked out by hand or against independent
computations (plain loops, autograd, brute-force max-flow and min-cut enumeration);
methods are checked on tiny models (torchvision VisionTransformer and the course ViT, 32 px,
patch 8, 2 layers, width 32, random heads) for batch-invariance, targets, hooks and model
restore; and against the reference libraries where they are installed (test extras):
pytorch-grad-cam for Grad-CAM on ViT-B/16, Captum for saliency, SmoothGrad and IG.
"""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
import torch
from torch import nn

import vit_course.explain.gradients as grad_mod
import vit_course.explain.norm  # noqa: F401  (registers attention_norm)
from vit_course.explain import METHODS, capture, describe_model, explain, get_method
from vit_course.explain.flow import attention_flow, flow_matrices, max_flow_layered
from vit_course.explain.gae import gae_cls_row, gae_layer, gae_rollout
from vit_course.explain.gradcam import (
    LayerRecorder,
    attention_gradcam,
    default_gradcam_layer,
    gradcam_from_tokens,
)
from vit_course.explain.gradients import (
    gaussian_blur,
    ig_rule,
    integrated_gradients,
    make_baseline,
    pool_to_grid,
)
from _tiny import assert_rejected_before_any_forward, images, make_model
from vit_course.runtime import set_seed

NEW_METHODS = ["gae", "gradcam", "attention_gradcam", "attention_flow", "attention_norm",
               "saliency", "smoothgrad", "integrated_gradients"]
CLASS_SPECIFIC = ["gae", "gradcam", "attention_gradcam", "saliency", "smoothgrad",
                  "integrated_gradients"]
FAST = {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"steps": 8}}




@pytest.fixture(params=["torchvision", "course"])
def model(request) -> nn.Module:
    return make_model(request.param)


def hooks_and_flags(model: nn.Module) -> list:
    return [(n, m.training, len(m._forward_hooks), len(m._forward_pre_hooks),
             len(m._backward_hooks)) for n, m in model.named_modules()]


def test_all_methods_registered():
    assert set(NEW_METHODS) <= set(METHODS)
    for name in NEW_METHODS:
        assert get_method(name).name == name


# ============================================================================ GAE
def test_gae_on_hand_computed_matrices():
    # T = 2 tokens, 2 heads, 2 layers, one image.
    A0 = torch.tensor([[[0.5, 0.5], [0.2, 0.8]],
                       [[1.0, 0.0], [0.5, 0.5]]])
    G0 = torch.tensor([[[1.0, 2.0], [-1.0, 1.0]],
                       [[-1.0, 3.0], [2.0, -2.0]]])
    # G⊙A per head: h0 [[.5, 1], [-.2, .8]], h1 [[-1, 0], [1, -1]]
    # positive part then mean: [[.25, .5], [.5, .4]]  (mean-then-clamp would give
    # [[0, .5], [.4, 0]]: the per-head clamp matters)
    A1 = torch.tensor([[[0.6, 0.4], [0.3, 0.7]],
                       [[0.6, 0.4], [0.3, 0.7]]])
    G1 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]],
                       [[1.0, -1.0], [0.0, 0.0]]])
    # h0 [[.6, .4], [0, 0]], h1 [[.6, -.4], [0, 0]] -> Ā1 = [[.6, .2], [0, 0]]
    A = [A0.unsqueeze(0), A1.unsqueeze(0)]
    G = [G0.unsqueeze(0), G1.unsqueeze(0)]
    assert torch.allclose(gae_layer(A[0], G[0])[0], torch.tensor([[0.25, 0.5], [0.5, 0.4]]))
    R1 = torch.tensor([[1.25, 0.5], [0.5, 1.4]])              # I + Ā0
    R2 = R1 + torch.tensor([[0.6, 0.2], [0.0, 0.0]]) @ R1      # [[1.35+1.25, ...]]
    assert torch.allclose(R2, torch.tensor([[2.1, 1.08], [0.5, 1.4]]))
    assert torch.allclose(gae_rollout(A, G)[0], R2)
    assert torch.allclose(gae_cls_row(A, G)[0], R2[0])
    assert torch.allclose(gae_rollout(A, G, start_layer=1)[0],
                          torch.eye(2) + torch.tensor([[0.6, 0.2], [0.0, 0.0]]))


def _gae_reference(attentions, gradients) -> np.ndarray:
    """Plain loops: one image and one head at a time."""
    out = []
    for b in range(attentions[0].shape[0]):
        T = attentions[0].shape[-1]
        R = np.eye(T)
        for a, g in zip(attentions, gradients):
            heads = [np.maximum(g[b, k].numpy().astype(np.float64) * a[b, k].numpy(), 0)
                     for k in range(a.shape[1])]
            R = R + (sum(heads) / len(heads)) @ R
        out.append(R)
    return np.stack(out)


def test_gae_matches_loops_on_random_matrices():
    g = torch.Generator().manual_seed(0)
    A = [torch.rand(2, 3, 6, 6, generator=g).softmax(-1) for _ in range(3)]
    G = [torch.randn(2, 3, 6, 6, generator=g) for _ in range(3)]
    ref = _gae_reference(A, G)
    assert np.allclose(gae_rollout(A, G).numpy(), ref, atol=1e-5)
    assert np.allclose(gae_cls_row(A, G).numpy(), ref[:, 0], atol=1e-5)


def test_gae_explainer_equals_capture_computation(model):
    x = images(2)
    cap = capture(model, x, target=[2, 0], with_grad=True)
    ref = _gae_reference(cap.attentions, cap.gradients)[:, 0, 1:].reshape(2, 4, 4)
    maps = explain(model, x, "gae", target=[2, 0])
    assert np.allclose(maps.numpy(), ref, atol=1e-5)
    # zero gradients: R = I, no relevance reaches the patches
    zero = [torch.zeros_like(a) for a in cap.attentions]
    assert torch.equal(gae_cls_row(cap.attentions, zero)[:, 1:],
                       torch.zeros(2, 16))


def test_gae_rejects_mismatched_gradients():
    A = [torch.rand(1, 2, 5, 5).softmax(-1)]
    with pytest.raises(ValueError, match="gradients must match"):
        gae_rollout(A, [torch.rand(1, 2, 4, 4)])
    with pytest.raises(TypeError, match="list"):
        gae_rollout(A[0], A)


# ============================================================================ Grad-CAM
def test_gradcam_from_tokens_by_hand():
    # 1 prefix token + 2x1 grid, D = 2 channels
    acts = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, -1.0]]])
    grads = torch.tensor([[[5.0, 5.0], [1.0, -2.0], [3.0, 0.0]]])
    # weights over patches: [2, -1]; cam = relu([1*2 - 2, 3*2 + 1]) = [0, 7]
    cam = gradcam_from_tokens(acts, grads, (2, 1), num_prefix_tokens=1)
    assert torch.equal(cam, torch.tensor([[[0.0], [7.0]]]))
    with pytest.raises(ValueError, match="needs 4"):
        gradcam_from_tokens(acts, grads, (3, 1))


def test_default_gradcam_layer_per_family():
    tv, course = make_model("torchvision"), make_model("course")
    assert default_gradcam_layer(tv) is tv.encoder.layers[-1].ln_1
    assert default_gradcam_layer(course) is course.transformer_encoder[-1].msa_block.layer_norm


def test_gradcam_equals_manual_hook_computation(model):
    x = images(2)
    layer = default_gradcam_layer(model)
    saved = []
    handle = layer.register_forward_hook(lambda _m, _i, out: saved.append(out))
    try:
        xi = x.clone().requires_grad_(True)
        logits = model(xi)
        grads = torch.autograd.grad(logits[0, 1] + logits[1, 2], saved[0])[0]
    finally:
        handle.remove()
    A, G = saved[0][:, 1:].detach(), grads[:, 1:]                    # (B, 16, D)
    ref = torch.relu((A * G.mean(1, keepdim=True)).sum(-1)).reshape(2, 4, 4)
    maps = explain(model, x, "gradcam", target=[1, 2])
    assert torch.allclose(maps, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(explain(model, x, "gradcam", target=[1, 2], layer=layer), maps)


def test_gradcam_hooks_released_also_on_exception(model):
    model.train()
    before = hooks_and_flags(model)
    explain(model, images(2), "gradcam")
    assert hooks_and_flags(model) == before

    family = describe_model(model).family
    later = model.heads if family == "torchvision" else model.head

    def boom(*_):
        raise RuntimeError("boom after the target layer")

    handle = later.register_forward_hook(boom)
    try:
        snap = hooks_and_flags(model)
        with pytest.raises(RuntimeError, match="boom after"):
            explain(model, images(2), "gradcam")
        assert hooks_and_flags(model) == snap              # our hook is gone, flags back
    finally:
        handle.remove()
    assert hooks_and_flags(model) == before


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


def test_attention_gradcam_matches_chefer_loop(model):
    x = images(2)
    cap = capture(model, x, target=[0, 2], with_grad=True)
    for b in range(2):
        a, g = cap.attentions[-1][b], cap.gradients[-1][b]     # (heads, T, T)
        per_head = [a[k, 0, 1:] * g[k, 0, 1:].mean() for k in range(a.shape[0])]
        ref = torch.clamp(sum(per_head) / len(per_head), min=0).reshape(4, 4)
        got = explain(model, x[b:b + 1], "attention_gradcam", target=[0, 2][b])[0]
        assert torch.allclose(got, ref, atol=1e-6)
    first = attention_gradcam(cap.attentions, cap.gradients, layer=0)
    assert first.shape == (2, 16)
    assert torch.allclose(get_method("attention_gradcam")(model).from_capture(cap, layer=0),
                          first.reshape(2, 4, 4))


# ============================================================================ attention flow
def _edmonds_karp(cap: np.ndarray, s: int, t: int) -> float:
    """Shortest augmenting paths on a dense capacity matrix (independent reference)."""
    n = cap.shape[0]
    res = cap.astype(np.float64).copy()
    total = 0.0
    while True:
        parent = [-1] * n
        parent[s] = s
        queue = deque([s])
        while queue and parent[t] == -1:
            u = queue.popleft()
            for v in range(n):
                if parent[v] == -1 and res[u, v] > 1e-14:
                    parent[v] = u
                    queue.append(v)
        if parent[t] == -1:
            return total
        v, bottleneck = t, np.inf
        while v != s:
            bottleneck = min(bottleneck, res[parent[v], v])
            v = parent[v]
        v = t
        while v != s:
            res[parent[v], v] -= bottleneck
            res[v, parent[v]] += bottleneck
            v = parent[v]
        total += bottleneck


def _dense_layered(C: np.ndarray) -> np.ndarray:
    """Dense (n, n) capacity matrix of the layered graph; node (l, j) = l * T + j."""
    L, T, _ = C.shape
    cap = np.zeros(((L + 1) * T, (L + 1) * T))
    for layer in range(L):
        for i in range(T):
            for j in range(T):
                cap[layer * T + j, (layer + 1) * T + i] = C[layer, i, j]
    return cap


def _min_cut_by_enumeration(cap: np.ndarray, s: int, t: int) -> float:
    """Minimum over every s-t cut (max-flow = min-cut)."""
    others = [v for v in range(cap.shape[0]) if v not in (s, t)]
    best = np.inf
    for bits in itertools.product([False, True], repeat=len(others)):
        side = np.zeros(cap.shape[0], dtype=bool)
        side[s] = True
        side[[v for v, b in zip(others, bits) if b]] = True
        best = min(best, cap[side][:, ~side].sum())
    return best


@pytest.mark.parametrize("L,T,kind", [(1, 3, "random"), (2, 3, "random"), (3, 3, "sparse"),
                                      (2, 4, "attention"), (3, 3, "attention")])
def test_max_flow_equals_min_cut_enumeration(L, T, kind):
    rng = np.random.default_rng(L * 10 + T)
    C = rng.random((L, T, T))
    if kind == "sparse":
        C *= rng.random((L, T, T)) < 0.4              # many missing edges, maybe no path
    if kind == "attention":
        A = [torch.from_numpy(rng.random((1, 2, T, T))).softmax(-1) for _ in range(L)]
        C = flow_matrices(A)[0].numpy()
    cap = _dense_layered(C)
    got = max_flow_layered(C, sink=0)
    for j in range(T):
        expect = _min_cut_by_enumeration(cap, j, L * T)
        assert abs(got[j] - expect) < 1e-9, (j, got[j], expect)


@pytest.mark.parametrize("seed", range(4))
def test_max_flow_equals_edmonds_karp(seed):
    rng = np.random.default_rng(seed)
    L, T = [(4, 5), (5, 6), (6, 4), (4, 7)][seed]
    A = [torch.from_numpy(rng.normal(size=(1, 2, T, T)) * 3).softmax(-1) for _ in range(L)]
    C = flow_matrices(A)[0].numpy()
    if seed == 3:
        C[1] *= rng.random((T, T)) < 0.5              # saturating bottlenecks
    cap = _dense_layered(C)
    got = max_flow_layered(C, sources=range(1, T), sink=0)
    expect = [_edmonds_karp(cap, j, L * T) for j in range(1, T)]
    assert np.allclose(got, expect, atol=1e-9)


def test_flow_matrices_follow_the_paper():
    A = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(2)]
    M = flow_matrices(A)
    assert M.shape == (2, 2, 5, 5) and M.dtype == torch.float64
    expect = 0.5 * A[1].double().mean(1) + 0.5 * torch.eye(5, dtype=torch.float64)
    assert torch.allclose(M[:, 1], expect)                 # rows already sum to 1
    assert torch.allclose(M.sum(-1), torch.ones(2, 2, 5, dtype=torch.float64))


def test_attention_flow_explainer_on_model(model):
    x = images(2)
    cap = capture(model, x)
    mats = flow_matrices(cap.attentions)
    maps = explain(model, x, "attention_flow")
    for b in range(2):
        ref = max_flow_layered(mats[b].numpy(), sources=range(1, 17), sink=0)
        assert np.allclose(maps[b].flatten().numpy(), ref, atol=1e-6)
    assert ((maps >= 0) & (maps <= 1 + 1e-6)).all()
    row = attention_flow(cap.attentions)
    assert row.shape == (2, 17) and torch.equal(row[:, 0], torch.zeros(2))


def test_max_flow_bad_input():
    with pytest.raises(ValueError, match=r"\(L, T, T\)"):
        max_flow_layered(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        max_flow_layered(-np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="out of range"):
        max_flow_layered(np.ones((1, 2, 2)), sources=[5])


# ============================================================================ input gradients
def test_saliency_equals_autograd(model):
    x = images(3)
    xi = x.clone().requires_grad_(True)
    logits = model(xi)
    t = [2, 0, 1]
    (g,) = torch.autograd.grad(sum(logits[b, t[b]] for b in range(3)), xi)
    ref = g.abs().amax(1)                                       # (B, H, W)
    sal = get_method("saliency")(model)
    assert torch.allclose(sal.attribute_pixels(x, target=t), ref, atol=1e-7)
    assert torch.allclose(sal.attribute(x, target=t), pool_to_grid(ref, (4, 4)), atol=1e-7)
    # target None: the predicted class
    pred = logits.argmax(1).tolist()
    assert torch.equal(sal.attribute_pixels(x), sal.attribute_pixels(x, target=pred))


def test_smoothgrad_equals_direct_computation():
    model = make_model("torchvision")
    x = images(2)
    n, level, seed = 5, 0.2, 7
    got = get_method("smoothgrad")(model).attribute_pixels(x, target=[1, 2], n_samples=n,
                                                            noise_level=level, seed=seed)
    for b, t in enumerate([1, 2]):
        gen = torch.Generator().manual_seed(seed)
        sigma = level * float(x[b].max() - x[b].min())
        noisy = x[b] + torch.randn((n, 3, 32, 32), generator=gen) * sigma
        noisy.requires_grad_(True)
        (g,) = torch.autograd.grad(model(noisy)[:, t].sum(), noisy)
        assert torch.allclose(got[b], g.abs().mean(0).amax(0), atol=1e-6)


def test_ig_rules_integrate_exactly():
    for rule in grad_mod.IG_RULES:
        a, w = ig_rule(rule, 6)
        assert a.shape == w.shape == (6,) and ((a >= 0) & (a <= 1)).all()
    a, w = ig_rule("gausslegendre", 4)                         # exact up to degree 7
    assert abs(float((w * a ** 7).sum()) - 1 / 8) < 1e-12
    a, w = ig_rule("riemann_middle", 4)
    assert abs(float((w * a).sum()) - 0.5) < 1e-12
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        ig_rule("riemann_trapezoid", 1)
    with pytest.raises(ValueError, match="rule must be one of"):
        ig_rule("simpson", 10)


def test_integrated_gradients_completeness_and_definition():
    model = make_model("course")
    x = images(2)
    attr, delta = integrated_gradients(model, x, target=[0, 1], steps=64, return_delta=True)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x)))[[0, 1], [0, 1]]
    assert (delta.abs() < 1e-3 * gap.abs().clamp(min=1e-3)).all(), (delta, gap)
    # the definition with a midpoint Riemann sum, written out
    steps = 5
    attr5 = integrated_gradients(model, x[:1], target=2, steps=steps, rule="riemann_middle")
    total = torch.zeros_like(x[:1])
    for k in range(steps):
        p = ((k + 0.5) / steps * x[:1]).requires_grad_(True)
        total += torch.autograd.grad(model(p)[0, 2], p)[0] / steps
    assert torch.allclose(attr5, x[:1] * total, atol=1e-6)
    ig = get_method("integrated_gradients")(model)
    pix = ig.attribute_pixels(x[:1], target=2, steps=steps, rule="riemann_middle")
    assert torch.allclose(pix, attr5.sum(1), atol=1e-6)
    absolute = ig.attribute(x[:1], target=2, steps=steps, rule="riemann_middle",
                            absolute=True)
    assert torch.allclose(absolute, pool_to_grid(pix.abs(), (4, 4)), atol=1e-7)


def test_baselines():
    x = images(2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    black = make_baseline(x, "black", mean=mean, std=std)
    assert torch.allclose(black[1, :, 5, 7], -torch.tensor(mean) / torch.tensor(std))
    assert torch.equal(make_baseline(x, "black"), torch.zeros_like(x))
    const = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(const, 3.0), const)
    blurred = make_baseline(x, "blur", blur_sigma=2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    custom = make_baseline(x, torch.ones(3, 32, 32))
    assert custom.shape == x.shape
    with pytest.raises(ValueError, match="both mean and std"):
        make_baseline(x, "black", mean=mean)
    with pytest.raises(ValueError, match="baseline must be"):
        make_baseline(x, "white")


def test_pool_to_grid():
    m = torch.arange(4.0).reshape(1, 2, 2).repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert torch.equal(pool_to_grid(m, (2, 2)), torch.arange(4.0).reshape(1, 2, 2))
    r = torch.rand(2, 32, 32)
    assert torch.allclose(pool_to_grid(r, (4, 4))[1, 2, 3], r[1, 16:24, 24:32].mean())
    with pytest.raises(ValueError, match="patch grid"):
        pool_to_grid(torch.rand(1, 30, 32), (4, 4))


# ============================================================================ every method
@pytest.mark.parametrize("method", NEW_METHODS)
def test_same_map_alone_as_in_a_batch_and_not_constant(model, method):
    x = images(3)
    opts = FAST.get(method, {})
    targets = [0, 2, 1]
    batch = explain(model, x, method, target=targets, **opts)
    assert batch.shape == (3, 4, 4)
    for b in range(3):
        alone = explain(model, x[b:b + 1], method, target=targets[b], **opts)
        assert torch.allclose(batch[b:b + 1], alone, atol=1e-6, rtol=1e-4), b
    spread = batch.flatten(1).std(dim=1)
    if method == "attention_gradcam":
        # (mean_k w_k A_k)⁺ is all zero when every head's weight is negative: with two
        # random heads that happens for some images, so ask it of one image only.
        assert (spread > 0).any()
    else:
        assert (spread > 0).all()                               # maps are not constant


@pytest.mark.parametrize("method", CLASS_SPECIFIC)
def test_targets_change_class_specific_maps(method):
    model = make_model("torchvision")
    x = images(1)
    opts = FAST.get(method, {})
    maps = [explain(model, x, method, target=c, **opts) for c in range(3)]
    assert not torch.allclose(maps[0], maps[1]) or not torch.allclose(maps[1], maps[2])
    pred = int(model(x).argmax())
    assert torch.allclose(explain(model, x, method, **opts), maps[pred])


@pytest.mark.parametrize("method", NEW_METHODS)
def test_model_state_restored(method):
    model = make_model("course")
    model.train()
    for m in list(model.modules())[::2]:
        m.training = False
    before = hooks_and_flags(model)
    params = [(p.requires_grad, p.grad) for p in model.parameters()]
    explain(model, images(2), method, **FAST.get(method, {}))
    assert hooks_and_flags(model) == before
    assert [(p.requires_grad, p.grad) for p in model.parameters()] == params


def test_frozen_backbone_still_gets_gradients():
    model = make_model("torchvision")
    for p in model.parameters():
        p.requires_grad_(False)
    for method in ["gradcam", "saliency", "gae"]:
        assert explain(model, images(1), method).abs().sum() > 0


@pytest.mark.parametrize("method,options,exc,message", [
    ("gradcam", {"layer": nn.Linear(2, 2)}, ValueError, "not a module of this"),
    ("gradcam", {"layer": "ln_1"}, TypeError, "layer must be None"),
    ("attention_gradcam", {"layer": 5}, ValueError, "layer must be in"),
    ("gae", {"start_layer": 2}, ValueError, "start_layer must be in"),
    ("gae", {"discard_ratio": 0.5}, TypeError, "unknown option"),
    ("attention_flow", {"head_fusion": "max"}, TypeError, "unknown option"),
    ("attention_norm", {"layer": -3}, ValueError, "layer must be in"),
    ("smoothgrad", {"n_samples": 0}, ValueError, "n_samples must be a positive int"),
    ("smoothgrad", {"noise_level": 2.0}, ValueError, r"noise_level must be a float in \[0, 1\]"),
    ("smoothgrad", {"seed": 1.5}, TypeError, "seed must be an int"),
    ("integrated_gradients", {"steps": 0}, ValueError, "steps must be an int"),
    ("integrated_gradients", {"baseline": "white"}, ValueError, "baseline must be"),
    ("integrated_gradients", {"mean": (0.5, 0.5, 0.5)}, ValueError, "both mean and std"),
    ("integrated_gradients", {"rule": "simpson"}, ValueError, "rule must be one of"),
    ("saliency", {"internal_batch_size": 0}, ValueError, "internal_batch_size"),
])
def test_bad_options_fail_before_any_forward(method, options, exc, message):
    model = make_model("torchvision")
    assert_rejected_before_any_forward(model, lambda: explain(model, images(1), method, **options),
                                       exc, message)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_bad_targets_and_images(method):
    model = make_model("torchvision")
    opts = FAST.get(method, {})
    with pytest.raises(ValueError, match="out of range"):
        explain(model, images(2), method, target=7, **opts)
    with pytest.raises(ValueError, match="one class index per image"):
        explain(model, images(2), method, target=[0, 1, 2], **opts)
    with pytest.raises(ValueError, match="rank 4"):
        explain(model, images(1)[0], method, **opts)


def test_pixel_methods_have_no_capture_path():
    model = make_model("torchvision")
    cap = capture(model, images(1), with_grad=True)
    for name in ["gradcam", "saliency", "smoothgrad", "integrated_gradients"]:
        with pytest.raises(TypeError, match=r"attribute\(images"):
            get_method(name)(model).from_capture(cap)
    for name in ["gae", "attention_gradcam", "attention_flow"]:
        direct = explain(model, images(1), name)
        assert torch.allclose(get_method(name)(model).from_capture(cap), direct, atol=1e-6)


# ============================================================================ cross-checks
def test_gradcam_matches_pytorch_grad_cam_on_vit_b_16():
    pgc = pytest.importorskip("pytorch_grad_cam",
                              reason="grad-cam (pytorch-grad-cam) not installed; test extra")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchvision.models import vit_b_16

    set_seed(0)
    model = vit_b_16(weights=None, num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight, std=0.05)         # torchvision zero-inits it
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    targets = [1, 4]

    def reshape_transform(tokens: torch.Tensor) -> torch.Tensor:   # the library's ViT recipe
        grid = tokens[:, 1:, :].reshape(tokens.shape[0], 14, 14, tokens.shape[2])
        return grid.permute(0, 3, 1, 2)

    with pgc.GradCAM(model=model, target_layers=[model.encoder.layers[-1].ln_1],
                     reshape_transform=reshape_transform) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    ours = explain(model, x, "gradcam", target=targets)
    assert (ours.flatten(1).std(1) > 0).all()
    # By design the library post-processes: it scales each 14x14 map to [0, 1], resizes
    # it with OpenCV, and (when aggregating target layers, even one) scales to [0, 1]
    # again. Ours are raw (B, h, w) maps; give them the same post-processing.
    ours_px = scale_cam_image(scale_cam_image(ours.numpy(), (224, 224)))
    for b in range(2):
        corr = np.corrcoef(ours_px[b].ravel(), theirs[b].ravel())[0, 1]
        assert corr >= 0.99, corr
    assert np.abs(ours_px - theirs).max() < 1e-4


def _captum():
    return pytest.importorskip("captum.attr", reason="captum not installed; test extra")


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_saliency_matches_captum(model):
    attr = _captum()
    x = images(2)
    theirs = attr.Saliency(model).attribute(x, target=[2, 1], abs=True).amax(1)
    ours = get_method("saliency")(model).attribute_pixels(x, target=[2, 1])
    assert torch.allclose(ours, theirs, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_smoothgrad_matches_captum_noise_tunnel(model):
    attr = _captum()
    x = images(1)
    n, level, seed = 6, 0.15, 11
    sigma = level * float(x.max() - x.min())
    torch.manual_seed(seed)             # Captum draws from the global generator
    theirs = attr.NoiseTunnel(attr.Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=n, stdevs=sigma, target=2).amax(1)
    ours = get_method("smoothgrad")(model).attribute_pixels(
        x, target=2, n_samples=n, noise_level=level, seed=seed)
    # By design both average |gradient| over the noisy copies (|·| before the mean).
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("rule,baseline", [("gausslegendre", "black"),
                                           ("riemann_trapezoid", "blur")])
def test_integrated_gradients_match_captum(model, rule, baseline):
    attr = _captum()
    x = images(2)
    base = make_baseline(x, baseline, blur_sigma=3.0)
    theirs, their_delta = attr.IntegratedGradients(model).attribute(
        x, baselines=base, target=[1, 0], n_steps=12, method=rule,
        return_convergence_delta=True)
    ours, delta = integrated_gradients(model, x, target=[1, 0], baseline=baseline, steps=12,
                                       rule=rule, blur_sigma=3.0, return_delta=True)
    scale = float(theirs.abs().max())
    assert torch.allclose(ours, theirs, atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(delta, their_delta.to(delta.dtype), atol=1e-5, rtol=1e-3)


# ============================================================================ norm-based
def test_norm_contributions_sum_to_the_attention_output(model):
    from vit_course.explain.norm import norm_contributions, value_output_weights
    x = images(2)
    family = describe_model(model).family
    ln, w_v, b_v, w_o = value_output_weights(model, 1, family)
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
    with pytest.raises(TypeError, match=r"attribute\(images"):
        get_method("attention_norm")(model).from_capture(cap)
    with pytest.raises(ValueError, match="layer must be in"):
        explain(model, x, "attention_norm", layer=3)


@pytest.mark.parametrize("method", ["gradcam", "saliency", "smoothgrad",
                                    "integrated_gradients"])
def test_inference_mode_is_a_clear_error(method):
    model = make_model("torchvision")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explain(model, images(1), method, **FAST.get(method, {}))


# ----------------------------------------------------------------------------- all classes at once
@pytest.mark.parametrize("method", ["grad_rollout", "gae", "gradcam", "rollout"])
def test_explain_classes_equals_one_explain_per_class(model, method):
    from vit_course.explain import explain_classes

    x = images(5)
    want = torch.stack([explain(model, x, method, target=c) for c in range(3)], dim=1)
    for chunk in (1, 2, 5):
        got = explain_classes(model, x, method, chunk_size=chunk)
        assert got.shape == (5, 3, 4, 4)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if method != "rollout":                       # class-specific: the classes differ
        assert not torch.allclose(want[:, 0], want[:, 1])
    sub = explain_classes(model, x, method, classes=[2, 0])
    torch.testing.assert_close(sub, want[:, [2, 0]], rtol=1e-5, atol=1e-6)


def test_explain_classes_uses_one_forward_per_chunk_for_attention_gradients(model):
    from vit_course.explain import explain_classes

    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        explain_classes(model, images(5), "grad_rollout", chunk_size=2)
    finally:
        handle.remove()
    assert len(calls) == 3                        # chunks of 2, 2, 1; no pass per class


def test_explain_classes_rejects_bad_input(model):
    from vit_course.explain import explain_classes

    with pytest.raises(ValueError, match="chunk_size"):
        explain_classes(model, images(2), chunk_size=0)
    with pytest.raises(ValueError, match="classes is empty"):
        explain_classes(model, images(2), classes=[])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        explain_classes(model, images(2), discard_ratio=1.0)
    with pytest.raises(ValueError, match="class"):
        explain_classes(model, images(2), classes=[0, 7])


def test_explain_classes_counts_classes_of_a_replaced_head():
    """pretrained.attach_head puts a bare Linear where torchvision had Sequential(head=...)."""
    from vit_course.explain import explain_classes
    from vit_course.pretrained import attach_head

    model = make_model("torchvision")
    attach_head(model, nn.Linear(32, 5))
    assert describe_model(model).num_classes == 5
    assert explain_classes(model, images(2), "grad_rollout").shape == (2, 5, 4, 4)
