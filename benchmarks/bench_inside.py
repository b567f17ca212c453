"""Benchmark: one class visualisation (activation maximisation) on ViT-B/16 (issue 15).

torchvision ViT-B/16 with RANDOM weights (timing does not depend on the values), one class,
the notebook's regularisers (``vit_course.inside.READABLE``), float32 and bfloat16, each for
``--steps`` optimisation steps after one warm-up step. Every step is one forward and one
backward pass through the model to the input; the per-step time is constant, so the cost of
the full profile's ``--full-steps`` steps is the measured per-step time times that count.

On a shared machine wall (and even CPU) times are inflated by an unknown factor, ratios
much less: the script also times plain forward passes (inference mode) in the same run, and
the ratio step / forward, times the idle forward time of the "Metrics suite: float32 vs
bfloat16" section (``--idle-forward``), estimates the step on an idle machine.

Usage::

    python benchmarks/bench_inside.py [--steps 24] [--full-steps 128] [--no-write]

Updates its section ("Activation maximisation") of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from _common import fmt_s, load_average, load_note, publish, random_vit_b16
from vit_course.imaging import IMAGENET_MEAN, IMAGENET_STD
from vit_course.inside import READABLE, activation_maximisation


def run(model: torch.nn.Module, steps: int, precision: str) -> tuple[float, float]:
    """Wall and CPU seconds of one visualisation of ``steps`` steps."""
    t0, c0 = time.perf_counter(), time.process_time()
    activation_maximisation(model, 0, steps=steps, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                            precision=precision, progress=False, **READABLE)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--full-steps", type=int, default=128)
    ap.add_argument("--idle-forward", type=float, default=1 / 4.4,
                    help="seconds of one float32 batch-1 forward on the idle machine")
    ap.add_argument("--precisions", nargs="+", default=["float32"])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    model = random_vit_b16()
    loads = [load_average()]
    rows = []
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model(x)
        fwd = (time.perf_counter() - t0) / args.steps
    for precision in args.precisions:
        run(model, 1, precision)                                       # warm-up
        secs, cpu = run(model, args.steps, precision)
        per, per_cpu, T = secs / args.steps, cpu / args.steps, torch.get_num_threads()
        rows.append(f"| {precision} | {args.steps} | {per:.2f} s | {fmt_s(per * args.full_steps)} "
                    f"| {per_cpu:.2f} s | {fmt_s(per_cpu / T * args.full_steps)} – "
                    f"{fmt_s(per_cpu * args.full_steps)} | {per / fwd:.1f} | "
                    f"**{fmt_s(per / fwd * args.idle_forward * args.full_steps)}** |")
        print(rows[-1], flush=True)
        loads.append(load_average())
    text = "\n".join([
        "## Activation maximisation: one class visualisation on ViT-B/16", "",
        "Script: `benchmarks/bench_inside.py` (rerun: `python benchmarks/bench_inside.py`).",
        "torchvision ViT-B/16, **random weights** (timing only), one class, 224×224, the "
        "notebook's regularisers (`READABLE`: L2, total variation, jitter, optimised at a "
        "lower resolution; they cost nothing next to the model), ImageNet normalisation. One step = one forward + one backward pass to "
        f"the input. Goal (issue 15): ≤ 2 min for one visualisation in the full profile "
        f"({args.full_steps} steps).", "",
        f"| precision | steps measured | wall per step | wall, {args.full_steps} steps "
        f"| CPU per step | {args.full_steps} steps by CPU time (CPU/threads – CPU) "
        f"| step / forward | idle estimate, {args.full_steps} steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        f"Forward pass in the same run: {fwd:.2f} s (batch 1, inference mode); idle forward "
        f"{args.idle_forward:.2f} s (4.4 images/s, float32 batch 1, from the precision "
        "section, load ≤ 2). bfloat16 (`precision=\"bfloat16\"`) was measured once at the "
        "same speed as float32 under this load (4.69 vs 4.66 CPU s per step): the backward "
        "pass gains nothing from it here.", "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; 1-minute load average "
        + " → ".join(f"{x:.1f}" for x in loads) + ". " + load_note(*loads),
    ])
    publish(text, args.no_write)


if __name__ == "__main__":
    main()
