"""Transfer learning with torchvision's pretrained ViT-B/16: frozen backbone, new head.

The course's central model (notebook 03, explained in 04-08)::

    model, transform = build_pretrained_vit()          # ViT_B_16_Weights.DEFAULT, 3 classes
    train_x, train_y = extract_features(model, train_dl)   # (n, 768) CLS features, cached
    test_x, test_y = extract_features(model, test_dl)
    head, history = train_head(train_x, train_y, test_x, test_y, num_classes=3)
    attach_head(model, head)
    save_head(model, "artifacts/03_vit_b16_head.pt", class_names=class_names)
    model, transform, meta = load_pretrained_classifier("artifacts/03_vit_b16_head.pt")

Weights come through torchvision's own mechanism: the file named in ``weights.url`` in the
torch hub cache (``$TORCH_HOME/hub/checkpoints``, see :func:`torch.hub.get_dir`), downloaded
with a progress bar when missing. Without network the builder raises
:class:`WeightsUnavailableError` naming the file, the folder and the preparation command
``python -m vit_course.download --all`` (``make download``).

Stand-in weights. Offline tests seed the cache with a *random* checkpoint under the real
file name (:mod:`vit_course.standin`). torchvision's file names carry the first 8 hex digits
of the file's SHA-256 (``vit_b_16-c867db91.pth``), so :func:`weights_status` tells the real
file from a stand-in by hashing it. With a stand-in the builder prints one line saying so,
and the flag travels with the model (``model.pretrained_info``), the saved head and the
notebook output.

Frozen features. With the backbone frozen, its CLS representation of an image never
changes, so :func:`extract_features` computes it once for a whole dataset and caches it on
disk, keyed by the backbone's weights, the preprocessing and the data; :func:`train_head`
then trains the linear head on those features in seconds. It gives the same head as
training the full model on the images (same seed, same batches) because the head only ever
sees the features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer, list_models
from torchvision.models._api import WeightsEnum
from tqdm.auto import tqdm

from . import engine
from .checks import check_positive_int
from .explain.families import describe_model, head_of, part, set_head
from .runtime import SEED, artifacts_dir, eval_mode, set_seed
# Weights as files (cache location, stand-in detection by hash, download, atomic writes,
# the feature cache) are infrastructure, in vit_course.tools.weights.
from .tools.weights import (  # noqa: F401  (re-exported: notebooks and tests use them here)
    DEFAULT_ARCH, WeightsUnavailableError, atomic_torch_save, checkpoint_status,
    feature_cache_key, load_timm, load_weights_only, load_torchvision, read_features, standin_notice,
    state_fingerprint, weights_status, write_features,
)

HEAD_FORMAT = "vit_course.head/1"

# --------------------------------------------------------------------------- building


def new_head(in_features: int, num_classes: int, seed: int = SEED) -> nn.Linear:
    """A fresh ``nn.Linear(in_features, num_classes)`` with PyTorch's default random init,
    drawn right after ``set_seed(seed)`` (so equal seeds give equal heads)."""
    check_positive_int(num_classes, "num_classes",
                       "use the number of class folders, e.g. 3 for pizza/steak/sushi.")
    set_seed(seed)
    return nn.Linear(in_features, num_classes)


def build_pretrained_vit(weights: WeightsEnum | str = "DEFAULT", num_classes: int = 3,
                         arch: str = DEFAULT_ARCH, freeze: bool = True, *, seed: int = SEED,
                         progress: bool = True) -> tuple[nn.Module, Callable]:
    """Pretrained ViT with a new ``num_classes`` head and (by default) a frozen backbone.

    Args:
        weights: torchvision weights entry or name (default ``"DEFAULT"``, for ViT-B/16
            ``ViT_B_16_Weights.IMAGENET1K_V1``). For a timm ``arch`` only ``"DEFAULT"``
            (the model's pretrained tag) is accepted.
        num_classes: outputs of the new head.
        arch: torchvision ViT name (``"vit_b_16"``, ``"vit_b_32"``, ...) or, with the
            ``timm`` extra installed, a timm ViT/DeiT name (``"deit_tiny_patch16_224"``).
        freeze: set ``requires_grad=False`` on everything but the head.
        seed: seed for the head's random initialisation (:func:`new_head`).
        progress: show torchvision's download progress bar.

    Returns:
        ``(model, transform)``: the model (head = ``nn.Linear(D, num_classes)``, D = 768 for
        ViT-B/16; ``model.pretrained_info`` says where the weights came from) and the
        preprocessing the weights were trained with (``weights.transforms()``).

    Raises:
        WeightsUnavailableError: weights neither cached nor downloadable.
        ImportError: a timm name without timm installed.
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a model name (str), got {type(arch).__name__}: {arch!r}.")
    if arch in list_models():   # a torchvision name; anything else is taken as a timm name
        model, transform, info = load_torchvision(arch, weights, progress)
    else:
        model, transform, info = load_timm(arch, weights)
    if info.is_standin:
        print(standin_notice(info))
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    attach_head(model, new_head(describe_model(model).width, num_classes, seed))
    model.pretrained_info = info
    return model, transform


def attach_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put ``head`` (input: the (B, D) CLS feature) on ``model`` in place; returns ``model``.

    Where the head goes is the model family's business (:func:`vit_course.explain.families.set_head`):
    torchvision's ``model.heads`` becomes the bare head (not ``Sequential(head=...)``), timm's
    ``model.head``; the explainers accept both.
    """
    if not isinstance(head, nn.Module):
        raise TypeError(f"head must be an nn.Module, got {type(head).__name__}.")
    width = describe_model(model).width
    in_features = getattr(head, "in_features", None)
    if in_features is not None and in_features != width:
        raise ValueError(f"head takes {in_features} features but the model's CLS feature has "
                         f"{width}; build the head with nn.Linear({width}, n).")
    return set_head(model, head)


def frozen_trainable_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``{"total", "trainable", "frozen"}``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


# --------------------------------------------------------------------------- features


def cls_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pre-head representation: the final-norm CLS token.

    Args:
        model: torchvision ``VisionTransformer`` or timm ViT.
        images: (B, C, H, W), already preprocessed.

    Returns:
        (B, D) features; ``head_of(model)(cls_features(model, x)) == model(x)``.
    """
    if isinstance(model, VisionTransformer):
        x = model._process_input(images)                                  # (B, N, D)
        x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        return model.encoder(x)[:, 0]                                      # (B, D)
    if hasattr(model, "forward_head") and hasattr(model, "forward_features"):  # timm
        return model.forward_head(model.forward_features(images), pre_logits=True)
    raise TypeError(f"model must be a torchvision VisionTransformer or a timm ViT, got "
                    f"{type(model).__name__}.")


@torch.inference_mode()
def _compute_features(model: nn.Module, loader: DataLoader, device: torch.device,
                      progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    with eval_mode(model):
        for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            images, y = engine.unpack_batch(batch)
            feats.append(cls_features(model, images.to(device)).float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    if not feats:
        raise ValueError("the dataloader yielded no batches; check the dataset folder is not empty.")
    return torch.cat(feats), torch.cat(labels)


def extract_features(model: nn.Module, dataloader: DataLoader, *, cache: bool = True,
                     cache_dir: str | os.PathLike | None = None, transform: Callable | None = None,
                     data_key: str | None = None, device: torch.device | str | None = None,
                     progress: bool = True, desc: str = "CLS features"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS features of every image in ``dataloader.dataset``, computed once and cached.

    The dataset is read in its own order (a shuffling loader is re-read without shuffling,
    same batch size and collate function), in batches under ``torch.inference_mode()`` with
    a progress bar. The result is stored in ``cache_dir/<key>.pt`` (atomic write) with the
    key from :func:`vit_course.tools.weights.feature_cache_key`: a change to the backbone
    weights, the preprocessing or the data (files, labels, class names) gives a new key and
    a fresh computation.

    Args:
        model: torchvision ``VisionTransformer`` or timm ViT (the head is ignored).
        dataloader: yields ``(images (B, C, H, W), labels (B,))``.
        cache: read and write the disk cache (False: always compute, store nothing).
        cache_dir: default ``artifacts_dir()/features``.
        transform: preprocessing to key on when the dataset does not carry it as ``.transform``.
        data_key: your own identity for the data (replaces the data fingerprint).
        device: where to run the model; default: where its parameters are.
        progress: show a tqdm bar.

    Returns:
        ``(features (n, D) float32, labels (n,) int64)`` on the CPU, in dataset order.
    """
    if not isinstance(dataloader, DataLoader):
        raise TypeError(f"dataloader must be a torch DataLoader, got {type(dataloader).__name__}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dataset = dataloader.dataset
    path = None
    if cache:
        backbone = state_fingerprint(model, skip=head_of(model))
        key = feature_cache_key(model, backbone, dataset, transform, data_key)
        path = Path(cache_dir or artifacts_dir() / "features") / f"{key}.pt"
        stored = read_features(path, key)
        if stored is not None:
            return stored
    loader = DataLoader(dataset, batch_size=dataloader.batch_size or 32, shuffle=False,
                        num_workers=dataloader.num_workers, collate_fn=dataloader.collate_fn,
                        pin_memory=dataloader.pin_memory)
    features, labels = _compute_features(model, loader, device, progress, desc)
    if path is not None:
        write_features(path, key, features, labels)
    return features, labels


# --------------------------------------------------------------------------- head training


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int = 32,
                   shuffle: bool = False, seed: int = SEED) -> DataLoader:
    """DataLoader over ``(features, labels)``. With ``shuffle`` its batches follow
    ``torch.Generator().manual_seed(seed)``, as ``create_dataloaders(seed=seed)`` does for
    images, so both see the same samples in the same batches."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(features, labels), batch_size=batch_size, shuffle=shuffle,
                      generator=generator)


def _check_features(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"{name} features must be a (n, D) tensor, got "
                         f"{getattr(x, 'shape', type(x).__name__)}; use extract_features(...).")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"{name} labels must be a ({x.shape[0]},) tensor matching the features, "
                         f"got {getattr(y, 'shape', type(y).__name__)}.")


def train_head(train_features: torch.Tensor, train_labels: torch.Tensor,
               test_features: torch.Tensor | None = None, test_labels: torch.Tensor | None = None,
               *, num_classes: int, epochs: int = 10, lr: float = 1e-3, batch_size: int = 32,
               seed: int = SEED, head: nn.Module | None = None,
               device: torch.device | str = "cpu", progress: bool = True) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train a linear head on cached CLS features (Adam, cross-entropy).

    The head starts as ``new_head(D, num_classes, seed)`` (the head
    :func:`build_pretrained_vit` with the same seed puts on the model) unless ``head`` is
    given, and batches come from :func:`feature_loader` (shuffled with ``seed``). Training
    runs through :func:`vit_course.engine.train`, the loop used for whole models, so this
    equals training the full model with its frozen backbone on the images.

    Args:
        train_features, train_labels: (n, D) and (n,) from :func:`extract_features`.
        test_features, test_labels: the same for the test split (optional).
        num_classes: outputs of the head.
        epochs, lr, batch_size, seed: the training recipe.
        head: start from this module instead of a fresh one (trained in place).
        device: where to train (features are tiny, the CPU is fine).
        progress: tqdm bar and one line per epoch (from ``engine.train``).

    Returns:
        ``(head, history)`` with ``history`` as from ``engine.train`` (``train_loss``,
        ``train_acc``, ``test_loss``, ``test_acc``; test entries empty without test data).
    """
    _check_features("train", train_features, train_labels)
    if (test_features is None) != (test_labels is None):
        raise ValueError("pass both test_features and test_labels, or neither.")
    test_dl = None
    if test_features is not None:
        _check_features("test", test_features, test_labels)
        test_dl = feature_loader(test_features, test_labels, batch_size)
    if head is None:
        head = new_head(train_features.shape[1], num_classes, seed)
    train_dl = feature_loader(train_features, train_labels, batch_size, shuffle=True, seed=seed)
    head = head.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    history = engine.train(head, train_dl, test_dl, optimizer, nn.CrossEntropyLoss(), epochs,
                           torch.device(device), seed=seed, progress=progress)
    return head, history


# --------------------------------------------------------------------------- save / load


def save_head(model_or_head: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None,
              **more_meta: Any) -> Path:
    """Save only the head (a few KB) and what is needed to rebuild the model, atomically.

    Args:
        model_or_head: a model from :func:`build_pretrained_vit` (its ``pretrained_info``
            fills the meta), or a bare head with ``meta`` giving at least ``weights``.
        path: the file to write (e.g. ``artifacts_dir() / "03_vit_b16_head.pt"``).
        meta: extra entries, e.g. ``{"class_names": [...], "test_acc": 0.9}``
            (str/int/float/bool/None and lists/dicts of them). Keyword arguments are merged in.

    Returns:
        The path written. The file holds ``{"format", "state_dict", "meta"}`` with meta keys
        ``arch``, ``weights``, ``status``, ``stand_in``, ``num_classes``, ``in_features``
        and yours.
    """
    info = getattr(model_or_head, "pretrained_info", None)
    head = head_of(model_or_head) if info is not None else model_or_head
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a model from build_pretrained_vit or its nn.Linear head, got "
                        f"{type(head).__name__}.")
    full = {**(info.to_meta() if info is not None else {}), **(meta or {}), **more_meta}
    if "weights" not in full:
        raise ValueError("meta must name the backbone weights for a bare head, e.g. "
                         "meta={'weights': 'ViT_B_16_Weights.IMAGENET1K_V1'}; or pass the model.")
    full.setdefault("arch", DEFAULT_ARCH)
    if "status" not in full:
        full["status"] = weights_status(full["weights"], full["arch"])
        full["stand_in"] = full["status"] == "stand-in"
    full.update(num_classes=head.out_features, in_features=head.in_features)
    try:
        json.dumps(full)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta must hold only str/int/float/bool/None and lists/dicts of them "
                        f"({exc}); convert tensors with .tolist() and paths with str().") from None
    if "class_names" in full and len(full["class_names"]) != head.out_features:
        raise ValueError(f"class_names has {len(full['class_names'])} names but the head has "
                         f"{head.out_features} outputs.")
    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    path = Path(path)
    atomic_torch_save({"format": HEAD_FORMAT, "state_dict": state, "meta": full}, path)
    return path


def load_pretrained_classifier(path: str | os.PathLike, *, freeze: bool = True,
                               progress: bool = True) -> tuple[nn.Module, Callable, dict[str, Any]]:
    """Rebuild the full classifier from a saved head: backbone from its weights + the head.

    Returns:
        ``(model, transform, meta)``; ``meta`` is what :func:`save_head` stored
        (``class_names``, ``stand_in``, ...). If the backbone's stand-in status now differs
        from when the head was trained, one line says so (the head will not fit).
    """
    path, fix = Path(path), "train one in notebook 03 (it saves artifacts/03_vit_b16_head.pt)"
    stored = load_weights_only(path, fix, what="saved head")
    if not isinstance(stored, dict) or stored.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path} is not a head saved by vit_course.pretrained.save_head "
                         f"(format {HEAD_FORMAT!r}); {fix}.")
    meta, state = stored.get("meta") or {}, stored.get("state_dict") or {}
    K, D, weights = meta.get("num_classes"), meta.get("in_features"), meta.get("weights")
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()} \
        if isinstance(state, dict) else type(state).__name__
    if shapes != {"weight": (K, D), "bias": (K,)} or not isinstance(weights, str):
        raise ValueError(f"{path} does not hold one consistent head: its weights have shapes "
                         f"{shapes} but its metadata says num_classes={K}, in_features={D}, "
                         f"weights={weights!r}; delete it and {fix}.")
    model, transform = build_pretrained_vit(
        "DEFAULT" if weights.startswith("timm:") else weights, num_classes=K,
        arch=meta.get("arch", DEFAULT_ARCH), freeze=freeze, progress=progress)
    head_of(model).load_state_dict(stored["state_dict"])
    if model.pretrained_info.status != meta.get("status"):
        print(f"WARNING: the head in {path.name} was trained on {meta.get('status')} "
              f"weights but the backbone now has {model.pretrained_info.status} weights; its "
              "predictions are not meaningful until it is retrained.")
    return model, transform, meta


def load_or_rebuild_classifier(head_path: str | os.PathLike, train_dir: str | os.PathLike,
                               test_dir: str | os.PathLike, *, max_per_class: int | None = None,
                               epochs: int = 10, progress: bool = False
                               ) -> tuple[nn.Module, Callable, list[str]]:
    """Notebook 03's classifier for the notebooks after it: load the saved head if it is
    there, else rebuild it the way notebook 03 does (frozen ViT-B/16, a new head trained on
    the backbone's cached CLS features of ``train_dir``). Nothing is saved: run notebook 03
    for that.

    Args:
        head_path: the file notebook 03 saves (``artifacts_dir() / "03_vit_b16_head.pt"``).
        train_dir, test_dir: the image folders (one subfolder per class).
        max_per_class: training images per class when rebuilding (``None`` = all).
        epochs: head epochs when rebuilding. Default: 10.
        progress: progress bars while rebuilding. Default: False.

    Returns:
        ``(model, transform, class_names)``; ``model.pretrained_info`` tells whether the
        backbone is the real pretrained one or a stand-in.
    """
    head_path = Path(head_path)
    if head_path.is_file():
        model, transform, meta = load_pretrained_classifier(head_path, progress=progress)
        if "class_names" not in meta:
            raise ValueError(f"{head_path} holds no class_names; delete it and rerun notebook 03 "
                             "(it saves the head with save_head(..., class_names=...)).")
        return model, transform, list(meta["class_names"])
    from .data import create_dataloaders

    print(f"{head_path.name} not found: rebuilding notebook 03's model (run 03 to skip this).")
    model, transform = build_pretrained_vit(progress=progress)
    train_dl, _, class_names = create_dataloaders(train_dir, test_dir, transform=transform,
                                                  max_per_class=max_per_class)
    head, _ = train_head(*extract_features(model, train_dl, progress=progress),
                         num_classes=len(class_names), epochs=epochs, progress=progress)
    attach_head(model, head)
    return model, transform, list(class_names)


# --------------------------------------------------------------------------- inspection


def position_embedding_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity between the learned position embeddings of all patches (ViT paper, Fig. 7).

    Args:
        model: torchvision ``VisionTransformer`` (``encoder.pos_embedding``, (1, 1+N, D)) or a
            timm ViT (``pos_embed``).

    Returns:
        (h, w, h, w): entry ``[i, j]`` is the (h, w) map of patch (i, j)'s similarity to every
        patch; class-token embedding excluded.
    """
    pos = part(model, "pos_embedding")[0]                          # (P+N, D)
    side = int(round((pos.shape[0] - describe_model(model).num_prefix_tokens) ** 0.5))
    pos = pos.detach().float()[-side * side:]                     # (N, D), prefix tokens dropped
    pos = nn.functional.normalize(pos, dim=-1)
    return (pos @ pos.T).reshape(side, side, side, side)          # (h, w, h, w)


__all__ = [
    "WeightsUnavailableError", "attach_head", "build_pretrained_vit", "checkpoint_status",
    "cls_features", "extract_features", "feature_loader", "frozen_trainable_counts", "head_of",
    "load_or_rebuild_classifier", "load_pretrained_classifier", "new_head",
    "position_embedding_similarity", "save_head", "train_head", "weights_status",
]
