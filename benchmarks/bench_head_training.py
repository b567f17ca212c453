"""Benchmark: one epoch of head training on cached CLS features vs on images through the frozen backbone.

Both sides train the same ``nn.Linear(768, 3)`` head of torchvision's ViT-B/16 with Adam
through :func:`vit_course.engine.train_step`; only the input differs:

- images: every batch runs the frozen 86 M-parameter backbone forward (no backward into it);
- features: the backbone ran once (:func:`vit_course.pretrained.extract_features`) and the
  head trains on the (n, 768) features.

Timing does not depend on the weights' values, so stand-in weights are fine: when the torch
hub cache has no ViT-B/16 file, one is seeded into a temporary ``TORCH_HOME``. Data: the
pizza/steak/sushi training split (225 images) when ``VIT_COURSE_DATA_SOURCE`` is set (or the
dataset is already downloaded), else 225 random 224 px images. Images are decoded and
transformed once beforehand (``create_dataloaders(cache=True)``), so the image side is
timed at its best. ``--image-batches N`` times only the first N batches of the image epoch
and extrapolates to the full epoch (the table says so).

Usage::

    python benchmarks/bench_head_training.py [--image-batches N] [--head-epochs 20] [--no-write]

Writes the section "Head training: cached features vs frozen backbone" of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _common import DOC, load_note, splice_section
from vit_course import engine, pretrained, standin
from vit_course.runtime import SEED, set_seed

SECTION = "## Head training: cached features vs frozen backbone"


def _data(transform, batch_size: int):
    """(train_loader, description): the real training split if available, else random images."""
    from vit_course.data import create_dataloaders, default_data_dir, download_pizza_steak_sushi

    have_real = os.environ.get("VIT_COURSE_DATA_SOURCE") or (
        default_data_dir() / "pizza_steak_sushi" / "train").is_dir()
    if have_real:
        root = download_pizza_steak_sushi()
        train_dl, _, _ = create_dataloaders(root / "train", root / "test", transform,
                                            batch_size=batch_size)
        return train_dl, f"pizza/steak/sushi train split ({len(train_dl.dataset)} images)"
    set_seed(SEED)
    images = torch.randn(225, 3, 224, 224)
    labels = torch.arange(225) % 3
    dl = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True,
                    generator=torch.Generator().manual_seed(SEED))
    return dl, "225 random 224 px images (VIT_COURSE_DATA_SOURCE unset)"


class _FirstBatches:
    """The first ``n`` batches of a loader (for a partial, extrapolated image epoch)."""

    def __init__(self, loader: DataLoader, n: int):
        self.loader, self.n = loader, n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch


def run(image_batches: int | None, head_epochs: int, batch_size: int) -> dict:
    load_before = os.getloadavg()[0]
    torch_home_tmp = None
    if pretrained.weights_status() == "missing":
        torch_home_tmp = tempfile.TemporaryDirectory(prefix="bench_torch_home_")
        standin.seed_standin_torch_home(torch_home_tmp.name)
        torch.hub.set_dir(str(Path(torch_home_tmp.name) / "hub"))
    status = pretrained.weights_status()
    model, transform = pretrained.build_pretrained_vit(progress=False)
    train_dl, data_desc = _data(transform, batch_size)
    n = len(train_dl.dataset)
    n_batches = len(train_dl)
    loss_fn = nn.CrossEntropyLoss()

    # images through the frozen backbone
    optimizer = torch.optim.Adam(model.heads.parameters(), lr=1e-3)
    timed_batches = n_batches if image_batches is None else min(image_batches, n_batches)
    loader = train_dl if timed_batches == n_batches else _FirstBatches(train_dl, timed_batches)
    t0 = time.perf_counter()
    engine.train_step(model, loader, loss_fn, optimizer, "cpu")
    t_images_measured = time.perf_counter() - t0
    t_image_epoch = t_images_measured * n_batches / timed_batches

    # one-off feature extraction (cache disabled so it is really computed)
    t0 = time.perf_counter()
    feats, labels = pretrained.extract_features(model, train_dl, cache=False, progress=False)
    t_extract = time.perf_counter() - t0

    # head on features
    head = pretrained.new_head(feats.shape[1], 3, SEED)
    feat_dl = pretrained.feature_loader(feats, labels, batch_size, shuffle=True, seed=SEED)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    engine.train_step(head, feat_dl, loss_fn, optimizer, "cpu")  # warm-up
    times = []
    for _ in range(head_epochs):
        t0 = time.perf_counter()
        engine.train_step(head, feat_dl, loss_fn, optimizer, "cpu")
        times.append(time.perf_counter() - t0)
    t_feat_epoch = statistics.median(times)
    if torch_home_tmp is not None:
        torch_home_tmp.cleanup()
    return dict(n=n, n_batches=n_batches, timed_batches=timed_batches, batch_size=batch_size,
                data=data_desc, status=status, t_image_epoch=t_image_epoch,
                t_images_measured=t_images_measured, t_extract=t_extract,
                t_feat_epoch=t_feat_epoch, head_epochs=head_epochs,
                threads=torch.get_num_threads(), load=(load_before, os.getloadavg()[0]))


def table(r: dict) -> str:
    partial = (f" (measured on {r['timed_batches']} of {r['n_batches']} batches, "
               f"{r['t_images_measured']:.1f} s, extrapolated)"
               if r["timed_batches"] < r["n_batches"] else " (full epoch measured)")
    ratio = r["t_image_epoch"] / r["t_feat_epoch"]
    rows = [
        "| step | time | note |",
        "|---|---:|---|",
        f"| 1 epoch, frozen backbone on images | {r['t_image_epoch']:.2f} s | {partial.strip(' ()')} |",
        f"| 1 epoch, head on cached features | {r['t_feat_epoch'] * 1000:.2f} ms | median of {r['head_epochs']} epochs |",
        f"| feature extraction, once | {r['t_extract']:.2f} s | `extract_features`, inference mode |",
        f"| **speed-up per epoch** | **{ratio:,.0f}×** | |",
    ]
    return "\n".join(rows)


def section(r: dict) -> str:
    cpu = platform.processor() or platform.machine()
    return f"""{SECTION}

Script: `benchmarks/bench_head_training.py` (rerun: `python benchmarks/bench_head_training.py`).
Same `nn.Linear(768, 3)` head of torchvision ViT-B/16, Adam, batch {r['batch_size']}, one
epoch through `engine.train_step`; only the input differs: images through the frozen
backbone, or the backbone's cached CLS features.
Data: {r['data']}, already decoded and resized in memory.
Weights: {r['status']} (timing does not depend on their values).

{table(r)}

Reading: the head alone is a 2,307-parameter linear layer, so an epoch on features costs
almost nothing; on images, every epoch pays for the backbone's forward pass over all images.
Feature extraction costs about one image epoch, once, so caching pays off from the second
epoch on (notebook 03 trains 10 epochs in the full profile).

Machine: {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} with {r['threads']}
threads, no GPU; 1-minute load average {r['load'][0]:.1f} at the start, {r['load'][1]:.1f} at the end.
{load_note(*r['load'])}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-batches", type=int, default=None,
                        help="time only this many image batches and extrapolate (default: full epoch)")
    parser.add_argument("--head-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args(argv)
    if args.image_batches is not None and args.image_batches < 1:
        parser.error(f"--image-batches must be >= 1, got {args.image_batches}")
    r = run(args.image_batches, args.head_epochs, args.batch_size)
    print(table(r))
    if not args.no_write:
        heading = splice_section(section(r))
        print(f"updated {heading!r} in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
