"""Tests for vit_course.grading: versions, check feedback, executor limits, batch grader.

The exercise notebook is built here (two coded questions, deletion AUC and grid pointing
score, plus one manual question), so these tests do not depend on notebook 06's content.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
import torch

from vit_course.grading import Case, check, get_question, register_question
from vit_course.grading.__main__ import main as grading_cli
from vit_course.grading.checks import GRADE_MIME, compare_values, run_cases
from vit_course.grading.questions import unregister_question
from vit_course.tools.grading.executor import execute_notebook
from vit_course.tools.grading.markers import (
    default_output_paths,
    graded_cells,
    make_versions,
    render_versions,
    versions_out_of_sync,
)
from vit_course.tools.grading.reference import deletion_auc as ref_deletion_auc
from vit_course.tools.grading.reference import reference_q2_pointing as ref_grid_pointing_score

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]

Q1_SOLUTION = """\
    curve = torch.as_tensor(curve, dtype=torch.float64)
    steps = curve.numel() - 1
    return float(((curve[1:] + curve[:-1]) / 2).sum() / steps)"""
Q2_SOLUTION = """\
    m = torch.as_tensor(attribution, dtype=torch.float64)
    positive = m.clamp(min=0)
    total = positive.sum()
    if total == 0:
        return 0.0
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(positive[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / total)"""
Q1_CODE = f'''def deletion_auc(curve):
    """Area under the curve, trapezoid rule, x in [0, 1]."""
    # BEGIN SOLUTION
{Q1_SOLUTION}
    # END SOLUTION'''
Q2_CODE = f'''def grid_pointing_score(attribution, target_tile):
    """Positive attribution in the target tile / total positive attribution."""
    # BEGIN SOLUTION
{Q2_SOLUTION}
    # END SOLUTION'''
MANUAL_ANSWER = "A low deletion AUC means the score collapses once the top tokens are gone."


def _meta(cid: str, kind: str, question: str, points: float | None = None) -> dict:
    meta = {"id": cid, "kind": kind, "question": question}
    if points is not None:
        meta["points"] = points
    return {"vit_course": meta}


def build_source() -> nbformat.NotebookNode:
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell("# Evaluating explanations (test exercise)"),
        v4.new_code_cell("import torch\nfrom vit_course.grading import check"),
        v4.new_markdown_cell("**Q1.** Implement `deletion_auc`."),
        v4.new_code_cell(Q1_CODE, metadata=_meta("q1-code", "solution", "q1")),
        v4.new_code_cell('check("q1", deletion_auc)', metadata=_meta("q1-check", "check", "q1")),
        v4.new_code_cell(
            "# HIDDEN TESTS\nfrom vit_course.grading import autograde\nautograde('q1', deletion_auc)",
            metadata=_meta("q1-hidden", "hidden_test", "q1", 2),
        ),
        v4.new_markdown_cell("**Q2.** Implement `grid_pointing_score`."),
        v4.new_code_cell(Q2_CODE, metadata=_meta("q2-code", "solution", "q2")),
        v4.new_code_cell('check("q2", grid_pointing_score)', metadata=_meta("q2-check", "check", "q2")),
        v4.new_code_cell(
            "# HIDDEN TESTS\nfrom vit_course.grading import autograde\nautograde('q2', grid_pointing_score)",
            metadata=_meta("q2-hidden", "hidden_test", "q2", 2),
        ),
        v4.new_markdown_cell(
            f"**Q3.** What does a low deletion AUC mean?\n\n<!-- BEGIN SOLUTION -->\n{MANUAL_ANSWER}\n<!-- END SOLUTION -->",
            metadata=_meta("q3-answer", "manual", "q3", 1),
        ),
    ]
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture(scope="module")
def exercise(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exercise")
    source = root / "source" / "ex_source.ipynb"
    source.parent.mkdir()
    nbformat.write(build_source(), str(source))
    student, solution = root / "ex.ipynb", root / "solutions" / "ex_solution.ipynb"
    result = subprocess.run(
        [PY, "-m", "vit_course.grading", "generate", str(source), "--student", str(student), "--solution", str(solution)],
        capture_output=True, text=True, cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return {"root": root, "source": source, "student": student, "solution": solution}


def _code(cell) -> str:
    return "".join(cell.source) if isinstance(cell.source, list) else cell.source


def _by_id(nb) -> dict:
    return {c.metadata["vit_course"]["id"]: c for c in nb.cells if "vit_course" in c.metadata}


# ----------------------------------------------------------------------------- versions


def test_student_version_stubs_solutions_and_drops_hidden_tests(exercise):
    student = nbformat.read(exercise["student"], as_version=4)
    text = exercise["student"].read_text()
    cells = _by_id(student)
    assert set(cells) == {"q1-code", "q1-check", "q2-code", "q2-check", "q3-answer"}
    assert "HIDDEN TESTS" not in text and "autograde" not in text
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    for line in (Q1_SOLUTION + "\n" + Q2_SOLUTION).splitlines():
        assert line.strip() not in text, f"solution line leaked: {line!r}"
    assert MANUAL_ANSWER not in text
    assert _code(cells["q1-code"]) == (
        'def deletion_auc(curve):\n    """Area under the curve, trapezoid rule, x in [0, 1]."""\n'
        '    raise NotImplementedError("q1: write your code here")'
    )
    assert _code(cells["q2-code"]).startswith("def grid_pointing_score(attribution, target_tile):\n")
    assert _code(cells["q2-code"]).endswith('    raise NotImplementedError("q2: write your code here")')
    assert "*Write your answer here.*" in _code(cells["q3-answer"])
    assert cells["q1-code"].metadata["deletable"] is False
    assert cells["q1-check"].metadata["editable"] is False
    code_cells = [c for c in student.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code_cells)
    assert student.metadata["vit_course"]["version"] == "student"


def test_solution_version_keeps_code_and_hidden_tests_without_markers(exercise):
    solution = nbformat.read(exercise["solution"], as_version=4)
    cells = _by_id(solution)
    assert _code(cells["q1-code"]) == Q1_CODE.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", "")
    assert "q1-hidden" in cells and "q2-hidden" in cells
    assert "BEGIN SOLUTION" not in exercise["solution"].read_text()
    assert MANUAL_ANSWER in _code(cells["q3-answer"])


def test_generate_is_deterministic_and_check_mode_detects_drift(exercise, tmp_path, capsys):
    first = render_versions(exercise["source"])
    assert render_versions(exercise["source"]) == first
    assert exercise["student"].read_text(encoding="utf-8") == first[0]
    assert versions_out_of_sync(exercise["source"], exercise["student"], exercise["solution"]) == []
    args = ["generate", str(exercise["source"]), "--check", "--student", str(exercise["student"]), "--solution"]
    assert grading_cli(args + [str(exercise["solution"])]) == 0
    drifted = tmp_path / "drifted.ipynb"
    drifted.write_text(exercise["solution"].read_text().replace("steps = curve", "steps  = curve"))
    capsys.readouterr()
    assert grading_cli(args + [str(drifted)]) == 1
    err = capsys.readouterr().err
    assert "out of sync" in err and str(drifted) in err
    assert grading_cli(args + [str(tmp_path / "missing.ipynb")]) == 1


def test_default_output_paths_follow_the_convention(tmp_path):
    student, solution = default_output_paths(tmp_path / "notebooks" / "source" / "06_evaluation_source.ipynb")
    assert student == tmp_path / "notebooks" / "06_evaluation.ipynb"
    assert solution == tmp_path / "notebooks" / "solutions" / "06_evaluation_solution.ipynb"
    with pytest.raises(ValueError, match="_source.ipynb"):
        default_output_paths(tmp_path / "06_evaluation.ipynb")


def test_generate_cli_uses_conventional_paths(exercise, tmp_path, capsys):
    source = tmp_path / "notebooks" / "source" / "ex_source.ipynb"
    source.parent.mkdir(parents=True)
    source.write_bytes(exercise["source"].read_bytes())
    assert grading_cli(["generate", str(source)]) == 0
    assert (tmp_path / "notebooks" / "ex.ipynb").read_bytes() == exercise["student"].read_bytes()
    assert (tmp_path / "notebooks" / "solutions" / "ex_solution.ipynb").read_bytes() == exercise["solution"].read_bytes()
    assert grading_cli(["generate", str(source), "--check"]) == 0


COURSE_SOURCES = sorted((ROOT / "notebooks" / "source").glob("*_source.ipynb"))


@pytest.mark.skipif(not COURSE_SOURCES, reason="no notebooks/source/*_source.ipynb in the checkout yet")
@pytest.mark.parametrize("source", COURSE_SOURCES, ids=[p.name for p in COURSE_SOURCES])
def test_committed_student_and_solution_versions_are_in_sync(source):
    student, solution = default_output_paths(source)
    stale = versions_out_of_sync(source, student, solution)
    assert stale == [], f"regenerate with: python -m vit_course.grading generate {source.relative_to(ROOT)}"


def test_stub_lines_and_indentation_are_respected():
    v4 = nbformat.v4
    code = (
        "results = {}\n"
        "for name in names:\n"
        "    # BEGIN SOLUTION\n"
        "    # STUB: results[name] = None  # compute the score\n"
        "    results[name] = score(name)\n"
        "    # END SOLUTION\n"
        "print(results)"
    )
    nb = v4.new_notebook(cells=[v4.new_code_cell(code, metadata=_meta("q4-code", "solution", "q4"))])
    student, solution = make_versions(nb)
    assert student["cells"][0]["source"] == (
        "results = {}\nfor name in names:\n    results[name] = None  # compute the score\nprint(results)"
    )
    assert solution["cells"][0]["source"] == (
        "results = {}\nfor name in names:\n    results[name] = score(name)\nprint(results)"
    )


@pytest.mark.parametrize(
    "source, meta, match",
    [
        ("x = 1\n# BEGIN SOLUTION\nx = 2", _meta("a", "solution", "q1"), "without an END"),
        ("# END SOLUTION\nx = 2", _meta("a", "solution", "q1"), "without a BEGIN"),
        ("# BEGIN SOLUTION\nx = 2\n# END SOLUTION", {}, "no metadata"),
        ("# HIDDEN TESTS\nassert True", _meta("a", "check", "q1"), "must agree"),
        ("assert True", _meta("a", "hidden_test", "q1", 1), "must agree"),
        ("# HIDDEN TESTS\nassert True", _meta("a", "hidden_test", "q1"), "points > 0"),
        ("x = 1", _meta("a", "solution", "q1"), "needs a '# BEGIN SOLUTION'"),
        ("x = 1", {"vit_course": {"id": "a", "kind": "answer", "question": "q1"}}, "kind must be one of"),
        ("x = 1", _meta("a b", "check", "q1"), "id must be"),
    ],
)
def test_malformed_sources_are_rejected_with_a_fix(source, meta, match):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata=meta)])
    with pytest.raises(ValueError, match=match):
        make_versions(nb)


def test_duplicate_ids_and_mixed_question_kinds_are_rejected():
    v4 = nbformat.v4
    dup = v4.new_notebook(cells=[v4.new_code_cell("x", metadata=_meta("a", "check", "q1")),
                                 v4.new_code_cell("y", metadata=_meta("a", "check", "q1"))])
    with pytest.raises(ValueError, match="already used"):
        graded_cells(dup)
    mixed = v4.new_notebook(cells=[v4.new_code_cell("# HIDDEN TESTS\n1", metadata=_meta("a", "hidden_test", "q1", 1)),
                                   v4.new_markdown_cell("answer", metadata=_meta("b", "manual", "q1", 1))])
    with pytest.raises(ValueError, match="both hidden_test and manual"):
        graded_cells(mixed)


# ----------------------------------------------------------------------------- check


def _solution_fn(code: str, name: str):
    namespace = {"torch": torch}
    exec(code.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", ""), namespace)
    return namespace[name]


def test_reference_answers_match_hand_computed_values():
    assert ref_deletion_auc(torch.tensor([1.0, 0.5, 0.0])) == pytest.approx(0.5)
    assert ref_deletion_auc(torch.tensor([1.0, 0.2, 0.1, 0.0])) == pytest.approx(0.8 / 3)
    m = torch.tensor([[1.0, 2.0], [-3.0, 1.0]])
    assert ref_grid_pointing_score(m, 1) == pytest.approx(0.5)
    assert ref_grid_pointing_score(m, 2) == 0.0
    with pytest.raises(ValueError, match="even"):
        ref_grid_pointing_score(torch.ones(3, 4), 0)


def test_check_passes_for_the_solution(capsys):
    result = check("q1", _solution_fn(Q1_CODE, "deletion_auc"))
    out = capsys.readouterr().out
    assert result and result.passed and result.fraction == 1.0
    assert "all 4 cases passed" in out
    assert check("q2", _solution_fn(Q2_CODE, "grid_pointing_score"))


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
    assert check("q1", _solution_fn(Q1_CODE, "deletion_auc"))


def test_registry_rejects_duplicates_and_unknown_ids():
    with pytest.raises(ValueError, match="already registered"):
        register_question("q1", Case("x", (), 1))
    with pytest.raises(ValueError, match="unknown question 'nope'; registered questions: .*q1"):
        check("nope", print)
    register_question("t_value", Case("has three rows", call=lambda rows: len(rows), expected=3))
    try:
        assert check("t_value", [1, 2, 3])
        assert not check("t_value", [1])
    finally:
        unregister_question("t_value")


def test_compare_values_on_arrays():
    assert compare_values(torch.ones(2, 2), torch.ones(2, 2)) is None
    assert "expected shape (2, 2), got shape (4,)" in compare_values(torch.ones(4), torch.ones(2, 2))
    message = compare_values(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]))
    assert "largest difference at index (1,): expected 2, got 2.5" in message


def test_hidden_cases_pass_for_the_reference_and_fail_for_mistakes():
    q2 = get_question("q2")
    cases = q2.public_cases() + q2.hidden_cases()
    assert len(cases) == 14
    assert run_cases("q2", cases, (ref_grid_pointing_score,)).fraction == 1.0
    assert run_cases("q2", cases, (_wrong_q2,)).n_passed == 6  # the partial submission's mistake


def _wrong_q2(attribution, target_tile):  # counts negative attribution too
    m = torch.as_tensor(attribution, dtype=torch.float64)
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(m[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / m.sum())


WRONG_Q2_CODE = '''def grid_pointing_score(attribution, target_tile):
    m = torch.as_tensor(attribution, dtype=torch.float64)
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(m[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / m.sum())'''


# ----------------------------------------------------------------------------- executing versions


def _outputs(nb, cid):
    return _by_id(nb)[cid].outputs


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
        payload = next(o["data"][GRADE_MIME] for o in _outputs(nb, cid) if GRADE_MIME in o.get("data", {}))
        assert payload["fraction"] == 1.0 and payload["n_total"] > len(get_question(payload["question"]).public_cases())


# ----------------------------------------------------------------------------- batch grader


def _submission(student_path: Path, edit) -> nbformat.NotebookNode:
    nb = nbformat.read(student_path, as_version=4)
    edit(nb)
    return nb


def _set(nb, cid, source):
    _by_id(nb)[cid].source = source


def _solve(nb, q1=True, q2=True):
    if q1:
        _set(nb, "q1-code", Q1_CODE.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", ""))
    if q2:
        _set(nb, "q2-code", Q2_CODE.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", ""))
    answer = _by_id(nb)["q3-answer"]
    answer.source = answer.source.replace("*Write your answer here.*", "The score drops fast.")


def _insert_after(nb, cid, source):
    index = nb.cells.index(_by_id(nb)[cid])
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))


def _make_submissions(folder: Path, student: Path) -> None:
    def write(name, edit):
        nbformat.write(_submission(student, edit), str(folder / f"{name}.ipynb"))

    write("correct", _solve)

    def untouched(nb):  # handed in as distributed, plus a cell posing as a hidden test
        nb.cells.append(nbformat.v4.new_code_cell(
            "# HIDDEN TESTS\nraise SystemExit", metadata=_meta("q2-hidden", "hidden_test", "q2", 2)))

    write("untouched", untouched)

    def partial(nb):
        _solve(nb)
        _set(nb, "q2-code", WRONG_Q2_CODE)

    write("partial", partial)

    def broken(nb):
        _solve(nb)
        nb.cells[1].source = "import nmupy_typo as np\nimport torch\nfrom vit_course.grading import check"

    write("broken", broken)

    def loop(nb):  # starts a detached process, then loops ignoring Ctrl-C: must be killed
        _solve(nb)
        _insert_after(nb, "q1-check", (
            "import signal, subprocess, time\n"
            "sleeper = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "while True:\n    time.sleep(0.05)"
        ))

    write("loop", loop)

    def exits(nb):  # sys.exit raises SystemExit (IPython survives it); os._exit kills the kernel
        _solve(nb)
        _insert_after(nb, "q1-check", "import sys\nsys.exit(1)")
        _insert_after(nb, "q2-check", "import os\nos._exit(1)")

    write("exits", exits)

    def deleted(nb):  # q2's code cell deleted, q1's check moved above q1's code
        _solve(nb)
        nb.cells.remove(_by_id(nb)["q2-code"])
        code, chk = _by_id(nb)["q1-code"], _by_id(nb)["q1-check"]
        i, j = nb.cells.index(code), nb.cells.index(chk)
        nb.cells[i], nb.cells[j] = chk, code

    write("deleted", deleted)

    def greedy(nb):  # prints 5 MB, then asks for 3 GB (the test caps memory at 2 GB)
        _solve(nb)
        _insert_after(nb, "q1-check", "for _ in range(50):\n    print('x' * 100_000)")
        _insert_after(nb, "q2-check", "hoard = bytearray(3 * 1024 ** 3)")

    write("greedy", greedy)
    (folder / "invalid_json.ipynb").write_text('{"cells": [', encoding="utf-8")


EXPECTED_ROWS = {
    # student: (q1, q2, q3, total, status, manual_pending)
    "broken": ("0", "0", "", "0", "cell_errors", "1"),
    "correct": ("2", "2", "", "4", "ok", "1"),
    "deleted": ("2", "0", "", "2", "cells_deleted;cells_reordered;cell_errors", "1"),
    "exits": ("2", "2", "", "4", "cell_errors;kernel_died", "1"),
    "greedy": ("2", "2", "", "4", "cell_errors;memory_limit;output_truncated", "1"),
    "invalid_json": ("0", "0", "0", "0", "invalid_notebook", "0"),
    "loop": ("2", "0", "", "2", "timeout", "1"),
    "partial": ("2", "0.86", "", "2.86", "ok", "1"),
    "untouched": ("0", "0", "", "0", "ok", "1"),
}


def _marked_pids(marker: str) -> list[int]:
    needle = f"VIT_COURSE_TEST_MARKER={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
                if state != b"Z":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="orphan check reads /proc (Linux)")
def test_grader_batch_csv_feedback_and_no_orphans(exercise, tmp_path):
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    _make_submissions(submissions, exercise["student"])
    out = tmp_path / "grades.csv"
    marker = uuid.uuid4().hex
    env = {**os.environ, "VIT_COURSE_TEST_MARKER": marker}
    result = subprocess.run(
        [PY, "-m", "vit_course.grading", "grade", str(submissions), "--source", str(exercise["source"]),
         "--out", str(out), "--timeout", "20", "--test-timeout", "20", "--max-output-kb", "256",
         "--memory-mb", "2048", "--jobs", "2",
         "--executed-dir", str(tmp_path / "executed")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert _marked_pids(marker) == [], "processes left behind by the grader"

    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["student", "q1", "q2", "q3", "total", "max_total", "status", "manual_pending"]
    got = {r["student"]: (r["q1"], r["q2"], r["q3"], r["total"], r["status"], r["manual_pending"]) for r in rows}
    assert got == EXPECTED_ROWS, "\n" + result.stderr
    assert {r["max_total"] for r in rows} == {"5"}
    assert not list(tmp_path.glob(".grades.csv*")), "temporary CSV left behind"

    feedback = tmp_path / "grades_feedback"
    assert sorted(p.stem for p in feedback.glob("*.md")) == sorted(EXPECTED_ROWS)
    texts = {p.stem: p.read_text() for p in feedback.glob("*.md")}
    for text in texts.values():
        assert "BEGIN SOLUTION" not in text and "curve[1:] + curve[:-1]" not in text and "autograde" not in text
        assert MANUAL_ANSWER not in text
    assert "6 of 14 test cases passed" in texts["partial"]
    assert "expected 1, got -0.666667" in texts["partial"]  # negative attribution counted
    assert "Not implemented" in texts["untouched"]
    assert "ModuleNotFoundError: No module named 'nmupy_typo'" in texts["broken"]
    assert "Time limit of 20 s reached" in texts["loop"]
    assert "The kernel died in cell" in texts["exits"] and "`import os`" in texts["exits"]
    assert "raised SystemExit: 1" in texts["exits"]
    assert "missing from your notebook: q2-code" in texts["deleted"]
    assert "out of order" in texts["deleted"]
    assert "was dropped" in texts["greedy"] and "ran out of memory (limit 2048 MB)" in texts["greedy"]
    assert "Removed 1 cell(s) marked as hidden tests" in texts["untouched"]
    assert "not a valid Jupyter notebook" in texts["invalid_json"]
    assert "q3: pending / 1" in texts["correct"] and "graded by hand" in texts["correct"]
    assert "unchanged from the template" in texts["untouched"]

    # the student version as distributed runs cleanly and every check says "not implemented"
    executed = nbformat.read(tmp_path / "executed" / "untouched.ipynb", as_version=4)
    assert not any(o.output_type == "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    for cid in ("q1-check", "q2-check"):
        text = "".join(o.get("text", "") for o in _outputs(executed, cid))
        assert "not implemented yet" in text and "Traceback" not in text
    assert "autograde" not in (tmp_path / "executed" / "correct.ipynb").read_text()


def test_grade_rejects_bad_arguments(exercise, tmp_path, capsys):
    base = ["grade", str(tmp_path / "nope"), "--source", str(exercise["source"]), "--out", str(tmp_path / "g.csv")]
    assert grading_cli(base) == 2
    assert "must be a folder" in capsys.readouterr().err
    assert grading_cli(base + ["--timeout", "0"]) == 2
    assert "must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()
