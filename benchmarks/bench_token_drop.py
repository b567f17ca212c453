"""Benchmark: token-drop perturbation (``baseline="token_drop"``) against painted baselines.

Three measurements (issue 16):

1. **Per curve**, torchvision ViT-B/16 (RANDOM weights: timing only), 20 steps: deletion +
   insertion curves of ``--curve-images`` pizza/steak/sushi test photos with the blur
   baseline and with token drop, float32 and bfloat16, interleaved round by round (the machine
   is shared); the same number of forward passes on both sides, the tokens those forwards
   carry counted exactly.
2. **Suite**, ViT-B/16, bfloat16: ``run_suite`` (deletion + insertion, Chefer's test, grid
   game) for rollout, grad_rollout, gradcam and the random control on ``--suite-images``
   photos, with ``baseline="blur"`` and ``"token_drop"``; extrapolated linearly to 75 photos.
3. **Ranking agreement**: the course's synthetic ViT, TRAINED (notebook 08's setting), on
   ``--course-images`` synthetic test images: the suite under blur, zero and token drop, and
   :func:`vit_course.metrics.meta_evaluate`'s Kendall τ of each metric's method order
   between the baselines.

Usage::

    python benchmarks/bench_token_drop.py [--curve-images 4] [--rounds 2] [--suite-images 8]
        [--suite-baselines blur token_drop] [--course-images 96] [--no-write]

Updates its section ("Token drop") of docs/BENCHMARKS.md; ``--no-write`` only prints it.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _common import fmt_s, load_average, load_note, publish
from bench_metrics import build, explainers, load_images
from vit_course.metrics import deletion_curve, insertion_curve, meta_evaluate, run_suite, token_counts
from vit_course.runtime import SEED, set_seed

METRICS = ("deletion_auc", "insertion_auc", "chefer_positive_auc", "chefer_negative_auc")


def curve_tokens(N: int, steps: int) -> dict[str, int]:
    """Tokens (class token included) the perturbed forwards of one deletion + one insertion
    curve carry: every painted image carries 1 + N; token drop carries 1 + the kept ones."""
    c = token_counts(steps, N)
    painted = sum(1 + N for k in c if 0 < k < N) * 2
    dropped = sum(1 + N - k for k in c if k > 0) + sum(1 + k for k in c if k < N)
    return {"painted": painted, "dropped": dropped}


def per_curve(args) -> dict:
    model = build("vit_b_16")
    x, _, source = load_images(args.curve_images)
    maps = torch.rand(x.shape[0], 14, 14, generator=torch.Generator().manual_seed(SEED))
    secs = {(b, p): [] for p in ("float32", "bfloat16") for b in ("blur", "token_drop")}
    for r in range(args.rounds):
        for (b, p) in secs:
            t0 = time.perf_counter()
            for fn in (deletion_curve, insertion_curve):
                fn(model, x, maps, steps=20, baseline=b, precision=p, progress=False)
            secs[b, p].append((time.perf_counter() - t0) / (2 * x.shape[0]))
            print(f"[curve] round {r} {b} {p}: {secs[b, p][-1]:.2f} s per curve", flush=True)
    return {"secs": {k: min(v) for k, v in secs.items()}, "n": x.shape[0], "source": source,
            "tokens": curve_tokens(196, 20)}


def suite(args) -> dict:
    model = build("vit_b_16")
    x, y, source = load_images(args.suite_images)
    fns, _ = explainers()
    out = {"n": x.shape[0], "source": source, "secs": {}, "explain": {}}
    for b in args.suite_baselines:
        t0 = time.perf_counter()
        res = run_suite(model, x, y, fns, steps=20, baseline=b, controls=("random",), progress=False,
                        precision="bfloat16")
        out["secs"][b] = time.perf_counter() - t0
        out["explain"][b] = sum(v for k, v in res.timings.items() if k.endswith(("/explain", "/grid")))
        out["forwards"] = res.forwards
        print(f"[suite] {b}: {out['secs'][b]:.1f} s", flush=True)
    return out


def ranking(args) -> dict:
    from vit_course.data.synthetic import SyntheticFood
    from vit_course.models import load_or_train_synthetic_vit

    set_seed(SEED)
    model, _ = load_or_train_synthetic_vit(setting=args.setting)
    test = SyntheticFood(args.course_images, split="test")
    model, x, y, norm = model.eval(), test.images.float() / 255, test.labels, dict(mean=(0,) * 3, std=(1,) * 3)
    fns, _ = explainers()
    runs = {b: run_suite(model, x, y, fns, steps=20, baseline=b, progress=False, **norm)
            for b in ("blur", "zero", "token_drop")}
    meta = {b: meta_evaluate(runs[b], {o: runs[o] for o in runs if o != b}, n_boot=500) for b in runs}
    means = {b: {m: {k: runs[b].scores[m][k].double().mean().item() for k in METRICS}
                 for m in runs[b].methods} for b in runs}
    acc = (runs["blur"].targets == runs["blur"].labels).double().mean().item()
    return {"n": x.shape[0], "meta": meta, "means": means, "methods": runs["blur"].methods, "acc": acc}


def report(c: dict, s: dict, r: dict, loads: list[float], args) -> str:
    sec, tok = c["secs"], c["tokens"]
    lines = ["## Token drop: removed patches leave the sequence", "",
             "Script: `benchmarks/bench_token_drop.py` (rerun: `python benchmarks/bench_token_drop.py`). "
             "Rounds interleaved, best of each. " + load_note(*loads), "",
             "### Per curve, ViT-B/16 (random weights), 20 steps", "",
             f"Deletion + insertion curves of {c['n']} images ({c['source']}), the best of {args.rounds} "
             "interleaved rounds, seconds per curve. Blur runs 19 perturbed forwards per curve, token "
             "drop 20: the same 19 plus the class token alone (everything removed), which the blur "
             f"baseline takes from its one cached full-baseline forward per image. Tokens per deletion + insertion pair: "
             f"painted {tok['painted']}, dropped {tok['dropped']} ({tok['painted'] / tok['dropped']:.2f}× fewer).",
             "", "| precision | blur | token drop | speed-up (goal ≥ 1.8×) |", "|---|---:|---:|---:|"]
    for p in ("float32", "bfloat16"):
        a, b = sec["blur", p], sec["token_drop", p]
        lines.append(f"| {p} | {a:.2f} s | {b:.2f} s | **{a / b:.2f}×** |")
    per = {b: v / s["n"] * 75 for b, v in s["secs"].items()}
    lines += ["", "### Suite, ViT-B/16 (random weights), bfloat16", "",
              f"`run_suite(..., precision=\"bfloat16\")` with rollout, grad_rollout, gradcam and the random "
              f"control on {s['n']} photos ({s['source']}), measured"
              + (", then extrapolated linearly to 75 (a subset was measured)." if s["n"] < 75 else "."), "",
              "| baseline | measured | of which explainers | 75 photos (extrapolated) |", "|---|---:|---:|---:|"]
    for b in s["secs"]:
        lines.append(f"| {b} | {fmt_s(s['secs'][b])} | {fmt_s(s['explain'][b])} | {fmt_s(per[b])} |")
    lines += ["", f"Goal ≤ 10 min for 75 photos with token drop: **{'met' if per['token_drop'] <= 600 else 'not met'}** "
              f"({fmt_s(per['token_drop'])}; the explainers, unchanged by the baseline, take "
              f"{fmt_s(s['explain']['token_drop'] / s['n'] * 75)} of it).", "",
              f"### Does the baseline change the methods' order? (course ViT, trained, {r['n']} synthetic images)", "",
              f"The synthetic-data ViT trained by `load_or_train_synthetic_vit(setting={args.setting!r})` "
              f"(test accuracy on these images {r['acc']:.1%}), notebook 08's setting.", "",
              "Kendall τ of each metric's method order (rollout, grad_rollout, gradcam, random, "
              "center_gaussian) between two baselines (`meta_evaluate(...).baseline_stability`); "
              "grid pointing does not depend on the baseline and is left out. Chefer's test blackens the "
              "removed tokens under both blur and zero (so those two columns agree by construction) and "
              "drops them under token drop.", "",
              "| metric | blur vs zero | blur vs token drop | zero vs token drop |", "|---|---:|---:|---:|"]
    for k in METRICS:
        bs = r["meta"]["blur"].baseline_stability
        zs = r["meta"]["zero"].baseline_stability
        lines.append(f"| {k} | {bs['zero'][k]:.2f} | {bs['token_drop'][k]:.2f} | {zs['token_drop'][k]:.2f} |")
    lines += ["", "Means per baseline (blur / zero / token drop):", "",
              "| metric | " + " | ".join(r["methods"]) + " |", "|---|" + "---:|" * len(r["methods"])]
    for k in METRICS:
        cells = [" / ".join(f"{r['means'][b][m][k]:.3f}" for b in ("blur", "zero", "token_drop"))
                 for m in r["methods"]]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Bootstrap stability of each metric's order (mean τ to resamples of the images), "
              "blur / zero / token drop: " + ", ".join(
                  f"{k} " + " / ".join(f"{r['meta'][b].bootstrap_stability[k]:.2f}" for b in ("blur", "zero", "token_drop"))
                  for k in METRICS) + ".", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curve-images", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--suite-images", type=int, default=8)
    ap.add_argument("--suite-baselines", nargs="+", default=["blur", "token_drop"],
                    choices=["blur", "token_drop"], help="token_drop alone for a 75-photo run")
    ap.add_argument("--course-images", type=int, default=96)
    ap.add_argument("--setting", default="quick", help="training setting of the synthetic ViT (quick: "
                    "cached by the notebook tests; full: trains ~15 min on 2 cores if not cached)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    loads = [load_average()]
    r = ranking(args)
    c = per_curve(args)
    loads.append(load_average())
    s = suite(args)
    loads.append(load_average())
    publish(report(c, s, r, loads, args), args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
