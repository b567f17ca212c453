"""Training, evaluation, prediction and checkpoints.

- :func:`train` runs seeded epochs of :func:`train_step` and :func:`test_step` and returns a
  history dict of per-epoch lists (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``).
- Loss and accuracy are counted **per image**: summed over every image, divided by the
  number of images. Averaging per-batch means instead (as the seed course does) weights the
  images of a short last batch more than the others.
- :func:`evaluate` returns an :class:`Evaluation` with accuracy, per-class precision /
  recall / F1, macro F1, the confusion matrix and the raw predictions.
- :func:`save_checkpoint` writes atomically; :func:`load_checkpoint` reads with
  ``torch.load(..., weights_only=True)`` and checks the architecture before touching the model.

Dataloaders yield ``(images, labels, ...)``: the first two items are used.
``device=None`` everywhere means "the device the model's parameters are on".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from .checks import check_images, check_labels, check_positive_int
from .runtime import SEED, eval_mode, set_seed
# Checkpoint files (format, atomic write, weights-only load, mismatch diagnostics) are
# infrastructure: vit_course.tools.checkpoints. Re-exported here, where training happens.
from .tools.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint  # noqa: F401

__all__ = ["train", "train_step", "test_step", "evaluate", "Evaluation", "confusion_matrix",
           "classification_metrics", "predict", "save_checkpoint", "load_checkpoint",
           "CHECKPOINT_FORMAT"]


# ----------------------------------------------------------------------------- helpers
def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``None`` → the model's device (of its first parameter or buffer; CPU if it has
    neither); otherwise move the model there."""
    if device is None:
        tensors = itertools.chain(model.parameters(), model.buffers())
        return next((t.device for t in tensors), torch.device("cpu"))
    device = torch.device(device)
    model.to(device)
    return device


def unpack_batch(batch: Any) -> tuple[torch.Tensor, Any]:
    """``(images, labels)``: the first two items of a dataloader batch; images a finite tensor."""
    pair = isinstance(batch, (list, tuple)) and len(batch) >= 2
    if not pair or not isinstance(batch[0], torch.Tensor):
        got = f"({type(batch[0]).__name__}, ...)" if pair else type(batch).__name__
        raise TypeError(f"each dataloader batch must be an (images tensor, labels, ...) tuple or "
                        f"list, got {got}; use vit_course.data.create_dataloaders or an "
                        "ImageFolder whose transform ends in ToTensor().")
    return _finite(batch[0]), batch[1]


def _finite(images: torch.Tensor) -> torch.Tensor:
    """``images`` when every value is finite; else a ValueError naming the bad batch indices."""
    if bad := [i for i, x in enumerate(images) if x.is_floating_point() and not x.isfinite().all()]:
        raise ValueError(f"images {bad[:8]} (index in the batch) hold NaN or inf values, so loss "
                         "and predictions would be NaN; repair or drop them (check the transform).")
    return images


def _batch_loss_sum(loss_fn: nn.Module, logits: torch.Tensor, y: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss to backpropagate, loss summed over the batch's images)."""
    loss = loss_fn(logits, y)
    reduction = getattr(loss_fn, "reduction", "mean")
    if loss.ndim > 0:                      # reduction="none": one loss per image
        return loss.mean(), loss.sum()
    if reduction == "sum":
        return loss, loss
    return loss, loss * y.shape[0]         # mean → sum over images


def _check_loader(name: str, loader: Any, passes: int = 1) -> None:
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name} must be an iterable of (images, labels) batches such as a "
                        f"torch DataLoader, got {type(loader).__name__}")
    if passes > 1 and iter(loader) is loader:
        raise TypeError(f"{name} is a one-pass iterator (e.g. a generator) but {passes} epochs "
                        "read it again each time; pass a DataLoader or a list of batches.")


def _epoch(model: nn.Module, dataloader: Iterable, loss_fn: nn.Module,
           device: str | torch.device | None, optimizer: torch.optim.Optimizer | None = None
           ) -> tuple[float, float]:
    """One pass over ``dataloader``, training when ``optimizer`` is given: (loss, accuracy)."""
    _check_loader("dataloader", dataloader)
    device = _resolve_device(model, device)
    loss_sum, correct, total = 0.0, 0, 0
    for batch in dataloader:
        X, y = unpack_batch(batch)
        logits = model(X.to(device))
        y = check_labels(y, X.shape[0], logits.shape[-1]).to(device)
        loss, batch_sum = _batch_loss_sum(loss_fn, logits, y)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss_sum += batch_sum.item()
        correct += (logits.argmax(dim=1) == y).sum().item()
        total += y.shape[0]
    if total == 0:
        hint = "train dataloader yielded no images; check the dataset folder and max_per_class"
        raise ValueError(hint if optimizer is not None else
                         "test dataloader yielded no images; check the dataset folder")
    return loss_sum / total, correct / total


# ----------------------------------------------------------------------------- steps
def train_step(model: nn.Module, dataloader: Iterable, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, device: str | torch.device | None = None
               ) -> tuple[float, float]:
    """Train one epoch.

    Args:
        model: the model; put in train mode.
        dataloader: yields (images (B, C, H, W), labels (B,)).
        loss_fn: e.g. ``nn.CrossEntropyLoss()`` (reduction ``mean``, ``sum`` or ``none``).
        optimizer: the optimizer over ``model``'s parameters.
        device: where to train. Default: the model's device.

    Returns:
        (loss, accuracy) over the epoch, both per image (sum over images / number of images).
    """
    model.train()
    return _epoch(model, dataloader, loss_fn, device, optimizer)


def test_step(model: nn.Module, dataloader: Iterable, loss_fn: nn.Module,
              device: str | torch.device | None = None) -> tuple[float, float]:
    """Evaluate loss and accuracy over ``dataloader`` in eval mode (mode restored after).

    Returns:
        (loss, accuracy), both per image.
    """
    with eval_mode(model), torch.no_grad():
        return _epoch(model, dataloader, loss_fn, device)


def train(model: nn.Module, train_dataloader: Iterable, test_dataloader: Iterable | None,
          optimizer: torch.optim.Optimizer, loss_fn: nn.Module, epochs: int,
          device: str | torch.device | None = None, seed: int | None = SEED,
          progress: bool = True) -> dict[str, list[float]]:
    """Train for ``epochs`` epochs, testing after each; seeded, so two runs match.

    Args:
        model, optimizer, loss_fn: as in :func:`train_step`.
        train_dataloader: training batches (shuffled draws come from the seeded RNG).
        test_dataloader: test batches, or ``None`` to skip testing (test lists stay empty).
        epochs: number of epochs, ≥ 1.
        device: where to train. Default: the model's device.
        seed: passed to :func:`vit_course.runtime.set_seed` before the first epoch;
            ``None`` leaves the random state alone. Default: ``SEED`` (42).
        progress: show a tqdm bar and one line per epoch. Default: True.

    Returns:
        ``{"train_loss": [...], "train_acc": [...], "test_loss": [...], "test_acc": [...]}``,
        one float per epoch, accuracy in [0, 1].
    """
    check_positive_int(epochs, "epochs")
    _check_loader("train_dataloader", train_dataloader, epochs)
    if test_dataloader is not None:
        _check_loader("test_dataloader", test_dataloader, epochs)
    if seed is not None:
        set_seed(seed)
    device = _resolve_device(model, device)
    history: dict[str, list[float]] = {"train_loss": [], "train_acc": [],
                                       "test_loss": [], "test_acc": []}
    from tqdm.auto import tqdm

    bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for epoch in bar:
        train_loss, train_acc = train_step(model, train_dataloader, loss_fn, optimizer, device)
        history["train_loss"].append(train_loss)
        history["train_acc"].append(train_acc)
        line = f"epoch {epoch + 1}/{epochs} | train_loss {train_loss:.4f} | train_acc {train_acc:.4f}"
        if test_dataloader is not None:
            test_loss, test_acc = test_step(model, test_dataloader, loss_fn, device)
            history["test_loss"].append(test_loss)
            history["test_acc"].append(test_acc)
            line += f" | test_loss {test_loss:.4f} | test_acc {test_acc:.4f}"
        if progress:
            bar.write(line)
    bar.close()
    return history


# ----------------------------------------------------------------------------- metrics
def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """Count (true, predicted) pairs.

    Args:
        y_true, y_pred: class indices (M,), each in [0, num_classes).
        num_classes: K.

    Returns:
        int64 tensor (K, K); rows are true classes, columns predicted classes.
    """
    y_true = torch.as_tensor(y_true).long().flatten().cpu()
    y_pred = torch.as_tensor(y_pred).long().flatten().cpu()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {y_true.numel()} "
                         f"and {y_pred.numel()}")
    for name, t in (("y_true", y_true), ("y_pred", y_pred)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} holds class indices outside [0, {num_classes}) "
                             f"(min {t.min().item()}, max {t.max().item()}); check that "
                             "class_names matches the dataset's classes")
    flat = y_true * num_classes + y_pred
    return torch.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def classification_metrics(cm: torch.Tensor) -> dict[str, Any]:
    """Accuracy and per-class precision, recall and F1 from a confusion matrix.

    A ratio with a zero denominator is defined as 0: precision of a class never
    predicted, recall of a class absent from ``y_true``, F1 when precision + recall = 0
    (scikit-learn's ``zero_division=0``). Macro F1 is the plain mean over all K classes,
    absent ones included.

    Args:
        cm: (K, K) counts, rows true, columns predicted.

    Returns:
        dict with ``accuracy`` (float), ``precision``, ``recall``, ``f1`` (float64 (K,)),
        ``support`` (int64 (K,), true images per class) and ``macro_f1`` (float).
    """
    cm = torch.as_tensor(cm).to(torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {tuple(cm.shape)}")
    tp = cm.diagonal()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))

    precision = ratio(tp, predicted)
    recall = ratio(tp, actual)
    f1 = ratio(2 * precision * recall, precision + recall)
    total = cm.sum()
    return dict(
        accuracy=float(tp.sum() / total) if total > 0 else 0.0,
        precision=precision, recall=recall, f1=f1,
        support=actual.to(torch.int64),
        macro_f1=float(f1.mean()) if f1.numel() else 0.0,
    )


@dataclass
class Evaluation:
    """Results of :func:`evaluate` over M images and K classes.

    Attributes:
        accuracy: correct / M (per image).
        precision, recall, f1: float64 (K,), 0 where undefined (see
            :func:`classification_metrics`).
        macro_f1: mean of ``f1`` over the K classes.
        support: int64 (K,), images per true class.
        confusion_matrix: int64 (K, K), rows true, columns predicted.
        y_true, y_pred: int64 (M,). probs: float (M, K) softmax probabilities.
        class_names: the K names.
    """

    accuracy: float
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    macro_f1: float
    support: torch.Tensor
    confusion_matrix: torch.Tensor
    y_true: torch.Tensor
    y_pred: torch.Tensor
    probs: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    def report(self) -> str:
        """A per-class text table (like scikit-learn's ``classification_report``)."""
        width = max([len(n) for n in self.class_names] + [9])
        lines = [f"{'':<{width}}  precision  recall  f1-score  support"]
        for i, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}  {self.precision[i]:9.3f}  {self.recall[i]:6.3f}  "
                         f"{self.f1[i]:8.3f}  {int(self.support[i]):7d}")
        n = int(self.support.sum())
        lines.append(f"{'accuracy':<{width}}  {'':9}  {'':6}  {self.accuracy:8.3f}  {n:7d}")
        lines.append(f"{'macro f1':<{width}}  {'':9}  {'':6}  {self.macro_f1:8.3f}  {n:7d}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (no per-image arrays), e.g. for checkpoint metadata."""
        return dict(
            accuracy=self.accuracy, macro_f1=self.macro_f1, class_names=list(self.class_names),
            precision=self.precision.tolist(), recall=self.recall.tolist(), f1=self.f1.tolist(),
            support=self.support.tolist(), confusion_matrix=self.confusion_matrix.tolist(),
        )


def evaluate(model: nn.Module, dataloader: Iterable, class_names: list[str],
             device: str | torch.device | None = None) -> Evaluation:
    """Predict every image of ``dataloader`` (eval mode, restored after) and score it.

    Args:
        model: returns logits (B, K) with K = ``len(class_names)``.
        dataloader: yields (images, labels).
        class_names: the K class names, in label order.
        device: Default: the model's device.

    Returns:
        an :class:`Evaluation`.
    """
    _check_loader("dataloader", dataloader)
    if isinstance(class_names, str) or len(class_names) == 0:
        raise TypeError(f"class_names must be a non-empty list of names, got {class_names!r}")
    K = len(class_names)
    device = _resolve_device(model, device)
    probs, y_true = [], []
    with eval_mode(model), torch.no_grad():
        for batch in dataloader:
            X, y = unpack_batch(batch)
            logits = model(X.to(device))
            if logits.ndim != 2 or logits.shape[1] != K:
                raise ValueError(
                    f"model returned logits of shape {tuple(logits.shape)}, expected (B, {K}) "
                    f"for class_names={list(class_names)}; give the model a {K}-class head or "
                    "pass the class names it was trained on")
            probs.append(logits.float().softmax(dim=1).cpu())
            y_true.append(check_labels(y, X.shape[0], K).cpu())
    if not probs:
        raise ValueError("dataloader yielded no images; nothing to evaluate")
    probs_t = torch.cat(probs)
    y_true_t = torch.cat(y_true)
    y_pred_t = probs_t.argmax(dim=1)
    cm = confusion_matrix(y_true_t, y_pred_t, K)
    return Evaluation(**classification_metrics(cm), confusion_matrix=cm, y_true=y_true_t,
                      y_pred=y_pred_t, probs=probs_t, class_names=list(class_names))


def predict(model: nn.Module, images: torch.Tensor, device: str | torch.device | None = None,
            batch_size: int = 64) -> torch.Tensor:
    """Class probabilities for a batch of images (eval mode, restored after).

    Args:
        model: returns logits (B, K).
        images: (B, C, H, W), already transformed; a single (C, H, W) image counts as B = 1.
        device: Default: the model's device.
        batch_size: images per forward pass. Default: 64.

    Returns:
        softmax probabilities (B, K), float32 on the CPU.
    """
    images = _finite(check_images(images.unsqueeze(0) if isinstance(images, torch.Tensor)
                                       and images.ndim == 3 else images))
    check_positive_int(batch_size, "batch_size")
    device = _resolve_device(model, device)
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(chunk.to(device)).float().softmax(dim=1).cpu()
                          for chunk in images.split(batch_size)])
