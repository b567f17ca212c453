"""Scaffolding the benchmark scripts share: writing their docs section, machine load, times."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)                     # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def splice_section(text: str, doc: Path = DOC) -> str:
    """Put ``text`` (a section starting with its ``## `` heading) into ``doc``: over the
    section with the same heading (up to the next ``## ``), or at the end. Returns the heading."""
    heading = text.lstrip().splitlines()[0]
    if not heading.startswith("## "):
        raise ValueError(f"a benchmark section must start with a '## ' heading, got {heading!r}")
    old = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    start = old.find(heading + "\n")
    if start == -1:
        new = old.rstrip() + "\n\n" + text.strip() + "\n"
    else:
        nxt = old.find("\n## ", start + len(heading))
        new = old[:start] + text.strip() + "\n" + ("\n" + old[nxt + 1:] if nxt != -1 else "")
    write_atomic(doc, new)
    return heading


def publish(text: str, no_write: bool, doc: Path = DOC) -> None:
    """Print a benchmark's report section and, unless ``no_write``, splice it into ``doc``."""
    print(text)
    if not no_write:
        heading = splice_section(text, doc)
        print(f"updated {heading!r} in {doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc}")


def random_vit_b16(num_classes: int = 3) -> nn.Module:
    """torchvision ViT-B/16 with random weights and a random (not zero) head, in eval mode.

    torchvision zero-initialises the head, which makes every logit and gradient 0; timings do
    not depend on the values, but the maps and the predicted classes should not be degenerate.
    """
    from torchvision.models import vit_b_16

    from vit_course.runtime import SEED, set_seed

    set_seed(SEED)
    model = vit_b_16(weights=None, num_classes=num_classes)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    nn.init.normal_(model.heads.head.bias, std=0.02)
    return model.eval()


def forward_rates(model: nn.Module, x: torch.Tensor, configs: list[tuple[int, int, str]],
                  rounds: int = 3, seconds: float = 5.0) -> dict[tuple[int, int, str], float]:
    """Forward images/s per ``(threads, batch, precision)``, inference mode, median of ``rounds``.

    ``x[:batch]`` is the input; precision is ``"float32"`` or ``"bfloat16"`` (autocast). The
    configurations are measured in turn, round after round, so a change in the machine's load
    hits all of them alike. Torch's thread count is restored afterwards.
    """
    old = torch.get_num_threads()
    runs: dict[tuple[int, int, str], list[float]] = {c: [] for c in configs}
    try:
        for _ in range(rounds):
            for threads, bs, precision in configs:
                torch.set_num_threads(threads)
                with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16,
                                                            enabled=precision == "bfloat16"):
                    model(x[:bs])                                   # warm-up
                    n, t0 = 0, time.perf_counter()
                    while n == 0 or time.perf_counter() - t0 < seconds:
                        model(x[:bs])
                        n += bs
                runs[(threads, bs, precision)].append(n / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(old)
    return {c: statistics.median(v) for c, v in runs.items()}


def load_average() -> float:
    """1-minute load average (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def load_note(*loads: float) -> str:
    """One sentence on what the 1-minute load averages of a run mean for its figures."""
    cores = os.cpu_count() or 1
    seen = [x for x in loads if x == x]                      # drop NaN
    if seen and max(seen) > cores + 0.5:
        return (f"A load above {cores} means other jobs shared the {cores} cores during the run: "
                "absolute times are inflated by an unknown factor, ratios are steadier.")
    return (f"The load stayed at or below the {cores} cores: no other job ran on this machine "
            "(other guests of the host can still slow it down).")


def fmt_s(s: float) -> str:
    """Seconds as s, min or h, whichever reads best."""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def stolen_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests so far, summed over this machine's
    CPUs (the "steal" column of /proc/stat); NaN where the kernel does not report it.
    Wall time minus stolen / cores is what a CPU-bound run would have taken alone."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")
