"""``make cards``: docs/METHODS.md from the code, one card per registered explanation method.

Each card says what the code says (paper = the class docstring's first sentence, needs =
the class attributes and options) and what it measures, on the spot:

- model passes: image rows through the patch embedding per image (the model's module or a
  method's own convolution of its weights), counted on a small torchvision ViT (the count
  does not depend on the width), and whether ``torch.autograd.grad`` runs;
- cost on ViT-B/16 in plain forward passes: read from docs/BENCHMARKS.md's table written by
  ``benchmarks/bench_methods.py`` (not measured here: minutes per method on a CPU);
- class sensitivity: target-minus-other mass on the synthetic two-object images, with the
  course's trained synthetic ViT (``load_or_train_synthetic_vit``, quick setting);
- batch invariance (a batch of 3 vs the images one by one) and determinism (two calls);
- suite scores with 95 % bootstrap intervals (``run_suite``, token drop, synthetic images).

Usage: ``python -m vit_course.tools.cards [--out docs/METHODS.md] [--images 24] [--pairs 12]``.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vit_course.explain import METHODS, explain
from vit_course.metrics import bootstrap_ci, mass_on_mask, run_suite
from vit_course.runtime import SEED, set_seed
from vit_course.tools.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
SUITE_METRICS = ("deletion_auc", "insertion_auc", "chefer_positive_auc", "chefer_negative_auc", "grid_pointing")


def _paper(cls: type) -> str:
    doc = " ".join((cls.__doc__ or "").split())
    return re.split(r"(?<=[.)])\s", doc, maxsplit=1)[0] if doc else "(no docstring)"


def _bench_costs(path: Path = ROOT / "docs" / "BENCHMARKS.md") -> dict[str, str]:
    """method → plain forwards on ViT-B/16, from the bench_methods table."""
    text = path.read_text() if path.is_file() else ""
    return {m: f for m, f in re.findall(r"^\| `(\w+)` \| [^|]* \| [^|]* \| \*\*([\d.]+)\*\* \|", text, re.M)}


class _PatchRows(TorchFunctionMode):
    """Counts the image rows through a patch embedding: any conv2d over a whole image, the
    model's own module or a method's ``F.conv2d`` of its weights (LRP recomputes the blocks)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size, self.rows = size, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.conv2d, torch.conv2d) and tuple(args[0].shape[-2:]) == self.size:
            self.rows += args[0].shape[0]
        return func(*args, **(kwargs or {}))


def _passes(name: str) -> tuple[float, bool]:
    """(image rows through the patch embedding per image, whether ``torch.autograd.grad`` ran)
    for one call on a tiny torchvision ViT (every method takes its gradients through it)."""
    from torchvision.models import VisionTransformer

    set_seed(SEED)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                          mlp_dim=64, num_classes=3).eval()
    torch.nn.init.normal_(m.heads.head.weight, std=0.5)
    grad, calls = torch.autograd.grad, []

    def counted(*args, **kwargs):
        calls.append(1)
        return grad(*args, **kwargs)

    torch.autograd.grad = counted
    try:
        with _PatchRows((32, 32)) as rows:
            explain(m, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), name)
    finally:
        torch.autograd.grad = grad
    return rows.rows / 2, bool(calls)


def card(name: str, model, x, pairs, suite, bench: dict[str, str]) -> str:
    cls = METHODS[name]
    fwd, backward = _passes(name)
    pimg, plab, pmask = pairs
    diff = []
    for k in (0, 1):
        maps = explain(model, pimg, name, target=plab[:, k]).cpu()
        diff.append(mass_on_mask(maps, pmask[:, k]) - mass_on_mask(maps, pmask[:, 1 - k]))
    sens = bootstrap_ci(torch.cat(diff), seed=SEED)
    one = torch.cat([explain(model, x[i:i + 1], name) for i in range(3)])
    batch = explain(model, x[:3], name)
    invariant = torch.allclose(one, batch, rtol=1e-4, atol=1e-6 * float(batch.abs().max()) + 1e-12)
    deterministic = torch.equal(explain(model, x[:3], name), batch)
    opts = ", ".join(f"`{k}={v!r}`" for k, v in getattr(cls, "defaults", {}).items()) or "none"
    lines = [f"### `{name}`", "", f"- **Paper / definition**: {_paper(cls)}",
             f"- **Needs**: {'forward' if fwd or cls.needs_grad else 'no pass of the model (a control)'}"
             f"{' + backward' if cls.needs_grad else ''}"
             f"{'; accepts a capture (`explain(..., capture=cap)`: no new pass)' if cls.supports_capture else ''}; "
             f"options {opts}.",
             f"- **Model passes** (counted at the patch embedding, tiny torchvision ViT): {fwd:g} forward row(s) per image"
             f"{', with a backward pass' if backward else ', no backward pass'}.",
             f"- **Cost on ViT-B/16**: {bench[name] + ' plain forwards (docs/BENCHMARKS.md, bench_methods.py)' if name in bench else 'not measured yet (add it to benchmarks/bench_methods.py)'}.",
             f"- **Class sensitivity** (target − other mass, {pimg.shape[0]} two-object images × 2 targets): "
             f"{sens[0]:.3f} [{sens[1]:.3f}, {sens[2]:.3f}]; class-specific by design: {'yes' if cls.class_specific else 'no'}.",
             f"- **Batch invariance** (3 images together vs one by one): {'yes' if invariant else '**no**'}; "
             f"**determinism** (two calls equal): {'yes' if deterministic else '**no**'}.",
             "- **Suite** (course synthetic ViT, trained; token drop; mean [95 % CI]): " + ", ".join(
                 f"{k} {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for k, v in suite.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "METHODS.md")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=12)
    args = ap.parse_args(argv)
    from vit_course.data.synthetic import SyntheticFood
    from vit_course.models import load_or_train_synthetic_vit

    set_seed(SEED)
    model, _ = load_or_train_synthetic_vit(setting="quick", progress=False)
    model = model.eval()
    test = SyntheticFood(args.images, split="test")
    x, y = test.images.float() / 255, test.labels
    two = SyntheticFood(args.pairs, split="test", two_objects=True)
    pairs = (two.images.float() / 255, two.labels, two.masks)
    fns = {m: functools.partial(explain, method=m) for m in METHODS if m not in ("random", "center_gaussian")}
    res = run_suite(model, x, y, fns, baseline="token_drop", mean=(0,) * 3, std=(1,) * 3, progress=False)
    bench = _bench_costs()
    out = ["# Explanation methods: cards", "",
           "Written by `make cards` (`python -m vit_course.tools.cards`) from the registered methods; "
           "rerun after adding one. Numbers on the course's synthetic ViT (trained, quick setting, "
           f"{args.images} synthetic test images, {args.pairs} two-object images); costs on ViT-B/16 from "
           "docs/BENCHMARKS.md.", ""]
    for name in METHODS:
        print(f"card: {name}", flush=True)
        suite = {k: bootstrap_ci(res.scores[name][k], seed=SEED) for k in SUITE_METRICS if k in res.scores[name]}
        out.append(card(name, model, x, pairs, suite, bench))
    atomic_write_text(args.out, "\n".join(out) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
