"""meta_evaluate: hand-built rankings give known Kendall τ; stability and separation by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_course.metrics import kendall_tau, meta_evaluate


@pytest.mark.parametrize("b, tau", [
    ([1, 2, 3, 4], 1.0),
    ([4, 3, 2, 1], -1.0),
    ([2, 1, 3, 4], 2 / 3),                      # one swapped pair of 6: (5 - 1) / 6
    ([1, 3, 2, 4], 2 / 3),
    ([2, 1, 4, 3], 1 / 3),                      # two swaps: (4 - 2) / 6
    ([1, 1, 3, 4], 5 / np.sqrt(6 * 5)),         # a tie in b: τ-b = 5 / sqrt(6 · 5)
])
def test_kendall_tau_of_hand_built_rankings(b, tau):
    assert kendall_tau([1, 2, 3, 4], b) == pytest.approx(tau, abs=1e-12)


def test_kendall_tau_of_a_constant_vector_is_nan_and_bad_lengths_refused():
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2], [1, 2, 3])


def _scores(order_a, order_b, n=40, noise=0.0, seed=0):
    """Methods m0..m3 whose means are order_a under deletion (lower better) and order_b under
    insertion (higher better); per-image values = mean + noise."""
    g = np.random.default_rng(seed)
    out = {}
    for i in range(4):
        out[f"m{i}"] = {"deletion_auc": torch.tensor(-order_a[i] + noise * g.standard_normal(n)),
                        "insertion_auc": torch.tensor(order_b[i] + noise * g.standard_normal(n))}
    out["random"] = {"deletion_auc": torch.zeros(n) + 0.0, "insertion_auc": torch.zeros(n)}
    return out


def test_agreement_between_metrics_is_the_tau_of_their_orders_with_directions():
    # deletion is "lower is better": values -[1,2,3,4] mean the order m3 > m2 > m1 > m0 under both
    meta = meta_evaluate(_scores([1, 2, 3, 4], [1, 2, 3, 4]), control=None, n_boot=50)
    assert meta.metrics == ["deletion_auc", "insertion_auc"]
    assert meta.agreement[0, 1] == pytest.approx(kendall_tau([1, 2, 3, 4, 0], [1, 2, 3, 4, 0]))
    assert meta.agreement[0, 1] == pytest.approx(1.0)
    meta = meta_evaluate(_scores([1, 2, 3, 4], [2, 1, 3, 4]), control=None, n_boot=50)
    # 5 methods (random scores 0 on both, below all): one swapped pair of 10 → (9 - 1) / 10
    assert meta.agreement[0, 1] == pytest.approx(0.8)
    assert np.allclose(np.diag(meta.agreement), 1.0)


def test_bootstrap_stability_is_1_without_noise_and_falls_with_noise():
    exact = meta_evaluate(_scores([1, 2, 3, 4], [1, 2, 3, 4]), n_boot=100)
    assert exact.bootstrap_stability == {"deletion_auc": 1.0, "insertion_auc": 1.0}
    noisy = meta_evaluate(_scores([1, 2, 3, 4], [1, 2, 3, 4], n=10, noise=3.0), n_boot=200)
    assert all(v < 0.9 for v in noisy.bootstrap_stability.values())


def test_baseline_stability_compares_orders_under_another_baseline():
    base = _scores([1, 2, 3, 4], [1, 2, 3, 4])
    other = _scores([4, 3, 2, 1], [1, 2, 3, 4])      # deletion order reversed among m0..m3
    meta = meta_evaluate(base, {"zero": other}, control=None, n_boot=20)
    assert meta.baseline_stability["zero"]["insertion_auc"] == pytest.approx(1.0)
    # random (0) stays last in both; the four others reversed: 4 concordant, 6 discordant of 10
    assert meta.baseline_stability["zero"]["deletion_auc"] == pytest.approx(-0.2)


def test_separation_from_the_control_is_in_units_of_the_bootstrap_half_width():
    n = 200
    g = np.random.default_rng(1)
    d = 0.1 + g.standard_normal(n)                     # paired per-image difference to the control
    scores = {"m": {"insertion_auc": torch.tensor(d)}, "random": {"insertion_auc": torch.zeros(n)}}
    meta = meta_evaluate(scores, n_boot=4000, seed=3)
    half = 1.96 * d.std() / np.sqrt(n)                 # the normal approximation of the half-width
    assert meta.separation["m"]["insertion_auc"] == pytest.approx(d.mean() / half, rel=0.1)
    flipped = {"m": {"deletion_auc": torch.tensor(d)}, "random": {"deletion_auc": torch.zeros(n)}}
    assert meta_evaluate(flipped, n_boot=500).separation["m"]["deletion_auc"] < 0   # lower is better


def test_meta_evaluate_refuses_one_method_and_mismatched_images():
    with pytest.raises(ValueError, match="at least 2 methods"):
        meta_evaluate({"m": {"deletion_auc": [1.0, 2.0]}})
    with pytest.raises(ValueError, match="same images"):
        meta_evaluate({"a": {"deletion_auc": [1.0, 2.0]}, "b": {"deletion_auc": [1.0]}})


def test_plot_meta_evaluation_shows_the_taus_and_separations():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vit_course.viz_metrics import plot_meta_evaluation
    meta = meta_evaluate(_scores([1, 2, 3, 4], [2, 1, 3, 4]), n_boot=50)
    fig = plot_meta_evaluation(meta)
    left, right = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in left.texts] == [f"{v:.2f}" for v in meta.agreement.ravel()]
    assert len(right.texts) == 4 * 2 and right.get_title().startswith("distance from 'random'")
    plt.close(fig)
