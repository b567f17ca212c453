"""Tests for vit_course.viz: figures come back with the expected axes and image data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vit_course import viz  # noqa: E402
from vit_course.imaging import normalize_maps, upsample  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def test_plot_loss_curves_two_axes_train_and_test_lines():
    history = {"train_loss": [1.0, 0.8, 0.6], "train_acc": [0.3, 0.5, 0.7],
               "test_loss": [1.1, 0.9, 0.8], "test_acc": [0.3, 0.4, 0.5]}
    fig = viz.plot_loss_curves(history)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2 and len(acc_ax.lines) == 2
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), history["train_loss"])
    np.testing.assert_allclose(acc_ax.lines[1].get_ydata(), history["test_acc"])
    np.testing.assert_allclose(loss_ax.lines[0].get_xdata(), [1, 2, 3])


def test_plot_loss_curves_without_test_and_bad_history():
    fig = viz.plot_loss_curves({"train_loss": [1.0], "train_acc": [0.5], "test_loss": [],
                                "test_acc": []})
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]
    with pytest.raises(ValueError, match="train_loss"):
        viz.plot_loss_curves({"loss": [1.0]})


def test_plot_confusion_matrix_shows_the_matrix():
    cm = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    fig = viz.plot_confusion_matrix(cm, ["pizza", "steak", "sushi"])
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), cm.numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["pizza", "steak", "sushi"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in cm.flatten().tolist())
    fig_n = viz.plot_confusion_matrix(cm, ["pizza", "steak", "sushi"], normalize=True)
    np.testing.assert_allclose(np.asarray(fig_n.axes[0].images[0].get_array()).sum(1), 1.0)
    with pytest.raises(ValueError, match=r"\(2, 2\) for 2 class names"):
        viz.plot_confusion_matrix(cm, ["a", "b"])


def test_plot_patches_cuts_the_image_into_the_grid():
    img = image(32)
    fig = viz.plot_patches(img, patch_size=8, gap=2)
    assert len(fig.axes) == 2
    whole = np.asarray(fig.axes[0].images[0].get_array())
    cut = np.asarray(fig.axes[1].images[0].get_array())
    assert whole.shape == (32, 32, 3)
    assert cut.shape == (4 * 10 - 2, 4 * 10 - 2, 3)
    hwc = img.permute(1, 2, 0).numpy()
    # patch (row 1, col 2) sits at offset (1*(8+2), 2*(8+2)) in the cut view
    np.testing.assert_allclose(cut[10:18, 20:28], hwc[8:16, 16:24])
    np.testing.assert_allclose(cut[8:10, :], 1.0)          # white gap row
    assert "16 patches" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="not divisible by patch_size=16"):
        viz.plot_patches(image(40), patch_size=16)


def test_overlay_blends_image_and_colormap():
    img = image(16)
    heat = torch.linspace(0, 1, 16 * 16).reshape(16, 16)
    out0 = viz.overlay(img, heat, alpha=0.0)
    assert out0.shape == (16, 16, 3)
    np.testing.assert_allclose(out0, img.permute(1, 2, 0).numpy(), atol=1e-6)
    out1 = viz.overlay(img, heat, alpha=1.0, cmap="gray")
    np.testing.assert_allclose(out1[..., 0], heat.numpy(), atol=1e-2)   # gray: R = G = B = heat
    half = viz.overlay(img, heat, alpha=0.5)
    assert 0 <= half.min() and half.max() <= 1


def test_heat_png_is_the_colormap_at_the_given_opacity():
    import io

    from PIL import Image

    heat = torch.linspace(0, 1, 6 * 4).reshape(6, 4)
    rgba = np.asarray(Image.open(io.BytesIO(viz.heat_png(heat, alpha=0.3, cmap="viridis"))))
    assert rgba.shape == (6, 4, 4)
    assert (rgba[..., 3] == round(0.3 * 255)).all(), "one opacity: alpha over the photo"
    expected = matplotlib.colormaps["viridis"](heat.numpy(), bytes=True)[..., :3]
    np.testing.assert_array_equal(rgba[..., :3], expected)
    # composited by a browser over the photo: overlay()'s blend, up to 8-bit rounding
    img = image(6)[:, :, :4]
    a = rgba[..., 3:] / 255
    shown = (1 - a) * img.permute(1, 2, 0).numpy() + a * rgba[..., :3] / 255
    np.testing.assert_allclose(shown, viz.overlay(img, heat, alpha=0.3, cmap="viridis"), atol=4e-3)
    with pytest.raises(ValueError, match=r"heat values must lie in \[0, 1\]"):
        viz.heat_png(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="alpha"):
        viz.heat_png(heat, alpha=1.5)


def test_overlay_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="imaging.upsample"):
        viz.overlay(image(32), torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"heat values must lie in \[0, 1\]"):
        viz.overlay(image(8), torch.full((8, 8), 2.0))
    with pytest.raises(ValueError, match="undo ImageNet normalisation"):
        viz.overlay(image(8) - 0.5, torch.rand(8, 8))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        viz.overlay(torch.rand(8, 8, 3), torch.rand(8, 8))


def test_plot_maps_grid_has_one_axes_per_map():
    imgs = torch.stack([image(32, s) for s in range(5)])
    maps = torch.rand(5, 4, 4)
    fig = viz.plot_maps(imgs, maps, titles=[f"m{i}" for i in range(5)], ncols=4)
    assert len(fig.axes) == 5
    for i, ax in enumerate(fig.axes):
        assert np.asarray(ax.images[0].get_array()).shape == (32, 32, 3)
        assert ax.get_title() == f"m{i}"
    # the panel is the overlay of the upsampled, min-max scaled map
    heat = upsample(maps, size=(32, 32))[2].numpy()
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    np.testing.assert_allclose(normalize_maps(upsample(maps, 32))[2].numpy(), heat, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fig.axes[2].images[0].get_array()),
                               viz.overlay(imgs[2], heat), atol=1e-5)


def test_plot_maps_one_image_many_maps_and_errors():
    fig = viz.plot_maps(image(32), torch.rand(3, 4, 4), ncols=4)
    assert len(fig.axes) == 3
    const = viz.plot_maps(image(32), torch.ones(1, 4, 4))              # constant map → 0, no NaN
    assert np.isfinite(np.asarray(const.axes[0].images[0].get_array())).all()
    with pytest.raises(ValueError, match="one per map"):
        viz.plot_maps(torch.rand(2, 3, 32, 32), torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="titles"):
        viz.plot_maps(image(32), torch.rand(2, 4, 4), titles=["a"])


def test_plot_prediction_shows_the_image_and_the_top_class():
    from PIL import Image

    photo = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))
    probs = torch.tensor([0.2, 0.7, 0.1])
    fig = viz.plot_prediction(photo, probs, ["pizza", "steak", "sushi"])
    assert len(fig.axes) == 1
    assert fig.axes[0].get_title() == "Pred: steak | Prob: 0.700"
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (40, 50, 3)
    with pytest.raises(ValueError, match="3 classes but 2 class_names"):
        viz.plot_prediction(photo, probs, ["a", "b"])
    with pytest.raises(ValueError, match="probs must be finite.*check its weights"):
        viz.plot_prediction(photo, torch.tensor([0.2, float("nan"), 0.1]), ["a", "b", "c"])


def test_tick_labels_keep_small_values_distinct() -> None:
    from vit_course.viz import tick_labels

    assert tick_labels([0.00035, 0.0003]) == ["0.00035", "0.0003"]
    assert tick_labels([1234.5, 1234.6]) == ["1234.5", "1234.6"]
    assert tick_labels([0.5, 0.25, 0.0]) == ["0.5", "0.25", "0"]
    labels = tick_labels(np.linspace(0.00035, 0.0003, 5))
    assert len(set(labels)) == 5, labels


def test_long_panel_titles_are_wrapped_to_fit() -> None:
    from vit_course.viz import wrap_title

    title = "pizza + sushi (a long file name, 1234567.jpg) [STAND-IN]"
    lines = wrap_title(title).split("\n")
    assert len(lines) > 1 and all(len(line) <= 28 for line in lines)
    assert " ".join(lines) == title
    fig = viz.plot_maps(torch.rand(1, 3, 16, 16), torch.rand(1, 4, 4), [title])
    assert fig.axes[0].get_title() == wrap_title(title)
    plt.close(fig)
