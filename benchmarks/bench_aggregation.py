"""Experiment: rollout's aggregation chosen by faithfulness (``metrics.search_aggregation``).

The course's synthetic ViT, TRAINED (``load_or_train_synthetic_vit``), ``--images`` synthetic
test images to choose on and as many held-out ones to report on; the whole grid (head fusion
mean/max/min × start layer 0, L/4, L/2 × discard 0, 0.5, 0.9 × row cls/mean/max) scored by
the deletion AUC (token drop, ``--steps`` steps), for rollout and gradient rollout.

Usage::

    python benchmarks/bench_aggregation.py [--images 24] [--steps 10] [--no-write]
"""

from __future__ import annotations

import argparse
import sys

from _common import fmt_s, load_average, load_note, publish
from vit_course.metrics import search_aggregation
from vit_course.runtime import SEED, set_seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--setting", default="quick")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from vit_course.data.synthetic import SyntheticFood
    from vit_course.models import load_or_train_synthetic_vit

    set_seed(SEED)
    loads = [load_average()]
    model, _ = load_or_train_synthetic_vit(setting=args.setting)
    x = SyntheticFood(2 * args.images, split="test").images.float() / 255
    sel, held = x[:args.images], x[args.images:]
    res = {m: search_aggregation(model.eval(), sel, held, method=m, steps=args.steps, seed=SEED)
           for m in ("rollout", "grad_rollout")}
    loads.append(load_average())
    lines = ["## Aggregation chosen by faithfulness", "",
             "Script: `benchmarks/bench_aggregation.py` (rerun: `python benchmarks/bench_aggregation.py`). "
             f"Course synthetic ViT (trained, setting {args.setting!r}); {args.images} synthetic test images to "
             f"choose on, {args.images} others held out; deletion AUC (lower is better), token drop, {args.steps} "
             f"steps, predicted class. Measured on a shared, loaded machine ({load_note(*loads)})", "",
             "| method | settings | best setting | held-out AUC, best | default | best − default [95 % CI] |",
             "|---|---:|---|---:|---:|---:|"]
    for m, r in res.items():
        b = r.best
        ho = r.held_out
        lines.append(f"| {m} | {len(r.settings)} | fusion {b['head_fusion']}, start {b['start_layer']}, discard "
                     f"{b['discard_ratio']}, row {b['reading']} | {ho['best'][0]:.3f} [{ho['best'][1]:.3f}, {ho['best'][2]:.3f}] | "
                     f"{ho['default'][0]:.3f} [{ho['default'][1]:.3f}, {ho['default'][2]:.3f}] | "
                     f"{ho['best_minus_default'][0]:+.3f} [{ho['best_minus_default'][1]:+.3f}, {ho['best_minus_default'][2]:+.3f}] |")
    lines += ["", "Cost (attentions captured once per image; only the rollout maths and the metric repeat):", "",
              "| method | capture forwards | capture | rollout maths, all settings | metric forwards | metric |",
              "|---|---:|---:|---:|---:|---:|"]
    for m, r in res.items():
        s, f = r.seconds, r.forwards
        lines.append(f"| {m} | {f['capture']} | {fmt_s(s['capture'])} | {fmt_s(s['rollout'])} | {f['metric']} | {fmt_s(s['metric'])} |")
    lines += ["", "Reading: the best setting is chosen on other images than those it is reported on; an "
              "interval of best − default that contains 0 shows no difference, one above 0 (deletion: lower is "
              "better) means the choice overfit the selection images.", ""]
    publish("\n".join(lines) + "\n", args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
