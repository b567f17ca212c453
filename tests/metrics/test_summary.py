"""Tests for vit_course.metrics.summary: bootstrap intervals and the results table.
"""

from __future__ import annotations

import pytest
import torch

import vit_course.metrics as M

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bootstrap_ci_deterministic_and_contains_mean():
    v = torch.arange(20, dtype=torch.float64)
    a = M.bootstrap_ci(v, n_boot=500, seed=1)
    assert a == M.bootstrap_ci(v, n_boot=500, seed=1)
    mean, lo, hi = a
    assert mean == pytest.approx(9.5) and lo < mean < hi
    assert M.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert M.bootstrap_ci([1.0, float("nan"), 3.0], seed=0)[0] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        M.bootstrap_ci(v, ci=95)


def test_summarise_and_format_table():
    rows = M.summarise({"a": {"deletion_auc": [0.1, 0.2], "grid_pointing": [1.0]},
                        "b": {"deletion_auc": [0.3, 0.5]}}, n_boot=50)
    assert [(r["metric"], r["method"]) for r in rows] == [("deletion_auc", "a"), ("deletion_auc", "b"),
                                                          ("grid_pointing", "a")]
    assert rows[1]["mean"] == pytest.approx(0.4) and rows[0]["better"] == "lower"
    text = M.format_table(rows)
    assert "deletion_auc" in text and "0.400" in text and "↓" in text
