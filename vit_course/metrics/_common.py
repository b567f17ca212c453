"""Shared pieces of the metrics: token ranking, token→pixel masks, and the batched forward
engine that every perturbation metric runs on. (Argument checks live in
:mod:`vit_course.checks`, image helpers in :mod:`vit_course.imaging`.)

Letters: B images, C channels, H×W pixels, h×w patch grid, N = h·w tokens, p_h×p_w patch
(p_h = H / h), K classes, S steps of a curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checks import check_choice, check_maps, check_positive_int
from ..explain import ExplainFn
from ..explain.families import TokenDrop, logits_of
from ..runtime import eval_mode
from .packing import PackedDrop, packable


def explain_maps(fn: ExplainFn, model: nn.Module, images: Tensor, target: Tensor,
                 name: str = "explain_fn output") -> Tensor:
    """Call an explainer and check its (detached) maps against ``images``.

    ``fn`` is a :data:`vit_course.explain.ExplainFn`, the one explainer shape of the
    metrics: ``fn(model, images, target=t) -> (B, h, w)`` with ``t`` a (B,) long tensor
    passed by keyword, e.g. ``functools.partial(explain, method="rollout")``,
    ``functools.partial(explain, method="random", seed=0)`` or
    ``lambda model, images, target: explain(model, images, "gradcam", target=target)``.
    """
    return check_maps(fn(model, images, target=target), images, name=name).detach()


# ----------------------------------------------------------------------------- ranking
def rank_tokens(maps: Tensor, descending: bool = True) -> Tensor:
    """Token order by relevance: (B, h, w) → (B, N) token indices, ties broken by token index.

    ``descending=True`` gives most relevant first; ``False`` least relevant first. Both use a
    stable sort, so among equal values the token with the lower (row-major) index comes first.
    """
    flat = maps.reshape(maps.shape[0], -1)
    return torch.sort(flat, dim=1, descending=descending, stable=True).indices


def token_counts(steps: int, num_tokens: int) -> list[int]:
    """Tokens perturbed at step k = 0..steps: ``ceil(k·N/steps)`` (exact integer arithmetic)."""
    return [(k * num_tokens + steps - 1) // steps for k in range(steps + 1)]


def fraction_counts(fractions: Sequence[float], num_tokens: int) -> list[int]:
    """Tokens perturbed for each fraction f: ``floor(f·N)``.

    Chefer et al.'s script (``baselines/ViT/pertubation_eval_from_hdf5.py`` in
    hila-chefer/Transformer-Explainability) removes ``int(base_size * step)`` pixels with
    ``base_size = 224 * 224``; here the same rounding on N tokens.

    A tiny epsilon guards against 0.3·10 = 2.9999999999999996 style rounding.
    """
    return [int(f * num_tokens + 1e-9) for f in fractions]


def prefix_masks(order: Tensor, counts: Sequence[int]) -> Tensor:
    """Masks of the first ``counts[s]`` tokens of each order: (B, N), S counts → (B, S, N) bool."""
    B, N = order.shape
    position = torch.empty_like(order)                      # position[b, token] = rank of token
    position.scatter_(1, order, torch.arange(N, device=order.device).expand(B, N))
    c = torch.as_tensor(list(counts), device=order.device).view(1, -1, 1)
    return position.unsqueeze(1) < c                        # (B, S, N)


def grid_to_pixels(mask: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Token masks (M, N) → pixel masks (M, 1, H, W) (each token covers its p_h×p_w block)."""
    h, w = grid
    H, W = size
    m = mask.reshape(-1, 1, h, w)
    return m.repeat_interleave(H // h, dim=2).repeat_interleave(W // w, dim=3)


# ----------------------------------------------------------------------------- forward engine
#: Arithmetic of the metrics' forward passes. ``"float32"`` (default) gives the same numbers
#: as a plain loop over the model. ``"bfloat16"`` runs each forward under
#: ``torch.autocast(dtype=torch.bfloat16)``: much faster on CPUs with bfloat16 instructions
#: (AVX512-BF16 or AMX) and on recent GPUs, possibly slower on CPUs without them, and the
#: numbers are no longer exactly those of float32 (docs/BENCHMARKS.md measures both).
#: Explainers are not affected: their maps are computed as before.
PRECISIONS = ("float32", "bfloat16")


def arithmetic(device: torch.device, precision: str) -> AbstractContextManager:
    """The context a forward runs in for ``precision``: nothing, or bfloat16 autocast."""
    if precision == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def forward_logits(model: nn.Module, build: Callable[[Tensor], Tensor], n: int, batch_size: int,
                   progress: bool = False, desc: str = "forward", precision: str = "float32") -> Tensor:
    """Logits of ``n`` images produced on demand, ``batch_size`` per forward pass.

    Args:
        model: ``model(images) -> logits``; run in eval mode under ``torch.inference_mode``.
        build: ``build(rows) -> images (len(rows), C, H, W)`` for a 1-D long tensor of row ids.
        n: number of rows.
        batch_size: images per forward pass.
        progress: show a tqdm bar over the forward passes.
        precision: one of :data:`PRECISIONS`. Default: ``"float32"``.

    Returns:
        (n, K) float32 logits, on the device of the built images.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    precision = check_choice(precision, "precision", PRECISIONS)
    chunks = []
    with eval_mode(model), torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress or n == 0,
                          leave=False):
            rows = torch.arange(start, min(start + batch_size, n))
            x = build(rows)
            with arithmetic(x.device, precision):
                logits = logits_of(model, x)        # Hugging Face models return an object
            chunks.append(logits.float())
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def batch_logits(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """Logits of a batch of images, ``batch_size`` per forward pass (eval mode, no grad)."""
    return forward_logits(model, lambda r: images[r.to(images.device)], images.shape[0], batch_size)


class LogitCache:
    """Logits of whole batches that several metrics share (the clean images, a full baseline).

    ``run_suite`` passes one cache to every metric, so the unperturbed images and the fully
    perturbed ones are run once for all explainers instead of once per curve. Under token drop
    it also keeps the logits of every (image, set of kept tokens) it has run, so a sequence
    that two curves share runs once: insertion keeping the top k tokens and Chefer's negative
    test removing the other N - k are the same forward. The cache also holds the
    ``precision`` of every forward that uses it (see :data:`PRECISIONS`).
    """

    def __init__(self, precision: str = "float32") -> None:
        self._store: dict[str, Tensor] = {}
        self.dropped: dict[tuple[int, bytes], Tensor] = {}   # (image, kept tokens) -> (K,) logits
        self.forwards = 0       # images run through the model via this cache (for reports)
        self.precision = check_choice(precision, "precision", PRECISIONS)

    def get(self, key: str, model: nn.Module, images: Callable[[], Tensor], batch_size: int,
            progress: bool = False) -> Tensor:
        if key not in self._store:
            x = images()
            self._store[key] = forward_logits(model, lambda r: x[r.to(x.device)], x.shape[0],
                                              batch_size, progress, desc=key, precision=self.precision)
            self.forwards += x.shape[0]
        return self._store[key]


def perturbed_logits(model: nn.Module, src_off: Tensor, src_on: Tensor, masks: Tensor,
                     grid: tuple[int, int], *, batch_size: int, progress: bool, desc: str,
                     cache: LogitCache, key_off: str, key_on: str,
                     impute: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Logits of every (image, step) perturbation, many perturbed images per forward pass.

    The perturbed image for image b and step s takes pixels from ``src_on[b]`` inside the
    tokens where ``masks[b, s]`` is True and from ``src_off[b]`` elsewhere. Rows whose mask is
    empty (the image is exactly ``src_off[b]``) or full (exactly ``src_on[b]``) are not run
    again: they come from ``cache`` under ``key_off`` / ``key_on``. All remaining rows are
    stacked into forward passes of ``batch_size``.

    Args:
        src_off, src_on: (B, C, H, W) image sources.
        masks: (B, S, N) bool token masks.
        grid: (h, w) with h·w = N.
        impute: optional ``impute(images, pixel_masks, rows) -> images`` applied to each chunk
            after composition (used by ROAD); ``rows`` are the flat row ids ``b·S + s``.

    Returns:
        (B, S, K) logits.
    """
    B, S, N = masks.shape
    H, W = src_off.shape[-2:]
    empty = ~masks.any(dim=2)                               # (B, S)
    full = masks.all(dim=2)
    todo = (~empty & ~full).flatten().nonzero().flatten()   # flat rows b*S + s
    # rows that are exactly one source: (rows, cache key, source image) per source
    whole = {"off": (empty, key_off, src_off), "on": (full, key_on, src_on)}
    parts = {side: cache.get(key, model, lambda src=src: src, batch_size)
             for side, (sel, key, src) in whole.items() if sel.any()}
    flat_masks = masks.reshape(B * S, N)

    def build(rows: Tensor) -> Tensor:
        flat = todo[rows]
        b = torch.div(flat, S, rounding_mode="floor")
        pix = grid_to_pixels(flat_masks[flat], grid, (H, W)).to(src_off.device)
        x = torch.where(pix, src_on[b.to(src_on.device)], src_off[b.to(src_off.device)])
        return impute(x, pix, flat) if impute is not None else x

    computed = forward_logits(model, build, todo.numel(), batch_size, progress, desc,
                              precision=cache.precision)
    cache.forwards += todo.numel()
    K = next(iter(parts.values())).shape[1] if parts else computed.shape[1]
    out = torch.empty(B * S, K, device=computed.device if todo.numel() else
                      next(iter(parts.values())).device)
    if todo.numel():
        out[todo.to(out.device)] = computed
    for side, logits in parts.items():
        rows = whole[side][0].flatten().nonzero().flatten()
        out[rows.to(out.device)] = logits.to(out.device)[torch.div(rows, S, rounding_mode="floor")]
    return out.view(B, S, K)


def dropped_logits(model: nn.Module, images: Tensor, keep: Tensor, *, batch_size: int, progress: bool,
                   desc: str, cache: LogitCache) -> Tensor:
    """Logits of every (image, step) with only the patch tokens in ``keep`` in the sequence.

    Token drop (:class:`vit_course.explain.families.TokenDrop`): the class token (and any other
    prefix token) and the kept patch tokens, with their position embeddings, are all the
    model sees; the others are absent, no pixel is invented for them. Rows that keep every
    token are the clean logits from ``cache``; rows whose (image, kept set) the cache has
    already run (in this call or an earlier one) are taken from it. The other rows run
    ``batch_size`` at a time: rows of any lengths together where the model's blocks are plain
    (:mod:`vit_course.metrics.packing`), otherwise the rows that keep the same number of
    tokens together.

    Args:
        images: (B, C, H, W), the images of ``cache``. keep: (B, S, N) bool, True = the token stays.

    Returns:
        (B, S, K) logits.
    """
    B, S, N = keep.shape
    flat = keep.reshape(B * S, N)
    n = flat.sum(dim=1).tolist()
    packed = np.packbits(flat.cpu().numpy(), axis=1)
    keys = [(r // S, packed[r].tobytes()) for r in range(B * S)]
    first: dict[tuple[int, bytes], int] = {}
    for r, key in enumerate(keys):
        if n[r] < N and key not in cache.dropped and key not in first:
            first[key] = r
    todo = sorted(first.values(), key=lambda r: (-n[r], r))            # longest rows first
    if packable(model):
        groups = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        done = _packed_rows(model, images, flat, S, groups, progress, desc, cache.precision)
    else:
        groups = [[r for r in todo if n[r] == k] for k in sorted({n[r] for r in todo})]
        done = _rows_of_one_length(model, images, flat, S, groups, batch_size, progress, desc,
                                   cache.precision)
    for rows, logits in done:
        cache.forwards += len(rows)
        for r, row in zip(rows, logits):
            cache.dropped[keys[r]] = row
    clean = cache.get("clean", model, lambda: images, batch_size) if N in n else None
    return torch.stack([clean[r // S] if n[r] == N else cache.dropped[keys[r]]
                        for r in range(B * S)]).view(B, S, -1)


def _packed_rows(model: nn.Module, images: Tensor, flat: Tensor, S: int, groups: list[list[int]],
                 progress: bool, desc: str, precision: str) -> list[tuple[list[int], Tensor]]:
    """(rows, logits) per group of rows of any lengths, each group one packed pass."""
    out = []
    with eval_mode(model), torch.inference_mode(), arithmetic(images.device, precision):
        packed = PackedDrop(model, images)
        for rows in tqdm(groups, desc=desc, disable=not progress, leave=False):
            keep = [flat[r].nonzero().flatten() for r in rows]
            out.append((rows, packed.logits(torch.tensor(rows) // S, keep).float()))
    return out


def _rows_of_one_length(model: nn.Module, images: Tensor, flat: Tensor, S: int, groups: list[list[int]],
                        batch_size: int, progress: bool, desc: str,
                        precision: str) -> list[tuple[list[int], Tensor]]:
    """(rows, logits) per group of rows that keep the same number of tokens (TokenDrop)."""
    out = []
    with TokenDrop(model) as drop:
        for group in tqdm(groups, desc=desc, disable=not progress, leave=False):
            rows = torch.tensor(group)
            k = int(flat[group[0]].sum())
            idx = flat[rows].nonzero()[:, 1].reshape(rows.numel(), k).to(images.device)

            def build(r: Tensor, rows: Tensor = rows, idx: Tensor = idx) -> Tensor:
                drop.keep = idx[r.to(idx.device)]
                return images[(rows[r] // S).to(images.device)]

            out.append((group, forward_logits(model, build, rows.numel(), batch_size, precision=precision)))
    return out


def target_probability(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax probability of each image's target class: logits (B, S, K), target (B,) → (B, S)."""
    probs = logits.softmax(dim=-1)
    idx = target.to(probs.device).view(-1, 1, 1).expand(-1, probs.shape[1], 1)
    return probs.gather(2, idx).squeeze(2)


def as_generator(seed: int | torch.Generator | None, default: int) -> torch.Generator:
    """A CPU ``torch.Generator`` from a seed (int), an existing generator, or ``None`` (default seed)."""
    if isinstance(seed, torch.Generator):
        return seed
    seed = default if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}: {seed!r}.")
    return torch.Generator().manual_seed(seed)
