"""Tests for vit_course.tools.grading.grader (and assignment, feedback): a folder of
submissions → grades.csv and feedback files; notebook 08's assignment.
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
from _grading_exercise import MANUAL_ANSWER, Q1_CODE, Q2_CODE, WRONG_Q2_CODE, by_id, meta, outputs_of

from vit_course.grading import get_question
from vit_course.tools.grading.assignment import load_assignment
from vit_course.tools.grading.markers import render_versions

PY = sys.executable


def _submission(student_path: Path, edit) -> nbformat.NotebookNode:
    nb = nbformat.read(student_path, as_version=4)
    edit(nb)
    return nb


def _set(nb, cid, source):
    by_id(nb)[cid].source = source


def _solve(nb, q1=True, q2=True):
    if q1:
        _set(nb, "q1-code", Q1_CODE.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", ""))
    if q2:
        _set(nb, "q2-code", Q2_CODE.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", ""))
    answer = by_id(nb)["q3-answer"]
    answer.source = answer.source.replace("*Write your answer here.*", "The score drops fast.")


def _insert_after(nb, cid, source):
    index = nb.cells.index(by_id(nb)[cid])
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))


def _make_submissions(folder: Path, student: Path) -> None:
    def write(name, edit):
        nbformat.write(_submission(student, edit), str(folder / f"{name}.ipynb"))

    write("correct", _solve)

    def untouched(nb):  # handed in as distributed, plus a cell posing as a hidden test
        nb.cells.append(nbformat.v4.new_code_cell(
            "# HIDDEN TESTS\nraise SystemExit", metadata=meta("q2-hidden", "hidden_test", "q2", 2)))

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
        nb.cells.remove(by_id(nb)["q2-code"])
        code, chk = by_id(nb)["q1-code"], by_id(nb)["q1-check"]
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
        text = "".join(o.get("text", "") for o in outputs_of(executed, cid))
        assert "not implemented yet" in text and "Traceback" not in text
    assert "autograde" not in (tmp_path / "executed" / "correct.ipynb").read_text()


# ----------------------------------------------------------------------------- the notebook


SOURCE = Path(__file__).resolve().parents[3] / "notebooks" / "source" / "08_evaluation_source.ipynb"


@pytest.mark.skipif(not SOURCE.is_file(), reason="notebook 08's source is not in this checkout")
def test_notebook08_questions_points_and_hidden_tests():
    assignment = load_assignment(SOURCE)
    assert [(q.qid, q.kind, q.points) for q in assignment.questions] == [
        ("q1", "auto", 2), ("q2", "auto", 2), ("q3", "auto", 2), ("q4", "auto", 2), ("q5", "manual", 3)]
    for cell in assignment.hidden_cells:  # each hidden cell grades its own, registered question
        qid = assignment.cells[cell["id"]].question
        assert f'autograde("{qid}", ' in cell["source"]
        get_question(qid)
    student, _ = render_versions(SOURCE)
    assert "autograde" not in student and "Example answer" not in student
