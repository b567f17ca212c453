"""Tests for vit_course.tools.grading.checks: ``check`` feedback in the notebook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from _grading_exercise import Q1_CODE, Q1_SOLUTION, Q2_CODE, solution_fn

from vit_course.grading import check
from vit_course.tools.grading.checks import compare_values

ROOT = Path(__file__).resolve().parents[3]


def test_check_passes_for_the_solution(capsys):
    result = check("q1", solution_fn(Q1_CODE, "deletion_auc"))
    out = capsys.readouterr().out
    assert result and result.passed and result.fraction == 1.0
    assert "all 4 cases passed" in out
    assert check("q2", solution_fn(Q2_CODE, "grid_pointing_score"))


def test_check_reports_expected_and_got_without_solution_code(capsys):
    def wrong_auc(curve):  # forgets the trapezoid: plain mean
        return float(torch.as_tensor(curve, dtype=torch.float64).mean())

    result = check("q1", wrong_auc)
    out = capsys.readouterr().out
    assert not result and result.n_passed == 3 and len(result.cases) == 4
    assert "3 of 4 cases passed" in out
    assert "sharp drop, 3 steps: expected 0.266667, got 0.325" in out
    assert "tensor([1. , 0.2, 0.1, 0. ])" in out
    for line in Q1_SOLUTION.splitlines():
        assert line.strip() not in out
    ref_lines = [ln.strip() for ln in open(ROOT / "vit_course/tools/grading/reference.py") if "return float" in ln]
    assert ref_lines and all(line not in out for line in ref_lines)


def test_check_not_implemented_is_clean(capsys):
    def stub(curve):
        raise NotImplementedError("q1: write your code here")

    result = check("q1", stub)
    out = capsys.readouterr().out
    assert result.not_implemented and not result and result.fraction == 0.0
    assert "not implemented yet" in out and "Traceback" not in out
    assert out.count("\n") == 1


def test_check_reports_exceptions_and_wrong_types(capsys):
    def crashes(attribution, target_tile):
        return 1 / 0

    assert not check("q2", crashes)
    out = capsys.readouterr().out
    assert "your code raised ZeroDivisionError: division by zero" in out and "Traceback" not in out
    assert not check("q2", 0.25)
    assert "expected your function as the argument, got 0.25" in capsys.readouterr().out
    assert not check("q1", lambda c: torch.ones(3))
    assert "expected a single number like 0.5, got tensor([1., 1., 1.])" in capsys.readouterr().out


def test_check_does_not_let_the_student_mutate_case_inputs(capsys):
    def mutating(curve):
        curve.zero_()
        return 0.0

    check("q1", mutating)
    capsys.readouterr()
    assert check("q1", solution_fn(Q1_CODE, "deletion_auc"))


def test_compare_values_on_arrays():
    assert compare_values(torch.ones(2, 2), torch.ones(2, 2)) is None
    assert "expected shape (2, 2), got shape (4,)" in compare_values(torch.ones(4), torch.ones(2, 2))
    message = compare_values(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]))
    assert "largest difference at index (1,): expected 2, got 2.5" in message


def test_check_never_imports_the_hidden_cases():
    # what a student's notebook runs: check needs the registry only, never the instructor's
    # reference answers and hidden cases (autograde imports them)
    code = (
        "import sys\n"
        "from vit_course.grading import check\n"
        "assert check('q1', lambda curve: float(((curve[1:] + curve[:-1]) / 2).sum() / (curve.numel() - 1)))\n"
        "assert 'vit_course.tools.grading.reference' not in sys.modules, sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "all 4 cases passed" in result.stdout
