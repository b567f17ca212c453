"""Tests for vit_course.viz_metrics: the metrics' plots return figures."""

from __future__ import annotations

import matplotlib
import torch

import vit_course.metrics as M

from metrics._models import channel_images  # tests/metrics/_models.py

matplotlib.use("Agg")


def test_plots_return_figures():
    import matplotlib.pyplot as plt

    from vit_course import viz_metrics as V

    curves = {"a": {"deletion": torch.rand(3, 5), "insertion": torch.rand(3, 5)},
              "b": {"deletion": torch.rand(3, 5), "insertion": torch.rand(3, 5)}}
    fig = V.plot_deletion_insertion(curves)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    plt.close(fig)
    x, labels = channel_images(8)
    grids = M.make_grid_images(x, labels, n_grids=3, seed=0)
    fig = V.plot_grid_examples(grids.grids, {"m": torch.rand(3, 4, 4)}, grids.target_tile, n=2,
                               mean=(0, 0, 0), std=(1, 1, 1))
    assert len(fig.axes) == 4
    plt.close(fig)
    rows = M.summarise({"a": {"deletion_auc": [0.1, 0.2]}, "b": {"deletion_auc": [0.3, 0.4]}}, n_boot=20)
    fig = V.plot_summary(rows, chance={"deletion_auc": 0.5})
    assert fig.axes[0].get_title().startswith("deletion_auc")
    plt.close(fig)
