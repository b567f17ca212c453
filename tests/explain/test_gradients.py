"""Input-gradient methods: saliency, SmoothGrad and integrated gradients, against autograd
written out and against Captum (test extra); pixel maps through ``resolution="pixels"``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vit_course.explain.gradients as grad_mod
from _tiny import images, make_model
from vit_course.explain import explain, get_method, pool_to_grid
from vit_course.explain.gradients import ig_baseline, ig_rule, integrated_gradients
from vit_course.imaging import gaussian_blur

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["torchvision", "course"])
def model(request) -> nn.Module:
    return make_model(request.param)


def test_saliency_equals_autograd(model):
    x = images(3)
    xi = x.clone().requires_grad_(True)
    logits = model(xi)
    t = [2, 0, 1]
    (g,) = torch.autograd.grad(sum(logits[b, t[b]] for b in range(3)), xi)
    ref = g.abs().amax(1)                                       # (B, H, W)
    sal = get_method("saliency")(model)
    assert torch.allclose(sal.attribute(x, target=t, resolution="pixels"), ref, atol=1e-7)
    assert torch.allclose(sal.attribute(x, target=t), pool_to_grid(ref, (4, 4)), atol=1e-7)
    # target None: the predicted class
    pred = logits.argmax(1).tolist()
    assert torch.equal(sal.attribute(x, resolution="pixels"),
                       sal.attribute(x, target=pred, resolution="pixels"))
    assert torch.equal(explain(model, x, "saliency", resolution="pixels"), sal.attribute(x, resolution="pixels"))

def test_smoothgrad_equals_direct_computation():
    model = make_model("torchvision")
    x = images(2)
    n, level, seed = 5, 0.2, 7
    got = explain(model, x, "smoothgrad", target=[1, 2], n_samples=n, noise_level=level,
                  seed=seed, resolution="pixels")
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
    pix = ig.attribute(x[:1], target=2, steps=steps, rule="riemann_middle", resolution="pixels")
    assert torch.allclose(pix, attr5.sum(1), atol=1e-6)
    absolute = ig.attribute(x[:1], target=2, steps=steps, rule="riemann_middle",
                            absolute=True)
    assert torch.allclose(absolute, pool_to_grid(pix.abs(), (4, 4)), atol=1e-7)

def test_baselines():
    x = images(2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    black = ig_baseline(x, "black", mean=mean, std=std)
    assert torch.allclose(black[1, :, 5, 7], -torch.tensor(mean) / torch.tensor(std))
    assert torch.equal(ig_baseline(x, "black"), torch.zeros_like(x))
    const = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(const, 3.0), const)
    blurred = ig_baseline(x, "blur", blur_sigma=2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    custom = ig_baseline(x, torch.ones(3, 32, 32))
    assert custom.shape == x.shape
    with pytest.raises(ValueError, match="both mean and std"):
        ig_baseline(x, "black", mean=mean)
    with pytest.raises(ValueError, match="baseline must be"):
        ig_baseline(x, "white")
    # the blur keeps today's kernel: radius ceil(3σ), at most one pixel under the side
    tiny = torch.rand(1, 3, 4, 4)
    assert torch.allclose(ig_baseline(tiny, "blur", blur_sigma=2.0),
                          gaussian_blur(tiny, 2.0, kernel_size=7))
    with pytest.raises(TypeError, match="unknown option"):
        explain(make_model("torchvision"), x, "rollout", resolution="pixels")
    with pytest.raises(ValueError, match="resolution must be one of"):
        explain(make_model("torchvision"), x, "saliency", resolution="patch")

def test_pool_to_grid():
    m = torch.arange(4.0).reshape(1, 2, 2).repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert torch.equal(pool_to_grid(m, (2, 2)), torch.arange(4.0).reshape(1, 2, 2))
    r = torch.rand(2, 32, 32)
    assert torch.allclose(pool_to_grid(r, (4, 4))[1, 2, 3], r[1, 16:24, 24:32].mean())
    with pytest.raises(ValueError, match="patch grid"):
        pool_to_grid(torch.rand(1, 30, 32), (4, 4))

def _captum():
    return pytest.importorskip("captum.attr", reason="captum not installed; test extra")

@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_left", "riemann_right",
                                  "riemann_middle", "riemann_trapezoid"])
def test_ig_rules_equal_captums_approximation_parameters(rule):
    # Captum's own builders (captum/attr/_utils/approximation_methods.py): step sizes are
    # the weights, alphas the points; the trapezoid weights sum to 1 - 1/n.
    _captum()
    from captum.attr._utils.approximation_methods import approximation_parameters
    step_sizes, alphas = approximation_parameters(rule)
    for n in (2, 5, 12):
        a, w = ig_rule(rule, n)
        torch.testing.assert_close(a, torch.tensor(alphas(n), dtype=torch.float64),
                                   atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(w, torch.tensor(step_sizes(n), dtype=torch.float64),
                                   atol=1e-6, rtol=1e-6)
    if rule == "riemann_trapezoid":
        assert sum(step_sizes(12)) == pytest.approx(1 - 1 / 12)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_saliency_matches_captum(model):
    attr = _captum()
    x = images(2)
    theirs = attr.Saliency(model).attribute(x, target=[2, 1], abs=True).amax(1)
    ours = explain(model, x, "saliency", target=[2, 1], resolution="pixels")
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
    ours = explain(model, x, "smoothgrad", target=2, n_samples=n, noise_level=level, seed=seed,
                   resolution="pixels")
    # By design both average |gradient| over the noisy copies (|·| before the mean).
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4)

@pytest.mark.parametrize("rule,baseline", [("gausslegendre", "black"),
                                           ("riemann_trapezoid", "blur")])
def test_integrated_gradients_match_captum(model, rule, baseline):
    attr = _captum()
    x = images(2)
    base = ig_baseline(x, baseline, blur_sigma=3.0)
    theirs, their_delta = attr.IntegratedGradients(model).attribute(
        x, baselines=base, target=[1, 0], n_steps=12, method=rule,
        return_convergence_delta=True)
    ours, delta = integrated_gradients(model, x, target=[1, 0], baseline=baseline, steps=12,
                                       rule=rule, blur_sigma=3.0, return_delta=True)
    scale = float(theirs.abs().max())
    assert torch.allclose(ours, theirs, atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(delta, their_delta.to(delta.dtype), atol=1e-5, rtol=1e-3)
