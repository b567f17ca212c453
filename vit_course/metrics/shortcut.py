"""A planted shortcut: ground truth for explanations on real photos (issue 16).

A small coloured square, one patch large and on the patch grid, is painted at a random
position onto the training photos of one class; a linear head is trained on the backbone's
cached features (notebook 03's recipe). If the head learns "square → that class", its
decisions on photos of *other* classes carrying the square are made by the square, so an
explanation of that decision should put its mass on the square's patch. A control head,
trained on the same photos without the square, and a random map (expected share 1/N) say
what a score means. Works for every supported backbone (the feature is the head's input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import channel_stats, check_images, check_labels, check_positive_int
from ..explain import ExplainFn
from ..explain.families import describe_model, head_of, set_head
from ..imaging import IMAGENET_MEAN, IMAGENET_STD
from ..runtime import SEED, eval_mode
from ._common import explain_maps
from .localisation import mass_on_mask

#: Colour of the square in pixel space [0, 1]: magenta, rare in food photos.
SQUARE_COLOUR = (1.0, 0.0, 1.0)


def random_tokens(n: int, grid: tuple[int, int], seed: int = SEED) -> Tensor:
    """(n,) token indices drawn uniformly from the h×w grid (a CPU generator seeded ``seed``)."""
    return torch.randint(grid[0] * grid[1], (n,), generator=torch.Generator().manual_seed(seed))


def square_masks(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B,) token indices → (B, h, w) bool masks, True on each image's square."""
    m = torch.zeros(tokens.numel(), grid[0] * grid[1], dtype=torch.bool)
    m[torch.arange(tokens.numel()), tokens.cpu()] = True
    return m.view(-1, *grid)


def paint_square(images: Tensor, tokens: Tensor, grid: tuple[int, int],
                 colour: Sequence[float] = SQUARE_COLOUR, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """A copy of ``images`` (B, C, H, W), normalised with mean/std, with the patch of
    ``tokens[b]`` filled with ``colour`` (pixel space, converted as ``(colour - mean) / std``)."""
    images = check_images(images, finite=True)
    C, H, W = images.shape[1:]
    value = ((channel_stats(colour, C, "colour", images) - channel_stats(mean, C, "mean", images))
             / channel_stats(std, C, "std", images))                            # (1, C, 1, 1)
    ph, pw = H // grid[0], W // grid[1]
    pix = square_masks(tokens, grid).repeat_interleave(ph, 1).repeat_interleave(pw, 2)
    return torch.where(pix.unsqueeze(1).to(images.device), value, images)


def head_features(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    """(B, D) inputs of the model's classification head (the class-token feature), any family."""
    seen: list[Tensor] = []
    handle = head_of(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0].float()))
    try:
        with eval_mode(model), torch.inference_mode():
            for i in range(0, images.shape[0], batch_size):
                model(images[i:i + batch_size])
    finally:
        handle.remove()
    return torch.cat(seen).clone()


@dataclass
class Shortcut:
    """What :func:`plant_shortcut` trained and measured.

    Attributes:
        shortcut_class: the class whose training photos carried the square.
        heads: ``"shortcut"`` (trained with the square) and ``"control"`` (without).
        accuracy: head → test accuracy on the clean photos.
        square_rate: head → share of the other classes' test photos, square painted, that
            the head calls ``shortcut_class`` (the square's pull; compare the two heads).
        square_images: (M, C, H, W) those photos with the square; square_tokens: (M,).
        grid: the patch grid.
    """

    shortcut_class: int
    heads: dict[str, nn.Module]
    accuracy: dict[str, float]
    square_rate: dict[str, float]
    square_images: Tensor
    square_tokens: Tensor
    grid: tuple[int, int]


def plant_shortcut(model: nn.Module, train_images: Tensor, train_labels: Tensor, test_images: Tensor,
                   test_labels: Tensor, *, shortcut_class: int = 0, colour: Sequence[float] = SQUARE_COLOUR,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   epochs: int = 30, lr: float = 1e-2, seed: int = SEED, batch_size: int = 32) -> Shortcut:
    """Paint the square on ``shortcut_class``'s training photos, train the shortcut and the
    control head on cached features, and measure how much the square pulls decisions.

    Args:
        model: a supported ViT (its head is not changed); images normalised with mean/std.
        train_images, train_labels, test_images, test_labels: (n, C, H, W) and (n,).
        shortcut_class: the class that gets the square. colour: the square's colour in [0, 1].
        epochs, lr, seed: the head recipe (:func:`vit_course.pretrained.train_head`).

    Returns:
        :class:`Shortcut`.
    """
    from ..pretrained import train_head            # pretrained imports the explain stack

    info = describe_model(model)
    grid = info.grid(*train_images.shape[-2:])
    check_positive_int(epochs, "epochs")
    train_labels = check_labels(train_labels, train_images.shape[0], name="train_labels")
    test_labels = check_labels(test_labels, test_images.shape[0], name="test_labels")
    K = int(max(train_labels.max(), test_labels.max())) + 1
    if not 0 <= shortcut_class < K:
        raise ValueError(f"shortcut_class must be one of the classes 0..{K - 1}, got {shortcut_class}.")
    paint = lambda x, t: paint_square(x, t, grid, colour, mean, std)   # noqa: E731
    on = train_labels == shortcut_class
    marked = train_images.clone()
    marked[on] = paint(train_images[on], random_tokens(int(on.sum()), grid, seed))
    others = (test_labels != shortcut_class).nonzero().flatten().to(test_images.device)
    tokens = random_tokens(others.numel(), grid, seed + 1)
    square_images = paint(test_images[others], tokens)
    test_f, square_f = head_features(model, test_images, batch_size), head_features(model, square_images, batch_size)
    out = Shortcut(shortcut_class, {}, {}, {}, square_images, tokens, grid)
    for name, x in (("shortcut", marked), ("control", train_images)):
        head, _ = train_head(head_features(model, x, batch_size), train_labels.to(test_f.device), num_classes=K,
                             epochs=epochs, lr=lr, seed=seed, device=test_f.device, progress=False)
        head = head.eval()
        with torch.no_grad():
            out.accuracy[name] = (head(test_f).argmax(1) == test_labels.to(test_f.device)).double().mean().item()
            out.square_rate[name] = (head(square_f).argmax(1) == shortcut_class).double().mean().item()
        out.heads[name] = head
    return out


def shortcut_scores(model: nn.Module, shortcut: Shortcut, explainers: Mapping[str, ExplainFn],
                    batch_size: int = 8) -> dict[str, dict[str, Tensor]]:
    """Each method's share of positive mass on the square's patch, per head.

    The square photos are explained for ``shortcut_class`` with ``model`` carrying each head
    in turn (its own head is put back afterwards). A map that covers only the square scores
    1; a uniform map 1/N.

    Returns:
        ``scores[head][method]`` = (M,) values in [0, 1] (:func:`mass_on_mask` on the token mask).
    """
    old = head_of(model)
    masks = square_masks(shortcut.square_tokens, shortcut.grid)
    x = shortcut.square_images
    target = torch.full((x.shape[0],), shortcut.shortcut_class, dtype=torch.long, device=x.device)
    out: dict[str, dict[str, Tensor]] = {}
    try:
        for name, head in shortcut.heads.items():
            set_head(model, head)
            out[name] = {m: mass_on_mask(torch.cat([explain_maps(fn, model, x[i:i + batch_size],
                                                                 target[i:i + batch_size]).cpu()
                                                    for i in range(0, x.shape[0], batch_size)]), masks)
                         for m, fn in explainers.items()}
    finally:
        set_head(model, old)
    return out
