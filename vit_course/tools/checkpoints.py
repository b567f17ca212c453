"""Checkpoint files of whole models: :func:`save_checkpoint` and :func:`load_checkpoint`.

Re-exported by :mod:`vit_course.engine` (``from vit_course.engine import save_checkpoint``).
A checkpoint is ``{"format", "model_class", "config", "meta", "state_dict"}``, written
atomically (:func:`vit_course.tools.weights.atomic_torch_save`) and read with
``torch.load(..., weights_only=True)``; a load checks every key and shape first, so a
mismatch leaves the model untouched and the error says which settings differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .weights import atomic_torch_save, load_weights_only

CHECKPOINT_FORMAT = "vit_course.checkpoint/1"


def json_ok(value: Any) -> bool:
    """Whether ``json.dumps(value)`` works (metadata must be JSON-able)."""
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Save ``model``'s weights and JSON-able metadata, atomically.

    The file is written next to ``path`` under a temporary name and renamed with
    ``os.replace`` only when complete, so an interrupted save never leaves a broken file.
    The model's ``config`` (for :class:`vit_course.models.ViT`) and class name are stored
    too, so a mismatch can be explained on load.

    Args:
        model: the model.
        path: target file (parent folders are created).
        **meta: JSON-able values, e.g. ``class_names=[...]``, ``epochs=10``.

    Returns:
        the path written.
    """
    path = Path(path)
    try:
        meta_json = json.dumps(meta)
    except TypeError as exc:
        bad = [k for k, v in meta.items() if not json_ok(v)]
        raise TypeError(f"checkpoint metadata must be JSON-able (str, int, float, bool, None, "
                        f"lists and dicts of them); not JSON-able: {bad} ({exc}). Convert "
                        "tensors with .tolist() and paths with str().") from None
    config = getattr(model, "config", None)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_class": type(model).__name__,
        "config": json.dumps(config) if json_ok(config) else "null",
        "meta": meta_json,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(model: nn.Module, path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` into ``model`` and return the metadata.

    Reads with ``torch.load(..., weights_only=True)`` (no arbitrary code runs). A bare
    state dict (e.g. a torchvision weights file) is accepted too and gives ``{}``. Keys and
    shapes are checked before anything is copied, so on a mismatch the model is untouched.

    Args:
        model: a model of the same architecture.
        path: the checkpoint file.
        map_location: where tensors are loaded. Default: ``"cpu"``.

    Returns:
        the ``**meta`` given to :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a damaged file, one holding pickled code (refused, never run), not a
            checkpoint, or weights that do not fit ``model``.
    """
    path = Path(path)
    payload = load_weights_only(path, "train the model and save it with vit_course.engine."
                                "save_checkpoint(model, path), or check the path", map_location,
                                "checkpoint")
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        state = payload["state_dict"]
        meta = json.loads(payload.get("meta", "{}"))
        saved_config = json.loads(payload.get("config", "null"))
        saved_class = payload.get("model_class")
    elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state, meta, saved_config, saved_class = payload, {}, None, None
    else:
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a vit_course checkpoint "
                         "or a state dict; save with vit_course.engine.save_checkpoint")

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        def few(items: list[str]) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches: {few(wrong)}")
        if missing:
            parts.append(f"{len(missing)} weights missing from the checkpoint: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights: {few(unexpected)}")
        built = ""
        if saved_config is not None or saved_class is not None:
            built = f" The checkpoint was saved from {saved_class} with config {saved_config}"
            own_config = getattr(model, "config", None)
            if own_config is not None:
                built += f"; this model has config {own_config}"
            built += "."
        raise ValueError(
            f"checkpoint {path} does not fit this {type(model).__name__}: " + "; ".join(parts)
            + "." + built + " Build the model with the same settings (e.g. the same "
            "build_vit name and num_classes) before loading."
        )
    model.load_state_dict(state, strict=True)
    return meta


def load_matching_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any]
                             ) -> tuple[dict[str, Any] | None, str]:
    """Load ``path`` into ``model`` if it was saved with metadata equal to ``meta`` (every key).

    Returns:
        ``(saved_meta, "")`` when it matches; ``(None, reason)`` when the file is missing,
        unreadable, holds other weights or was saved with other values (the reason names
        them, for a "Retraining: ..." line). ``model`` may hold the loaded weights even then.
    """
    if not Path(path).is_file():
        return None, "there is no file"
    try:
        saved = load_checkpoint(model, path)
    except (ValueError, KeyError) as exc:  # unreadable or other weights
        return None, f"it could not be loaded ({exc})"
    stale = [k for k, v in meta.items() if saved.get(k) != v]
    return (None, f"it was saved with other {', '.join(stale)}") if stale else (saved, "")
