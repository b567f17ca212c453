"""Tests for vit_course.tools.grading.checks: ``check`` feedback in the notebook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _grading_exercise import Q1_CODE, Q1_SOLUTION, Q2_CODE, solution_fn

from vit_course.grading import check
from vit_course.tools.grading.checks import compare_values

ROOT = Path(__file__).resolve().parents[3]


def test_check_passes_for_the_solution(capsys):
    result = check("q1", solution_fn(Q1_CODE, "deletion_auc"))
    out = capsys.readouterr().out
    assert result and result.passed and result.fraction == 1.0
    assert "all 5 cases passed" in out
    assert check("q2", solution_fn(Q2_CODE, "grid_pointing_score"))


def test_check_reports_expected_and_got_without_solution_code(capsys):
    def wrong_auc(curve):  # forgets the trapezoid: plain mean
        return float(torch.as_tensor(curve, dtype=torch.float64).mean())

    result = check("q1", wrong_auc)
    out = capsys.readouterr().out
    assert not result and result.n_passed == 2 and len(result.cases) == 5
    assert "2 of 5 cases passed" in out
    assert "sharp drop, 3 steps: expected 0.266667, got 0.325" in out
    assert "did you average the points instead of integrating?" in out
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
    assert "all 5 cases passed" in result.stdout


# --------------------------------------------------------------------------- misconceptions


def _t(x):
    return torch.as_tensor(x, dtype=torch.float64)


Q1_MISTAKES = {  # name: (wrong deletion_auc, words of the hint it must get)
    "plain mean": (lambda c: float(_t(c).mean()), "average the points"),
    "sum over the step index": (lambda c: float(((_t(c)[1:] + _t(c)[:-1]) / 2).sum()), "step index"),
    "divide by the points": (lambda c: float(((_t(c)[1:] + _t(c)[:-1]) / 2).sum() / _t(c).numel()), "number of points"),
    "left rectangles": (lambda c: float(_t(c)[:-1].mean()), "left sum"),
    "right rectangles": (lambda c: float(_t(c)[1:].mean()), "right sum"),
}


def _pointing(signed=False, absolute=False, column_major=False):
    def fn(attribution, target_tile):
        m = _t(attribution)
        m = m.abs() if absolute else m if signed else m.clamp(min=0)
        h, w = m.shape[0] // 2, m.shape[1] // 2
        row, col = divmod(target_tile, 2)
        row, col = (col, row) if column_major else (row, col)
        return float(m[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / m.sum())
    return fn


Q2_MISTAKES = {
    "negative attribution counted": (_pointing(signed=True), "count negative attribution"),
    "absolute values": (_pointing(absolute=True), "absolute values"),
    "tiles numbered by column": (_pointing(column_major=True), "row by row"),
}


@pytest.mark.parametrize("qid, mistake", [("q1", m) for m in Q1_MISTAKES] + [("q2", m) for m in Q2_MISTAKES])
def test_common_mistakes_fail_public_cases_and_get_their_hint(qid, mistake, capsys):
    fn, words = (Q1_MISTAKES if qid == "q1" else Q2_MISTAKES)[mistake]
    result = check(qid, fn)
    out = capsys.readouterr().out
    assert not result and result.n_passed <= len(result.cases) - 1
    assert words in out, out
    if qid == "q1":  # no mistake passes more than 2 of the 5 public q1 cases
        assert result.n_passed <= 2


def test_q4_nan_mistakes_get_their_hint(capsys):
    from vit_course.metrics import summarise

    def counts_nan(scores):  # n counted before dropping NaN
        rows = [{k: r[k] for k in ("metric", "method", "mean", "lo", "hi", "n")} for r in summarise(scores)]
        for r in rows:
            r["n"] = len(scores[r["method"]][r["metric"]])
        return rows

    result = check("q4", counts_nan)
    out = capsys.readouterr().out
    assert not result and result.n_passed == len(result.cases) - 1
    assert "did you count the NaN values in n?" in out


def test_check_time_limit_systemexit_and_interrupt(monkeypatch, capsys):
    monkeypatch.setenv("VIT_COURSE_CHECK_TIME_LIMIT", "0.5")

    def hangs(curve):
        while True:
            pass

    result = check("q1", hangs)
    out = capsys.readouterr().out
    assert not result and "took longer than 0.5 s" in out
    assert out.count("not run: the case before ran out of time") == len(result.cases) - 1

    def exits(curve):
        raise SystemExit(3)

    assert not check("q1", exits)
    assert "your code called sys.exit(3)" in capsys.readouterr().out

    def interrupted(curve):
        raise KeyboardInterrupt

    result = check("q1", interrupted)
    assert not result and all("interrupted (KeyboardInterrupt)" in c.message for c in result.cases)
    assert check("q1", solution_fn(Q1_CODE, "deletion_auc"))  # the alarm is off again afterwards
