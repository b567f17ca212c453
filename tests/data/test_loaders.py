"""vit_course.data.loaders: load_image's RGB conversions, transforms and create_dataloaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from vit_course.data import create_dataloaders, imagenet_transform, load_image, simple_transform

COLORS = {"pizza": (200, 40, 40), "steak": (120, 60, 20), "sushi": (240, 240, 240)}


# --------------------------------------------------------------------------- load_image


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _palette_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    if transparent:
        img.info["transparency"] = 0  # palette index 0 (red) is transparent
    return img


@pytest.mark.parametrize("name, make, pixel, want", [
    ("gray.png", lambda: Image.new("L", (4, 4), 100), (1, 1), (100, 100, 100)),
    ("bilevel.png", lambda: Image.new("1", (4, 4), 1), (1, 1), (255, 255, 255)),
    ("gray16.png", lambda: Image.fromarray(np.full((4, 4), 65535, np.uint16)), (1, 1), (255, 255, 255)),
    ("rgba_clear.png", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (1, 1), (255, 255, 255)),
    ("rgba_half.png", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 128)), (1, 1), (255, 127, 127)),
    ("la.png", lambda: Image.new("LA", (4, 4), (0, 0)), (1, 1), (255, 255, 255)),
    ("palette.png", lambda: _palette_image(False), (0, 0), (0, 0, 255)),
    ("palette_clear.png", lambda: _palette_image(True), (1, 1), (255, 255, 255)),
    ("palette_clear2.png", lambda: _palette_image(True), (0, 0), (0, 0, 255)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 0)), (1, 1), (255, 255, 255)),
])
def test_load_image_converts_to_rgb(tmp_path, name, make, pixel, want):
    path = _save(make(), tmp_path / name)
    img = load_image(path)
    assert img.mode == "RGB"
    got = img.getpixel(pixel)
    assert all(abs(g - w) <= 2 for g, w in zip(got, want)), f"{name}: got {got}, expected {want}"


def test_load_image_missing_path(tmp_path):
    missing = tmp_path / "no_such.jpg"
    with pytest.raises(FileNotFoundError, match="no_such.jpg") as err:
        load_image(missing)
    assert "download_pizza_steak_sushi" in str(err.value)


def test_load_image_not_an_image(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image(text)
    with pytest.raises(ValueError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(TypeError):
        load_image(123)


# --------------------------------------------------------------------------- transforms and loaders


def _image_folders(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """Folders of small images in mixed modes (RGB JPEG, L, RGBA and P PNGs) and sizes."""
    makers = [
        lambda c: (Image.new("RGB", (20, 12), c), "jpg"),
        lambda c: (Image.new("L", (16, 16), c[0]), "png"),
        lambda c: (Image.new("RGBA", (10, 30), c + (200,)), "png"),
        lambda c: (Image.new("RGB", (9, 9), c).convert("P"), "png"),
    ]
    for split, classes in counts.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img, ext = makers[i % len(makers)](COLORS[name])
                img.save(root / split / name / f"{i:03d}.{ext}")
    return root


LOADER_COUNTS = {"train": {"pizza": 5, "steak": 4, "sushi": 3}, "test": {"pizza": 2, "steak": 2, "sushi": 2}}


@pytest.mark.parametrize("cache", [True, False])
def test_create_dataloaders_batches(tmp_path, cache):
    root = _image_folders(tmp_path, LOADER_COUNTS)
    train_dl, test_dl, classes = create_dataloaders(
        root / "train", root / "test", simple_transform(32), batch_size=4, cache=cache)
    assert classes == ["pizza", "steak", "sushi"]
    images, labels = next(iter(train_dl))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (4,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert len(train_dl.dataset) == 12 and len(test_dl.dataset) == 6
    assert train_dl.dataset.classes == classes
    assert all(Path(p).is_file() for p, _ in train_dl.dataset.samples)
    test_labels = torch.cat([y for _, y in test_dl]).tolist()
    assert test_labels == [0, 0, 1, 1, 2, 2], "the test loader must not shuffle"


def test_cache_matches_uncached_and_shuffle_is_seeded(tmp_path):
    root = _image_folders(tmp_path, LOADER_COUNTS)
    args = (root / "train", root / "test", simple_transform(16))
    cached = create_dataloaders(*args, batch_size=12, cache=True, seed=7)[0]
    plain = create_dataloaders(*args, batch_size=12, cache=False, seed=7)[0]
    other = create_dataloaders(*args, batch_size=12, cache=True, seed=8)[0]
    (xc, yc), (xp, yp), (_, yo) = next(iter(cached)), next(iter(plain)), next(iter(other))
    assert torch.equal(yc, yp) and torch.allclose(xc, xp), "same seed → same order and same tensors"
    assert not torch.equal(yc, yo), "a different seed shuffles differently"
    assert sorted(yc.tolist()) == [0] * 5 + [1] * 4 + [2] * 3


def test_max_per_class_takes_first_sorted(tmp_path):
    root = _image_folders(tmp_path, LOADER_COUNTS)
    train_dl, test_dl, _ = create_dataloaders(
        root / "train", root / "test", simple_transform(8), batch_size=2, max_per_class=2)
    names = [(Path(p).parent.name, Path(p).name) for p, _ in train_dl.dataset.samples]
    assert names == [("pizza", "000.jpg"), ("pizza", "001.png"), ("steak", "000.jpg"),
                     ("steak", "001.png"), ("sushi", "000.jpg"), ("sushi", "001.png")]
    assert len(test_dl.dataset) == 6


def test_imagenet_transform_normalises(tmp_path):
    path = _save(Image.new("RGB", (40, 30), (255, 255, 255)), tmp_path / "white.png")
    x = imagenet_transform(24)(load_image(path))
    assert x.shape == (3, 24, 24)
    want = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 5, 5], want, atol=1e-5)
    assert simple_transform(24)(load_image(path)).shape == (3, 24, 24)
    with pytest.raises(ValueError, match="img_size"):
        simple_transform(0)


def test_create_dataloaders_errors(tmp_path):
    root = _image_folders(tmp_path / "ok", LOADER_COUNTS)
    tf = simple_transform(8)
    with pytest.raises(FileNotFoundError, match="train_dir"):
        create_dataloaders(tmp_path / "nowhere", root / "test", tf)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="class"):
        create_dataloaders(tmp_path / "empty", root / "test", tf)
    other = _image_folders(tmp_path / "other", {"test": {"pizza": 1, "steak": 1}})
    with pytest.raises(ValueError, match="differ"):
        create_dataloaders(root / "train", other / "test", tf)
    with pytest.raises(ValueError, match="batch_size"):
        create_dataloaders(root / "train", root / "test", tf, batch_size=0)
    with pytest.raises(TypeError, match="transform"):
        create_dataloaders(root / "train", root / "test", "resize")
    with pytest.raises(ValueError, match="Resize"):
        create_dataloaders(root / "train", root / "test", transforms.ToTensor())


def test_cache_warns_about_random_augmentation(tmp_path):
    root = _image_folders(tmp_path, LOADER_COUNTS)
    tf = transforms.Compose([transforms.Resize((8, 8)), transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    with pytest.warns(UserWarning, match="cache=False"):
        create_dataloaders(root / "train", root / "test", tf, cache=True)
