"""Token drop with many sequence lengths in one forward pass ("packing").

The rows of a token-drop curve keep different numbers of tokens, so
:class:`~vit_course.explain.families.TokenDrop` can only stack the rows that keep the same
number: one forward per kept count, each reading every weight of the model again. With one
or a few images per call those forwards carry a handful of rows, and reading the weights
costs more than the arithmetic (on the course's 2-core machine a bfloat16 ViT-B/16 forward of
one image over one token took about half as long as one over all 197).

Every part of a pre-norm block except the attention acts on each token alone, so the tokens
of all rows can go through the norms, projections and MLP as one (total tokens, D) matrix;
only the attention mixes tokens, and it runs row by row (rows of equal length together). The
result is the same function of the same tokens as the model's own forward on each shorter
sequence, with one pass over the weights for every ``batch_size`` rows. Models whose blocks
or pooling fall outside this plain scheme (timm layer scale, qk-norm, average pooling ...)
run the ordinary way, one kept count per forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..explain.families import (BlockParts, blocks_of, describe_model, family_of, logits_of,
                                nonplain_parts, readout, unwrap)


class _Stop(Exception):
    """Raised by the hook on block 0 once it has the embedded sequence."""


class PackedDrop:
    """Run rows that keep different patch tokens of the same images in one pass.

    Args:
        model: a supported ViT whose blocks are plain (see :func:`packable`).
        images: (B, C, H, W) the rows' images; embedded once (patch embedding, prefix
            tokens and position embeddings, as the model's first block receives them).

    Example::

        packed = PackedDrop(model, images)
        logits = packed.logits(rows_image, [keep_0, keep_1])   # (2, K); keep_r: (k_r,) indices
    """

    def __init__(self, model: nn.Module, images: Tensor) -> None:
        self.model = unwrap(model)
        info = describe_model(self.model)
        self.heads, self.prefix = info.num_heads, info.num_prefix_tokens
        fam = family_of(self.model)
        self.parts: list[BlockParts] = [fam.block(b) for b in blocks_of(self.model)]
        self.embedded = self._embed(images)                               # (B, P+N, D)

    def _embed(self, images: Tensor) -> Tensor:
        seen: list[Tensor] = []

        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = blocks_of(self.model)[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            logits_of(self.model, images)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen[0]

    def logits(self, image: Tensor, keep: Sequence[Tensor]) -> Tensor:
        """Logits (R, K) of R rows: row r is image ``image[r]`` with only the patch tokens
        ``keep[r]`` (k_r indices, row-major on the patch grid) after the prefix tokens."""
        P, e = self.prefix, self.embedded
        lengths = [P + len(k) for k in keep]
        x = torch.cat([torch.cat([e[b, :P], e[b, P + k.to(e.device)]])
                       for b, k in zip(image.tolist(), keep)])            # (sum lengths, D)
        runs, start = [], 0                                               # (first token, rows, length)
        for L in lengths:
            if runs and runs[-1][2] == L and runs[-1][0] + runs[-1][1] * L == start:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, L)
            else:
                runs.append((start, 1, L))
            start += L
        for p in self.parts:
            x = self._block(p, x, runs)
        first = torch.tensor([0] + lengths[:-1], device=x.device).cumsum(0)
        rows = first.view(-1, 1) + torch.arange(P, device=x.device)        # (R, P) token ids
        return readout(self.model, x[rows])

    def _block(self, p: BlockParts, x: Tensor, runs: list[tuple[int, int, int]]) -> Tensor:
        T, D = x.shape
        H = self.heads
        qkv = F.linear(p.norm1(x), p.qkv_weight, p.qkv_bias)              # (T, 3D)
        ctx = qkv.new_empty(T, D)
        for s, n, L in runs:                                              # n rows of L tokens
            q, k, v = qkv[s:s + n * L].view(n, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
            ctx[s:s + n * L] = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n * L, D)
        x = x + p.proj(ctx)
        return x + p.fc2(p.act(p.fc1(p.norm2(x))))


def packable(model: nn.Module) -> bool:
    """Whether :class:`PackedDrop` computes this model's forward: plain pre-norm blocks
    (:func:`~vit_course.explain.families.nonplain_parts` finds nothing) and a head that reads
    the prefix tokens only (timm's ``global_pool="token"``; the other families always)."""
    model = unwrap(model)
    return not nonplain_parts(model) and getattr(model, "global_pool", "token") == "token"
