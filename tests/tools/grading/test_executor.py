"""Tests for vit_course.tools.grading.executor: one notebook in a fresh kernel, with limits."""

from __future__ import annotations

import sys

import nbformat
from _grading_exercise import outputs_of

from vit_course.grading import get_question
from vit_course.tools.grading.checks import GRADE_MIME
from vit_course.tools.grading.executor import execute_notebook


def test_solution_version_runs_and_earns_full_marks(exercise, tmp_path):
    executed = tmp_path / "solution_run.ipynb"
    solution = nbformat.read(exercise["solution"], as_version=4)
    probe = "import resource, sys\nprint(sys.executable, resource.getrlimit(resource.RLIMIT_DATA)[0])"
    solution.cells.append(nbformat.v4.new_code_cell(probe))
    report = execute_notebook(solution, timeout=120, memory_mb=3000, executed_path=executed)
    assert report.error_cells == [] and not report.timed_out
    nb = nbformat.read(executed, as_version=4)
    # the kernel is this interpreter, under the memory cap
    assert nb.cells[-1].outputs[0]["text"].split() == [sys.executable, str(3000 * 1024 * 1024)]
    for cid in ("q1-hidden", "q2-hidden"):
        payload = next(o["data"][GRADE_MIME] for o in outputs_of(nb, cid) if GRADE_MIME in o.get("data", {}))
        assert payload["fraction"] == 1.0 and payload["n_total"] > len(get_question(payload["question"]).public_cases())
