"""Benchmark: explanation speed on ViT-B/16 (issue 4's performance targets).

Three measurements on torchvision's ViT-B/16 architecture (224 px, 16 px patches, 12 layers,
12 heads, 3-class head). Weights are RANDOM (``vit_b_16(weights=None)`` plus a random
head): timings do not depend on the values, and nothing here needs pretrained knowledge.

1. Slider move. One image is captured once (attentions and gradients); each move of a
   control (discard ratio, head fusion, start layer, layer/head) recomputes the map from
   the cached tensors with ``explain(model, None, method, capture=cap, ...)``. A forward pre-hook counts model
   calls during the moves (must be 0). Compared with recomputing the forward (and, for
   gradient rollout, the backward) pass on every move, which is what vit-explain does.
2. Rollout overhead. ``explain(model, x, "rollout")`` vs a plain ``model(x)`` under
   ``torch.no_grad()`` on the same batch; runs interleaved to share the machine's noise.
3. Gradient rollout for every class of a batch. One forward pass with the graph kept and
   one vectorised backward pass for the 3 classes (``gradients_for_targets``) vs a loop over
   images and classes calling ``explain`` once each (forward + backward per image and
   class), and vs vit-explain's structure (forward, ``output.backward()`` with parameter
   gradients, attention gradients from ``retain_grad``) — all three give the same maps,
   which the script asserts.

Usage::

    python benchmarks/bench_explain.py [--batch 16] [--overhead-batch 16] [--repeats 3]
                                       [--overhead-repeats 7]
                                       [--loop-images 16] [--no-write]

Updates its section ("Explanations") of docs/BENCHMARKS.md; ``--no-write`` only prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from _common import publish, random_vit_b16
from vit_course.explain import (
    AttentionRecorder,
    capture,
    cls_row_to_grid,
    explain,
    explain_classes,
    grad_rollout,
    rollout,
)
from vit_course.runtime import SEED

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
GRAD_OPTS = dict(head_fusion="mean", discard_ratio=0.9)      # vit-explain's usual discard


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


class ForwardCounter:
    """Counts calls of ``model.forward`` while registered."""

    def __init__(self, model: nn.Module):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1

    def remove(self) -> None:
        self.handle.remove()


# ----------------------------------------------------------------------------- 1. slider
def bench_slider(model: nn.Module, x1: torch.Tensor, alt_threads: int,
                 recompute_moves: int = 3) -> dict:
    cap_s, cap = timed(lambda: capture(model, x1, with_grad=True))
    ratios = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.6]
    moves = [dict(head_fusion=f, discard_ratio=r) for f in ("mean", "max", "min") for r in ratios]
    moves += [dict(start_layer=s) for s in range(0, 12, 2)]
    attn_moves = [dict(layer=layer, head=head) for layer in (-1, 0, 5, 11)
                  for head in (None, 0, 7)]
    counter = ForwardCounter(model)
    result: dict = {"capture_s": cap_s, "threads": torch.get_num_threads(),
                    "alt_threads": alt_threads}
    try:
        for tag, threads in (("", torch.get_num_threads()), ("alt_", alt_threads)):
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                # Every move fuses the heads again (no cache) and runs no model pass.
                for name in ("rollout", "grad_rollout", "attention"):
                    times = [timed(lambda n=name, o=opts: explain(model, None, n, capture=cap,
                                                                  **o))[0]
                             for opts in (attn_moves if name == "attention" else moves)]
                    result[f"{tag}{name}_move_ms"] = median_ms(times)
                    result[f"{tag}{name}_move_max_ms"] = 1000 * max(times)
                    result[f"{name}_moves"] = len(times)
            finally:
                torch.set_num_threads(previous)
        forwards_during_moves = counter.calls
    finally:
        counter.remove()
    if forwards_during_moves != 0:
        raise AssertionError(f"slider moves ran the model {forwards_during_moves} times")
    result["forwards_during_moves"] = forwards_during_moves
    # Full (T, T) rollout matrix, for reference (the explainers read only the CLS row).
    result["full_matrix_ms"] = median_ms([timed(lambda r=r: rollout(cap.attentions, "max", r))[0]
                                          for r in ratios[:4]])
    # vit-explain's way: every move runs the model again.
    result["recompute_rollout_ms"] = median_ms([
        timed(lambda o=opts: explain(model, x1, "rollout", **o))[0]
        for opts in moves[:recompute_moves]])
    result["recompute_grad_rollout_ms"] = median_ms([
        timed(lambda o=opts: explain(model, x1, "grad_rollout", **o))[0]
        for opts in moves[:recompute_moves]])
    return result


# ----------------------------------------------------------------------------- 2. overhead
def bench_overhead(model: nn.Module, x: torch.Tensor, repeats: int) -> dict:
    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def with_rollout() -> torch.Tensor:
        return explain(model, x, "rollout", head_fusion="max", discard_ratio=0.9)

    with torch.no_grad():                                      # warm-up on one image
        model(x[:1])
    explain(model, x[:1], "rollout")
    t_plain, t_roll = [], []
    for _ in range(repeats):                                   # interleaved
        t_plain.append(timed(plain)[0])
        t_roll.append(timed(with_rollout)[0])
    cap = capture(model, x)
    t_math = [timed(lambda: explain(model, None, "rollout", capture=cap, head_fusion="max",
                                    discard_ratio=0.9))[0]
              for _ in range(repeats)]
    p, r = statistics.median(t_plain), statistics.median(t_roll)
    return {"batch": x.shape[0], "repeats": repeats, "plain_s": p, "rollout_s": r,
            "overhead_pct": 100 * (r - p) / p, "math_ms": median_ms(t_math),
            "plain_all": t_plain, "rollout_all": t_roll}


# ----------------------------------------------------------------------------- 3. all classes
def vit_explain_style_maps(model: nn.Module, x1: torch.Tensor, c: int) -> torch.Tensor:
    """vit-explain's per-call structure: forward, output.backward() (parameter gradients
    included), attention gradients via retain_grad; paired with their own layers here."""
    model.zero_grad(set_to_none=True)
    with AttentionRecorder(model) as rec, torch.enable_grad():
        logits, attns = rec.forward(x1)
        for a in attns:
            a.retain_grad()
        logits[0, c].backward()
        grads = [a.grad for a in attns]
        attns = [a.detach() for a in attns]
    model.zero_grad(set_to_none=True)
    R = grad_rollout(attns, grads, **GRAD_OPTS)
    return cls_row_to_grid(R, (14, 14), 1)


def bench_all_classes(model: nn.Module, x: torch.Tensor, loop_images: int, repeats: int
                      ) -> dict:
    classes = list(range(NUM_CLASSES))

    def batched(chunk: int) -> torch.Tensor:                    # (B, K, h, w)
        return explain_classes(model, x, "grad_rollout", classes, chunk_size=chunk, **GRAD_OPTS)

    t_batched, t_one_chunk = [], []                            # kernels warm from 1. and 2.
    for _ in range(repeats):                                   # interleaved
        dt, maps = timed(lambda: batched(4))
        t_batched.append(dt)
        dt, one = timed(lambda: batched(x.shape[0]))
        t_one_chunk.append(dt)
    torch.testing.assert_close(one, maps, rtol=1e-4, atol=1e-6)
    n = loop_images
    t_loop, loop_maps = timed(lambda: torch.stack([
        torch.cat([explain(model, x[b:b + 1], "grad_rollout", target=c, **GRAD_OPTS)
                   for c in classes]) for b in range(n)]))
    t_vx, vx_maps = timed(lambda: torch.stack([
        torch.cat([vit_explain_style_maps(model, x[b:b + 1], c) for c in classes])
        for b in range(n)]))
    # Same maps, up to float rounding (batched vs single-image matrix products).
    scale = maps.abs().amax()
    diff_loop = ((maps[:n] - loop_maps).abs().amax() / scale).item()
    diff_vx = ((maps[:n] - vx_maps).abs().amax() / scale).item()
    if diff_loop > 1e-3 or diff_vx > 1e-3:
        raise AssertionError(f"maps differ: loop {diff_loop:.2e}, vit-explain style "
                             f"{diff_vx:.2e} (relative max difference)")
    per_pair = NUM_CLASSES * n
    scale_up = x.shape[0] / n                                  # loops extrapolated if n < B
    b = statistics.median(t_batched)
    return {"batch": x.shape[0], "loop_images": n, "batched_s": b,
            "one_chunk_s": statistics.median(t_one_chunk),
            "loop_s": t_loop * scale_up, "vx_s": t_vx * scale_up,
            "loop_per_call_ms": 1000 * t_loop / per_pair, "vx_per_call_ms": 1000 * t_vx / per_pair,
            "speedup_loop": t_loop * scale_up / b, "speedup_vx": t_vx * scale_up / b,
            "diff_loop": diff_loop, "diff_vx": diff_vx, "repeats": repeats}


# ----------------------------------------------------------------------------- report
def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"with {torch.get_num_threads()} thread(s), no GPU used; 1-minute load average "
            f"{load:.1f}")


def report(slider: dict, over: dict, allc: dict, machine_before: str, machine_after: str,
           run_args: str = "") -> str:
    extrap = ("" if allc["loop_images"] == allc["batch"] else
              f" (loops timed on {allc['loop_images']} images and scaled to {allc['batch']})")
    return f"""## Explanations: slider moves, rollout overhead, all-class gradient rollout

Script: `benchmarks/bench_explain.py` (rerun: `python benchmarks/bench_explain.py{run_args}`).
Model: torchvision ViT-B/16 architecture (224 px, 197 tokens, 12 layers × 12 heads) with
RANDOM weights and a random 3-class head: timings do not depend on the weights' values.
Gradient rollout uses `head_fusion="mean", discard_ratio=0.9`.

### Slider move with cached attentions (one image)

Capture once: {slider['capture_s']:.2f} s (forward + backward). Then every control move
recomputes the map from the cached tensors; model forward calls during all moves:
**{slider['forwards_during_moves']}**.

| map after a control move | median | worst | median, {slider['alt_threads']} thr. | worst, {slider['alt_threads']} thr. | moves |
|---|---:|---:|---:|---:|---:|
| rollout from cache (fusion × discard ratio, start layer) | **{slider['rollout_move_ms']:.1f} ms** | {slider['rollout_move_max_ms']:.1f} ms | **{slider['alt_rollout_move_ms']:.1f} ms** | {slider['alt_rollout_move_max_ms']:.1f} ms | {slider['rollout_moves']} |
| gradient rollout from cache | **{slider['grad_rollout_move_ms']:.1f} ms** | {slider['grad_rollout_move_max_ms']:.1f} ms | **{slider['alt_grad_rollout_move_ms']:.1f} ms** | {slider['alt_grad_rollout_move_max_ms']:.1f} ms | {slider['grad_rollout_moves']} |
| raw attention from cache (layer × head) | **{slider['attention_move_ms']:.1f} ms** | {slider['attention_move_max_ms']:.1f} ms | **{slider['alt_attention_move_ms']:.1f} ms** | {slider['alt_attention_move_max_ms']:.1f} ms | {slider['attention_moves']} |
| rollout, full 197×197 matrix (`rollout()`, reference) | {slider['full_matrix_ms']:.1f} ms | | | | 4 |
| recompute forward + rollout per move (vit-explain's way) | {slider['recompute_rollout_ms']:.0f} ms | | | | 3 |
| recompute forward + backward + gradient rollout per move | {slider['recompute_grad_rollout_ms']:.0f} ms | | | | 3 |

Target: ≤ 30 ms per move with zero forward passes. A move costs the head fusion of all
layers when the fusion changes (cached per explainer and capture otherwise), then the
per-image discard, the row normalisation and a vector × matrix chain for the class token's
row (no 197×197 matrix products). Main columns: {slider['threads']} torch thread(s), as
the whole run; the "{slider['alt_threads']} thr." columns repeat the moves with
`torch.set_num_threads({slider['alt_threads']})`. On an oversubscribed CPU every
multi-threaded kernel waits for its slowest thread, which dominates millisecond-sized
operations.

### Rollout overhead over a plain forward pass (batch {over['batch']})

| | median of {over['repeats']} |
|---|---:|
| plain `model(x)` under `no_grad` (torchvision's fused attention) | {over['plain_s']:.2f} s |
| `explain(model, x, "rollout", head_fusion="max", discard_ratio=0.9)` | {over['rollout_s']:.2f} s |
| of which the rollout maths on the captured attentions | {over['math_ms']:.0f} ms |
| **overhead** | **{over['overhead_pct']:+.1f} %** |

Target: ≤ 10 %. The overhead is the explicit attention path (the softmax matrix is formed
and kept) plus the rollout maths. Runs were interleaved (plain, rollout, plain, …); all
times: plain {', '.join(f'{t:.2f}' for t in over['plain_all'])} s; rollout
{', '.join(f'{t:.2f}' for t in over['rollout_all'])} s.{overhead_note(over)} The explicit path writes
and reads the 197×197 attention matrices of every layer, so its cost follows the memory
bandwidth the machine has free at the time; on a shared virtual machine separate runs of
this comparison differ by tens of percent, so rerun before reading much into one figure.

### Gradient rollout for all {NUM_CLASSES} classes of {allc['batch']} images

| | time | per image × class |
|---|---:|---:|
| batched: `explain_classes`, chunks of 4 images, each 1 forward (graph kept) + 1 vectorised backward for the 3 classes | **{allc['batched_s']:.1f} s** | {1000 * allc['batched_s'] / (NUM_CLASSES * allc['batch']):.0f} ms |
| the same in one chunk of {allc['batch']} images | {allc['one_chunk_s']:.1f} s | {1000 * allc['one_chunk_s'] / (NUM_CLASSES * allc['batch']):.0f} ms |
| loop: `explain(..., target=c)` per image and class (forward + backward each) | {allc['loop_s']:.1f} s | {allc['loop_per_call_ms']:.0f} ms |
| loop, vit-explain's structure (`output.backward()` incl. parameter gradients) | {allc['vx_s']:.1f} s | {allc['vx_per_call_ms']:.0f} ms |
| **speed-up vs loop** / vs vit-explain's structure | **{allc['speedup_loop']:.1f}×** / **{allc['speedup_vx']:.1f}×** | |

Target: ≥ 2× against the per-image, per-class loop of vit-explain's structure. The maps
are the same (largest difference relative to the largest map value:
{allc['diff_loop']:.1e} vs the loop, {allc['diff_vx']:.1e} vs vit-explain's structure;
the script fails above 1e-3){extrap}. Batched times: median of {allc['repeats']}, the two chunk
sizes interleaved; loops: one run each. Reading: batching shares the forward pass, but every
class still needs its own backward pass through the network (about as costly as a forward
pass: gradients with respect to activations only, none for the parameters). Against a loop
that already skips parameter gradients the bound is about (F + B) / (F/3 + B) ≈ 1.5× for
B ≈ F; vit-explain's `output.backward()` also computes every parameter's gradient on each
call. A graph for all {allc['batch']} images keeps the activations and attention matrices of
every image alive at once and ran slower per image on this CPU than graphs of 4 images,
whose smaller working set stays closer to the cache; hence the chunks.

Machine: {machine_before} at the start, {machine_after.split('; ')[-1]} at the end.
{shared_note(machine_before, machine_after)}
"""


def overhead_note(over: dict) -> str:
    spread = (max(over["plain_all"]) - min(over["plain_all"])) / over["plain_s"]
    if abs(over["overhead_pct"]) < 100 * spread:
        return (f" The difference is smaller than the spread of the plain runs alone "
                f"({100 * spread:.0f} %): no overhead measurable on this machine.")
    return ""


def shared_note(before: str, after: str) -> str:
    loads = [float(m.rsplit(" ", 1)[-1]) for m in (before, after)]
    if max(loads) <= (os.cpu_count() or 1):
        return "The CPU was not oversubscribed during the run."
    return (f"The load average above {os.cpu_count()} means other jobs shared the CPU during the "
            "run (other work on the same machine), so absolute times are pessimistic and "
            "noisy; the ratios (overhead, speed-up) are steadier than the seconds. With "
            "`--threads 1` each torch call uses one core and waits less for a busy second "
            "one.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="images for the all-class benchmark")
    p.add_argument("--overhead-batch", type=int, default=16, help="batch for the overhead test")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (interleaved)")
    p.add_argument("--overhead-repeats", type=int, default=7,
                   help="interleaved plain/rollout pairs for the overhead (a few %% against "
                        "run-to-run noise of 10-20 %% on a shared VM needs more than 3)")
    p.add_argument("--loop-images", type=int, default=None,
                   help="images the per-image loops run on (default: all of --batch)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the whole run (default: torch's default); "
                        "on a CPU shared with other jobs 1 thread gives steadier numbers")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    alt_threads = default_threads if torch.get_num_threads() != default_threads else 1
    model = random_vit_b16(NUM_CLASSES)
    before = machine()
    g = torch.Generator().manual_seed(SEED)
    x = torch.rand(max(args.batch, args.overhead_batch), 3, 224, 224, generator=g)

    print("1/3 slider moves ...", flush=True)
    slider = bench_slider(model, x[:1], alt_threads)
    print({k: round(v, 2) if isinstance(v, float) else v for k, v in slider.items()}, flush=True)
    print("2/3 rollout overhead ...", flush=True)
    over = bench_overhead(model, x[:args.overhead_batch], args.overhead_repeats)
    print({k: v for k, v in over.items() if not k.endswith("_all")}, flush=True)
    print("3/3 all classes ...", flush=True)
    allc = bench_all_classes(model, x[:args.batch], args.loop_images or args.batch,
                             max(1, args.repeats - 1))
    print(allc, flush=True)
    run_args = f" --threads {args.threads}" if args.threads else ""
    text = report(slider, over, allc, before, machine(), run_args)
    publish(text, args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
