"""Pretrained weights as files: where torchvision caches them, whether a file is the real one,
downloading it, and the hashes and atomic writes behind the caches.

Used by :mod:`vit_course.pretrained` (which re-exports the public names), the download and
stand-in commands, and the explain CLI.

Also here: the torchvision and timm weight lookups behind
:func:`vit_course.pretrained.build_pretrained_vit` (file, status, :class:`PretrainedInfo`) and
the frozen-feature cache of :func:`vit_course.pretrained.extract_features` (key, read, write).

Stand-in detection. torchvision's file names carry the first 8 hex digits of the file's
SHA-256 (``vit_b_16-c867db91.pth``), so :func:`checkpoint_status` tells the real file from a
stand-in (:mod:`vit_course.tools.standin`'s random file under the same name) by hashing it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

if TYPE_CHECKING:
    from torchvision.models._api import WeightsEnum

from .files import atomic_write, atomic_write_text, check_writable  # noqa: F401  (re-exported)

PREPARE_COMMAND = "python -m vit_course.download --all"
PREPARE_MAKE = "make download"
DEFAULT_ARCH = "vit_b_16"
STATUSES = ("genuine", "stand-in", "missing", "unverified")
FEATURES_FORMAT = "vit_course.features/1"


@functools.lru_cache(maxsize=1)
def torchvision_vits() -> tuple[str, ...]:
    """torchvision's ViT names (``vit_b_16``, ``vit_b_32``, ``vit_h_14``, ...). torchvision is
    imported here, not with this module: it takes seconds, and a notebook that only loads a
    checkpoint of the course's own ViT (a graded exercise) never needs it."""
    from torchvision.models import list_models

    return tuple(list_models(include="vit_*"))


def unknown_arch_message(arch: str) -> str:
    """Why ``arch`` cannot be built, and the names that can."""
    return (f"arch={arch!r} is not a ViT this course can build; use one of "
            f"{list(torchvision_vits())} (torchvision) or, with timm installed "
            "(pip install -e .[timm]), a timm ViT/DeiT name such as 'deit_tiny_patch16_224'.")

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # same rule torch.hub uses for check_hash


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not in the cache and could not be downloaded."""


# --------------------------------------------------------------------------- files


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`: never a half-written file."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def load_weights_only(path: str | os.PathLike, fix: str, map_location: Any = "cpu",
                      what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` with errors in the project's words.

    Raises:
        FileNotFoundError: no file (``fix`` says how to make one).
        ValueError: the file holds pickled code (refused, never run) or is damaged/truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; {fix}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))   # the refused callable, e.g. posix.system
        if found is None:                                # no refusal: a damaged pickle
            raise _damaged(path, exc, fix) from None
        raise ValueError(
            f"{path} was refused: besides tensors it holds pickled Python objects "
            f"({found.group(1)}), which could run code when loaded, so "
            f"it is not read. Use only files made by this course (or another source you trust "
            f"that saves plain weights); {fix}.") from None
    except Exception as exc:  # RuntimeError from the zip reader, OSError 22, EOFError, ...
        raise _damaged(path, exc, fix) from None


def _damaged(path: Path, exc: Exception, fix: str) -> ValueError:
    return ValueError(f"{path} is damaged or truncated ({type(exc).__name__}: "
                      f"{'unreadable' if 'weights_only' in str(exc) else str(exc).splitlines()[0]}"
                      f"); delete it "
                      f"and {fix}.")


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, remembered per (path, mtime, size)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


# --------------------------------------------------------------------------- torchvision weights


def resolve_weights(weights: WeightsEnum | str, arch: str = DEFAULT_ARCH) -> WeightsEnum:
    """Turn ``weights`` into a torchvision weights enum entry for ``arch``.

    Args:
        weights: an enum entry (``ViT_B_16_Weights.IMAGENET1K_V1``), its full name
            (``"ViT_B_16_Weights.IMAGENET1K_V1"``) or an entry name for ``arch``
            (``"DEFAULT"``, ``"IMAGENET1K_V1"``).
        arch: torchvision architecture name, e.g. ``"vit_b_16"``.
    """
    from torchvision.models import get_model_weights, get_weight
    from torchvision.models._api import WeightsEnum

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"arch={arch!r} is not a torchvision model with weights; use e.g. "
                         f"'vit_b_16' (see torchvision.models.list_models()).") from exc
    if isinstance(weights, WeightsEnum):
        resolved = weights
    elif isinstance(weights, str):
        try:
            resolved = get_weight(weights) if "." in weights else enum[weights]
        except (KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"weights={weights!r} is not a weights entry of {arch!r}; use one of "
                             f"{['DEFAULT'] + [w.name for w in enum]} or a WeightsEnum.") from exc
    else:
        raise TypeError(f"weights must be a torchvision WeightsEnum entry or its name, got "
                        f"{type(weights).__name__}: {weights!r}; e.g. ViT_B_16_Weights.DEFAULT.")
    if not isinstance(resolved, enum):
        raise ValueError(f"weights={resolved} belong to another architecture than arch={arch!r}; "
                         f"pass the matching arch or one of {[w.name for w in enum]}.")
    return resolved


def weights_file(weights: WeightsEnum | str, arch: str = DEFAULT_ARCH) -> Path:
    """Where torchvision caches ``weights``: ``torch.hub.get_dir()/checkpoints/<file in url>``."""
    weights = resolve_weights(weights, arch)
    name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def weights_status(weights: WeightsEnum | str = "DEFAULT", arch: str = DEFAULT_ARCH) -> str:
    """Is the cached file torchvision's real checkpoint?

    Returns:
        ``"genuine"`` when the file's SHA-256 starts with the hash in its name,
        ``"stand-in"`` when it does not (e.g. :mod:`vit_course.standin`'s random file),
        ``"missing"`` when there is no file, ``"unverified"`` when the name carries no hash.
    """
    return checkpoint_status(weights_file(weights, arch))


def checkpoint_status(path: str | os.PathLike) -> str:
    """:func:`weights_status` for a file path: its SHA-256 against the hash in its name."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return "unverified"
    return "genuine" if file_sha256(path).startswith(match.group(1)) else "stand-in"


def unavailable_message(path: Path, url: str, reason: str) -> str:
    """The text of :class:`WeightsUnavailableError`: the file, the folder and the fix."""
    return (f"Pretrained weights are not available: {reason}\n"
            f"  expected file : {path.name}\n"
            f"  cache folder  : {path.parent}  (torch.hub.get_dir()/checkpoints; set TORCH_HOME "
            f"to move it)\n"
            f"  download from : {url}\n"
            f"Fix: on a machine with internet run `{PREPARE_COMMAND}` (or `{PREPARE_MAKE}`) "
            f"before class, or copy {path.name} into the cache folder by hand.")


def ensure_weights(weights: WeightsEnum | str = "DEFAULT", arch: str = DEFAULT_ARCH,
                   progress: bool = True) -> Path:
    """Make sure the weights file is in the torch hub cache; download it if not.

    Uses torch.hub's downloader exactly as torchvision does (temporary ``.partial`` file,
    SHA-256 prefix check, progress bar), so the file ends up where the builders look.

    Returns:
        The path of the cached file.

    Raises:
        WeightsUnavailableError: no file and the download failed (the message says where
            the file should go and how to get it there).
    """
    weights = resolve_weights(weights, arch)
    path = weights_file(weights, arch)
    if path.is_file():
        return path
    match = _HASH_IN_NAME.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f'Downloading: "{weights.url}" to {path}', file=sys.stderr)
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None,
                                       progress=progress)
    except Exception as exc:  # URLError, HTTPError, timeouts, hash mismatch, disk errors
        raise WeightsUnavailableError(unavailable_message(
            path, weights.url, f"{type(exc).__name__}: {exc}")) from exc
    return path


@dataclass(frozen=True)
class PretrainedInfo:
    """Where a model's backbone weights came from; attached as ``model.pretrained_info``."""

    arch: str
    weights: str            # e.g. "ViT_B_16_Weights.IMAGENET1K_V1" or "timm:deit_tiny_patch16_224"
    status: str             # one of STATUSES
    file: str | None
    sha256: str | None

    @property
    def is_standin(self) -> bool:
        return self.status == "stand-in"

    def to_meta(self) -> dict[str, Any]:
        return {**asdict(self), "stand_in": self.is_standin}


def standin_notice(info: PretrainedInfo) -> str:
    """The one line printed whenever a model is built from stand-in weights."""
    return (f"WARNING: STAND-IN WEIGHTS - {Path(info.file or '?').name} is not torchvision's "
            f"pretrained file (random weights for offline tests); every result below comes "
            f"from a random backbone, NOT the real pretrained {info.arch}.")


def load_torchvision(arch: str, weights: WeightsEnum | str, progress: bool = True
                     ) -> tuple[nn.Module, Callable, PretrainedInfo]:
    """torchvision's pretrained ``arch`` (weights cached or downloaded), its transform and info.

    Raises:
        WeightsUnavailableError: weights neither cached nor downloadable, or the cached file
            does not load.
    """
    from torchvision.models import VisionTransformer, get_model

    if arch not in torchvision_vits():
        raise ValueError(unknown_arch_message(arch))
    weights = resolve_weights(weights, arch)
    path = ensure_weights(weights, arch, progress=progress)
    status = weights_status(weights, arch)
    info = PretrainedInfo(arch=arch, weights=f"{type(weights).__name__}.{weights.name}",
                          status=status, file=str(path),
                          sha256=file_sha256(path) if status != "unverified" else None)
    try:
        model = get_model(arch, weights=weights, progress=progress)
    except WeightsUnavailableError:
        raise
    except Exception as exc:
        raise WeightsUnavailableError(unavailable_message(
            path, weights.url, f"the cached file could not be loaded ({type(exc).__name__}: "
            f"{exc}); delete it and download again")) from exc
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"arch={arch!r} is not a torchvision VisionTransformer; use e.g. "
                         "'vit_b_16'.")
    return model, weights.transforms(), info


def load_timm(arch: str, weights: Any) -> tuple[nn.Module, Callable, PretrainedInfo]:
    """timm's pretrained ``arch`` (from the Hugging Face cache), its transform and info.

    Raises:
        ImportError: timm is not installed. WeightsUnavailableError: weights not available.
    """
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError as exc:
        raise ImportError(f"arch={arch!r} is not a torchvision model, so it needs timm, which is "
                          "not installed. Install the optional extra: pip install -e .[timm] "
                          f"(or use one of {list(torchvision_vits())}).") from exc
    if weights not in ("DEFAULT", None):
        raise ValueError(f"weights={weights!r} cannot be combined with timm arch={arch!r}; pass "
                         "weights='DEFAULT' (the model's pretrained tag).")
    if arch not in timm.list_models():
        raise ValueError(unknown_arch_message(arch))
    try:
        model = timm.create_model(arch, pretrained=True)
    except Exception as exc:
        hub = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        raise WeightsUnavailableError(
            f"Pretrained timm weights for {arch!r} are not available ({type(exc).__name__}: {exc}). "
            f"timm caches them under {hub} (HF_HOME). Fix: run timm.create_model({arch!r}, "
            f"pretrained=True) once on a machine with internet, with the same HF_HOME.") from exc
    transform = create_transform(**resolve_data_config({}, model=model))
    info = PretrainedInfo(arch=arch, weights=f"timm:{arch}", status="unverified", file=None,
                          sha256=None)
    return model, transform, info


# --------------------------------------------------------------------------- fingerprints


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype}|{tuple(t.shape)}|".encode())
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def state_fingerprint(model: nn.Module, skip: nn.Module | None = None) -> str:
    """SHA-256 over ``model``'s state (names, dtypes, shapes, values), ``skip``'s tensors excluded.

    Hashes every tensor on each call (about 0.3 s for ViT-B/16's 344 MB): a remembered
    value could miss an in-place change made through ``.data``.
    """
    skipped = {id(t) for t in skip.state_dict(keep_vars=True).values()} if skip is not None else set()
    digest = hashlib.sha256()
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) in skipped:
            continue
        t = v.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        if t.numel():
            digest.update(t.view(torch.uint8).numpy())
    return digest.hexdigest()


def _base_dataset(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    indices = None
    while isinstance(dataset, Subset):
        idx = [int(i) for i in dataset.indices]
        indices = idx if indices is None else [idx[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def transform_key(transform: Callable | None) -> str | None:
    """A transform as text for cache keys: its class and ``repr``."""
    return None if transform is None else f"{type(transform).__qualname__}:{transform!r}"


def data_fingerprint(dataset: Dataset, transform: Callable | None = None) -> dict[str, Any]:
    """What identifies a dataset's content for the feature cache.

    Order matters (features come back in dataset order). Files are identified by content
    (SHA-256 of each image file), path relative to their common root, and label; tensors held
    in memory (``create_dataloaders(cache=True)``'s ``.images``, a ``TensorDataset``) by their
    values too, which also covers transforms whose ``repr`` hides their settings. Touching a
    file without changing it keeps the key; replacing its bytes changes it.

    Args:
        dataset: an ImageFolder-like dataset (``.samples`` = [(path, label)], ``.classes``),
            a ``TensorDataset``, or a ``Subset`` of either.
        transform: preprocessing applied before the model; default: ``dataset.transform``.

    Returns:
        A JSON-able dict (hash it for a key).
    """
    base, indices = _base_dataset(dataset)
    out: dict[str, Any] = {"classes": list(getattr(base, "classes", []) or []), "indices": indices}
    out["transform"] = transform_key(transform if transform is not None else getattr(base, "transform", None))
    images = getattr(base, "images", None)
    if isinstance(images, torch.Tensor):
        out["images"] = tensor_sha256(images)
    samples = getattr(base, "samples", None)
    if samples is not None:
        paths = [os.path.abspath(os.fspath(p)) for p, _ in samples]
        root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
        out["files"] = [(os.path.relpath(p, root), os.path.getsize(p), file_sha256(p), int(y))
                        for p, (_, y) in zip(paths, samples)]
        return out
    tensors = getattr(base, "tensors", None)
    if tensors is not None:
        out["tensors"] = [tensor_sha256(t) for t in tensors]
        return out
    raise TypeError(f"cannot identify the content of a {type(base).__name__} for the feature "
                    "cache; use an ImageFolder-like dataset (.samples) or a TensorDataset, or "
                    "pass data_key=... to extract_features (or cache=False).")


# --------------------------------------------------------------------------- feature cache


def feature_cache_key(model: nn.Module, backbone: str, dataset: Dataset,
                      transform: Callable | None = None, data_key: str | None = None) -> str:
    """Hex key of (backbone weights, preprocessing, data) for the feature cache; ``backbone``
    is the backbone's :func:`state_fingerprint`."""
    parts = {"format": FEATURES_FORMAT, "model": type(model).__qualname__, "backbone": backbone,
             "data": data_key if data_key is not None else data_fingerprint(dataset, transform)}
    if data_key is not None and transform is not None:
        parts["transform"] = transform_key(transform)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def read_features(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(features, labels)`` cached at ``path`` under ``key``; None if missing or damaged."""
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("format") == FEATURES_FORMAT and stored.get("key") == key:
                return stored["features"], stored["labels"]
        except Exception:  # damaged cache file: recompute and overwrite
            pass
    return None


def write_features(path: Path, key: str, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Store ``(features, labels)`` at ``path`` under ``key`` (atomic write)."""
    atomic_torch_save({"format": FEATURES_FORMAT, "key": key, "features": features,
                       "labels": labels}, path)
