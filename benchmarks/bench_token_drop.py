"""Benchmark: token-drop perturbation (``baseline="token_drop"``) against painted baselines.

Three measurements (issue 16):

1. **Per curve**, torchvision ViT-B/16 (RANDOM weights: timing only), 20 steps: deletion +
   insertion curves of ``--curve-images`` pizza/steak/sushi test photos per call with the blur
   baseline and with token drop, float32 and bfloat16, interleaved round by round (the machine
   is shared); the same number of forward passes on both sides, the tokens those forwards
   carry counted exactly.
2. **Suite**, ViT-B/16, bfloat16: ``run_suite`` (deletion + insertion, Chefer's test, grid
   game) for rollout, grad_rollout, gradcam and the random control on ``--suite-images``
   photos, with ``baseline="blur"`` and ``"token_drop"``; extrapolated linearly to 75 photos,
   with the tokens the metrics' forwards carried and the bound they set at this machine's
   full-forward speed.
3. **Ranking agreement**: the course's synthetic ViT, TRAINED (notebook 08's setting), on
   ``--course-images`` synthetic test images: the suite under blur, zero and token drop, and
   :func:`vit_course.metrics.meta_evaluate`'s Kendall τ of each metric's method order
   between the baselines.

Usage::

    python benchmarks/bench_token_drop.py [--parts ranking curve suite] [--curve-images 1 4]
        [--curve-precisions float32 bfloat16] [--rounds 2] [--suite-images 8]
        [--suite-baselines blur token_drop] [--course-images 96] [--no-write]

Updates its section ("Token drop") of docs/BENCHMARKS.md; ``--no-write`` only prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from _common import (
    DOC,
    fmt_s,
    forward_rates,
    load_average,
    load_note,
    publish,
    stolen_seconds,
)
from bench_metrics import build, explainers, load_images

from vit_course.metrics import (
    deletion_curve,
    insertion_curve,
    meta_evaluate,
    run_suite,
    token_counts,
)
from vit_course.runtime import SEED, set_seed

PARTS = ("ranking", "curve", "suite")
METRICS = ("deletion_auc", "insertion_auc", "chefer_positive_auc", "chefer_negative_auc")


def curve_tokens(N: int, steps: int) -> dict[str, int]:
    """Tokens (class token included) the perturbed forwards of one deletion + one insertion
    curve carry: every painted image carries 1 + N; token drop carries 1 + the kept ones."""
    c = token_counts(steps, N)
    painted = sum(1 + N for k in c if 0 < k < N) * 2
    dropped = sum(1 + N - k for k in c if k > 0) + sum(1 + k for k in c if k < N)
    return {"painted": painted, "dropped": dropped}


def per_curve(args) -> dict:
    """Seconds per curve, blur vs token drop, for each (images per call, precision)."""
    model = build("vit_b_16")
    x_all, _, source = load_images(max(args.curve_images))
    maps_all = torch.rand(x_all.shape[0], 14, 14, generator=torch.Generator().manual_seed(SEED))
    secs = {(n, p, b): [] for n in args.curve_images for p in args.curve_precisions
            for b in ("blur", "token_drop")}
    for r in range(args.rounds):
        for (n, p, b), runs in secs.items():
            x, maps = x_all[:n], maps_all[:n]
            t0 = time.perf_counter()
            for fn in (deletion_curve, insertion_curve):
                fn(model, x, maps, steps=20, baseline=b, precision=p, progress=False)
            runs.append((time.perf_counter() - t0) / (2 * n))
            print(f"[curve] round {r} {n} images {p} {b}: {runs[-1]:.2f} s per curve", flush=True)
    return {"secs": {k: min(v) for k, v in secs.items()}, "source": source, "tokens": curve_tokens(196, 20)}


class TokenCounter:
    """Tokens the metrics' forwards carry: those entering block 1 in inference-mode forwards
    of the model (the clean images; rows of one length under TokenDrop) and the rows packed by
    :class:`vit_course.metrics.packing.PackedDrop` (prefix + kept tokens each). The
    explainers' forwards run with autograd and are not counted."""

    def __init__(self, model: torch.nn.Module) -> None:
        from vit_course.explain.families import blocks_of
        from vit_course.metrics import packing
        self.tokens = 0
        self._handle = blocks_of(model)[1].register_forward_pre_hook(self._hook)
        self._packing, self._logits = packing, packing.PackedDrop.logits

        def logits(packed, image, keep):
            self.tokens += sum(packed.prefix + len(k) for k in keep)
            return self._logits(packed, image, keep)

        packing.PackedDrop.logits = logits

    def _hook(self, _module, args) -> None:
        if torch.is_inference_mode_enabled():
            self.tokens += args[0].shape[0] * args[0].shape[1]

    def close(self) -> None:
        self._handle.remove()
        self._packing.PackedDrop.logits = self._logits


def suite(args) -> dict:
    model = build("vit_b_16")
    x, y, source = load_images(args.suite_images)
    fns, _ = explainers()
    out = {"n": x.shape[0], "source": source, "secs": {}, "net": {}, "explain": {}, "tokens": {},
           "forwards": {}}
    for b in args.suite_baselines:
        counter = TokenCounter(model)
        t0, st0 = time.perf_counter(), stolen_seconds()
        try:
            res = run_suite(model, x, y, fns, steps=20, baseline=b, controls=("random",), progress=False,
                            precision="bfloat16")
        finally:
            counter.close()
        out["secs"][b] = time.perf_counter() - t0
        out["net"][b] = out["secs"][b] - (stolen_seconds() - st0) / (os.cpu_count() or 1)
        out["explain"][b] = sum(v for k, v in res.timings.items() if k.endswith(("/explain", "/grid")))
        out["forwards"][b], out["tokens"][b] = res.forwards, counter.tokens
        print(f"[suite] {b}: {out['secs'][b]:.1f} s, {res.forwards} rows, {counter.tokens} tokens", flush=True)
    # a full bfloat16 forward at the suite's batch size, for the bound
    out["rate"] = forward_rates(model, x[:16].repeat(4, 1, 1, 1), [(torch.get_num_threads(), 64, "bfloat16")],
                                rounds=1, seconds=10)[(torch.get_num_threads(), 64, "bfloat16")]
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


SECTION = "## Token drop: removed patches leave the sequence"
CURVE, SUITE, RANK = ("### Per curve", "### Suite", "### Does the baseline change")


def kept(prefix: str) -> list[str]:
    """The subsection of this section in docs/BENCHMARKS.md whose heading starts with
    ``prefix``, as last written (for the parts a run skips); a note if there is none."""
    text = DOC.read_text() if DOC.is_file() else ""
    start = text.find(SECTION + "\n")
    end = text.find("\n## ", start + 1) if start != -1 else -1
    body = text[start:end if end != -1 else None] if start != -1 else ""
    at = body.find("\n" + prefix)
    if at == -1:
        return [f"{prefix}: not measured yet (run this part).", ""]
    nxt = body.find("\n### ", at + 1)
    return body[at + 1:nxt if nxt != -1 else None].rstrip().split("\n") + [""]


def curve_report(c: dict, args) -> list[str]:
    sec, tok = c["secs"], c["tokens"]
    lines = [f"{CURVE}, ViT-B/16 (random weights), 20 steps", "",
             f"Deletion + insertion curves ({c['source']}), the best of {args.rounds} interleaved rounds, "
             "seconds per curve. Blur runs 19 perturbed forwards per curve, token drop 20: the same 19 "
             "plus the class token alone (everything removed), which the blur baseline takes from its "
             "one cached full-baseline forward per image. Tokens per deletion + insertion pair: "
             f"painted {tok['painted']}, dropped {tok['dropped']} ({tok['painted'] / tok['dropped']:.2f}× fewer). "
             "Both stack up to 64 perturbed rows per forward: blur as painted images, token drop as "
             "rows of any lengths packed into one pass (`vit_course.metrics.packing`). Before packing, "
             "token drop could stack only the rows that keep the same number of tokens, one per curve "
             "run together, and measured 1.64× in bfloat16 at 4 images per call (session 5).", "",
             "| images per call | precision | blur | token drop | speed-up (goal ≥ 1.8×) |", "|---:|---|---:|---:|---:|"]
    for n in args.curve_images:
        for p in args.curve_precisions:
            a, b = sec[n, p, "blur"], sec[n, p, "token_drop"]
            lines.append(f"| {n} | {p} | {a:.2f} s | {b:.2f} s | **{a / b:.2f}×** |")
    return lines + [""]


def suite_report(s: dict) -> list[str]:
    extrapolated = s["n"] < 75
    lines = [f"{SUITE}, ViT-B/16 (random weights), bfloat16", "",
             "`run_suite(..., precision=\"bfloat16\")` with rollout, grad_rollout, gradcam and the random "
             f"control on {s['n']} photos ({s['source']})"
             + (", then extrapolated linearly to 75 (a subset was measured)." if extrapolated else "."),
             "Net is the wall time less the CPU time the host gave to other guests (steal). Rows are the "
             "images the metrics ran through the model; full-forward equivalents are the tokens those "
             "rows carried divided by 197. A sequence two curves share runs once (Chefer's negative test keeps "
             "insertion's tokens, its positive test deletion's where the roundings meet; maps with ties "
             "break them the other way round and share less).", "",
             "| baseline | measured | net | of which explainers | rows | full-forward equivalents | 75 photos (net) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for b in s["secs"]:
        lines.append(f"| {b} | {fmt_s(s['secs'][b])} | {fmt_s(s['net'][b])} | {fmt_s(s['explain'][b])} | "
                     f"{s['forwards'][b]:,} | {s['tokens'][b] / 197:,.0f} | {fmt_s(s['net'][b] / s['n'] * 75)} |")
    if "token_drop" in s["secs"]:
        net = s["net"]["token_drop"] / s["n"] * 75
        bound = s["tokens"]["token_drop"] / 197 / s["rate"] / s["n"] * 75
        lines += ["", f"Goal ≤ 10 min for 75 photos with token drop: **{'met' if net <= 600 else 'not met'}** "
                  f"({fmt_s(net)} net). For scale: a full ViT-B/16 forward in bfloat16 ran at {s['rate']:.1f} "
                  f"images/s right after the suite (batch 64, wall time), so the metrics' "
                  f"{s['tokens']['token_drop'] / 197:,.0f} full-forward equivalents"
                  f"{' (scaled to 75 photos)' if extrapolated else ''} would take {fmt_s(bound)} at that speed "
                  f"(shorter sequences cost a little less per token: their attention is smaller), and the "
                  f"explainers (float32, with backward passes) took {fmt_s(s['explain']['token_drop'] / s['n'] * 75)}."]
    return lines + [""]


def rank_report(r: dict, args) -> list[str]:
    lines = [f"{RANK} the methods' order? (course ViT, trained, {r['n']} synthetic images)", "",
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
    return lines


def report(c: dict | None, s: dict | None, r: dict | None, loads: list[float], args) -> str:
    lines = [SECTION, "",
             "Script: `benchmarks/bench_token_drop.py` (rerun: `python benchmarks/bench_token_drop.py`; "
             "`--parts` reruns some subsections and keeps the others as last written). Rounds "
             "interleaved, best of each. This run (" + ", ".join(args.parts) + "): " + load_note(*loads), ""]
    lines += curve_report(c, args) if c else kept(CURVE)
    lines += suite_report(s) if s else kept(SUITE)
    lines += rank_report(r, args) if r else kept(RANK)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--curve-images", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--curve-precisions", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"])
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
    r = ranking(args) if "ranking" in args.parts else None
    c = per_curve(args) if "curve" in args.parts else None
    loads.append(load_average())
    s = suite(args) if "suite" in args.parts else None
    loads.append(load_average())
    publish(report(c, s, r, loads, args), args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
