"""Benchmark: transformer attribution alone vs inside a batch, in float32 and float64 (issue 14).

Model: torchvision ``vit_b_16(weights=None)`` (torchvision's initialisation, seed 0) with
its 1000-class head drawn from N(0, 0.02²) (torchvision zero-initialises it), ``--batch``
images (default 3) of uniform noise (generator seed 15).
For each precision: the maps of the batch, then of each image alone, both min-max
normalised; the figure is the largest difference per image, and the two wall times.

Usage::

    python benchmarks/bench_lrp_precision.py [--batch 3] [--threads 2] [--no-write]

Updates its section ("Transformer attribution: float32 and float64") of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from torch import nn
from torchvision.models import vit_b_16

from _common import load_note, publish
from vit_course.explain import explain
from vit_course.imaging import normalize_maps
from vit_course.runtime import set_seed


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def measure(model, x, precision: str) -> tuple[list[float], float, float]:
    def maps(images):
        return normalize_maps(explain(model, images, "transformer_attribution", target=0,
                                      precision=precision))
    t0 = time.perf_counter()
    batch = maps(x)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    diffs = [float((maps(x[i:i + 1])[0] - batch[i]).abs().max()) for i in range(len(x))]
    return diffs, t_batch, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = load()
    set_seed(0)
    model = vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(15))
    rows = []
    for precision in ("float32", "float64"):
        diffs, t_batch, t_alone = measure(model, x, precision)
        rows.append(f"| {precision} | {', '.join(f'{d:.2g}' for d in diffs)} | "
                    f"{t_batch:.0f} s | {t_alone:.0f} s |")
        print(rows[-1], flush=True)
    text = f"""## Transformer attribution: float32 and float64

Script: `benchmarks/bench_lrp_precision.py`. ViT-B/16 (torchvision's initialisation, random
head), {args.batch} random images, target class 0; largest difference between an image's min-max normalised map
alone and inside the batch, per image; torch on {args.threads} thread(s).

| precision | alone vs batch, per image | batch | each image alone |
|---|---|---:|---:|
{chr(10).join(rows)}

Load average {start:.1f} at the start, {load():.1f} at the end. {load_note(start, load())}
"""
    publish(text, args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
