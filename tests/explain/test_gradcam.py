"""Grad-CAM on token features (against pytorch-grad-cam on ViT-B/16, when installed) and
Chefer et al.'s attention Grad-CAM, on tiny models; hooks released also on exceptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from _tiny import images, make_model
from vit_course.explain import capture, describe_model, explain
from vit_course.explain.gradcam import attention_gradcam, default_gradcam_layer, gradcam_from_tokens
from vit_course.runtime import set_seed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["torchvision", "course"])
def model(request) -> nn.Module:
    return make_model(request.param)


def hooks_and_flags(model: nn.Module) -> list:
    return [(n, m.training, len(m._forward_hooks), len(m._forward_pre_hooks),
             len(m._backward_hooks)) for n, m in model.named_modules()]


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

def test_attention_gradcam_matches_chefer_loop(model):
    # Restates hila-chefer/Transformer-Explainability ViT_explanation_generator.py
    # Baselines.generate_cam_attn per image: the CLS row of the last layer's attention and
    # gradient, one weight per head (mean over the patch columns), mean over heads, clamp.
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
    assert torch.allclose(explain(model, None, "attention_gradcam", capture=cap, layer=0),
                          first.reshape(2, 4, 4))

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

    # the library's ViT recipe (tutorials/vision_transformers.md): drop the class token,
    # lay the patch tokens out on the 14 x 14 grid, channels first
    def reshape_transform(tokens: torch.Tensor) -> torch.Tensor:
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
