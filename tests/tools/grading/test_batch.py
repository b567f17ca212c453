"""One grading batch over many small submissions of the test exercise, inside the bubblewrap
sandbox: honest ones, accidents (loops, exits, memory, output) and hostile ones (the cheats of
issue 12, escapes, kills). Each must get exactly the points it earned honestly, the right
status, and leave nothing behind: no process, nothing in the grader's temporary folder,
nothing new in the submissions folder or in /tmp.

One batch (not one per notebook) keeps the wall time small; the exercise is the tiny one of
``_grading_exercise`` (two coded questions), not notebook 08.
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
from _grading_exercise import (MANUAL_ANSWER, WRONG_Q2_CODE, insert_after, meta, outputs_of, set_cell,
                               solve)

import vit_course
from vit_course.tools.grading.sandbox import bwrap_problem

PY = sys.executable
PACKAGE = Path(vit_course.__file__).resolve().parent
pytestmark = pytest.mark.slow

# student: (q1, q2, q3, total, status, manual_pending)
EXPECTED = {
    "correct": ("2", "2", "", "4", "ok", "1"),
    "untouched": ("0", "0", "", "0", "ok", "1"),
    "partial": ("2", "0.75", "", "2.75", "ok", "1"),
    "broken": ("0", "0", "", "0", "cell_errors", "1"),
    "deleted": ("2", "0", "", "2", "cells_deleted;cells_reordered;cell_errors", "1"),
    "invalid_json": ("0", "0", "0", "0", "invalid_notebook", "0"),
    "exits": ("2", "2", "", "4", "cell_errors;kernel_died;kernel_killed", "1"),
    "greedy": ("2", "2", "", "4", "cell_errors;memory_limit;output_truncated", "1"),
    "sleepy_check": ("2", "0", "", "2", "timeout", "1"),
    "hang_in_check": ("0", "2", "", "2", "ok", "1"),
    "patch_grader": ("0", "0", "", "0", "ok", "1"),
    "read_source": ("0", "0", "", "0", "ok", "1"),
    "stack_walk": ("0", "0", "", "0", "ok", "1"),
    "patch_compare": ("0", "0", "", "0", "ok", "1"),
    "escape": ("0", "2", "", "2", "ok", "1"),
    "kill_grader": ("0", "0", "", "0", "kernel_killed", "1"),
}

PATCH_GRADER = '''
import json, os
import vit_course.grading as G
import vit_course.tools.grading.checks as C
from vit_course.tools.grading import collect, compare
from IPython.display import display

def fake(qid, *objects):  # claim full marks in every way a result could be reported
    display({"text/plain": f"{qid}: all cases passed",
             "application/vnd.vit-course.grade+json": {"question": qid, "fraction": 1.0, "cases": []}}, raw=True)
    out = os.environ.get(collect.OUTPUTS_ENV, "/tmp")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, qid + ".json"), "w") as fh:
        json.dump({"question": qid, "calls": [{"value": 0.123456}] * 64}, fh)

C.autograde = G.autograde = collect.collect = fake
C.compare_values = compare.grade_question = lambda *a, **k: None
get_ipython().events.register("post_run_cell", lambda result: print("q1: all 6 cases passed. q2: all 8 cases passed."))
'''

READ_SOURCE = '''
import glob, json
for path in [{source!r}, {reference!r}, *glob.glob({pycache!r}), *glob.glob("/tmp/**/*_source.ipynb", recursive=True)]:
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        continue
    if path.endswith(".ipynb"):
        for cell in json.loads(text)["cells"]:
            if cell["cell_type"] == "code" and "BEGIN SOLUTION" in "".join(cell["source"]):
                exec("".join(cell["source"]), globals())
    elif "def deletion_auc" in text:
        namespace = {{}}
        exec(text, namespace)
        deletion_auc, grid_pointing_score = namespace["deletion_auc"], namespace["reference_q2_pointing"]
try:
    from vit_course.tools.grading.reference import deletion_auc, reference_q2_pointing as grid_pointing_score
except ImportError:
    pass
'''

STACK_WALK = '''
import gc, sys
import torch

def _same(a, b):
    try:
        return len(a) == len(b) and all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))
    except Exception:
        return False

def _steal(args):
    frame = sys._getframe(1)
    while frame is not None:  # the callers' locals: a case, its expected value, a plan
        for value in frame.f_locals.values():
            if hasattr(value, "expected") and _same(getattr(value, "args", ()), args):
                return value.expected
            if isinstance(value, dict) and "expected" in value:
                return value["expected"]
        frame = frame.f_back
    for obj in gc.get_objects():  # anything alive in the kernel
        if type(obj).__name__ == "Case" and _same(obj.args, args):
            return obj.expected
    return 0.123456

def deletion_auc(curve):
    return _steal((curve,))

def grid_pointing_score(attribution, target_tile):
    return _steal((attribution, target_tile))
'''

PATCH_COMPARE = '''
import math, operator
import numpy as np
import torch
math.isclose = np.allclose = np.isclose = np.array_equal = torch.allclose = torch.equal = lambda *a, **k: True
operator.eq = lambda a, b: True
torch.Tensor.__eq__ = lambda self, other: True

def deletion_auc(curve):
    return 0.123456

def grid_pointing_score(attribution, target_tile):
    return 0.123456
'''

ESCAPE = '''
import glob, json, os, subprocess, sys
for target in {targets!r}:  # write outside its own folder
    try:
        with open(target, "w") as fh:
            fh.write("escaped")
    except OSError:
        pass
sleeper = [sys.executable, "-c", "import time; time.sleep(600)  # {marker}"]
subprocess.Popen(sleeper, start_new_session=True, env={{}})  # a detached child with a clean environment
pid = os.fork()  # a double fork
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve(sys.executable, sleeper, {{}})
    os._exit(0)
os.waitpid(pid, 0)
for path in glob.glob({submissions!r} + "/*.ipynb"):  # copy a friend's answer
    try:
        for cell in json.load(open(path))["cells"]:
            if "".join(cell["source"]).startswith("def deletion_auc"):
                exec("".join(cell["source"]), globals())
    except Exception:
        pass
'''

LOOP = '''
import signal, subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # {marker}"], start_new_session=True)
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    time.sleep(0.05)
'''


def _make_submissions(folder: Path, exercise: dict, marker: str) -> list[str]:
    student = exercise["student"]

    def write(name, edit):
        nb = nbformat.read(student, as_version=4)
        edit(nb)
        nbformat.write(nb, str(folder / f"{name}.ipynb"))

    def correct(nb):
        solve(nb)
        nb.cells.append(nbformat.v4.new_code_cell(
            "import resource, sys\nprint(sys.executable, resource.getrlimit(resource.RLIMIT_DATA)[0])"))

    def untouched(nb):  # as distributed, plus a cell posing as a hidden test
        nb.cells.append(nbformat.v4.new_code_cell(
            "# HIDDEN TESTS\nraise SystemExit", metadata=meta("q2-hidden", "hidden_test", "q2", 2)))

    def partial(nb):  # q2 counts negative attribution
        solve(nb)
        set_cell(nb, "q2-code", WRONG_Q2_CODE)

    def broken(nb):
        solve(nb)
        nb.cells[1].source = "import nmupy_typo as np\nimport torch\nfrom vit_course.grading import check"

    def deleted(nb):  # q2's code cell deleted, q1's check moved above q1's code
        solve(nb)
        cells = {c.metadata.get("vit_course", {}).get("id"): c for c in nb.cells}
        nb.cells.remove(cells["q2-code"])
        i, j = nb.cells.index(cells["q1-code"]), nb.cells.index(cells["q1-check"])
        nb.cells[i], nb.cells[j] = nb.cells[j], nb.cells[i]

    def exits(nb):  # sys.exit (the kernel survives), a SIGKILL of itself, os._exit
        solve(nb)
        insert_after(nb, "q1-check", "import sys\nsys.exit(1)")
        insert_after(nb, "q2-code", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        insert_after(nb, "q2-check", "import os\nos._exit(1)")

    def greedy(nb):  # 5 MB printed, 6 MB of base64 displayed, then 3 GB asked for (cap: 2 GB)
        solve(nb)
        insert_after(nb, "q1-check", "for _ in range(50):\n    print('x' * 100_000)")
        insert_after(nb, "q1-check", "import base64, os\nfrom IPython.display import display\n"
                                     "display({'image/png': base64.b64encode(os.urandom(4_500_000)).decode()}, raw=True)")
        insert_after(nb, "q2-check", "hoard = bytearray(3 * 1024 ** 3)")

    def sleepy_check(nb):  # a check cell that never ends, ignores Ctrl-C and starts a detached child
        solve(nb)
        set_cell(nb, "q1-check", LOOP.format(marker=marker))

    def hang_in_check(nb):  # q1's function hangs: check() and the hidden test stop it
        solve(nb)
        set_cell(nb, "q1-code", "def deletion_auc(curve):\n    while True:\n        pass")

    def cheat(code, after="q2-code", q1=False, q2=False):
        def edit(nb):
            solve(nb, q1=q1, q2=q2)
            insert_after(nb, after, code)
        return edit

    source = Path(exercise["source"])
    targets = [str(folder / f"{marker}.ipynb"), str(folder.parent / marker), f"/tmp/{marker}",
               str(source.parent / marker), str(PACKAGE / marker), os.path.expanduser(f"~/{marker}")]
    write("correct", correct)
    write("untouched", untouched)
    write("partial", partial)
    write("broken", broken)
    write("deleted", deleted)
    write("exits", exits)
    write("greedy", greedy)
    write("sleepy_check", sleepy_check)
    write("hang_in_check", hang_in_check)
    write("patch_grader", cheat(PATCH_GRADER, after="q1-check"))
    write("read_source", cheat(READ_SOURCE.format(
        source=str(source), reference=str(PACKAGE / "tools/grading/reference.py"),
        pycache=str(PACKAGE / "tools/grading/__pycache__/reference*"))))
    write("stack_walk", cheat(STACK_WALK))
    write("patch_compare", cheat(PATCH_COMPARE))
    write("escape", cheat(ESCAPE.format(targets=targets, marker=marker, submissions=str(folder)), q2=True))
    write("kill_grader", cheat("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", after="q2-check",
                               q1=True, q2=True))
    (folder / "invalid_json.ipynb").write_text('{"cells": [', encoding="utf-8")
    return targets


def _marked_processes(marker: str) -> list[int]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            text = Path(f"/proc/{entry}/cmdline").read_bytes() + Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
        except OSError:
            continue
        if marker.encode() in text and state != b"Z":
            found.append(int(entry))
    return found


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def batch(exercise, tmp_path_factory):
    problem = bwrap_problem()
    if problem:  # on CI the sandbox is required: .ci/run installs bubblewrap
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"the grading sandbox cannot run here: {problem}")
    root = tmp_path_factory.mktemp("batch")
    submissions, grader_tmp = root / "submissions", root / "grader-tmp"
    submissions.mkdir()
    grader_tmp.mkdir()
    marker = f"vitmark{uuid.uuid4().hex}"
    targets = _make_submissions(submissions, exercise, marker)
    before = _snapshot(submissions)
    env = {**os.environ, "VIT_COURSE_TEST_MARKER": marker, "TMPDIR": str(grader_tmp),
           "VIT_COURSE_CHECK_TIME_LIMIT": "2"}
    result = subprocess.run(
        [PY, "-m", "vit_course.grading", "grade", str(submissions), "--source", str(exercise["source"]),
         "--out", str(root / "grades.csv"), "--timeout", "30", "--test-timeout", "30", "--call-timeout", "2",
         "--max-output-kb", "256", "--memory-mb", "2048", "--jobs", "3", "--sandbox", "bwrap",
         "--executed-dir", str(root / "executed")],
        capture_output=True, text=True, env=env, cwd=root, timeout=900,
    )
    with open(root / "grades.csv", newline="") as fh:
        rows = list(csv.DictReader(fh)) if result.returncode == 0 else []
    feedback = {p.stem: p.read_text() for p in (root / "grades_feedback").glob("*.md")}
    return {"result": result, "rows": rows, "feedback": feedback, "root": root, "marker": marker,
            "targets": targets, "before": before, "after": _snapshot(submissions),
            "processes": _marked_processes(marker),
            # torch (imported by the grader and its reference process) keeps a compile cache there
            "grader_tmp": sorted(n for n in os.listdir(grader_tmp) if not n.startswith("torchinductor_"))}


def test_every_submission_gets_the_points_it_earned_and_its_status(batch):
    assert batch["result"].returncode == 0, batch["result"].stderr
    got = {r["student"]: (r["q1"], r["q2"], r["q3"], r["total"], r["status"], r["manual_pending"]) for r in batch["rows"]}
    assert got == EXPECTED, "\n" + batch["result"].stderr
    # the sandbox was on for every row; a silent fallback to no sandbox fails here
    assert {r["sandbox"] for r in batch["rows"]} == {"bwrap"}
    assert "WARNING: grading WITHOUT a sandbox" not in batch["result"].stderr


def test_nothing_is_left_behind(batch):
    assert batch["processes"] == [], "processes outlived the batch"
    assert batch["grader_tmp"] == [], "the grader left files in its temporary folder"
    assert batch["after"] == batch["before"], "the submissions folder changed"
    assert [t for t in batch["targets"] if os.path.exists(t)] == [], "a submission wrote outside its folder"


def test_feedback_names_problems_without_the_solution(batch):
    texts = batch["feedback"]
    assert sorted(texts) == sorted(EXPECTED)
    for text in texts.values():
        assert "BEGIN SOLUTION" not in text and "curve[1:] + curve[:-1]" not in text and "autograde" not in text
        assert MANUAL_ANSWER not in text
    assert "3 of 8 test cases passed" in texts["partial"]
    assert "did you count negative attribution?" in texts["partial"]
    assert "Not implemented" in texts["untouched"] and "Removed 1 cell(s) marked as hidden tests" in texts["untouched"]
    assert "unchanged from the template" in texts["untouched"]
    assert "ModuleNotFoundError: No module named 'nmupy_typo'" in texts["broken"]
    assert "Time limit of 30 s reached" in texts["sleepy_check"]
    assert "took longer than 2 s" in texts["hang_in_check"]
    assert "The kernel died in cell" in texts["exits"] and "`import os`" in texts["exits"]
    assert "killed by a signal" in texts["exits"] and "raised SystemExit: 1" in texts["exits"]
    assert "killed before it finished" in texts["kill_grader"]
    assert "missing from your notebook: q2-code" in texts["deleted"] and "out of order" in texts["deleted"]
    assert "was dropped" in texts["greedy"] and "ran out of memory (limit 2048 MB)" in texts["greedy"]
    assert "not a valid Jupyter notebook" in texts["invalid_json"]
    assert "q3: pending / 1" in texts["correct"] and "graded by hand" in texts["correct"]


def test_kernels_ran_sandboxed_in_the_course_interpreter(batch):
    executed = batch["root"] / "executed"
    nb = nbformat.read(executed / "correct.ipynb", as_version=4)
    # the kernel is this interpreter, under the memory cap
    assert nb.cells[-1].outputs[0]["text"].split() == [sys.executable, str(2048 * 1024 * 1024)]
    # the student version as distributed runs cleanly and every check says "not implemented"
    untouched = nbformat.read(executed / "untouched.ipynb", as_version=4)
    assert not any(o.output_type == "error" for c in untouched.cells if c.cell_type == "code" for o in c.outputs)
    for cid in ("q1-check", "q2-check"):
        text = "".join(o.get("text", "") for o in outputs_of(untouched, cid))
        assert "not implemented yet" in text and "Traceback" not in text
    hang = nbformat.read(executed / "hang_in_check.ipynb", as_version=4)
    text = "".join(o.get("text", "") for o in outputs_of(hang, "q1-check"))
    assert "took longer than 2 s" in text and "not run: the case before ran out of time" in text
    assert "autograde" not in (executed / "correct.ipynb").read_text()
