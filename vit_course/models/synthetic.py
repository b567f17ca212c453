"""The small course ViT that learns the synthetic pizza/steak/sushi images, and its training.

The images and their masks are drawn by :mod:`vit_course.data.synthetic`; this module sizes
the course ViT (:class:`vit_course.models.ViT`) for them (64×64 images, 8-pixel patches, an
8×8 grid), trains it so that its decision rests on the object (``train_synthetic_vit``),
checks that it does (``ground_truth_checks``: the masks are ground truth only then) and
caches it: ``load_or_train_synthetic_vit() -> (model, info)``, saved in ``artifacts_dir()``.
Training is deterministic from the seed: the data, the initial weights, the augmentation
and the batch order all come from it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..checks import check_positive_int
from ..data import synthetic as drawing
from ..data.synthetic import CLASS_NAMES, DEFAULT_SIZE, SyntheticFood, synthetic_dataloaders
from ..engine import save_checkpoint, test_step
from ..runtime import SEED, artifacts_dir, eval_mode, get_device, get_profile, set_seed
from ..tools.checkpoints import load_matching_checkpoint
from .vit import ViT

SYNTHETIC_VIT_CONFIG: dict[str, Any] = dict(
    img_size=DEFAULT_SIZE, in_channels=3, patch_size=8, num_transformer_layers=4,
    embedding_dim=64, mlp_size=128, num_heads=4, attn_dropout=0.0, mlp_dropout=0.1,
    embedding_dropout=0.1, num_classes=len(CLASS_NAMES),
)
"""The course ViT (``vit_course.models.ViT``) sized for 64×64 synthetic images: 8×8 grid."""

_RECIPE = dict(batch_size=32, lr=1e-3, weight_decay=0.05, clip_grad_norm=1.0, paste=0.5)
SYNTHETIC_SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(n_train=1000, n_test=300, n_background=1000, n_two=600, epochs=10, **_RECIPE),
    "quick": dict(n_train=500, n_test=150, n_background=500, n_two=300, epochs=8, **_RECIPE),
}
"""Training settings per course profile (``setting=None`` follows ``VIT_COURSE_PROFILE``).

Each epoch: ``n_train`` single objects (a share ``paste`` of them moved onto another
image's background), ``n_background`` of their backgrounds with a uniform target and
``n_two`` two-object images with a two-hot target (:func:`ground_truth_training_set`).
Measured with seed 42 on the course's 2-core CPU while it was shared with other jobs (load
about 15, so wall times were far longer and CPU times inflated):

- ``full``: 98.3 % test accuracy; passes every ``GROUND_TRUTH_GOALS`` check (object 0.987,
  pasted 0.987, two-object mass 0.950, background top probability 0.417, largest
  background share 0.40); 114 s of single-core CPU on that loaded machine, where the old
  single-object recipe (0.973, background top probability 0.976, 74 % "sushi") took 57 s
  and 37 s unloaded, so about 75 s unloaded.
- ``quick``: for nbval and the tests; see ``docs/BENCHMARKS.md`` for its checks (it does
  not reach every goal).
"""


GROUND_TRUTH_GOALS: dict[str, tuple[str, float]] = {
    "object_accuracy": (">=", 0.95), "pasted_accuracy": (">=", 0.95),
    "two_object_mass": (">=", 0.95), "background_top_prob": ("<=", 0.45),
    "background_max_share": ("<=", 0.45),
}
"""What makes the masks ground truth for a model (see :func:`ground_truth_checks`)."""
RECIPE_VERSION = 2  # 1: single objects only (fails the checks); 2: the ground-truth training of train_synthetic_vit


@torch.no_grad()
def _probs(model: torch.nn.Module, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    device = next(model.parameters()).device
    with eval_mode(model):
        return torch.cat([model(images[i:i + batch].to(device)).softmax(-1).cpu()
                          for i in range(0, len(images), batch)])


def ground_truth_checks(model: torch.nn.Module, n: int = 300, size: int = DEFAULT_SIZE,
                        seed: int = SEED + 1) -> dict[str, Any]:
    """Does the model decide on the object, so that the object masks are ground truth?

    On ``n`` fresh single-object images (``seed`` differs from the training seed) and ``n``
    two-object images: accuracy with the object; top probability and class shares of the
    predictions on the same images' backgrounds with the object left out (no class is
    there: uniform is ``1/3``); accuracy with each object pasted onto the next image's
    background (:func:`vit_course.data.synthetic.paste_objects`); on two-object images the
    probability summed over the two classes present.

    Returns:
        ``object_accuracy``, ``background_top_prob``, ``background_shares`` (one per class),
        ``background_max_share``, ``pasted_accuracy``, ``two_object_mass`` (floats),
        ``failed`` (the names missing ``GROUND_TRUTH_GOALS``) and ``passed`` (bool).
    """
    check_positive_int(n, "n", "the number of test images per check")
    single = SyntheticFood(n, size, seed=seed, split="test")
    two = SyntheticFood(n, size, seed=seed, split="test", two_objects=True)
    p_obj = _probs(model, single.images.float() / 255)
    p_bg = _probs(model, single.backgrounds.float() / 255)
    p_paste = _probs(model, drawing.paste_objects(single, single.backgrounds.roll(1, 0)))
    p_two = _probs(model, two.images.float() / 255)
    shares = torch.bincount(p_bg.argmax(1), minlength=len(CLASS_NAMES)).double() / n
    out: dict[str, Any] = dict(
        object_accuracy=(p_obj.argmax(1) == single.labels).double().mean().item(),
        background_top_prob=p_bg.max(1).values.mean().item(),
        background_shares=dict(zip(CLASS_NAMES, shares.tolist())),
        background_max_share=shares.max().item(),
        pasted_accuracy=(p_paste.argmax(1) == single.labels).double().mean().item(),
        two_object_mass=p_two.gather(1, two.labels).sum(1).double().mean().item(),
    )
    out["failed"] = [k for k, (op, goal) in GROUND_TRUTH_GOALS.items()
                     if not (out[k] >= goal if op == ">=" else out[k] <= goal)]
    out["passed"] = not out["failed"]
    return out


def format_ground_truth_checks(checks: dict[str, Any]) -> str:
    """The checks of :func:`ground_truth_checks` as a few printable lines, goals included."""
    shares = ", ".join(f"{k} {v:.0%}" for k, v in checks["background_shares"].items())
    rows = [("accuracy with the object", "object_accuracy"),
            ("object pasted on another background: accuracy", "pasted_accuracy"),
            ("two-object images: probability on the two present", "two_object_mass"),
            ("background only: mean top probability (uniform 0.33)", "background_top_prob"),
            (f"background only: largest class share ({shares})", "background_max_share")]
    lines = [f"  {text}: {checks[key]:.3f} (goal {GROUND_TRUTH_GOALS[key][0]} "
             f"{GROUND_TRUTH_GOALS[key][1]}){'' if key not in checks['failed'] else '  <- FAILS'}"
             for text, key in rows]
    verdict = "pass" if checks["passed"] else "FAIL: the masks are not ground truth for this model"
    return "\n".join([f"Ground-truth checks: {verdict}", *lines])


def build_synthetic_vit(**overrides: Any) -> torch.nn.Module:
    """A fresh ``vit_course.models.ViT`` with ``SYNTHETIC_VIT_CONFIG`` (keys overridable)."""
    unknown = set(overrides) - set(SYNTHETIC_VIT_CONFIG)
    if unknown:
        raise ValueError(f"unknown ViT option(s) {sorted(unknown)}; valid: {sorted(SYNTHETIC_VIT_CONFIG)}")
    return ViT(**{**SYNTHETIC_VIT_CONFIG, **overrides})


def _resolve_setting(setting: str | None, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = get_profile().name if setting is None else setting
    if name not in SYNTHETIC_SETTINGS:
        raise ValueError(f"setting={setting!r} is not valid; use one of {tuple(SYNTHETIC_SETTINGS)} "
                         f"or None (follow VIT_COURSE_PROFILE)")
    unknown = set(overrides) - set(SYNTHETIC_SETTINGS[name])
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}; "
                         f"valid: {sorted(SYNTHETIC_SETTINGS[name])}")
    return name, {**SYNTHETIC_SETTINGS[name], **{k: v for k, v in overrides.items() if v is not None}}


def cosine_lr(epoch: int, epochs: int, lr: float, warmup: int = 1) -> float:
    """Learning rate for ``epoch`` (0-based): linear warm-up, then cosine decay to ~0.

    With only a constant rate the small ViT's test accuracy keeps jumping by a few points
    from epoch to epoch; decaying it lets the last epoch settle.
    """
    if epoch < warmup:
        return lr * (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup + 1) / max(1, epochs - warmup + 1)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (B, C)`` against probability ``targets (B, C)``."""
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


def ground_truth_training_set(single: SyntheticFood, two: SyntheticFood | None, n_background: int,
                              paste: float, generator: torch.Generator
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's images ``(M, 3, H, W)`` and soft targets ``(M, C)``, in random order.

    - every single-object image, with a share ``paste`` of them moved onto another training
      image's background (:func:`vit_course.data.synthetic.paste_objects`): one-hot target;
    - ``n_background`` of their backgrounds with the object left out: uniform target (no
      class is there, so the model must not guess one from the scene);
    - every two-object image (none if ``two`` is None): half the target on each present class.
    """
    n, C = len(single), len(CLASS_NAMES)
    two_images = two.images if two is not None else single.images[:0]
    two_labels = two.labels if two is not None else single.labels.new_zeros(0, 2)
    pasted = drawing.paste_objects(single, single.backgrounds[torch.randperm(n, generator=generator)])
    moved = (torch.rand(n, generator=generator) < paste)[:, None, None, None]
    kept = torch.randperm(n, generator=generator)[:n_background]
    images = torch.cat([torch.where(moved, pasted, single.images.float() / 255),
                        single.backgrounds[kept].float() / 255, two_images.float() / 255])
    two_hot = torch.zeros(len(two_labels), C).scatter_(1, two_labels, 0.5)
    targets = torch.cat([torch.nn.functional.one_hot(single.labels, C).float(),
                         torch.full((len(kept), C), 1 / C), two_hot])
    order = torch.randperm(len(images), generator=generator)
    return images[order], targets[order]


def train_synthetic_vit(epochs: int | None = None, size: int = DEFAULT_SIZE, seed: int = SEED,
                        setting: str | None = None, device: torch.device | str | None = None,
                        progress: bool = True, **overrides: Any
                        ) -> tuple[torch.nn.Module, dict[str, list[float]], float]:
    """Train the small course ViT so that it decides on the object (see ``SYNTHETIC_SETTINGS``).

    Each epoch is :func:`ground_truth_training_set` (objects on their own or shuffled
    backgrounds, object-free backgrounds with a uniform target, two-object images with a
    two-hot target), drawn afresh from one seeded generator. AdamW with a one-epoch
    warm-up, a per-epoch cosine decay (:func:`cosine_lr`) and the gradient norm clipped
    before each step; test accuracy per epoch with ``vit_course.engine.test_step`` on
    single-object test images.

    Args:
        epochs: overrides the setting's epochs.
        size: image side; the patch size stays 8, so the grid is ``size // 8``.
        seed: seeds the data, the initial weights and the batch order.
        setting: ``"full"`` or ``"quick"`` (see ``SYNTHETIC_SETTINGS``); None follows the
            course profile.
        device: default ``vit_course.runtime.get_device()``.
        progress: print one line per epoch.
        **overrides: any key of ``SYNTHETIC_SETTINGS`` (``n_train``, ``n_test``,
            ``n_background``, ``n_two``, ``paste``, ``batch_size``, ``lr``,
            ``weight_decay``, ``clip_grad_norm``); ``n_background=0, n_two=0, paste=0``
            is the old recipe (single objects only), whose model fails the checks.

    Returns:
        ``(model, history, test_accuracy)``: the model in eval mode on ``device``; the history
        (``train_loss``, ``test_loss``, ``test_acc``, ``lr`` per epoch and ``seconds``, one
        wall time, data included); the last epoch's test accuracy.
    """
    _, cfg = _resolve_setting(setting, {"epochs": epochs, **overrides})
    patch = SYNTHETIC_VIT_CONFIG["patch_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < patch or size % patch:
        raise ValueError(f"size must be square (one int) and a multiple of the patch size "
                         f"{patch}, got {size!r}; e.g. size=64")
    device = get_device() if device is None else torch.device(device)
    start = time.perf_counter()
    _, test_dl, _ = synthetic_dataloaders(1, cfg["n_test"], size, cfg["batch_size"], seed)
    single = SyntheticFood(cfg["n_train"], size, seed=seed, split="train")
    two = (SyntheticFood(cfg["n_two"], size, seed=seed, split="train", two_objects=True)
           if cfg["n_two"] else None)
    set_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_synthetic_vit(img_size=size).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "test_loss", "test_acc", "lr")}
    for epoch in range(cfg["epochs"]):
        lr = cosine_lr(epoch, cfg["epochs"], cfg["lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = ground_truth_training_set(single, two, cfg["n_background"],
                                                    cfg["paste"], generator)
        model.train()
        total = 0.0
        for i in range(0, len(images), cfg["batch_size"]):
            x, t = images[i:i + cfg["batch_size"]].to(device), targets[i:i + cfg["batch_size"]].to(device)
            loss = _soft_cross_entropy(model(x), t)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg["clip_grad_norm"])
            optimizer.step()
            total += loss.item() * len(x)
        test_loss, test_acc = test_step(model, test_dl, torch.nn.CrossEntropyLoss(), device)
        for key, value in zip(history, (total / len(images), test_loss, test_acc, lr)):
            history[key].append(float(value))
        if progress:
            print(f"epoch {epoch + 1}/{cfg['epochs']} | lr {lr:.2e} | train_loss {history['train_loss'][-1]:.4f} "
                  f"| test_acc {test_acc:.3f} | {time.perf_counter() - start:.0f} s", flush=True)
    model.eval()
    history["seconds"] = [time.perf_counter() - start]
    return model, history, history["test_acc"][-1]


def load_or_train_synthetic_vit(path: str | Path | None = None, size: int = DEFAULT_SIZE,
                                seed: int = SEED, setting: str | None = None,
                                device: torch.device | str | None = None, progress: bool = True,
                                retrain: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load the synthetic-data ViT from ``path`` if it is there and matches, else train and save.

    A checkpoint matches when its model config, training setting, ``RECIPE_VERSION``, image
    size, seed and ``GENERATOR_VERSION`` equal the requested ones; anything else (missing,
    unreadable, stale) is retrained and replaced. The file is written atomically (temp file
    + rename). A trained model runs :func:`ground_truth_checks` (on ``n_test`` fresh images
    of each kind) and the checkpoint stores their results with the weights (the checks are a
    function of the weights, the setting and the seed, which the match requires), so a
    load reads them instead of drawing and scoring the images again (3 s on 2 cores); a
    checkpoint saved without them runs them on load. Reported in ``info`` and printed.

    Args:
        path: default ``artifacts_dir() / "synthetic_vit.pt"`` in the full setting and
            ``artifacts_dir() / "synthetic_vit_quick.pt"`` in the quick one.
        size, seed, setting, device, progress: as in ``train_synthetic_vit``.
        retrain: train even if a matching checkpoint exists.

    Returns:
        ``(model, info)``: the model in eval mode; ``info`` holds ``test_accuracy``,
        ``history``, ``setting``, ``trained`` (False when loaded), ``path`` and
        ``ground_truth`` (the checks).
    """
    name, cfg = _resolve_setting(setting, {})
    default = "synthetic_vit.pt" if name == "full" else f"synthetic_vit_{name}.pt"
    path = Path(path) if path is not None else artifacts_dir() / default
    device = get_device() if device is None else torch.device(device)
    meta = dict(config={**SYNTHETIC_VIT_CONFIG, "img_size": size}, setting=cfg, size=size,
                seed=seed, generator_version=drawing.GENERATOR_VERSION,
                recipe_version=RECIPE_VERSION, class_names=list(CLASS_NAMES))
    saved, model = None, build_synthetic_vit(img_size=size)
    if path.is_file() and not retrain:
        saved, reason = load_matching_checkpoint(model, path, meta)
        if saved is None and progress:
            print(f"Retraining: {path} exists but {reason}.")
    if saved is not None:
        model.to(device).eval()
        acc, history, verb = saved["test_accuracy"], saved["history"], "Loaded synthetic ViT from"
        checks = saved.get("ground_truth")   # None: saved before the checks were stored
    else:
        model, history, acc = train_synthetic_vit(size=size, seed=seed, setting=name,
                                                  device=device, progress=progress)
        checks, verb = None, "Saved synthetic ViT to"
    if checks is None:
        checks = ground_truth_checks(model, n=cfg["n_test"], size=size, seed=seed + 1)
    if saved is None:
        save_checkpoint(model, path, **meta, history=history, test_accuracy=acc, ground_truth=checks)
    if progress:
        print(f"{verb} {path} (test accuracy {acc:.3f}, setting {name!r}).")
        print(format_ground_truth_checks(checks))
    return model, dict(test_accuracy=acc, history=history, setting=name, trained=saved is None,
                       path=path, ground_truth=checks)
