"""Classroom preparation: fetch the dataset and the ViT-B/16 weights ahead of class.

Run once on a machine with internet (each part is skipped when already in place)::

    python -m vit_course.download --all      # or: make download / vit-course-download --all
    python -m vit_course.download --data     # only pizza/steak/sushi
    python -m vit_course.download --weights  # only torchvision's ViT-B/16 (330 MB)

The dataset goes where :func:`vit_course.data.download_pizza_steak_sushi` keeps it
(``$VIT_COURSE_DATA_DIR``, default ``<checkout>/data``); the weights into torchvision's own
cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``), so
notebooks then run offline. The command prints where everything went and exits non-zero,
with the reason and the fix, when something could not be fetched. ``python -m
vit_course.download`` and the ``vit-course-download`` script run :func:`main` here.
"""

from __future__ import annotations

import argparse
import sys

from .weights import DEFAULT_ARCH, WeightsUnavailableError, ensure_weights, weights_status


def fetch_data() -> str:
    """Download and verify the dataset; return a one-line report."""
    from ..data import download_pizza_steak_sushi

    root = download_pizza_steak_sushi()
    return f"dataset : {root}  (train/ and test/, verified)"


def fetch_weights(weights: str = "DEFAULT", arch: str = DEFAULT_ARCH) -> str:
    """Put torchvision's weights for ``arch`` into the torch hub cache; return a one-line report."""
    path = ensure_weights(weights, arch, progress=True)
    status = weights_status(weights, arch)
    if status == "stand-in":
        raise WeightsUnavailableError(
            f"{path} is a STAND-IN checkpoint (random weights for offline tests), not "
            "torchvision's pretrained file. Delete it and run this command again with internet, "
            "or point TORCH_HOME at another folder.")
    note = "SHA-256 checked" if status == "genuine" else "no hash in the file name to check"
    return f"weights : {path}  ({note})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vit_course.download`` / ``vit-course-download``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m vit_course.download",
        description="Fetch the course dataset and the pretrained ViT-B/16 weights into their "
                    "caches, so notebooks run without internet during class.")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--all", action="store_true", help="dataset and weights (the default)")
    what.add_argument("--data", action="store_true", help="only the pizza/steak/sushi dataset")
    what.add_argument("--weights", action="store_true", help="only the ViT-B/16 weights")
    args = parser.parse_args(argv)
    steps = []
    if args.data or args.all or not args.weights:
        steps.append(("dataset", fetch_data))
    if args.weights or args.all or not args.data:
        steps.append(("weights", fetch_weights))

    failed = []
    for name, step in steps:
        try:
            print(step(), flush=True)
        except Exception as exc:  # report every part, then fail once
            failed.append(name)
            print(f"FAILED {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    if failed:
        print(f"Not ready for offline use: {' and '.join(failed)} failed (see above). Fix that and "
              "run the command again; parts already in place are skipped.", file=sys.stderr)
        return 1
    print("Ready: notebooks can now run offline.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
