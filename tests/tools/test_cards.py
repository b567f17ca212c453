"""make cards' measuring helpers: passes counted per method, costs read from the benchmark table."""

from __future__ import annotations

import pytest

from vit_course.tools import cards

pytestmark = pytest.mark.usefixtures("one_thread")


def test_passes_counts_forward_rows_and_backward():
    assert cards._passes("rollout") == (1.0, False)         # one capture forward, no backward
    assert cards._passes("grad_rollout") == (1.0, True)      # the same forward, then a backward
    fwd, back = cards._passes("random")
    assert fwd == 0 and not back                             # a control runs no model pass
    # methods that recompute the blocks from the weights (LRP) or stop the backward pass at the
    # last block (Grad-CAM) are counted too: at the patch embedding and at torch.autograd.grad
    for name in ("transformer_attribution", "attn_lrp", "cp_lrp", "gradcam"):
        assert cards._passes(name) == (1.0, True), name
    assert cards._passes("smoothgrad")[0] == 26              # 25 noisy copies + the clean target pass


def test_bench_costs_reads_the_plain_forwards_column(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("| method | options | time | **plain forwards** | rule |\n|---|---|---:|---:|---|\n"
                   "| `rollout` | defaults | 3.4 s | **1.1** | ≈ 1 |\n| `smoothgrad` | n_samples=4 | 30 s | **9.8** | x |\n")
    assert cards._bench_costs(doc) == {"rollout": "1.1", "smoothgrad": "9.8"}
    assert cards._bench_costs(tmp_path / "missing.md") == {}


def test_paper_is_the_docstrings_first_sentence():
    class M:
        """Attention rollout (Abnar & Zuidema 2020). More text here."""
    assert cards._paper(M) == "Attention rollout (Abnar & Zuidema 2020)."
