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

    python benchmarks/bench_explorer.py [--limit 60] [--repeats 2] [--ig-steps 8 16 32] [--no-write]

Updates its section ("Explorer: each method on one ViT-B/16 image") of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch

from _common import fmt_s, load_average, load_note, publish, random_vit_b16, stolen_seconds
from vit_course.explain import explain
from vit_course.explain.gradients import integrated_gradients
from vit_course.widgets import EXPLORER_OPTIONS, AttentionExplorer


def time_methods(ex: AttentionExplorer, limit: float, repeats: int) -> list[dict]:
    """Each method through the dropdown, ``repeats`` rounds (the maps of methods without a
    capture are forgotten between rounds, so each round computes them again). The CPU time
    stolen by other guests of the host meanwhile is recorded: "net" = wall − stolen / cores.
    Per method the round with the least net time is kept (the host was quietest then)."""
    best: dict[str, dict] = {}
    cores = os.cpu_count() or 1
    for _ in range(repeats):
        ex.cache._maps.clear()
        for method in ex.methods:
            stolen0, t0 = stolen_seconds(), time.perf_counter()
            ex.controls["method"].value = method
            ex.wait(timeout=limit)
            seconds, note = time.perf_counter() - t0, ""
            stolen = (stolen_seconds() - stolen0) / cores
            if ex._jobs.busy:                          # as a student's next move would
                ex._jobs.new_request()
                ex.wait()
                note = f"superseded after {limit:.0f} s"
            elif ex.error:
                note = "failed: " + ex.error.split(": ", 1)[-1][:120]
            row = {"method": method, "seconds": seconds, "stolen": stolen, "note": note,
                   "net": seconds - (0.0 if math.isnan(stolen) else stolen),
                   "options": EXPLORER_OPTIONS.get(method, {})}
            if method not in best or row["net"] < best[method]["net"]:
                best[method] = row
            print(f"{method}: {seconds:.2f} s, {stolen:.2f} s stolen {note} "
                  f"(load {load_average():.1f})", flush=True)
    return list(best.values())


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


#: The methods whose explorer options trade accuracy for time (other than integrated
#: gradients, whose completeness is measured above), and the reference they are compared
#: with: the paper's computation in float32.
ACCURACY_REFERENCE = {"value_zeroing": {"precision": "float32"},
                      "vit_cx": {"precision": "float32", "internal_batch_size": 16}}


def accuracy(model: torch.nn.Module, x: torch.Tensor) -> list[dict]:
    """The explorer's map against the reference options' map, same model and image."""
    rows = []
    for method, ref_opts in ACCURACY_REFERENCE.items():
        fast = explain(model, x, method, **EXPLORER_OPTIONS[method]).double().flatten()
        ref = explain(model, x, method, **ref_opts).double().flatten()
        rows.append({"method": method, "fast": EXPLORER_OPTIONS[method], "ref": ref_opts,
                     "max_rel": float((fast - ref).abs().max() / ref.abs().max()),
                     "corr": float(torch.corrcoef(torch.stack([fast, ref]))[0, 1])})
        print(f"accuracy {method}: {rows[-1]}", flush=True)
    return rows


def report(cap_s: float, rows: list[dict], ig: list[dict], acc: list[dict], limit: float,
           loads: list[float], repeats: int) -> str:
    def fmt(o: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in o.items())

    acc_lines = [f"| `{r['method']}` | {fmt(r['fast'])} | {fmt(r['ref'])} | {r['max_rel']:.1e} | "
                 f"{r['corr']:.6f} |" for r in acc]
    slow = [f"`{r['method']}` ({fmt_s(r['net'])})" for r in rows if r["net"] > 10]
    close = [f"`{r['method']}` ({fmt_s(r['net'])})" for r in rows if 8 < r["net"] <= 10]
    verdict = ("every method answers within 10 s (net)" if not slow else
               "not within 10 s (net): " + ", ".join(slow)) + (
        "; close to the limit, so over it on a slower or busier machine: " + ", ".join(close)
        if close else "") + "."
    lines = []
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        cut = "> " if r["note"].startswith("superseded") else ""
        net = r["net"]
        lines.append(f"| `{r['method']}` | {opts} | {cut}{fmt_s(r['seconds'])} | "
                     f"{fmt_s(r['stolen'])} | {cut}**{fmt_s(net)}** | {cut}{net / cap_s:.2f} | "
                     f"{'✓' if net <= 10 else '✗'} | {r['note']} |")
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
Other guests of the host take CPU time from this machine at times (up to a quarter of it
in this session, the "steal" of /proc/stat), so each row also gives the CPU time stolen
meanwhile (per core) and the **net** time, wall minus stolen, which the 10 s target is
judged on (for one-thread work such as attention flow's solver the correction can be
too large, by up to the stolen time). Each method ran {repeats} times; the row with the
least net time is kept. First capture of the image (forward + backward for 3 classes): {cap_s:.2f} s
net, the unit of `COST_IN_CAPTURES`.

| method | explorer options | wall | stolen | net | captures | ≤ 10 s | note |
|---|---|---:|---:|---:|---:|:-:|---|
{chr(10).join(lines)}

### Integrated gradients: completeness at the explorer's steps

Completeness: Σ attributions = y_c(x) − y_c(x′) (black baseline, Gauss–Legendre rule);
the table gives the gap δ = Σ attributions − (y_c(x) − y_c(x′)) on the same random
ViT-B/16 and image (a trained model's error differs; rerun on yours).

| steps | δ | y_c(x) − y_c(x′) | relative error | time |
|---:|---:|---:|---:|---:|
{chr(10).join(ig_lines)}

### What the other explorer options cost in accuracy

The explorer's map against the paper's computation in float32 (same random ViT-B/16 and
image): the largest difference relative to the map's largest value, and the correlation.

| method | explorer options | reference | max difference / max | correlation |
|---|---|---|---:|---:|
{chr(10).join(acc_lines)}

Reading: {verdict}

Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with
{torch.get_num_threads()} threads; 1-minute load average {min(loads):.1f} to
{max(loads):.1f}. {load_note(*loads)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=60.0)
    ap.add_argument("--ig-steps", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    loads = [load_average()]
    model = random_vit_b16(3)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    stolen0 = stolen_seconds()
    ex = AttentionExplorer(model, x, ["a", "b", "c"])
    cap_s = ex.cache.capture_seconds - (stolen_seconds() - stolen0) / (os.cpu_count() or 1)
    print(f"first capture: {cap_s:.2f} s", flush=True)
    rows = time_methods(ex, args.limit, args.repeats)
    ig = completeness(model, x, args.ig_steps)
    acc = accuracy(model, x)
    loads.append(load_average())
    publish(report(cap_s, rows, ig, acc, args.limit, loads, args.repeats), args.no_write)


if __name__ == "__main__":
    main()
