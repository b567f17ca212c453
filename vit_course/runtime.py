"""Seeds, device, course profile and project paths: the one place that sets them.

The course profile is chosen with the environment variable ``VIT_COURSE_PROFILE``:

- ``full`` (default): the classroom run, every image, the epochs the notebooks argue for.
- ``quick``: used by the test-suite (nbval) and CI; fewer epochs and images so each
  notebook runs in a minute or two on a laptop CPU. Numbers from it are *not* the
  course's results, and notebooks print the active profile so nobody mistakes them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

SEED = 42
PROFILE_ENV = "VIT_COURSE_PROFILE"
PROFILES = ("full", "quick")
ARTIFACTS_ENV = "VIT_COURSE_ARTIFACTS"

T = TypeVar("T")


def set_seed(seed: int = SEED) -> int:
    """Seed ``random``, NumPy and torch (CPU and CUDA) and return the seed.

    Every notebook calls this once at the top; training and data helpers call it
    again with the same value where the order of random draws matters.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the device: ``prefer`` if given, else CUDA, else Apple MPS, else CPU."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Profile:
    """The active course profile. Use :meth:`pick` to choose a value per profile.

    Example::

        EPOCHS = profile.pick(full=10, quick=1)
    """

    name: str

    @property
    def is_quick(self) -> bool:
        return self.name == "quick"

    def pick(self, full: T, quick: T) -> T:
        """Return ``full`` in the full profile and ``quick`` in the quick one."""
        return quick if self.is_quick else full

    def banner(self) -> str:
        if self.is_quick:
            return (f"Course profile: quick ({PROFILE_ENV}=quick): fewer epochs and images, "
                    "for tests and CI. These numbers are not the course's results.")
        return "Course profile: full (the classroom run)."


def get_profile() -> Profile:
    """Read ``VIT_COURSE_PROFILE`` (``full`` or ``quick``; default ``full``)."""
    name = os.environ.get(PROFILE_ENV, "full").strip().lower() or "full"
    if name not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV}={name!r} is not a course profile; use one of {PROFILES} "
            f"(unset it for the full classroom run)."
        )
    return Profile(name)


def project_root() -> Path | None:
    """The checkout's root when the package runs from a clone (editable install), else None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def artifacts_dir() -> Path:
    """Where notebooks save trained models and caches: ``$VIT_COURSE_ARTIFACTS``,
    else ``<checkout>/artifacts``, else ``~/.cache/vit_course/artifacts``. Created if missing."""
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        path = Path(env).expanduser()
    elif project_root() is not None:
        path = project_root() / "artifacts"
    else:
        path = Path.home() / ".cache" / "vit_course" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode for the block and restore every module's training flag
    afterwards, also when the block raises (a mixed train/eval state comes back exactly)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
