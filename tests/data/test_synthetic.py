"""Tests for vit_course.data.synthetic: the ground-truth pizza/steak/sushi images and their masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_course.data import synthetic as syn
from vit_course.data.synthetic import (
    CLASS_NAMES,
    CLASS_PAIRS,
    SyntheticFood,
    make_image,
    make_two_object_image,
    paste_objects,
    synthetic_dataloaders,
)
from vit_course.imaging import mask_coverage


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("cls", CLASS_NAMES)
def test_make_image_same_seed_identical_other_seed_different(cls: str) -> None:
    img1, m1 = make_image(cls, np.random.default_rng(7), 48)
    img2, m2 = make_image(cls, np.random.default_rng(7), 48)
    img3, m3 = make_image(cls, np.random.default_rng(8), 48)
    assert torch.equal(img1, img2) and torch.equal(m1, m2)
    assert not torch.equal(img1, img3)
    assert not torch.equal(m1, m3)


def test_make_image_does_not_touch_global_random_state() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    before_t, before_n = torch.get_rng_state(), np.random.get_state()[1].copy()
    make_image("pizza", np.random.default_rng(1), 32)
    make_two_object_image(("steak", "sushi"), 2, 32)
    assert torch.equal(torch.get_rng_state(), before_t)
    assert np.array_equal(np.random.get_state()[1], before_n)


def test_two_object_image_deterministic() -> None:
    a = make_two_object_image(("pizza", "sushi"), np.random.default_rng(3), 64)
    b = make_two_object_image(("pizza", "sushi"), np.random.default_rng(3), 64)
    c = make_two_object_image(("pizza", "sushi"), np.random.default_rng(4), 64)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_dataset_deterministic_and_seed_split_matter() -> None:
    a = SyntheticFood(9, size=32, seed=5)
    b = SyntheticFood(9, size=32, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.labels, b.labels)
    c = SyntheticFood(9, size=32, seed=6)
    assert not torch.equal(a.images, c.images)
    test = SyntheticFood(9, size=32, seed=5, split="test")
    assert not any(torch.equal(a.images[i], test.images[i]) for i in range(9))


def test_dataset_item_does_not_depend_on_n() -> None:
    small, big = SyntheticFood(4, size=32, seed=1), SyntheticFood(7, size=32, seed=1)
    assert torch.equal(small.images, big.images[:4])
    assert torch.equal(small.masks, big.masks[:4])


def test_dataset_item_matches_make_image() -> None:
    ds = SyntheticFood(3, size=32, seed=11)
    for i in range(3):
        img, mask = make_image(int(ds.labels[i]), syn._item_rng(11, "train", False, i), 32)
        assert torch.equal(ds.masks[i], mask)
        assert torch.equal(ds.images[i], (img * 255).round().to(torch.uint8))
        x, y = ds[i]
        assert (x - img).abs().max() <= 0.5 / 255 + 1e-6
        assert y == ds.labels[i]


# ----------------------------------------------------------------------------- values, labels
def test_image_shape_dtype_range_non_square() -> None:
    img, mask = make_image("steak", np.random.default_rng(0), (48, 64))
    assert img.shape == (3, 48, 64) and img.dtype == torch.float32
    assert mask.shape == (48, 64) and mask.dtype == torch.bool
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert img.std() > 0.05  # not a blank canvas


def test_dataset_getitem_types() -> None:
    ds = SyntheticFood(6, size=32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == torch.int64 and y.ndim == 0
    assert ds.images.dtype == torch.uint8 and ds.masks.shape == (6, 32, 32)
    assert len(ds) == 6 and ds.classes == list(CLASS_NAMES)


def test_dataset_transform_is_applied() -> None:
    ds = SyntheticFood(3, size=32, transform=lambda t: t * 2 - 1)
    x, _ = ds[1]
    assert torch.allclose(x, ds.images[1].float() / 255 * 2 - 1)


def test_single_object_labels_balanced() -> None:
    ds = SyntheticFood(31, size=32)
    counts = torch.bincount(ds.labels, minlength=3)
    assert counts.tolist() == [11, 10, 10]


def test_two_object_labels_are_pairs_of_different_classes_balanced() -> None:
    ds = SyntheticFood(12, size=32, two_objects=True)
    assert ds.labels.shape == (12, 2) and ds.masks.shape == (12, 2, 32, 32)
    assert (ds.labels[:, 0] != ds.labels[:, 1]).all()
    pairs = [tuple(p) for p in ds.labels.tolist()]
    assert sorted(pairs) == sorted(list(CLASS_PAIRS) * 2)
    assert torch.bincount(ds.labels.flatten(), minlength=3).tolist() == [8, 8, 8]
    x, y = ds[0]
    assert y.shape == (2,)


def test_classes_not_given_away_by_global_colour() -> None:
    """Nearest class mean on the image's mean RGB should be far from perfect."""
    train, test = SyntheticFood(300, size=32), SyntheticFood(150, size=32, split="test")
    f_tr = train.images.float().mean(dim=(2, 3))
    f_te = test.images.float().mean(dim=(2, 3))
    centroids = torch.stack([f_tr[train.labels == c].mean(0) for c in range(3)])
    acc = (torch.cdist(f_te, centroids).argmin(1) == test.labels).float().mean().item()
    assert acc < 0.7, f"mean colour alone classifies {acc:.0%} of images"


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("seed", range(12))
def test_mask_marks_the_drawn_pixels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cls = seed % 3
    objects = [syn._single_layout(cls, rng, 64, 64, syn.SINGLE_SCALE)]
    image, coverage, background = syn._render(objects, rng, 64, 64, antialias=2)
    untouched = coverage[0] == 0
    full = coverage[0] == 1
    # outside the object the image is exactly the background ...
    assert np.array_equal(image[untouched], background[untouched])
    # ... and inside it is not (every fully covered pixel was repainted).
    diff = np.abs(image - background).max(axis=-1)
    assert full.sum() > 30
    assert (diff[full] > 0).mean() > 0.99
    assert np.abs(image - background)[full].mean() > 0.05
    # the public call draws the same scene and thresholds coverage at one half
    img, mask = make_image(cls, np.random.default_rng(seed), 64)
    assert np.allclose(img.numpy().transpose(1, 2, 0), np.clip(image, 0, 1))
    assert torch.equal(mask, torch.from_numpy(coverage[0] >= 0.5))
    # the object lies in its disc
    _, cx, cy, radius, _ = objects[0]
    yy, xx = np.nonzero(coverage[0])
    assert (np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) <= radius + 1.5).all()


def test_mask_without_antialias_is_exact() -> None:
    rng = np.random.default_rng(0)
    objects = [syn._single_layout(1, rng, 32, 32, syn.SINGLE_SCALE)]
    image, coverage, background = syn._render(objects, rng, 32, 32, antialias=1)
    assert set(np.unique(coverage)) <= {0.0, 1.0}
    changed = np.abs(image - background).max(-1) > 0
    assert np.array_equal(changed, coverage[0] == 1)


@pytest.mark.parametrize("seed", range(12))
def test_two_object_masks_disjoint_nonempty_in_opposite_halves(seed: int) -> None:
    pair = CLASS_PAIRS[seed % 6]
    img, masks, labels = make_two_object_image(pair, np.random.default_rng(seed), 64)
    assert img.shape == (3, 64, 64) and masks.shape == (2, 64, 64) and masks.dtype == torch.bool
    assert labels.tolist() == list(pair)
    assert masks[0].sum() > 20 and masks[1].sum() > 20
    assert not (masks[0] & masks[1]).any()
    # each object sits in one half (left/right or top/bottom) and the other in the other half
    centroids = [torch.nonzero(m).float().mean(0) for m in masks]
    gap = (centroids[0] - centroids[1]).abs()
    assert gap.max() > 16


def test_two_object_masks_follow_the_class_order() -> None:
    """masks[k] is the region of the object drawn as classes[k]."""
    pair = (2, 0)
    layout = syn._two_layout(pair, np.random.default_rng(5), 64, 64, syn.TWO_OBJECT_SCALE)
    assert [o[0] for o in layout] == list(pair)
    _, masks, labels = make_two_object_image(pair, np.random.default_rng(5), 64)
    assert labels.tolist() == list(pair)
    for k, (_, cx, cy, radius, _) in enumerate(layout):
        yy, xx = torch.nonzero(masks[k], as_tuple=True)
        assert (torch.hypot(xx + 0.5 - cx, yy + 0.5 - cy) <= radius + 1.5).all()


# ----------------------------------------------------------------------------- masks on the patch grid
# (imaging.mask_coverage, which replaced data.synthetic.mask_to_grid: same fractions, float64)
def test_mask_coverage_by_hand() -> None:
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True          # top-left patch full
    mask[3, 3] = True            # one pixel of the bottom-right patch
    mask[0, 2] = mask[1, 2] = True  # half of the top-right patch
    out = mask_coverage(mask, (2, 2))
    assert torch.equal(out, torch.tensor([[1.0, 0.5], [0.0, 0.25]], dtype=torch.float64))
    assert out.dtype == torch.float64


def test_mask_coverage_batch_numpy_rectangular_and_int_grid() -> None:
    m = np.zeros((2, 4, 6), dtype=bool)
    m[1] = True
    out = mask_coverage(m, (2, 3))
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0], torch.zeros(2, 3, dtype=torch.float64)) and torch.equal(out[1], torch.ones(2, 3, dtype=torch.float64))
    assert mask_coverage(torch.ones(8, 8), 4).shape == (4, 4)


def test_mask_coverage_preserves_mass() -> None:
    _, mask = make_image("sushi", 0, 64)
    grid = mask_coverage(mask, 8)
    assert torch.isclose(grid.sum() * 64, mask.sum().double())


@pytest.mark.parametrize("grid", [(3, 3), 5, (0, 2), "8", (2, 2, 2)])
def test_mask_coverage_bad_grid(grid) -> None:
    with pytest.raises(ValueError, match="grid"):
        mask_coverage(torch.zeros(8, 8), grid)


def test_mask_coverage_bad_rank() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_coverage(torch.zeros(1, 1, 8, 8), 2)


# ----------------------------------------------------------------------------- bad input
def test_unknown_class_name() -> None:
    with pytest.raises(ValueError, match="burger.*pizza"):
        make_image("burger", 0)


@pytest.mark.parametrize("cls", [3, -1])
def test_class_index_out_of_range(cls: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_image(cls, 0)


def test_class_wrong_type() -> None:
    with pytest.raises(TypeError, match="cls"):
        make_image(1.0, 0)


@pytest.mark.parametrize("size", [8, (64, 15), 0])
def test_size_too_small(size) -> None:
    with pytest.raises(ValueError, match="too small"):
        make_image("pizza", 0, size)
    with pytest.raises(ValueError, match="too small"):
        SyntheticFood(3, size=size)


def test_size_wrong_type() -> None:
    with pytest.raises(TypeError, match="size"):
        make_image("pizza", 0, 64.0)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_dataset_bad_n(n) -> None:
    with pytest.raises((TypeError, ValueError), match="n is the number of images"):
        SyntheticFood(n)


def test_dataset_bad_split_and_seed() -> None:
    with pytest.raises(ValueError, match="split"):
        SyntheticFood(3, split="val")
    with pytest.raises(ValueError, match="seed"):
        SyntheticFood(3, seed=-1)


def test_bad_rng() -> None:
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        make_image("pizza", np.random.RandomState(0))


def test_two_object_bad_classes() -> None:
    with pytest.raises(ValueError, match="two different classes"):
        make_two_object_image(("pizza", "pizza"), 0)
    with pytest.raises(ValueError, match="pair"):
        make_two_object_image(("pizza",), 0)
    with pytest.raises(ValueError, match="pair"):
        make_two_object_image("pizza", 0)


def test_bad_scale_and_antialias() -> None:
    with pytest.raises(ValueError, match="scale"):
        make_image("pizza", 0, scale=(0.3, 0.8))
    with pytest.raises(ValueError, match="antialias"):
        make_image("pizza", 0, antialias=0)


def test_bad_loader_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        synthetic_dataloaders(6, 3, 32, batch_size=0)


def test_dataloaders_shapes_and_reproducible_order() -> None:
    train_dl, test_dl, names = synthetic_dataloaders(12, 6, 32, batch_size=4, seed=3)
    again, _, _ = synthetic_dataloaders(12, 6, 32, batch_size=4, seed=3)
    assert names == list(CLASS_NAMES)
    first = [b[1].tolist() for b in train_dl]
    assert first == [b[1].tolist() for b in again]  # same seed, same batch order
    assert first != [b[1].tolist() for b in train_dl]  # next epoch reshuffles
    x, y = next(iter(train_dl))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    assert len(test_dl.dataset) == 6 and [b[1].tolist() for b in test_dl][0] == [0, 1, 2, 0]


# ----------------------------------------------------------------------------- backgrounds, pasting
def test_dataset_keeps_each_images_background_and_coverage() -> None:
    for two in (False, True):
        ds = SyntheticFood(6, 32, seed=5, two_objects=two)
        untouched = ds.coverage == 0
        assert untouched.any() and (ds.coverage > 0.5).any()
        assert (ds.images == ds.backgrounds).all(1)[untouched].all()  # no object: background
        masks = ds.masks.any(1) if two else ds.masks
        assert torch.equal(masks, ds.coverage >= 0.5)  # disjoint objects: union of the masks


def test_paste_objects_moves_the_object_and_only_the_object() -> None:
    ds = SyntheticFood(6, 32, seed=5)
    same = paste_objects(ds, ds.backgrounds)
    assert torch.allclose(same, ds.images.float() / 255, atol=1e-6)  # own background: unchanged
    other = ds.backgrounds.roll(1, 0)
    moved = paste_objects(ds, other)
    free, full = (ds.coverage == 0)[:, None].expand_as(moved), (ds.coverage == 1)[:, None].expand_as(moved)
    assert torch.allclose(moved[free], other.float()[free] / 255)  # background is the new one
    assert torch.allclose(moved[full], ds.images.float()[full] / 255)  # object pixels unchanged
    with pytest.raises(ValueError, match="one per image"):
        paste_objects(ds, other[:3])
