"""vit_course.viz_inside: figures from finished tensors; no model runs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vit_course.viz_inside import (  # noqa: E402
    plot_attention_distance, plot_images, plot_inside_view, plot_logit_attribution,
    plot_logit_lens
)


def test_figures_have_their_panels_and_data():
    probs = torch.softmax(torch.randn(4, 3), -1)
    fig = plot_logit_lens(probs, ["pizza", "steak", "sushi"], layer=2)
    lines = [ln for ln in fig.axes[0].lines if len(ln.get_xdata()) == 4]
    assert len(lines) == 3 and (lines[1].get_ydata() == probs[:, 1].numpy()).all()
    fig2 = plot_attention_distance(torch.rand(4, 2) * 30, image_size=64, uniform=31.0)
    assert len(fig2.axes[0].collections) == 2
    fig3 = plot_logit_attribution(torch.randn(4), torch.randn(4), torch.randn(4, 2))
    assert len(fig3.axes[0].patches) == 8
    fig4 = plot_inside_view(torch.rand(3, 32, 32), torch.rand(4, 4) * 10, probs,
                            ["a", "b", "c"], layer=-1, threshold=5.0)
    assert len(fig4.axes) == 4                                   # image, norms, colorbar, lens
    fig5 = plot_images(torch.rand(3, 3, 16, 16), ["x", "y", "z"], ncols=2)
    assert len(fig5.axes) == 4 and fig5.axes[0].get_title() == "x"
    plt.close("all")


def test_images_outside_0_1_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_images(torch.rand(1, 3, 8, 8) * 3)
