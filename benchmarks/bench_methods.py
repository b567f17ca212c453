"""Benchmark: the cost of every explanation method (issue 5), in plain forward passes.

Model: torchvision's ViT-B/16 architecture (224 px, 197 tokens, 12 layers × 12 heads) with
RANDOM weights and a random 3-class head — timings do not depend on the weights' values
(attention flow's do a little: see below). Each method explains a batch of ``--batch``
images (default 16) once through ``explain(model, x, method, ...)``; its time is divided
by the time of one plain ``model(x)`` of the same batch under ``torch.no_grad()``
(torchvision's fused attention), measured before and after all methods.

Attention flow runs one max-flow per patch on the CPU, so it is timed per image from a
capture (the forward pass is not included): ViT-B/16 with random weights, the same graph
with "peaked" synthetic attention (softmax of N(0, 3²) logits: closer to a trained model's
concentrated heads and harder for the solver than the near-uniform attention of random
weights), and the course's small ViT (``vit_course_small``: 4 layers, 197 tokens).

Usage::

    python benchmarks/bench_methods.py [--batch 16] [--repeats 2] [--samples 4]
                                       [--steps 4] [--flow-images 1] [--no-write]

Updates its section ("Explanation methods") of docs/BENCHMARKS.md; ``--no-write`` only prints it.
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

from _common import load_note, publish, random_vit_b16
import vit_course.explain.flow  # noqa: F401  (registers attention_flow)
import vit_course.explain.gae  # noqa: F401  (registers gae)
import vit_course.explain.gradcam  # noqa: F401  (registers gradcam, attention_gradcam)
import vit_course.explain.gradients  # noqa: F401  (registers saliency, smoothgrad, IG)
from vit_course.explain import capture, explain
from vit_course.explain.flow import attention_flow
from vit_course.models import build_vit
from vit_course.runtime import SEED, set_seed

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def plain_forward(model: nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    def run() -> None:
        with torch.no_grad():
            model(x)
    return [timed(run) for _ in range(repeats)]


def method_table(samples: int, steps: int) -> list[tuple[str, dict, str]]:
    """(method, options, what the cost should be in forward passes)."""
    return [
        ("attention", {}, "≈ 1 (one forward)"),
        ("rollout", {}, "≈ 1 (one forward)"),
        ("attention_flow", {}, "1 forward + max-flows (below)"),
        ("grad_rollout", {}, "≈ 3 (forward + backward)"),
        ("gae", {}, "≈ 3 (forward + backward)"),
        ("attention_gradcam", {}, "≈ 3 (forward + backward)"),
        ("gradcam", {}, "≈ 3 (forward + backward)"),
        ("saliency", {}, "≈ 3 (forward + backward)"),
        ("smoothgrad", {"n_samples": samples},
         f"≈ 3 × n_samples + 1 = {3 * samples + 1}"),
        ("integrated_gradients", {"steps": steps},
         f"≈ 3 × steps + 1 = {3 * steps + 1}"),
        ("transformer_attribution", {}, "≈ 6–8 in float32; float64 (default) ≈ 2×"),
        ("attn_lrp", {}, "≈ 3 (forward + backward)"),
        ("cp_lrp", {}, "≈ 3 (forward + backward)"),
        ("vit_cx", {}, "1 + 2 × merged masks, per image"),
        ("value_zeroing", {}, "≈ (2/3) T = 131 layer recomputations, float64 ≈ 2×"),
    ]


def bench_methods(model: nn.Module, x: torch.Tensor, repeats: int, samples: int,
                  steps: int, only: list[str] | None = None) -> dict:
    explain(model, x[:2], "rollout")                     # warm-up of both paths
    explain(model, x[:2], "saliency")
    before = plain_forward(model, x, repeats)
    print(f"plain forward: {[round(t, 2) for t in before]} s", flush=True)
    rows = []
    for name, opts, expect in method_table(samples, steps):
        if name == "attention_flow" or (only and name not in only):   # flow: per image
            continue
        t = timed(lambda: explain(model, x, name, **opts))
        rows.append({"method": name, "options": opts, "expect": expect, "seconds": t,
                     "load": load()})
        print(f"{name}: {t:.1f} s (load {load():.1f})", flush=True)
    after = plain_forward(model, x, repeats)
    print(f"plain forward: {[round(t, 2) for t in after]} s", flush=True)
    unit = statistics.median(before + after)
    for r in rows:
        r["units"] = r["seconds"] / unit
    return {"rows": rows, "unit": unit, "before": before, "after": after}


def peaked_attention(layers: int, heads: int, tokens: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(3.0 * torch.randn(1, heads, tokens, tokens, generator=g)).softmax(-1)
            for _ in range(layers)]


def bench_flow(model: nn.Module, x: torch.Tensor, images: int) -> list[dict]:
    out = []
    caps = [capture(model, x[i:i + 1]) for i in range(images)]
    t = [timed(lambda c=c: attention_flow(c.attentions)) for c in caps]
    out.append({"what": "ViT-B/16, random weights (12 layers, 197 tokens)",
                "seconds": statistics.median(t), "images": images})
    print(f"flow ViT-B/16: {t}", flush=True)
    t = [timed(lambda s=s: attention_flow(peaked_attention(12, 12, 197, seed=s)))
         for s in range(images)]
    out.append({"what": "ViT-B/16 graph, peaked synthetic attention",
                "seconds": statistics.median(t), "images": images})
    print(f"flow peaked: {t}", flush=True)
    set_seed(SEED)
    small = build_vit("vit_course_small", num_classes=NUM_CLASSES).eval()
    caps = [capture(small, x[i:i + 1]) for i in range(images)]
    t = [timed(lambda c=c: attention_flow(c.attentions)) for c in caps]
    out.append({"what": "course small ViT, random weights (4 layers, 197 tokens)",
                "seconds": statistics.median(t), "images": images})
    print(f"flow small: {t}", flush=True)
    t = [timed(lambda s=s: attention_flow(peaked_attention(4, 3, 197, seed=s)))
         for s in range(images)]
    out.append({"what": "course small ViT graph, peaked synthetic attention",
                "seconds": statistics.median(t), "images": images})
    print(f"flow small peaked: {t}", flush=True)
    return out


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, no GPU used")


def report(res: dict, flows: list[dict], batch: int, repeats: int, before: float,
           after: float) -> str:
    lines = []
    for r in res["rows"]:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        lines.append(f"| `{r['method']}` | {opts} | {r['seconds']:.1f} s | "
                     f"**{r['units']:.1f}** | {r['expect']} |")
    flow_lines = [f"| {f['what']} | {f['seconds']:.1f} s | {f['seconds'] / 196:.2f} s |"
                  for f in flows]
    fwd = ", ".join(f"{t:.2f}" for t in res["before"] + res["after"])
    units = {r["method"]: r["units"] for r in res["rows"]}
    opts = {r["method"]: r["options"] for r in res["rows"]}
    reading = ""
    if {"saliency", "gradcam", "smoothgrad", "integrated_gradients"} <= set(units):
        per_sample = (units["smoothgrad"] - 1) / opts["smoothgrad"]["n_samples"]
        per_step = (units["integrated_gradients"] - 1) / opts["integrated_gradients"]["steps"]
        reading = f"""
Reading: the attention methods cost about one forward pass (the explicit attention path
forms the 197×197 softmax matrices that the fused kernel skips). A forward plus a backward
pass through the whole network cost {units['saliency']:.1f} plain forwards here (saliency;
the "≈ 3" rule of thumb assumes a backward twice as dear as a forward, which this CPU
run did not show). Grad-CAM costs {units['gradcam']:.1f}: its backward pass stops at the
last block's LayerNorm. SmoothGrad and integrated gradients repeat the forward and
backward pass per noisy copy or step ({per_sample:.1f} and {per_step:.1f} plain forwards
each here, in chunks of 16 images), plus one forward to find the predicted class when
`target` is `None`; with their defaults (`n_samples=25`, `steps=50`) expect about
{1 + 25 * per_sample:.0f} and {1 + 50 * per_step:.0f} plain forwards on this machine
(75 and 150 by the rule of thumb).
"""
    return f"""## Explanation methods: cost in plain forward passes

Script: `benchmarks/bench_methods.py` (rerun: `python benchmarks/bench_methods.py`).
Model: torchvision ViT-B/16 architecture (224 px, 197 tokens, 12 layers × 12 heads) with
RANDOM weights and a random 3-class head; timings do not depend on the weights' values.
Each method explains a batch of {batch} images once with `explain(model, x, method, ...)`;
the unit is one plain `model(x)` of the same batch under `torch.no_grad()`
(median of {2 * repeats} runs, before and after the methods: {fwd} s → unit
{res['unit']:.2f} s).

| method | options | time, batch of {batch} | **plain forwards** | rule of thumb |
|---|---|---:|---:|---|
{chr(10).join(lines)}
{reading}
### Attention flow, per image

One max-flow per patch (196) from a capture (forward pass not included), exact
push–relabel in NumPy (`vit_course.explain.flow.max_flow_layered`), median of
{flows[0]['images']} image(s):

| graph | per image | per patch |
|---|---:|---:|
{chr(10).join(flow_lines)}

Targets: ViT-B/16 ≤ 60 s per image, the course small ViT ≤ 5 s. Random weights give
nearly uniform attention, where many flows stop early at the bound min(capacity out of
the patch, capacity into the class token); peaked attention needs more push sweeps, and
the 4-layer graph more than the 12-layer one (its flows stay further below that bound,
so more excess has to be pushed back before the solver can stop).

Machine: {machine()}; load average {before:.1f} at the start, {after:.1f} at the end.
{load_note(before, after)} Each method ran once.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="images per explained batch")
    p.add_argument("--repeats", type=int, default=2, help="plain forwards before and after")
    p.add_argument("--samples", type=int, default=4, help="SmoothGrad n_samples")
    p.add_argument("--steps", type=int, default=4, help="integrated gradients steps")
    p.add_argument("--flow-images", type=int, default=1, help="images for attention flow")
    p.add_argument("--skip-methods", action="store_true", help="attention flow only")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--only", nargs="+", metavar="METHOD",
                   help="time these methods only, no attention flow; prints, never writes")
    args = p.parse_args(argv)
    start_load = load()
    model = random_vit_b16(NUM_CLASSES)
    g = torch.Generator().manual_seed(SEED)
    x = torch.rand(args.batch, 3, 224, 224, generator=g)
    if args.only:
        res = bench_methods(model, x, args.repeats, args.samples, args.steps, args.only)
        for r in res["rows"]:
            print(f"| `{r['method']}` | {r['seconds']:.1f} s | {r['units']:.1f} plain "
                  f"forwards (unit {res['unit']:.2f} s, batch {args.batch}) |")
        return 0
    flows = bench_flow(model, x, args.flow_images)
    res = ({"rows": [], "unit": float("nan"), "before": [], "after": []}
           if args.skip_methods else
           bench_methods(model, x, args.repeats, args.samples, args.steps))
    text = report(res, flows, args.batch, args.repeats, start_load, load())
    publish(text, args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
