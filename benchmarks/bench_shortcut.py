"""Experiment: the planted shortcut on the real pizza/steak/sushi photos (issue 16).

A magenta square, one 16-px patch large, at a random grid position on every training photo of
``--class`` (default pizza); a linear head trained on the cached features of the backbone
(notebook 03's recipe, :func:`vit_course.metrics.shortcut.plant_shortcut`) next to a control
head trained on the clean photos. Measured on the test photos of the other classes with the
square painted on: how often each head calls them ``--class`` (the square's pull), then the
share of each method's mass on the square's patch (rollout, grad_rollout, gradcam, random).

The backbone is ``build_pretrained_vit()`` (ViT-B/16): with ``TORCH_HOME`` on a stand-in
checkpoint its weights are RANDOM, and the report says so; then the question it answers is
whether random features still carry the square.

Usage::

    TORCH_HOME=.cache/test/torch-standin python benchmarks/bench_shortcut.py [--train 225]
        [--test 75] [--explain 24] [--no-write]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch

from _common import fmt_s, load_average, load_note, publish
from vit_course.explain import explain
from vit_course.metrics import summarise
from vit_course.metrics.shortcut import plant_shortcut, shortcut_scores
from vit_course.pretrained import build_pretrained_vit
from vit_course.runtime import SEED, set_seed

METHODS = ("rollout", "grad_rollout", "gradcam")


def photos(split: str, n: int):
    """First ``n`` photos of a split (classes interleaved), ImageNet transform, and labels."""
    from vit_course.data import download_pizza_steak_sushi, imagenet_transform, load_image

    root = download_pizza_steak_sushi() / split
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    per = [sorted(p for p in (root / c).iterdir() if not p.name.startswith(".")) for c in classes]
    pairs = [(per[c][k], c) for k in range(max(map(len, per))) for c in range(len(per)) if k < len(per[c])][:n]
    tf = imagenet_transform(224)
    return torch.stack([tf(load_image(p)) for p, _ in pairs]), torch.tensor([c for _, c in pairs]), classes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=225)
    ap.add_argument("--test", type=int, default=75)
    ap.add_argument("--explain", type=int, default=24, help="square photos explained per head")
    ap.add_argument("--class", dest="cls", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    set_seed(SEED)
    loads = [load_average()]
    model, _ = build_pretrained_vit(progress=False)
    info = model.pretrained_info
    xtr, ytr, classes = photos("train", args.train)
    xte, yte, _ = photos("test", args.test)
    t0 = time.perf_counter()
    sc = plant_shortcut(model, xtr, ytr, xte, yte, shortcut_class=args.cls)
    t_train = time.perf_counter() - t0
    print("accuracy", sc.accuracy, "square rate", sc.square_rate, flush=True)
    sc.square_images, sc.square_tokens = sc.square_images[:args.explain], sc.square_tokens[:args.explain]
    fns = {m: functools.partial(explain, method=m) for m in METHODS}
    fns["random"] = functools.partial(explain, method="random", seed=SEED)
    t0 = time.perf_counter()
    scores = shortcut_scores(model, sc, fns)
    t_explain = time.perf_counter() - t0
    loads.append(load_average())
    standin = bool(getattr(info, "is_standin", False))
    label = ("**stand-in weights (RANDOM, not the ImageNet ViT-B/16)**" if standin
             else "the pretrained ImageNet ViT-B/16 weights")
    lines = ["## Planted shortcut on the real photos", "",
             "Script: `benchmarks/bench_shortcut.py` (rerun: `TORCH_HOME=<weights> python benchmarks/bench_shortcut.py`). "
             f"Backbone: ViT-B/16 with {label}. A magenta square, one 16-px patch, at a random grid "
             f"position on each of the {int((ytr == args.cls).sum())} training photos of `{classes[args.cls]}` "
             f"({xtr.shape[0]} training photos in all); linear heads trained on cached features "
             "(`plant_shortcut`: Adam, lr 0.01, 30 epochs); test on "
             f"{xte.shape[0]} test photos. Measured on a shared, loaded machine ({load_note(*loads)}) "
             f"features + heads {fmt_s(t_train)}, explanations {fmt_s(t_explain)}.", "",
             "| head | clean test accuracy | other classes' test photos with the square called "
             f"`{classes[args.cls]}` |", "|---|---:|---:|"]
    for h in ("shortcut", "control"):
        lines.append(f"| {h} | {sc.accuracy[h]:.1%} | {sc.square_rate[h]:.1%} |")
    n = sc.square_images.shape[0]
    lines += ["", f"Share of each method's positive mass on the square's patch, {n} square photos explained "
              f"for `{classes[args.cls]}` (a map on only the square scores 1, a uniform map 1/196 = 0.005), "
              "mean [95 % bootstrap interval]:", "",
              "| method | shortcut head | control head |", "|---|---:|---:|"]
    rows = {h: {r["method"]: r for r in summarise({m: {"mass": v} for m, v in scores[h].items()})} for h in scores}
    for m in fns:
        lines.append(f"| {m} | " + " | ".join(f"{rows[h][m]['mean']:.3f} [{rows[h][m]['lo']:.3f}, {rows[h][m]['hi']:.3f}]"
                                              for h in ("shortcut", "control")) + " |")
    lines += ["", "Reading: the shortcut head's pull (its rate minus the control's) says whether the features "
              "carry the square" + (" even though the backbone's weights are random" if standin else "") +
              "; where they do, a faithful class-specific method should put far more mass on the square for "
              "the shortcut head than for the control head, and far more than a random map.", ""]
    publish("\n".join(lines) + "\n", args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
