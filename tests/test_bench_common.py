"""The benchmark scripts' shared helper: sections land in docs/BENCHMARKS.md in place."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch  # noqa: E402
from _common import fmt_s, forward_rates, splice_section  # noqa: E402


def test_splice_replaces_only_its_own_section_and_appends_new_ones(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## A\nold a\n\n## B\nold b\n")
    assert splice_section("## A\nnew a\nmore\n", doc) == "## A"
    assert doc.read_text() == "# Benchmarks\n\nintro\n\n## A\nnew a\nmore\n\n## B\nold b\n"
    splice_section("## B\nnew b\n", doc)                      # the last section
    assert doc.read_text().endswith("## A\nnew a\nmore\n\n## B\nnew b\n")
    splice_section("## C\nc\n", doc)                          # a new one goes at the end
    assert doc.read_text().endswith("## B\nnew b\n\n## C\nc\n")
    splice_section("## A\nnewer\n", doc)
    text = doc.read_text()
    assert text.count("## A") == 1 and "new a" not in text and text.index("## A") < text.index("## B")
    assert not [p for p in tmp_path.iterdir() if p.name != "BENCHMARKS.md"]   # no temp file left


def test_splice_needs_a_heading(tmp_path):
    with pytest.raises(ValueError, match="'## ' heading"):
        splice_section("no heading\n", tmp_path / "x.md")


def test_fmt_s_units():
    assert (fmt_s(5), fmt_s(300), fmt_s(9000)) == ("5.0 s", "5.0 min", "2.50 h")


def test_forward_rates_runs_each_setting_in_its_precision_and_restores_threads():
    seen: list[tuple[int, torch.dtype]] = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x):
            out = self.lin(x)
            seen.append((x.shape[0], out.dtype))
            return out

    before = torch.get_num_threads()
    configs = [(1, 1, "float32"), (1, 3, "bfloat16")]
    rates = forward_rates(Probe(), torch.randn(3, 4), configs, rounds=2, seconds=0.01)
    assert set(rates) == set(configs) and all(v > 0 for v in rates.values())
    assert set(seen) == {(1, torch.float32), (3, torch.bfloat16)}
    assert torch.get_num_threads() == before
