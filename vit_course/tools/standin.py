"""Stand-in ViT-B/16 checkpoint for OFFLINE TESTS ONLY.

The real ImageNet weights (``vit_b_16-c867db91.pth``, 330 MB) come from torchvision's
weight server, which test machines cannot reach. So that tests and nbval still run the
real loading path (torchvision builder -> torch hub cache -> ``load_state_dict``), this
module writes a checkpoint of the right architecture, *randomly initialised*, under the
exact file name torchvision expects, into a throw-away ``TORCH_HOME``::

    python -m vit_course.standin /tmp/torch_home_standin   # runs this module's main()
    TORCH_HOME=/tmp/torch_home_standin pytest

Nothing learned is in this file: a model built from it knows nothing about ImageNet.
:func:`vit_course.pretrained.weights_status` recognises it (its SHA-256 does not start
with the hash prefix in the file name) and every builder call then prints one line saying
that results come from stand-in weights. Never point a classroom ``TORCH_HOME`` at it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from ..runtime import set_seed
from .weights import atomic_torch_save

#: The architectures a stand-in can be written for, mapped to the weights entry whose
#: file name it takes (torchvision's ``DEFAULT`` entry for that architecture).
STANDIN_ARCHS = ("vit_b_16",)


def checkpoint_filename(arch: str = "vit_b_16") -> str:
    """torchvision's file name for ``arch``'s DEFAULT weights, e.g. ``vit_b_16-c867db91.pth``."""
    weights = get_model_weights(arch).DEFAULT
    return os.path.basename(urlparse(weights.url).path)


def standin_state_dict(arch: str = "vit_b_16", seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised torchvision ``arch`` with a 1000-class head.

    torchvision zero-initialises the classification head; the stand-in gives it small
    random weights instead, so logits and gradients of an unmodified model are not all zero.
    """
    if arch not in STANDIN_ARCHS:
        raise ValueError(f"arch must be one of {STANDIN_ARCHS}, got {arch!r}; "
                         "add the architecture to STANDIN_ARCHS if it needs a stand-in.")
    set_seed(seed)
    model = get_model(arch, weights=None, num_classes=1000)
    head = model.heads.head
    nn.init.normal_(head.weight, std=0.02)
    nn.init.normal_(head.bias, std=0.02)
    return model.state_dict()


def seed_standin_torch_home(torch_home: str | os.PathLike, arch: str = "vit_b_16",
                            seed: int = 0) -> Path:
    """Write a stand-in checkpoint into ``torch_home/hub/checkpoints/`` (offline tests only).

    Idempotent: an existing file of that name is left as it is. The file appears
    atomically (written to a temporary file in the same folder, then renamed).

    Args:
        torch_home: the folder tests will use as ``$TORCH_HOME``.
        arch: torchvision architecture name (only ``"vit_b_16"``).
        seed: seed of the random initialisation.

    Returns:
        Path of the checkpoint, ``torch_home/hub/checkpoints/vit_b_16-c867db91.pth``.
    """
    folder = Path(torch_home).expanduser() / "hub" / "checkpoints"
    target = folder / checkpoint_filename(arch)
    if target.is_file():
        return target
    state = standin_state_dict(arch, seed)
    atomic_torch_save(state, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vit_course.standin",
        description="Seed TORCH_HOME with a RANDOM stand-in ViT-B/16 checkpoint under "
                    "torchvision's file name. For offline tests only: it holds no "
                    "pretrained knowledge.")
    parser.add_argument("torch_home", help="folder to use as $TORCH_HOME")
    parser.add_argument("--arch", default="vit_b_16", choices=STANDIN_ARCHS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = seed_standin_torch_home(args.torch_home, arch=args.arch, seed=args.seed)
    print(f"stand-in (random, NOT pretrained) checkpoint: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
