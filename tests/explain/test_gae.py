"""GAE (Chefer et al., ICCV 2021): the rule on hand-computed matrices, against plain loops
(the authors' ``avg_heads`` and ``apply_self_attention_rules`` from
hila-chefer/Transformer-MM-Explainability ``Transformer_MM_explainability_ViT.ipynb``,
restated), and the registered method on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from _tiny import images, make_model
from vit_course.explain import capture, explain
from vit_course.explain.gae import gae_layer, gae_rollout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["torchvision", "course"])
def model(request) -> nn.Module:
    return make_model(request.param)


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
    assert torch.allclose(gae_rollout(A, G)[:, 0][0], R2[0])
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
    assert np.allclose(gae_rollout(A, G)[:, 0].numpy(), ref[:, 0], atol=1e-5)

def test_gae_explainer_equals_capture_computation(model):
    x = images(2)
    cap = capture(model, x, target=[2, 0], with_grad=True)
    ref = _gae_reference(cap.attentions, cap.gradients)[:, 0, 1:].reshape(2, 4, 4)
    maps = explain(model, x, "gae", target=[2, 0])
    assert np.allclose(maps.numpy(), ref, atol=1e-5)
    # zero gradients: R = I, no relevance reaches the patches
    zero = [torch.zeros_like(a) for a in cap.attentions]
    assert torch.equal(gae_rollout(cap.attentions, zero)[:, 0, 1:],
                       torch.zeros(2, 16))

def test_gae_rejects_mismatched_gradients():
    A = [torch.rand(1, 2, 5, 5).softmax(-1)]
    with pytest.raises(ValueError, match="gradients must match"):
        gae_rollout(A, [torch.rand(1, 2, 4, 4)])
    with pytest.raises(TypeError, match="list"):
        gae_rollout(A[0], A)
