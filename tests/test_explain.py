"""vit_course.explain on tiny models: capture, restore, methods, errors, gradients, CLI.

Models: torchvision VisionTransformer (32 px, patch 8, 2 layers, width 32) with a random
head, the course ViT of the same size, and timm ViT / distilled DeiT when timm is
installed (skipped otherwise).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_course.explain import (
    METHODS,
    Capture,
    Explainer,
    GradRollout,
    Rollout,
    capture,
    describe_model,
    explain,
    get_method,
    gradients_for_targets,
    register_method,
)
from _tiny import MODEL_KINDS, assert_rejected_before_any_forward, images, make_model
from vit_course.models import ViT
from vit_course.runtime import set_seed

TINY = dict(img=32, patch=8, layers=2, heads=2, dim=32, mlp=64, classes=3)


pytestmark = pytest.mark.usefixtures("one_thread")




def snapshot(model: nn.Module) -> dict:
    """Everything capture may touch, per module."""
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
    return out


@pytest.fixture(params=MODEL_KINDS)
def model(request) -> nn.Module:
    return make_model(request.param)


# ----------------------------------------------------------------------------- capture
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
        plain = model(x)
    for with_grad in (False, True):
        cap = capture(model, x, with_grad=with_grad)
        assert torch.allclose(cap.logits, plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(x), plain, atol=1e-6)


def test_model_restored_after_capture(model):
    model.train()                               # capture runs in eval mode, then restores
    for m in list(model.modules())[::3]:
        m.training = False                      # a mixed state must come back exactly
    before = snapshot(model)
    capture(model, images(2), with_grad=True)
    explain(model, images(2), "grad_rollout")
    assert snapshot(model) == before


def test_model_restored_when_forward_raises_mid_capture(model):
    model.train()
    blocks = describe_model(model)
    layer = {"torchvision": lambda: model.encoder.layers[1].mlp,
             "vit_course": lambda: model.transformer_encoder[1].mlp_block,
             "timm": lambda: model.blocks[1].mlp}[blocks.family]()

    def boom(*_):
        raise RuntimeError("boom in block 1")

    handle = layer.register_forward_hook(boom)
    try:
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="boom in block 1"):
            capture(model, images(2), with_grad=True)
        assert snapshot(model) == before
    finally:
        handle.remove()
    model.eval()
    with torch.no_grad():
        out = model(images(2))
    assert torch.allclose(capture(model, images(2)).logits, out, atol=1e-5)


def test_unsupported_model_is_a_type_error_naming_supported_ones():
    with pytest.raises(TypeError, match=r"vit_course\.models\.ViT.*torchvision.*VisionTransformer"):
        capture(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), images(1))
    with pytest.raises(TypeError, match="Sequential"):
        explain(nn.Sequential(nn.Identity()), images(1))


def test_torchvision_any_image_and_patch_size():
    from torchvision.models import VisionTransformer
    set_seed(0)
    model = VisionTransformer(image_size=24, patch_size=4, num_layers=1, num_heads=2,
                              hidden_dim=16, mlp_dim=32, num_classes=2)
    maps = explain(model, images(2, size=24), "rollout")
    assert maps.shape == (2, 6, 6)


# ----------------------------------------------------------------------------- gradients
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
        maps = GradRollout(model).from_capture(cap.with_gradients(grads, c), discard_ratio=0.5)
        assert torch.allclose(maps, explain(model, x, "grad_rollout", target=c,
                                            discard_ratio=0.5), atol=1e-5)
    cap.release()
    with pytest.raises(ValueError, match="keep_graph=True"):
        gradients_for_targets(cap, [0])


def test_class_specific_maps_differ_between_classes():
    model = make_model("torchvision")
    maps = [explain(model, images(1), "grad_rollout", target=c) for c in range(3)]
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[1], maps[2])


# ----------------------------------------------------------------------------- methods
@pytest.mark.parametrize("method", ["attention", "rollout", "grad_rollout"])
def test_every_method_same_map_alone_as_in_a_batch(model, method):
    x = images(3)
    options = {"attention": {"head": 1}, "rollout": {"discard_ratio": 0.5,
                                                     "head_fusion": "max"},
               "grad_rollout": {"discard_ratio": 0.3}}[method]
    batch = explain(model, x, method, **options)
    assert batch.shape == (3, 4, 4)
    for b in range(3):
        alone = explain(model, x[b:b + 1], method, **options)
        assert torch.allclose(batch[b:b + 1], alone, atol=1e-5, rtol=1e-4), b
    assert (batch.flatten(1).std(dim=1) > 0).all()          # maps are not constant


def test_targets_none_int_and_per_image(model):
    x = images(3)
    pred = capture(model, x).logits.argmax(1)
    assert torch.allclose(explain(model, x, "grad_rollout"),
                          explain(model, x, "grad_rollout", target=pred))
    per_image = explain(model, x, "grad_rollout", target=torch.tensor([1, 1, 1]))
    assert torch.allclose(per_image, explain(model, x, "grad_rollout", target=1))


def test_options_from_constructor_and_call():
    model = make_model("torchvision")
    x = images(2)
    r = Rollout(model, discard_ratio=0.8)
    assert torch.allclose(r.attribute(x), explain(model, x, discard_ratio=0.8))
    assert torch.allclose(r.attribute(x, discard_ratio=0.0), explain(model, x))
    assert not torch.allclose(r.attribute(x), explain(model, x))


def test_from_capture_makes_no_forward_pass():
    model = make_model("torchvision")
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        cap = capture(model, images(2), with_grad=True)
        assert len(calls) == 1
        maps = [get_method(m)(model).from_capture(cap)
                for m in ("attention", "rollout", "grad_rollout")]
        maps += [Rollout(model).from_capture(cap, discard_ratio=r) for r in (0.1, 0.5, 0.9)]
        assert len(calls) == 1
    finally:
        handle.remove()
    assert not torch.allclose(maps[-1], maps[-3])             # a new ratio, a new map
    with pytest.raises(ValueError, match="with_grad=True"):
        GradRollout(model).from_capture(capture(model, images(1)))


def test_capture_select_and_training_mode_model():
    model = make_model("course").train()
    x = images(3)
    cap = capture(model, x, with_grad=True)
    assert model.training
    sub = cap.select(1)
    with pytest.raises(IndexError, match="out of range"):
        cap.select(3)
    assert torch.allclose(GradRollout(model).from_capture(sub),
                          explain(model, x[1:2], "grad_rollout"), atol=1e-5)


def test_registry_lists_methods_and_accepts_new_ones():
    assert {"attention", "rollout", "grad_rollout"} <= set(METHODS)
    with pytest.raises(ValueError, match=r"unknown explanation method 'no_such'.*'rollout'"):
        explain(make_model("torchvision"), images(1), "no_such")

    @register_method("_test_uniform")
    class Uniform(Explainer):
        defaults = {"value": 1.0}

        def token_scores(self, cap: Capture, value: float) -> torch.Tensor:
            return torch.full((cap.batch_size, cap.num_tokens), value)

    try:
        maps = explain(make_model("torchvision"), images(2), "_test_uniform", value=2.0)
        assert torch.equal(maps, torch.full((2, 4, 4), 2.0))
        with pytest.raises(ValueError, match="already registered"):
            register_method("rollout")(Uniform)
    finally:
        METHODS.pop("_test_uniform")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, exc, message", [
    (lambda: torch.rand(3, 32, 32), ValueError, r"rank 4.*unsqueeze\(0\)"),
    (lambda: torch.rand(1, 1, 32, 32), ValueError, "3 channels"),
    (lambda: torch.rand(1, 3, 48, 48), ValueError, "32x32"),
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "floating point"),
    (lambda: [[0.0]], TypeError, "torch.Tensor"),
])
def test_bad_images(model, bad, exc, message):
    with pytest.raises(exc, match=message):
        explain(model, bad(), "rollout")


@pytest.mark.parametrize("target, exc, message", [
    (3, ValueError, "num_classes=3"),
    (-1, ValueError, "out of range"),
    ([0, 1], ValueError, "one class index per image"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer class indices"),
    (True, TypeError, "bool"),
    ("pizza", TypeError, "target must be"),
])
def test_bad_targets(target, exc, message):
    with pytest.raises(exc, match=message):
        explain(make_model("torchvision"), images(3), "grad_rollout", target=target)


@pytest.mark.parametrize("method, options, exc, message", [
    ("rollout", {"discard_ratio": 1.0}, ValueError, r"\[0, 1\)"),
    ("rollout", {"discard_ratio": -0.2}, ValueError, r"\[0, 1\)"),
    ("grad_rollout", {"head_fusion": "median"}, ValueError, r"\['mean', 'max', 'min'\]"),
    ("rollout", {"start_layer": 2}, ValueError, "start_layer must be in"),
    ("attention", {"head": 5}, ValueError, "head must be None"),
    ("attention", {"discard_ratio": 0.5}, TypeError, "options are: layer, head, head_fusion"),
])
def test_bad_options_fail_before_any_forward(method, options, exc, message):
    model = make_model("torchvision")
    assert_rejected_before_any_forward(model, lambda: explain(model, images(1), method, **options),
                                       exc, message)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def course_checkpoint(tmp_path: Path) -> Path:
    from vit_course.engine import save_checkpoint
    return save_checkpoint(make_model("course"), tmp_path / "course.pt",
                           class_names=["pizza", "steak", "sushi"])


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(40, 50, 4, generator=g) * 255).to(torch.uint8).numpy()
    path = tmp_path / "dish.png"
    Image.fromarray(arr, mode="RGBA").save(path)            # RGBA: converted to RGB
    return path


def test_cli_writes_overlay_and_prints_top3(course_checkpoint, image_file, tmp_path, capsys):
    from vit_course.explain.__main__ import main
    out = tmp_path / "out" / "map.png"
    rc = main([str(image_file), "--checkpoint", str(course_checkpoint), "--method",
               "grad_rollout", "--head-fusion", "max", "--discard-ratio", "0.5",
               "--category-index", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-3" in printed and all(n in printed for n in ("pizza", "steak", "sushi"))
    assert list(out.parent.iterdir()) == [out]                # no temporary files left


@pytest.mark.parametrize("args, message", [
    (["missing.png"], "No image at"),
    (["{img}", "--method", "no_such"], "unknown explanation method 'no_such'"),
    (["{img}", "--discard-ratio", "1.5"], r"\[0, 1\)"),
    (["{img}", "--method", "attention", "--discard-ratio", "0.5"], "does not apply"),
    (["{img}", "--category-index", "7"], "num_classes=3"),
    (["{img}", "--out", "map.jpg"], "must end in .png"),
])
def test_cli_bad_input_exit_code_2_without_traceback(args, message, course_checkpoint,
                                                     image_file, tmp_path, capsys,
                                                     monkeypatch):
    from vit_course.explain.__main__ import main
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    argv = [a.format(img=image_file) for a in args] + ["--checkpoint", str(course_checkpoint)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not list(run_dir.iterdir())                       # nothing written


def test_cli_runs_as_module(tmp_path, monkeypatch, capsys):
    import runpy
    monkeypatch.delitem(sys.modules, "vit_course.explain.__main__", raising=False)
    monkeypatch.setattr(sys, "argv", ["vit_course.explain", str(tmp_path / "no.png")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("vit_course.explain", run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No image at") and "Traceback" not in err


def test_cli_bad_checkpoint(tmp_path, image_file, capsys):
    from vit_course.explain.__main__ import main
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something/1"}, bad)
    assert main([str(image_file), "--checkpoint", str(bad)]) == 2
    assert "expected a head" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_imagenet_vit_b_16_with_standin_weights(standin_torch_home, image_file, tmp_path,
                                                    capsys):
    from vit_course.explain.__main__ import main
    out = tmp_path / "vitb.png"
    assert main([str(image_file), "--model", "vit_b_16_imagenet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "STAND-IN" in printed and out.is_file()
    assert "top-3" in printed and printed.count("%") == 3


def test_fused_layer_cache_never_serves_stale_maps():
    from vit_course.explain import cls_row_to_grid, grad_rollout, rollout
    model = make_model("torchvision")
    cap = capture(model, images(2), keep_graph=True, with_grad=True)
    r, g = Rollout(model), GradRollout(model)

    def expected(c: Capture, fusion: str, **kw) -> torch.Tensor:
        R = rollout(c.attentions, fusion, **kw)
        return cls_row_to_grid(R, c.grid, c.num_prefix_tokens)

    for fusion in ("mean", "max", "mean"):
        for ratio in (0.0, 0.6):
            assert torch.allclose(r.from_capture(cap, head_fusion=fusion, discard_ratio=ratio),
                                  expected(cap, fusion, discard_ratio=ratio), atol=1e-6)
    for c, grads in enumerate(gradients_for_targets(cap, [0, 1])):   # class switch
        switched = cap.with_gradients(grads, c)
        want = cls_row_to_grid(grad_rollout(switched.attentions, grads), cap.grid, 1)
        assert torch.allclose(g.from_capture(switched), want, atol=1e-6)
    other = capture(model, images(2, seed=5))
    assert torch.allclose(r.from_capture(other), expected(other, "mean"), atol=1e-6)
    other.attentions[1].mul_(0.5)                              # in place: version changes
    assert torch.allclose(r.from_capture(other), expected(other, "mean"), atol=1e-6)


def test_cli_method_without_capture_support(course_checkpoint, image_file, tmp_path, capsys):
    from vit_course.explain.__main__ import main

    @register_method("_test_pixels")
    class Pixels(Explainer):
        supports_capture = False

        def attribute(self, images, target=None, **options):
            assert torch.is_tensor(target) and target.shape == (images.shape[0],)
            return images.mean(1)[:, ::8, ::8]                 # (B, 4, 4) for 32 px

    try:
        out = tmp_path / "pixels.png"
        assert main([str(image_file), "--checkpoint", str(course_checkpoint), "--method",
                     "_test_pixels", "--category-index", "1", "--out", str(out)]) == 0
        assert out.is_file() and "top-3" in capsys.readouterr().out
    finally:
        METHODS.pop("_test_pixels")
