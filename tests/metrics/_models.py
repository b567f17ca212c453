"""Small models for the metrics tests whose curves can be worked out by hand.

A torchvision VisionTransformer (32 px, 8-px patches, 2 layers) with a random head, the course
ViT, and hand-made models whose logits depend only on chosen patches.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from vit_course.models import ViT

P = 2          # patch size of the hand-made models
G = 4          # their grid is 4×4 on 8×8 images, N = 16


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                             hidden_dim=32, mlp_dim=64, num_classes=3)
    nn.init.normal_(m.heads.head.weight, std=1.0)       # torchvision zero-inits the head
    nn.init.normal_(m.heads.head.bias, std=0.1)
    return m.eval()


def course_vit():
    torch.manual_seed(0)
    return ViT(img_size=32, patch_size=8, num_transformer_layers=2, embedding_dim=32, mlp_size=64,
               num_heads=2, num_classes=3).eval()


class PatchModel(nn.Module):
    """logit_0 = scale · (mean of patch ``token``), logit_1 = ``bias``, logit_2 = -inf-ish."""

    def __init__(self, token: int, scale: float = 10.0, bias: float = 5.0):
        super().__init__()
        self.token, self.scale, self.bias = token, scale, bias
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        r, c = divmod(self.token, G)
        v = x[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P].mean(dim=(1, 2, 3))
        return torch.stack([self.scale * v, torch.full_like(v, self.bias), torch.full_like(v, -30.0)], 1)


class CountModel(nn.Module):
    """logits = (number of all-zero patches, 0): the probability reveals the count."""

    def forward(self, x):
        B = x.shape[0]
        patches = x.reshape(B, 3, G, P, G, P).abs().sum(dim=(1, 3, 5))       # (B, G, G)
        n = (patches == 0).sum(dim=(1, 2)).double()
        return torch.stack([n, torch.zeros_like(n)], 1)


def count_from_prob(p):
    return torch.log(p / (1 - p)).round().long()


def positive_images(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, G * P, G * P, generator=g) + 0.5


class ChannelModel(ViT):
    """Predicts the channel with the largest mean: a model whose answer is known.

    A course ViT (32 px, 8-px patches: a 4×4 grid) only so that the explain methods (the
    controls of run_suite) read its patch grid; its logits are 10 × the channel means.
    """

    def __init__(self):
        super().__init__(img_size=32, patch_size=8, num_transformer_layers=1, embedding_dim=8,
                         mlp_size=8, num_heads=1, num_classes=3)

    def forward(self, x, return_attentions=False):
        return 10 * x.mean(dim=(2, 3))


def channel_images(n=12):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.2
    labels = torch.arange(n) % 3
    x[torch.arange(n), labels] += 0.6
    return x, labels


def target_channel(model, images, target):
    t = torch.as_tensor(target).view(-1)
    ch = images[torch.arange(images.shape[0]), t]
    return ch.unfold(1, 8, 8).unfold(2, 8, 8).mean(dim=(-1, -2))


def head_dtypes(model: nn.Module) -> list[torch.dtype]:
    """Record the dtype the classification head computes in, on every forward."""
    seen: list[torch.dtype] = []
    model.heads.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen
