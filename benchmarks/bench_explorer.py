"""Benchmark: each method's time in the explorer for one ViT-B/16 image (issue 11), and
integrated gradients' completeness error at the explorer's step count.

Model: torchvision's ViT-B/16 architecture with RANDOM weights and a random 3-class head
(timings do not depend on the weights' values; the completeness errors do, so they are a
property of this random model, not of a trained one). One 224 px image.

Each method is chosen as a student would choose it: by setting the explorer's method
dropdown (the background path with the busy state), with the explorer's options
(:data:`vit_course.widgets.EXPLORER_OPTIONS`). A method still running after ``--limit``
seconds is superseded (as a student's next move would) and reported as "> limit". The
ratio to the image's first capture is what :data:`vit_course.widgets.COST_IN_CAPTURES`
holds.

Usage::

    python benchmarks/bench_explorer.py [--limit 60] [--ig-steps 8 16 32] [--no-write]

Updates its section ("Explorer: each method on one ViT-B/16 image") of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from _common import fmt_s, load_average, load_note, publish, random_vit_b16
from vit_course.explain.gradients import integrated_gradients
from vit_course.widgets import EXPLORER_OPTIONS, AttentionExplorer


def time_methods(ex: AttentionExplorer, limit: float) -> list[dict]:
    rows = []
    for method in ex.methods:
        t0 = time.perf_counter()
        ex.controls["method"].value = method
        ex.wait(timeout=limit)
        seconds, note = time.perf_counter() - t0, ""
        if ex._jobs.busy:                              # as a student's next move would
            ex._jobs.new_request()
            ex.wait()
            note = f"superseded after {limit:.0f} s"
        elif ex.error:
            note = "failed: " + ex.error.split(": ", 1)[-1][:120]
        rows.append({"method": method, "seconds": seconds, "note": note, "load": load_average(),
                     "options": EXPLORER_OPTIONS.get(method, {})})
        print(f"{method}: {seconds:.2f} s {note} (load {load_average():.1f})", flush=True)
    return rows


def completeness(model: torch.nn.Module, x: torch.Tensor, steps: list[int]) -> list[dict]:
    with torch.no_grad():
        logits = model(x)
        t = int(logits.argmax())
        gap = float(logits[0, t] - model(torch.zeros_like(x))[0, t])
    rows = []
    for s in steps:
        t0 = time.perf_counter()
        _, delta = integrated_gradients(model, x, t, steps=s, internal_batch_size=2,
                                        return_delta=True)
        rows.append({"steps": s, "delta": float(delta[0]), "gap": gap,
                     "seconds": time.perf_counter() - t0})
        print(f"IG steps={s}: delta {float(delta[0]):.4g} of {gap:.4g}", flush=True)
    return rows


def report(cap_s: float, rows: list[dict], ig: list[dict], limit: float, loads: list[float]) -> str:
    lines = []
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        cut = "> " if r["note"].startswith("superseded") else ""
        lines.append(f"| `{r['method']}` | {opts} | {cut}{fmt_s(r['seconds'])} | "
                     f"{cut}{r['seconds'] / cap_s:.2f} | "
                     f"{'✓' if r['seconds'] <= 10 else '✗'} | {r['note']} |")
    ig_lines = [f"| {r['steps']} | {r['delta']:+.4g} | {r['gap']:.4g} | "
                f"{abs(r['delta']) / max(abs(r['gap']), 1e-12):.2%} | {fmt_s(r['seconds'])} |"
                for r in ig]
    return f"""## Explorer: each method on one ViT-B/16 image

Script: `benchmarks/bench_explorer.py` (rerun: `python benchmarks/bench_explorer.py`).
Model: torchvision ViT-B/16 architecture with RANDOM weights and a random 3-class head
(timings do not depend on the weights). One 224 px image; each method chosen through the
explorer's method dropdown as a student would, with the explorer's options
(`vit_course.widgets.EXPLORER_OPTIONS`); a method still running after {limit:.0f} s is
superseded, as the next move would. Target: every method within 10 s.
First capture of the image (forward + backward for 3 classes): **{cap_s:.2f} s**, the
unit of `COST_IN_CAPTURES`.

| method | explorer options | time | captures | ≤ 10 s | note |
|---|---|---:|---:|:-:|---|
{chr(10).join(lines)}

### Integrated gradients: completeness at the explorer's steps

Completeness: Σ attributions = y_c(x) − y_c(x′) (black baseline, Gauss–Legendre rule);
the table gives the gap δ = Σ attributions − (y_c(x) − y_c(x′)) on the same random
ViT-B/16 and image (a trained model's error differs; rerun on yours).

| steps | δ | y_c(x) − y_c(x′) | relative error | time |
|---:|---:|---:|---:|---:|
{chr(10).join(ig_lines)}

Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with
{torch.get_num_threads()} threads; measured on a shared, loaded machine: 1-minute load
average {min(loads):.1f} to {max(loads):.1f}. {load_note(*loads)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=60.0)
    ap.add_argument("--ig-steps", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    loads = [load_average()]
    model = random_vit_b16(3)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ex = AttentionExplorer(model, x, ["a", "b", "c"])
    cap_s = ex.cache.capture_seconds
    print(f"first capture: {cap_s:.2f} s", flush=True)
    rows = time_methods(ex, args.limit)
    ig = completeness(model, x, args.ig_steps)
    loads.append(load_average())
    publish(report(cap_s, rows, ig, args.limit, loads), args.no_write)


if __name__ == "__main__":
    main()
