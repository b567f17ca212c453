"""Transforms, image loading and DataLoaders for image-folder datasets (pizza/steak/sushi).

``create_dataloaders`` builds on :class:`torchvision.datasets.ImageFolder`: one sub-folder per
class, class names sorted alphabetically. With ``cache=True`` (the default) every image is
decoded and transformed once and kept as a tensor, so later epochs skip JPEG decoding.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from ..checks import check_nonnegative_int, check_positive_int
from ..imaging import IMAGENET_MEAN, IMAGENET_STD
from ..runtime import SEED
from ..tools.transport import is_visible_image, visible_classes


def simple_transform(img_size: int = 224) -> transforms.Compose:
    """Resize to ``img_size × img_size`` and convert to a float tensor in [0, 1] (the seed course's).

    Returns:
        A transform: PIL image → tensor (3, img_size, img_size).
    """
    check_positive_int(img_size, "img_size", "the side in pixels, e.g. 224")
    return transforms.Compose([transforms.Resize((img_size, img_size)), transforms.ToTensor()])


def imagenet_transform(img_size: int = 224) -> transforms.Compose:
    """:func:`simple_transform` followed by ImageNet mean/std normalisation (for pretrained models).

    Returns:
        A transform: PIL image → normalised tensor (3, img_size, img_size).
    """
    return transforms.Compose([*simple_transform(img_size).transforms,
                               transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


def _to_rgb(img: Image.Image, path: str) -> Image.Image:
    """Convert any PIL mode to RGB (rules in :func:`load_image`)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")  # applies the palette and its transparency
        mode = "RGBA"
    if mode.startswith("I") or mode == "F":  # scaled by the file's range, not its content
        arr = np.asarray(img, dtype=np.float64)
        top, what = (1.0, "float brightness in [0, 1]") if mode == "F" else (65535.0, "16-bit (0..65535)")
        if not np.isfinite(arr).all() or (arr.size and (arr.min() < 0 or arr.max() > top)):
            raise ValueError(
                f"{path!r} is a mode-{mode} image with values in [{np.nanmin(arr):g}, {np.nanmax(arr):g}] "
                f"(non-finite: {int((~np.isfinite(arr)).sum())}); load_image reads mode {mode} as {what}. "
                "Rescale it into that range (or save it as an 8-bit PNG) and load it again.")
        img = Image.fromarray(np.rint(arr * (255.0 / top)).astype(np.uint8))
        mode = "L"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _fspath(value: object, name: str, what: str) -> str:
    """``value`` as a str path, or a TypeError saying what ``name`` must be."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}: {value!r}.")
    return os.fspath(value)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file and return it as an RGB PIL image (fully loaded, file closed).

    Conversions, so every model sees 3 channels:

    - grayscale ``L`` / ``1``: the gray value is copied to R, G and B;
    - the EXIF orientation (phone photos) is applied first, so the image is upright;
    - 16-bit ``I;16`` and integer ``I``: scaled by 255/65535 (by the 16-bit range, so a dark
      image stays dark); float ``F``: values in [0, 1] scaled by 255; then as ``L``. Values
      outside that range, NaN or inf are refused (ValueError);
    - ``RGBA`` / ``LA`` (transparency): composited on a white background;
    - palette ``P``: expanded through the palette to RGBA (keeping palette transparency),
      then composited on white;
    - ``CMYK``, ``YCbCr`` and other modes: PIL's ``convert("RGB")``.

    Args:
        path: image file.

    Returns:
        PIL image in mode ``RGB``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is a folder, a file PIL cannot decode, an image over PIL's
            decompression-bomb limit, or out-of-range 16-bit/float values.
        PermissionError: the file cannot be read.
    """
    path = _fspath(path, "path", "a str or os.PathLike pointing at an image file")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No image at {path!r} (resolved to {os.path.abspath(path)!r}; current folder {os.getcwd()!r}). "
            "Check the path; for the course dataset run vit_course.data.download_pizza_steak_sushi() "
            "and build paths from the folder it returns."
        )
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not an image file; pass the path of one image.")
    try:
        with Image.open(path) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img, path)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"{path!r} is too large to open safely ({exc}). If you trust the file, shrink it first, "
            "e.g. PIL.Image.MAX_IMAGE_PIXELS = None; PIL.Image.open(path).reduce(8).save('small.jpg'), "
            "and load the smaller copy.") from None
    except PermissionError as exc:
        raise PermissionError(f"{path!r} cannot be read ({exc.strerror}); fix its permissions (chmod u+r).") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(
            f"{path!r} is not an image PIL can decode ({type(exc).__name__}: {exc}). "
            "Remove or replace the file (a damaged download? run download_pizza_steak_sushi(force=True))."
        ) from exc


class TensorImageDataset(Dataset):
    """Images decoded and transformed once, held as one tensor (B, C, H, W), with ImageFolder's metadata.

    Attributes:
        images: tensor (B, C, H, W).
        targets: list of class indices, length B.
        classes, class_to_idx, samples: as in :class:`torchvision.datasets.ImageFolder`
            (``samples`` is the list of ``(path, class_index)``).
    """

    def __init__(self, folder: datasets.ImageFolder, transform: Callable) -> None:
        tensors = []
        # One image is too small to gain from intra-op threads, and on a busy CPU the thread
        # hand-offs cost more than the work (ToTensor ran ~50x slower with 2 threads here).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for path, _ in folder.samples:
                out = transform(load_image(path))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"cache=True needs a transform that returns a tensor, got {type(out).__name__} "
                        f"for {path!r}. End the transform with transforms.ToTensor() (or pass cache=False)."
                    )
                tensors.append(out)
        finally:
            torch.set_num_threads(threads)
        shapes = sorted({tuple(t.shape) for t in tensors})
        if len(shapes) > 1:
            raise ValueError(
                f"the transform returned tensors of different shapes {shapes[:4]} in {folder.root!r}; "
                "batches need one size: start the transform with transforms.Resize((size, size))."
            )
        self.images = torch.stack(tensors) if tensors else torch.empty(0)
        self.targets = [t for _, t in folder.samples]
        self.classes = list(folder.classes)
        self.class_to_idx = dict(folder.class_to_idx)
        self.samples = list(folder.samples)
        self.imgs = self.samples
        self.root = folder.root
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


class _VisibleImageFolder(datasets.ImageFolder):
    """ImageFolder without hidden classes or files (``.ipynb_checkpoints/``, ``.DS_Store``, ``._x.jpg``)."""

    find_classes = staticmethod(visible_classes)


def _image_folder(folder: str | os.PathLike, split: str, transform: Callable) -> datasets.ImageFolder:
    folder = _fspath(folder, f"{split}_dir", "a path (str or os.PathLike)")
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{split}_dir {folder!r} does not exist or is not a folder (current folder {os.getcwd()!r}). "
            "For the course dataset run root = vit_course.data.download_pizza_steak_sushi() and pass "
            f"root / '{split}'."
        )
    try:
        return _VisibleImageFolder(folder, transform=transform, loader=load_image,
                                   is_valid_file=functools.partial(is_visible_image, folder))
    except FileNotFoundError as exc:  # no class folders, or class folders without images
        raise ValueError(
            f"{split}_dir {folder!r} is not an image-folder dataset: {exc}. Expected one sub-folder "
            "per class holding image files (e.g. train/pizza/1.jpg, train/steak/2.jpg)."
        ) from exc


def _first_per_class(folder: datasets.ImageFolder, k: int) -> None:
    """Keep the first ``k`` samples of each class (ImageFolder sorts by class, then file name)."""
    kept: list[tuple[str, int]] = []
    seen: dict[int, int] = {}
    for path, target in folder.samples:
        if seen.get(target, 0) < k:
            kept.append((path, target))
            seen[target] = seen.get(target, 0) + 1
    folder.samples = folder.imgs = kept
    folder.targets = [t for _, t in kept]


def _has_random_step(transform: Callable) -> bool:
    steps = getattr(transform, "transforms", [transform])
    return any(type(step).__name__.startswith("Random") for step in steps)


def create_dataloaders(train_dir: str | os.PathLike, test_dir: str | os.PathLike,
                       transform: Callable, batch_size: int = 32, num_workers: int = 0,
                       max_per_class: int | None = None, cache: bool = True, seed: int = SEED
                       ) -> tuple[DataLoader, DataLoader, list[str]]:
    """Training and test DataLoaders from two image folders (one sub-folder per class).

    Args:
        train_dir: folder with one sub-folder of images per class.
        test_dir: same classes as ``train_dir``.
        transform: PIL image → tensor (C, H, W), e.g. :func:`simple_transform`.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        max_per_class: keep only the first ``k`` images of each class (sorted file names, so
            deterministic); for the quick profile. None keeps all.
        cache: decode and transform every image once and keep the tensors. Random
            augmentations would then be frozen; use ``cache=False`` with them.
        seed: seeds the training loader's shuffling (a dedicated ``torch.Generator``).

    Returns:
        ``(train_dataloader, test_dataloader, class_names)``. Batches are ``(images, labels)``
        with images (B, C, H, W) and labels (B,). The training loader shuffles; the test one
        does not.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder has no class folders or no images, or train/test classes differ.
    """
    if not callable(transform):
        raise TypeError(
            f"transform must be callable (PIL image → tensor), got {type(transform).__name__}: {transform!r}. "
            "Use simple_transform() or imagenet_transform()."
        )
    check_positive_int(batch_size, "batch_size")
    check_nonnegative_int(num_workers, "num_workers", "0 loads in the main process")
    check_nonnegative_int(seed, "seed")
    if max_per_class is not None:
        check_positive_int(max_per_class, "max_per_class", "or None to keep every image")
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be True or False, got {cache!r}.")

    train_data = _image_folder(train_dir, "train", transform)
    test_data = _image_folder(test_dir, "test", transform)
    if train_data.classes != test_data.classes:
        raise ValueError(
            f"train and test class folders differ: train_dir {os.fspath(train_dir)!r} has {train_data.classes}, "
            f"test_dir {os.fspath(test_dir)!r} has {test_data.classes}. Both need the same class sub-folders."
        )
    if max_per_class is not None:
        _first_per_class(train_data, max_per_class)
        _first_per_class(test_data, max_per_class)

    if cache and _has_random_step(transform):
        warnings.warn(
            "create_dataloaders(cache=True) applies the transform once, so its random steps "
            "are frozen for every epoch; pass cache=False to re-draw them each epoch.",
            UserWarning, stacklevel=2,
        )
    train_ds = TensorImageDataset(train_data, transform) if cache else train_data
    test_ds = TensorImageDataset(test_data, transform) if cache else test_data

    pin = torch.cuda.is_available()
    train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                          pin_memory=pin, generator=torch.Generator().manual_seed(seed))
    test_dl = DataLoader(test_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                         pin_memory=pin)
    return train_dl, test_dl, list(train_data.classes)
