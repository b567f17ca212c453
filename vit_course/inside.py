"""What a ViT learned, read from inside it (notebook 07).

- :func:`activation_maximisation`: an input optimised to drive a class logit, an MLP neuron
  or one head's output up, with the regularisers that make it readable (L2, total
  variation, jitter, a lower-resolution image upsampled).
- :func:`mean_attention_distance`: per layer and head, how far (in pixels) each patch looks
  (Dosovitskiy et al. 2021, Fig. 7 right).
- :func:`token_norms`: the norm of every token after every block, the high-norm outliers of
  Darcet et al. 2023 ("Vision Transformers Need Registers"), the attention they receive and
  rollout with their columns removed.
- :func:`logit_lens`: every block's residual stream read by the final norm and head, and the
  direct logit attribution (DLA) of the embeddings, each attention and MLP output and each
  head, with the final LayerNorm's scale frozen.

One forward pass, :func:`record_inside`, records what the last three need (an
:class:`InsideCapture`); each also takes ``capture=`` to reuse one (the explorer does).
Every function leaves the model as it found it: training flags, ``requires_grad``, hooks and
the attention-recording switches of :mod:`vit_course.explain.families` are restored.

Shapes: B batch, C channels, H×W pixels, h×w patch grid, N = h·w, P prefix tokens,
T = P + N, D width, L layers, K classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checks import check_choice, check_int, check_nonnegative_int, check_positive_int, check_targets
from .explain.capture import prepare_images, require_autograd, require_finite
from .explain.families import (ModelInfo, block_parts, blocks_of, describe_model, family_of,
                               logits_of, model_device_dtype, part, readout, unwrap)
from .explain.rollout import cls_row_to_grid, rollout
from .runtime import SEED


# ----------------------------------------------------------------------------- recording
@dataclass
class InsideCapture:
    """What one forward pass leaves for :func:`token_norms` and :func:`logit_lens`.

    Attributes:
        logits: (B, K). attentions: L × (B, heads, T, T).
        states: L+1 × (B, T, D): the residual stream entering block 0, then after each block.
        mids: L × (B, T, D): the stream after block l's attention (what its MLP's norm reads).
        normed: L × (B, T, D): block l's first LayerNorm output (the heads' values come from it).
        info: the model's description. grid: (h, w). model_id: ``id`` of its model.
    """

    logits: Tensor
    attentions: list[Tensor]
    states: list[Tensor]
    mids: list[Tensor]
    normed: list[Tensor]
    info: ModelInfo
    grid: tuple[int, int]
    model_id: int


def _first(x: object) -> Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def _recording(model: nn.Module, attention: bool = True) -> Iterator[dict[str, list[Tensor]]]:
    """Eval mode, frozen parameters and hooks for one or more forward passes; all undone."""
    store: dict[str, list[Tensor]] = {k: [] for k in ("attn", "states", "mids", "normed",
                                                      "hidden")}
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    undo: list = []
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        if attention:
            undo += family_of(model).record(model, store["attn"])
        blocks = blocks_of(model)
        undo.append(blocks[0].register_forward_pre_hook(
            lambda _m, a, kw: store["states"].append(a[0] if a else kw["hidden_states"]),
            with_kwargs=True).remove)
        for i, blk in enumerate(blocks):
            bp = block_parts(model, i)
            hooks = [blk.register_forward_hook(lambda _m, _i, o: store["states"].append(_first(o))),
                     bp.norm2.register_forward_pre_hook(lambda _m, a: store["mids"].append(a[0])),
                     bp.norm1.register_forward_hook(lambda _m, _i, o: store["normed"].append(o))]
            if bp.fc2 is not None:
                hooks.append(bp.fc2.register_forward_pre_hook(
                    lambda _m, a: store["hidden"].append(a[0])))
            undo += [h.remove for h in hooks]
        yield store
    finally:
        while undo:
            undo.pop()()
        for m, t in flags:
            m.training = t
        for p, g in grads:
            p.requires_grad_(g)


def record_inside(model: nn.Module, images: Tensor) -> InsideCapture:
    """One forward pass of ``images`` (B, C, H, W) recording attention and the residual stream."""
    info, x = prepare_images(model, images)
    model = unwrap(model)
    with _recording(model) as st, torch.no_grad():
        logits = require_finite(family_of(model).readout(model, _forward_states(model, x, st)),
                                "the logits")
    L = info.num_layers
    if not (len(st["attn"]) == len(st["mids"]) == len(st["normed"]) == L
            and len(st["states"]) == L + 1):
        raise RuntimeError(f"recorded {len(st['states'])} states for {L} blocks of "
                           f"{type(model).__name__}; a block ran twice or not at all")
    return InsideCapture(logits, list(st["attn"]), list(st["states"]), list(st["mids"]),
                         list(st["normed"]), info, info.grid(*x.shape[-2:]), id(model))


def _forward_states(model: nn.Module, x: Tensor, st: dict[str, list[Tensor]]) -> Tensor:
    """Run the model; return the last block's output (its logits follow by :func:`readout`)."""
    for v in st.values():
        v.clear()
    model(x)
    return st["states"][-1]


def _capture_for(model: nn.Module, images: Tensor | None, capture: InsideCapture | None
                 ) -> InsideCapture:
    if capture is None:
        return record_inside(model, images)
    if not isinstance(capture, InsideCapture) or capture.model_id != id(unwrap(model)):
        raise ValueError("capture must be an InsideCapture from record_inside(model, images) "
                         "of this same model")
    return capture


def head_outputs(model: nn.Module, cap_or_normed: InsideCapture | Tensor, layer: int,
                 attention: Tensor | None = None) -> Tensor:
    """What each head of block ``layer`` writes into the residual stream: (B, heads, T, D).

    Head h's output is A_h V_h W_o,hᵀ (its slice of the output projection); the heads plus the
    projection's bias sum to the block's attention output (``mids[l] - states[l]``).
    """
    if isinstance(cap_or_normed, InsideCapture):
        normed, attention = cap_or_normed.normed[layer], cap_or_normed.attentions[layer]
    else:
        normed = cap_or_normed
    bp = block_parts(model, layer)
    B, T, D = normed.shape
    H = attention.shape[1]
    qkv = F.linear(normed, bp.qkv_weight, bp.qkv_bias).view(B, T, 3, H, D // H)
    z = attention @ qkv[:, :, 2].transpose(1, 2)                      # (B, H, T, D/H)
    w_o = bp.proj.weight.view(D, H, D // H).permute(1, 2, 0)          # (H, D/H, D)
    return torch.einsum("bhtk,hkd->bhtd", z, w_o)


# ----------------------------------------------------------------------------- distance
def attention_distance(attentions: Sequence[Tensor], grid: tuple[int, int],
                       patch_size: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Attention-weighted pixel distance between query and key patches: (B, L, heads).

    For every patch query, Σ_k a_qk ‖p_q − p_k‖ over patch keys, with a_qk its attention
    renormalised over the patch keys (prefix tokens have no place in the image), then the
    mean over queries. Distances are between patch centres, in pixels.
    """
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h) * float(patch_size[0]),
                            torch.arange(w) * float(patch_size[1]), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], -1)               # (N, 2)
    dist = torch.cdist(pos, pos)                                      # (N, N)
    P = num_prefix_tokens
    out = []
    for a in attentions:
        a = a[..., P:, P:].double()                                   # (B, heads, N, N)
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
        out.append((a * dist.to(a)).sum(-1).mean(-1))                 # (B, heads)
    return torch.stack(out, 1).float()


def mean_attention_distance(model: nn.Module, images: Tensor, *,
                            capture: InsideCapture | None = None) -> Tensor:
    """Mean attention distance in pixels per layer and head, over ``images``: (L, heads)."""
    cap = _capture_for(model, images, capture)
    return attention_distance(cap.attentions, cap.grid, cap.info.patch_size,
                              cap.info.num_prefix_tokens).mean(0)


# ----------------------------------------------------------------------------- token norms
@dataclass
class TokenNorms:
    """Token norms and their high-norm outliers.

    Attributes:
        norms: (B, L, T) ‖x‖ of every token after every block.
        ratio: (B, L, N) patch-token norm / the median patch-token norm of its image and layer.
        outliers: (B, N) patches whose ratio exceeds ``threshold`` after any block.
        attention_received: (B, L) share of the class token's attention (mean over heads)
            that lands on the outlier patches (0 without outliers).
        rollout, rollout_without: (B, h, w) rollout, and rollout with the outliers' attention
            columns set to 0 in every layer before the rollout.
    """

    norms: Tensor
    ratio: Tensor
    outliers: Tensor
    attention_received: Tensor
    rollout: Tensor
    rollout_without: Tensor


def token_norms(model: nn.Module, images: Tensor | None = None, *, threshold: float = 4.0,
                capture: InsideCapture | None = None) -> TokenNorms:
    """Per-block token norms; outliers are patches ``threshold`` × above the median norm."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 1:
        raise ValueError(f"threshold must be a number > 1 (times the median norm), got "
                         f"{threshold!r}; Darcet et al.'s outliers sit about 10× higher")
    cap = _capture_for(model, images, capture)
    P = cap.info.num_prefix_tokens
    norms = torch.stack([s.norm(dim=-1) for s in cap.states[1:]], 1)   # (B, L, T)
    patch = norms[..., P:]
    ratio = patch / patch.median(-1, keepdim=True).values.clamp_min(1e-12)
    outliers = (ratio > threshold).any(1)                               # (B, N)
    cls_attn = torch.stack([a[:, :, 0, P:].mean(1) for a in cap.attentions], 1)   # (B, L, N)
    received = (cls_attn * outliers[:, None]).sum(-1)
    keep = torch.cat([torch.ones_like(outliers[:, :P]), ~outliers], 1).to(norms)  # (B, T)
    without = [a * keep[:, None, None, :] for a in cap.attentions]
    maps = [cls_row_to_grid(rollout(att), cap.grid, P) for att in (cap.attentions, without)]
    return TokenNorms(norms, ratio, outliers, received, *maps)


# ----------------------------------------------------------------------------- logit lens
@dataclass
class LogitLens:
    """Per-layer readout and direct logit attribution (DLA) for each image's target.

    Attributes:
        logits, probs: (B, L, K) the final norm and head applied to the stream after block l.
        targets: (B,). logit: (B,) the model's target logit.
        embed: (B,) DLA of the embeddings (patches + class token + positions).
        attn, mlp: (B, L) DLA of block l's attention and MLP outputs.
        heads: (B, L, heads) DLA of each head (they sum to ``attn`` minus ``attn_bias``).
        attn_bias: (B, L) DLA of each output projection's bias.
        constant: (B,) what the frozen readout gives a zero stream (norm shift, head bias).
        ablation: (B, 1+2L) the true logit change when one part (embed, attn_0, mlp_0, ...) is
            removed from the final stream and the LayerNorm recomputed: what DLA approximates.
    """

    logits: Tensor
    probs: Tensor
    targets: Tensor
    logit: Tensor
    embed: Tensor
    attn: Tensor
    mlp: Tensor
    heads: Tensor
    attn_bias: Tensor
    constant: Tensor
    ablation: Tensor

    @property
    def parts(self) -> Tensor:
        """(B, 1+2L) DLA in the order of :attr:`ablation`: embed, attn_0, mlp_0, attn_1, ..."""
        return torch.cat([self.embed[:, None],
                          torch.stack([self.attn, self.mlp], -1).flatten(1)], 1)


def _frozen_readout(model: nn.Module, tokens: Tensor, sigma: Tensor) -> Tensor:
    """:func:`readout` with the final LayerNorm's scale σ fixed: affine in ``tokens``."""
    norm = part(model, "norm")
    if not isinstance(norm, nn.LayerNorm):
        raise TypeError(f"direct logit attribution needs a final nn.LayerNorm, got {norm!r}")

    def frozen(_m: nn.Module, inputs: tuple, _out: Tensor) -> Tensor:
        x = inputs[0]
        return (x - x.mean(-1, keepdim=True)) / sigma * norm.weight + norm.bias

    handle = norm.register_forward_hook(frozen)
    try:
        return readout(model, tokens)
    finally:
        handle.remove()


def layer_logits(model: nn.Module, capture: InsideCapture) -> Tensor:
    """The logit lens alone: the final norm and head on the stream after each block,
    (B, L, K); no forward pass (the explorer's per-layer class probabilities)."""
    cap = _capture_for(model, None, capture)
    with torch.no_grad():
        return torch.stack([readout(model, s) for s in cap.states[1:]], 1)


def logit_lens(model: nn.Module, images: Tensor | None = None, *, target: object = None,
               capture: InsideCapture | None = None) -> LogitLens:
    """Read the class decision off the residual stream, block by block.

    The stream after the last block is x_L = x_0 + Σ_l (attn_l + mlp_l). With the final
    LayerNorm's σ frozen at its value on x_L (the standard approximation), norm and head are
    affine, so the target logit is exactly ``constant + embed + Σ attn + Σ mlp``; each part's
    share is J·part with J = ∂logit/∂x_L. It ignores that removing a part would change σ:
    :attr:`LogitLens.ablation` measures that error against the true logit.
    """
    cap = _capture_for(model, images, capture)
    model = unwrap(model)
    B, L = cap.logits.shape[0], cap.info.num_layers
    targets = check_targets(target, B, cap.logits.shape[1])
    targets = cap.logits.argmax(1) if targets is None else targets.to(cap.logits.device)
    require_autograd("logit_lens")
    pick = torch.arange(B)
    lens = layer_logits(model, cap)
    x_L, norm = cap.states[-1], part(model, "norm")
    with _recording(model, attention=False), torch.enable_grad():
        var = x_L.var(-1, unbiased=False, keepdim=True)
        sigma = (var + norm.eps).sqrt()
        x = x_L.detach().requires_grad_(True)
        J, = torch.autograd.grad(_frozen_readout(model, x, sigma)[pick, targets].sum(), x)
        constant = _frozen_readout(model, torch.zeros_like(x_L), sigma)[pick, targets].detach()
        attn = [cap.mids[i] - cap.states[i] for i in range(L)]
        mlp = [cap.states[i + 1] - cap.mids[i] for i in range(L)]
        parts = torch.stack([cap.states[0]] + [p for pair in zip(attn, mlp) for p in pair], 1)
        removed = readout(model, (x_L[:, None] - parts).flatten(0, 1)).view(B, 1 + 2 * L, -1)
    with torch.no_grad():
        def dot(p: Tensor) -> Tensor:                                 # J·part, per image
            return (J * p).sum((-2, -1))

        heads = torch.stack([(J[:, None] * head_outputs(model, cap, i)).sum((-2, -1))
                             for i in range(L)], 1)
        bias = [block_parts(model, i).proj.bias for i in range(L)]
        attn_bias = torch.stack([J.sum(1) @ b if b is not None else J.new_zeros(B)
                                 for b in bias], 1)
        logit = cap.logits[pick, targets]
        index = targets.view(B, 1, 1).expand(B, 1 + 2 * L, 1)
        ablation = logit[:, None] - removed.gather(2, index)[..., 0]
        return LogitLens(lens, lens.softmax(-1), targets, logit, dot(cap.states[0]),
                         torch.stack([dot(a) for a in attn], 1),
                         torch.stack([dot(m) for m in mlp], 1), heads, attn_bias, constant,
                         ablation)


# ----------------------------------------------------------------------------- activation maximisation
#: Regularisers that make the notebook's visualisations readable (tuned on the synthetic model).
READABLE = dict(l2=0.05, tv=0.3, jitter=2, scale=2)


@dataclass
class Visualisation:
    """Images optimised by :func:`activation_maximisation`.

    Attributes:
        images: (B, C, H, W) in [0, 1], before any ``mean``/``std`` normalisation.
        objective: (steps, B) each image's objective at every step (on its jittered input).
        final: (B,) the objective on the returned images (no jitter).
        targets: the B target specs, as normalised: ``("class", c)``, ``("neuron", layer,
            unit)`` or ``("head", layer, head, token)``.
    """

    images: Tensor
    objective: Tensor
    final: Tensor
    targets: list[tuple]


def _target_specs(model: nn.Module, info: ModelInfo, target: object) -> list[tuple]:
    specs = [target] if isinstance(target, (int, tuple)) else list(target)
    out = []
    for spec in specs:
        spec = ("class", spec) if isinstance(spec, int) and not isinstance(spec, bool) else spec
        kind = spec[0] if isinstance(spec, tuple) and spec else None
        sizes = {"class": (info.num_classes or 0,),
                 "neuron": (info.num_layers, None), "head": (info.num_layers, info.num_heads, None)}
        if kind not in sizes or len(spec) != len(sizes[kind]) + 1:
            raise ValueError(f"target {spec!r} is not one of: a class index c, ('class', c), "
                             "('neuron', layer, unit), ('head', layer, head, token)")
        if kind == "neuron":
            sizes[kind] = (info.num_layers, block_parts(model, spec[1] % info.num_layers)
                           .fc2.in_features)
        for value, size, name in zip(spec[1:], sizes[kind], ("index", "unit", "token")):
            check_int(value, f"{kind} target {name}", minimum=0)
            if size is not None and value >= size:
                raise ValueError(f"target {spec!r}: {value} is out of range (< {size})")
        out.append(spec)
    if not out:
        raise ValueError("target is empty; give a class index, a unit spec or a list of them")
    return out


def _objective(model: nn.Module, spec: tuple, b: int, logits: Tensor,
               st: dict[str, list[Tensor]]) -> Tensor:
    if spec[0] == "class":
        return logits[b, spec[1]]
    if spec[0] == "neuron":                     # mean over tokens of one MLP hidden unit
        return st["hidden"][spec[1]][b, :, spec[2]].mean()
    _, layer, head, token = spec                # the norm of one head's output on a token
    out = head_outputs(model, st["normed"][layer][b:b + 1], layer, st["attn"][layer][b:b + 1])
    return out[0, head, token].norm()


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels, per image: (B, C, H, W) → (B,)."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean((1, 2, 3))
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean((1, 2, 3))
    return dx + dy


def grid_artefact(images: Tensor, patch_size: int) -> Tensor:
    """Checkerboard measure: the share of each image's variance that repeats with the patch
    grid's period, (B, C, H, W) → (B,) in [0, 1].

    The mean patch (over all patch positions, its own mean removed) tiled over the image is
    the grid-periodic part; a photo has little of it, the patch-grid artefact a lot.
    """
    p = check_positive_int(patch_size, "patch_size")
    H, W = images.shape[-2:]
    tiles = images[..., :H // p * p, :W // p * p].unflatten(-1, (W // p, p)) \
        .unflatten(-3, (H // p, p))                                   # (B, C, h, p, w, p)
    tile = tiles.mean((2, 4), keepdim=True)
    periodic = (tile - tile.mean((3, 5), keepdim=True)).pow(2).mean((1, 3, 5)).flatten(1)
    total = (tiles - tiles.mean((2, 3, 4, 5), keepdim=True)).pow(2).mean((1, 2, 3, 4, 5))
    return periodic[:, 0] / total.clamp_min(1e-12)


def activation_maximisation(model: nn.Module, target: object, *, steps: int = 128,
                            lr: float = 0.1, l2: float = 0.0, tv: float = 0.0,
                            jitter: int = 0, scale: int = 1,
                            mean: Sequence[float] | None = None,
                            std: Sequence[float] | None = None,
                            image_size: int | tuple[int, int] | None = None,
                            precision: str = "float32", seed: int = SEED,
                            progress: bool = True) -> Visualisation:
    """Optimise input images to maximise ``target`` (Adam on the pixels' logits).

    The image is ``sigmoid(upsample(θ))`` with θ at 1/``scale`` of the resolution (bilinear
    upsampling: ``scale > 1`` removes the high frequencies the patch grid would otherwise
    turn into a checkerboard). Each step maximises
    ``objective(model(jitter(image))) − l2 · mean((image − ½)²) − tv · total_variation``;
    ``jitter`` rolls the image by up to that many pixels (a fresh shift per step).

    Args:
        target: a class index, a list of them (one image each, optimised together), or a
            spec ``("neuron", layer, unit)`` (MLP hidden unit, mean over tokens) or
            ``("head", layer, head, token)`` (norm of that head's output on that token).
        mean, std: the model's input normalisation (e.g. ImageNet's), applied to the image.
        image_size: for a model that accepts any size; otherwise the model's own.
        precision: ``"float32"`` or ``"bfloat16"`` (the model's passes under autocast: about
            3× faster for ViT-B/16 on a CPU with bfloat16 instructions, see docs/BENCHMARKS.md).
        seed: the start image and the jitter come from it: same seed, same images.

    Returns:
        a :class:`Visualisation`.
    """
    model = unwrap(model)
    info = describe_model(model)
    specs = _target_specs(model, info, target)
    bf16 = check_choice(precision, "precision", ("float32", "bfloat16")) == "bfloat16"
    steps, jitter, scale = (check_positive_int(steps, "steps"),
                            check_nonnegative_int(jitter, "jitter"),
                            check_positive_int(scale, "scale"))
    for value, name in ((lr, "lr"), (l2, "l2"), (tv, "tv")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                or value == float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    size = info.image_size or image_size
    if size is None:
        raise ValueError("this model accepts any image size; pass image_size=(H, W)")
    H, W = (size, size) if isinstance(size, int) else size
    require_autograd("activation_maximisation")
    device, dtype = model_device_dtype(model)
    g = torch.Generator().manual_seed(seed)
    B, C = len(specs), info.in_channels
    theta = (0.01 * torch.randn(B, C, -(-H // scale), -(-W // scale), generator=g)
             ).to(device, dtype).requires_grad_(True)
    shift = (torch.tensor(mean or [0.0] * C), torch.tensor(std or [1.0] * C))
    shift = [s.view(1, C, 1, 1).to(device, dtype) for s in shift]
    opt = torch.optim.Adam([theta], lr=lr)

    def image() -> Tensor:
        up = F.interpolate(theta, (H, W), mode="bilinear", align_corners=False)
        return torch.sigmoid(up)

    def objectives(x: Tensor, st: dict[str, list[Tensor]]) -> Tensor:
        for v in st.values():
            v.clear()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = logits_of(model, (x - shift[0]) / shift[1])
            obj = [_objective(model, s, b, logits, st) for b, s in enumerate(specs)]
        return torch.stack(obj).float()

    history = []
    with _recording(model, attention=any(s[0] == "head" for s in specs)) as st, \
            torch.enable_grad():
        for _ in tqdm(range(steps), desc="activation maximisation", disable=not progress,
                      leave=False):
            img = image()
            dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=g).tolist()
                      if jitter else (0, 0))
            obj = objectives(torch.roll(img, (dy, dx), (-2, -1)), st)
            loss = -obj.sum() + l2 * ((img - 0.5) ** 2).mean((1, 2, 3)).sum() \
                + tv * total_variation(img).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(obj.detach())
        with torch.no_grad():
            img = image()
            final = objectives(img, st)
    return Visualisation(img.detach(), require_finite(torch.stack(history), "the objective"),
                         final.detach(), specs)
