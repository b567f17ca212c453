"""Command line: explain one image and write the overlay, like jacobgil/vit-explain.

That repository's ``vit_explain.py`` does the same for one image: attention rollout, or
gradient rollout when ``--category_index`` is given, and the map blended over the image.

Started by ``python -m vit_course.explain`` (:mod:`vit_course.explain.__main__`)::

    python -m vit_course.explain IMAGE [--method rollout|grad_rollout|attention]
        [--head-fusion mean|max|min] [--discard-ratio R] [--start-layer L]
        [--layer L] [--head K] [--category-index C]
        [--checkpoint PATH | --model vit_b_16_imagenet|vit_b_16] [--out PNG] [--device DEV]

Models:

- ``--model vit_b_16_imagenet`` (default): torchvision ViT-B/16 with its ImageNet weights
  and class names (as ``vit_explain.py``, which loads the ImageNet DeiT
  ``deit_tiny_patch16_224`` from torch hub; here ViT-B/16 instead).
- ``--model vit_b_16``: the course's transfer model from :mod:`vit_course.pretrained` with a
  new 3-class head; without a trained head its predictions mean nothing (it says so).
- ``--checkpoint PATH``: a head saved by :func:`vit_course.pretrained.save_head`
  (notebook 03), or a course-ViT checkpoint saved by
  :func:`vit_course.engine.save_checkpoint` (its stored config rebuilds the model; images
  are resized to its size with :func:`vit_course.data.simple_transform`).

Options left out take the method's defaults (``mean`` fusion, discard 0, start layer 0,
last layer); ``vit_explain.py``'s defaults are ``--head_fusion max --discard_ratio 0.9``
(its ``get_args()``), i.e. ``--head-fusion max --discard-ratio 0.9`` here.
Prints the top-3 predictions and writes ``--out`` (default ``<image stem>_<method>.png``
in the current folder). Bad input ends with exit code 2 and one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_course.checks import HEAD_FUSIONS
from vit_course.explain import METHODS, capture, explain, get_method
from vit_course.imaging import to_display, upsample
from vit_course.tools.files import atomic_write, check_writable

MODELS = ("vit_b_16_imagenet", "vit_b_16")
_OPTION_FLAGS = {"head_fusion": "--head-fusion", "discard_ratio": "--discard-ratio",
                 "start_layer": "--start-layer", "layer": "--layer", "head": "--head"}


class CliError(Exception):
    """A problem with the command line's input, reported as one line and exit code 2."""


# ----------------------------------------------------------------------------- models
def _imagenet_vit_b_16() -> tuple[nn.Module, Callable, list[str]]:
    from torchvision.models import get_model

    from vit_course.tools import weights as files

    weights = files.resolve_weights("IMAGENET1K_V1", "vit_b_16")
    path = files.ensure_weights(weights, "vit_b_16")
    status = files.checkpoint_status(path)
    model = get_model("vit_b_16", weights=weights)
    if status == "stand-in":
        print(f"WARNING: STAND-IN WEIGHTS - {path.name} is a random test checkpoint, not "
              "torchvision's ImageNet ViT-B/16; predictions and maps mean nothing.")
    return model, weights.transforms(), list(weights.meta["categories"])


def _course_transfer_vit() -> tuple[nn.Module, Callable, list[str]]:
    from vit_course import pretrained

    model, transform = pretrained.build_pretrained_vit("DEFAULT", num_classes=3)
    print("NOTE: --model vit_b_16 has a new, untrained 3-class head: predictions mean "
          "nothing. Pass --checkpoint with the head saved in notebook 03 "
          "(artifacts/03_vit_b16_head.pt).")
    return model, transform, ["class 0", "class 1", "class 2"]


def _from_checkpoint(path: Path) -> tuple[nn.Module, Callable, list[str]]:
    from vit_course import engine, pretrained

    if not path.is_file():
        raise CliError(f"--checkpoint {path}: no such file; train and save a model first "
                       "(notebook 03 saves artifacts/03_vit_b16_head.pt).")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"--checkpoint {path} is not a readable checkpoint "
                       f"({type(exc).__name__}); pass a file written by "
                       "vit_course.pretrained.save_head or vit_course.engine.save_checkpoint."
                       ) from exc
    fmt = stored.get("format") if isinstance(stored, dict) else None
    if fmt == pretrained.HEAD_FORMAT:
        model, transform, meta = pretrained.load_pretrained_classifier(path)
        names = meta.get("class_names") or [f"class {i}" for i in range(meta["num_classes"])]
        return model, transform, list(names)
    if fmt == engine.CHECKPOINT_FORMAT and stored.get("model_class") == "ViT":
        from vit_course.data import simple_transform
        from vit_course.models import ViT

        config = json.loads(stored.get("config", "null"))
        if not isinstance(config, dict):
            raise CliError(f"--checkpoint {path} has no model config; save the course ViT with "
                           "vit_course.engine.save_checkpoint(model, path).")
        model = ViT(**config)
        meta = engine.load_checkpoint(model, path)
        names = meta.get("class_names") or [f"class {i}" for i in range(model.num_classes)]
        return model, simple_transform(config["img_size"]), list(names)
    raise CliError(f"--checkpoint {path} holds format {fmt!r}; expected a head from "
                   f"vit_course.pretrained.save_head ({pretrained.HEAD_FORMAT!r}) or a course "
                   f"ViT from vit_course.engine.save_checkpoint ({engine.CHECKPOINT_FORMAT!r}).")


def load_model(checkpoint: str | None, model_name: str | None
               ) -> tuple[nn.Module, Callable, list[str]]:
    """(model, transform, class names) for the CLI's ``--checkpoint`` / ``--model``."""
    if checkpoint is not None:
        return _from_checkpoint(Path(checkpoint))
    name = model_name or MODELS[0]
    if name == "vit_b_16_imagenet":
        return _imagenet_vit_b_16()
    if name == "vit_b_16":
        return _course_transfer_vit()
    raise CliError(f"--model {name!r} is not known; choose one of {list(MODELS)} or pass "
                   "--checkpoint PATH.")


# ----------------------------------------------------------------------------- output
def top_k(logits: torch.Tensor, names: Sequence[str], k: int = 3) -> list[tuple[int, str, float]]:
    """The k most probable classes of one image: (index, name, probability)."""
    probs = logits.float().softmax(dim=-1)
    values, idx = probs.topk(min(k, probs.numel()))
    return [(int(i), names[int(i)] if int(i) < len(names) else f"class {int(i)}", float(v))
            for v, i in zip(values, idx)]


def write_overlay(image_chw: torch.Tensor, heat: torch.Tensor, out: Path, title: str) -> Path:
    """Save the image and the heat-map overlay side by side as a PNG, atomically."""
    # matplotlib's Figure directly, without pyplot: no GUI backend is needed.
    from matplotlib.figure import Figure

    from vit_course.viz import overlay

    fig = Figure(figsize=(8, 4.6))
    axes = fig.subplots(1, 2)
    axes[0].imshow(image_chw.permute(1, 2, 0).numpy())
    axes[0].set_title("model input", fontsize=9)
    axes[1].imshow(overlay(image_chw, heat.numpy()))
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    try:                                # the one atomic writer: nothing half-written is left
        with atomic_write(out) as fh:
            fig.savefig(fh, format="png", dpi=110)
    except OSError as exc:
        raise CliError(f"--out {out}: {exc}") from exc
    return out


def check_out(out: Path) -> Path:
    """``--out`` before any work: a .png path, not a folder, in a folder that can be made."""
    if out.suffix.lower() != ".png":
        raise CliError(f"--out must end in .png, got {str(out)!r}")
    try:
        return check_writable(out, "map.png")
    except OSError as exc:
        raise CliError(f"--out: {exc}") from None


def check_device(name: str) -> torch.device:
    """``--device`` before any work: a torch device that exists on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CliError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:1 or "
                       "mps.") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if not available.get(device.type, lambda: True)():
        raise CliError(f"--device {name}: no {device.type} device is available on this "
                       "machine; use --device cpu.")
    return device


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vit_course.explain",
        description="Explain a ViT's decision on one image: write a heat-map overlay and "
                    "print the top-3 predictions.")
    p.add_argument("image", help="image file (any PIL mode; converted to RGB)")
    p.add_argument("--method", default="rollout",
                   help=f"explanation method, one of {sorted(METHODS)} (default: rollout)")
    p.add_argument("--head-fusion", choices=HEAD_FUSIONS, default=None,
                   help="fuse heads by mean, max or min (default: mean)")
    p.add_argument("--discard-ratio", type=float, default=None,
                   help="rollouts: fraction of each fused attention matrix set to 0, in [0, 1) "
                        "(default: 0; vit-explain uses 0.9)")
    p.add_argument("--start-layer", type=int, default=None,
                   help="rollouts: first layer multiplied in (default: 0)")
    p.add_argument("--layer", type=int, default=None,
                   help="attention: layer to show, negative from the top (default: -1)")
    p.add_argument("--head", type=int, default=None,
                   help="attention: one head instead of the fused heads")
    p.add_argument("--category-index", type=int, default=None,
                   help="class to explain (default: the predicted class)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None,
                     help="saved head (vit_course.pretrained.save_head) or course-ViT "
                          "checkpoint (vit_course.engine.save_checkpoint)")
    src.add_argument("--model", default=None, choices=MODELS,
                     help="built-in model (default: vit_b_16_imagenet)")
    p.add_argument("--out", default=None,
                   help="output PNG (default: <image stem>_<method>.png in this folder)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return p


def run(args: argparse.Namespace) -> int:
    cls = get_method(args.method)                       # ValueError lists the valid names
    options: dict[str, Any] = {}
    for name, flag in _OPTION_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if name not in cls.defaults:
            accepted = [f for n, f in _OPTION_FLAGS.items() if n in cls.defaults]
            raise CliError(f"{flag} does not apply to --method {args.method} (flags it "
                           f"accepts: {', '.join(accepted) or 'none'}).")
        options[name] = value
    out = check_out(Path(args.out) if args.out else
                    Path.cwd() / f"{Path(args.image).stem}_{args.method}.png")
    device = check_device(args.device)

    from vit_course.data import load_image

    pil = load_image(args.image)                        # FileNotFoundError / ValueError
    model, transform, names = load_model(args.checkpoint, args.model)
    model = model.to(device)
    images = transform(pil).unsqueeze(0)                # (1, C, H, W)
    explainer = cls(model, **options)                   # option values checked here
    with_grad = cls.needs_grad and cls.supports_capture
    cap = capture(model, images, target=args.category_index, with_grad=with_grad)
    if cls.supports_capture:                            # (1, h, w), no second pass
        maps = explain(model, images, args.method, capture=cap, **options)
    else:                                               # e.g. input gradients, Grad-CAM
        maps = explain(model, images, args.method, target=cap.targets.cpu(), **options)
    class_specific = cls.class_specific

    print(f"top-3 predictions for {args.image}:")
    for rank, (i, name, prob) in enumerate(top_k(cap.logits[0].cpu(), names), start=1):
        print(f"  {rank}. {name} (class {i}): {100 * prob:.1f}%")
    target = int(cap.targets[0])
    target_name = names[target] if target < len(names) else f"class {target}"
    if args.category_index is not None and not class_specific:
        print(f"note: --method {args.method} is class-agnostic; --category-index does not "
              "change its map.")

    # What the model saw (after its crop/resize), normalisation undone, in [0, 1].
    image_chw = to_display(images[0], transform)
    heat = upsample(maps.cpu().float(), tuple(image_chw.shape[-2:]), normalize=True)[0]
    opts = ", ".join(f"{k}={v}" for k, v in explainer.options.items())
    title = f"{args.method}" + (f" for '{target_name}'" if class_specific else "") \
        + f"\n{opts}"
    write_overlay(image_chw, heat, out, title)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    expected: tuple[type[BaseException], ...] = (CliError, ValueError, TypeError, OSError,
                                                 ImportError)
    try:
        from vit_course.pretrained import WeightsUnavailableError
        expected += (WeightsUnavailableError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        return run(args)
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
