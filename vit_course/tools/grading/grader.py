"""Batch grader: a folder of submissions → ``grades.csv`` and one feedback file per student.

For each ``*.ipynb`` (student name = file name without ``.ipynb``):

1. Parse and validate (nbformat 4). Invalid → ``invalid_notebook``, zero points.
2. Compare the graded cells (by ``metadata.vit_course.id``) with the source:
   missing → ``cells_deleted``, out of order → ``cells_reordered``. Grading goes on.
3. Run the submission, then the hidden tests taken from the SOURCE notebook, in a fresh
   kernel in a child process inside a bubblewrap sandbox (``executor.execute_notebook``).
   The hidden tests only run the student's functions on hidden inputs and hand back their
   outputs as plain data.
4. Score outside the sandbox: the outputs are compared (``compare``) with the expected
   values the reference solution gave in a process of its own, once per batch
   (``expected.load_plan``); each hidden-test cell earns ``points × fraction of its cases
   passed``; manual questions are left blank and counted in ``manual_pending``.

The CSV is written atomically once every submission is graded; the batch always finishes.
The source notebook is read in ``assignment``; the CSV rows and feedback files are built
in ``feedback``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import nbformat

from vit_course.tools.files import sweep_orphans
from vit_course.tools.grading._io import check_outputs, write_atomic
from vit_course.tools.grading.assignment import Assignment, cell_text, load_assignment
from vit_course.tools.grading.compare import grade_question
from vit_course.tools.grading.executor import (ExecutionReport, Stopped, allow_runs, execute_notebook,
                                               stop_all, stopped)
from vit_course.tools.grading.expected import ReferenceFailed, kernel_inputs, load_plan
from vit_course.tools.grading.feedback import SubmissionGrade, csv_text, render_feedback
from vit_course.tools.grading.markers import cell_info, read_notebook


def _cell_label(nb: dict, index: int) -> str:
    first = next((line.strip() for line in cell_text(nb["cells"][index]).splitlines() if line.strip()), "")
    first = first if len(first) <= 60 else first[:57] + "..."
    return f"cell {index + 1} (`{first}`)"


def check_structure(nb: dict, assignment: Assignment) -> tuple[list[str], list[str], list[str], list[str]]:
    """Compare graded cells with the source.

    Returns:
        ``(missing_ids, statuses, notes, present_ids)``; ``present_ids`` in submission order.
    """
    present: list[str] = []
    notes: list[str] = []
    for cell in nb.get("cells", []):
        try:
            info = cell_info(cell)
        except ValueError:
            info = None
        if info is not None and info.id not in present:
            present.append(info.id)
    expected = assignment.expected_ids
    missing = [i for i in expected if i not in present]
    statuses = []
    if missing:
        statuses.append("cells_deleted")
        notes.append("Graded cells missing from your notebook: " + ", ".join(missing) + ".")
    kept = [i for i in present if i in expected]
    if kept != [i for i in expected if i in kept]:
        statuses.append("cells_reordered")
        notes.append("Graded cells are out of order: found " + ", ".join(kept) + ".")
    return missing, statuses, notes, present


def _strip(nb: dict) -> tuple[dict, int]:
    """Copy of ``nb`` without outputs and without cells claiming to be hidden tests."""
    nb = nbformat.from_dict(dict(nb))
    cells, dropped = [], 0
    for cell in nb.cells:
        try:
            info = cell_info(cell)
        except ValueError:
            info = None
        if info is not None and info.kind == "hidden_test":
            dropped += 1
            continue
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    return nb, dropped


def score(report: ExecutionReport, assignment: Assignment, missing: list[str], student: str,
          plan: dict | None = None) -> SubmissionGrade:
    """Points per question and notes from an execution report and the batch's ``plan``."""
    plan = plan or {"questions": {}}
    grade = SubmissionGrade(student=student, points={}, statuses=[])
    for q in assignment.questions:
        notes = grade.question_notes.setdefault(q.qid, [])
        if q.kind == "manual":
            ids = [
                i for i in assignment.expected_ids
                if assignment.cells[i].kind == "manual" and assignment.cells[i].question == q.qid
            ]
            if any(i in missing for i in ids):
                grade.points[q.qid] = 0.0
                notes.append("The answer cell was deleted, so there is nothing to grade.")
            else:
                grade.points[q.qid] = None
                grade.manual_pending += q.points
                notes.append("Graded by hand by your instructor.")
            continue
        earned = 0.0
        for h in q.hidden:
            run = report.hidden.get(h.id)
            if run is None:
                notes.append("The tests could not run (the notebook did not get that far).")
                continue
            entry = plan["questions"].get(q.qid)
            payload = grade_question(q.qid, entry, report.outputs.get(q.qid)) if entry is not None else None
            if payload is not None and (q.qid in report.outputs or run.status == "ok"):
                fraction = float(payload.get("fraction", 0.0))
                earned += h.points * min(max(fraction, 0.0), 1.0)
                if payload.get("not_implemented"):
                    notes.append("Not implemented (your function still raises NotImplementedError).")
                else:
                    cases = payload.get("cases", [])
                    failed = [c for c in cases if not c.get("passed")]
                    notes.append(f"{len(cases) - len(failed)} of {len(cases)} test cases passed.")
                    notes.extend(f"✗ {c.get('name')}: {c.get('message')}" for c in failed[:10])
                    if len(failed) > 10:
                        notes.append(f"… and {len(failed) - 10} more failing cases.")
            elif run.status == "ok":
                earned += h.points
                notes.append("Tests passed.")
            elif run.status == "timeout":
                notes.append("Your code ran out of time during the tests.")
            elif run.status in ("died", "killed"):
                notes.append(f"The kernel {run.status} while your code was being tested.")
            else:
                notes.append(f"The tests could not use your code: {run.ename}: {run.evalue}".rstrip(": "))
        grade.points[q.qid] = round(earned, 2)
    return grade


@dataclass
class GradeOptions:
    """Execution limits for each submission (see ``execute_notebook``)."""

    timeout: float = 300.0
    test_timeout: float = 60.0
    memory_mb: int = 4096
    max_output_bytes: int = 1 << 20
    kernel_name: str | None = None
    cwd: str | Path | None = None
    executed_dir: str | Path | None = None
    max_restarts: int = 2
    sandbox: str = "bwrap"  # "bwrap" or "none" (no isolation: see docs/GRADING.md)
    call_time_limit: float = 30.0  # seconds for each call of the student's code in a hidden test
    threads: int | None = None  # torch threads per kernel; grade_folder: the CPU cores / jobs


def _zero(assignment: Assignment, student: str, status: str, note: str) -> SubmissionGrade:
    grade = SubmissionGrade(student=student, points={q.qid: 0.0 for q in assignment.questions}, statuses=[status])
    grade.notes.append(note)
    return grade


class _Plan:
    """The batch's plan, built by the reference process on first use (once, thread-safe), so a
    batch of invalid notebooks never starts it."""

    def __init__(self, assignment: Assignment) -> None:
        self._qids = [q.qid for q in assignment.questions if q.kind == "auto"]
        self._plan: dict | ReferenceFailed | None = None
        self._lock = threading.Lock()

    def get(self) -> dict:
        with self._lock:
            if self._plan is None:
                try:
                    self._plan = load_plan(self._qids)
                except ReferenceFailed as exc:  # once: every later submission gets the same error
                    self._plan = exc
            if isinstance(self._plan, ReferenceFailed):
                raise self._plan
            return self._plan


def grade_submission(path: str | Path, assignment: Assignment, options: GradeOptions | None = None,
                     plan: _Plan | None = None, hide: list[Path] | None = None) -> SubmissionGrade:
    """Grade one submission file; never raises for anything the submission contains.

    ``plan``: the batch's hidden inputs and expected values (``expected.load_plan``, built on
    first use); ``hide``: paths the sandbox must not show (the submissions folder, the source,
    the outputs).
    """
    options = options or GradeOptions()
    plan = plan or _Plan(assignment)
    path = Path(path)
    student = path.stem
    try:
        nb = read_notebook(path)
    except ValueError as exc:
        message = str(exc).replace(str(path), path.name)
        return _zero(assignment, student, "invalid_notebook", message)
    missing, statuses, notes, _ = check_structure(nb, assignment)
    clean, dropped = _strip(nb)
    if dropped:
        notes.append(f"Removed {dropped} cell(s) marked as hidden tests; hidden tests come from the instructor's copy.")
    expected = plan.get()  # ReferenceFailed when the reference solution fails: the batch stops
    executed = None
    if options.executed_dir is not None:
        Path(options.executed_dir).mkdir(parents=True, exist_ok=True)
        executed = Path(options.executed_dir) / path.name
    try:
        report = execute_notebook(
            clean,
            assignment.hidden_cells,
            timeout=options.timeout,
            test_timeout=options.test_timeout,
            memory_mb=options.memory_mb,
            max_output_bytes=options.max_output_bytes,
            kernel_name=options.kernel_name,
            cwd=options.cwd,
            executed_path=executed,
            max_restarts=options.max_restarts,
            sandbox=options.sandbox,
            inputs=kernel_inputs(expected, options.call_time_limit),
            hide=[path.parent, assignment.source, *(hide or [])],
            threads=options.threads,
        )
    except Stopped:
        raise
    except Exception as exc:  # the grader itself failed: record it, keep the batch going
        return _zero(assignment, student, "grader_error", f"Grader error: {type(exc).__name__}: {exc}")
    if stopped():  # killed by stop_all, not by anything the submission did: no grade
        raise Stopped("grading was stopped while this submission ran")
    grade = score(report, assignment, missing, student, expected)
    grade.seconds = report.seconds
    grade.sandbox = options.sandbox
    grade.statuses = statuses
    grade.notes = notes
    for index in report.error_cells:
        run = report.cells[index]
        grade.notes.append(f"{_cell_label(clean, index)} raised {run.ename}: {run.evalue}".rstrip(": "))
    if report.error_cells:
        grade.statuses.append("cell_errors")
    if report.timed_out:
        grade.statuses.append("timeout")
        stuck = [i for i, c in report.cells.items() if c.status == "timeout"]
        where = f" in {_cell_label(clean, stuck[0])}" if stuck else ""
        grade.notes.append(f"Time limit of {options.timeout:g} s reached{where}; later cells were not run.")
    if report.kernel_deaths:
        grade.statuses.append("kernel_died")
        for where in report.kernel_deaths:
            label = _cell_label(clean, where) if isinstance(where, int) else "a hidden test"
            grade.notes.append(f"The kernel died in {label}; it was restarted and your notebook re-run without that cell.")
    if report.kernel_kills or report.child_killed:
        grade.statuses.append("kernel_killed")
        for where in report.kernel_kills:
            label = _cell_label(clean, where) if isinstance(where, int) else "a hidden test"
            grade.notes.append(f"The kernel was killed by a signal in {label}; it was restarted without that cell.")
        if report.child_killed:
            grade.notes.append("The grader's process running your notebook was killed before it finished; "
                               "only the tests that had finished by then count.")
    if report.memory_exceeded:
        grade.statuses.append("memory_limit")
        grade.notes.append(f"A cell ran out of memory (limit {options.memory_mb} MB).")
    if report.output_truncated_cells:
        grade.statuses.append("output_truncated")
        cells = sorted(set(report.output_truncated_cells))
        grade.notes.append(
            f"Output over {options.max_output_bytes // 1024} KB was dropped (from {_cell_label(clean, cells[0])} on)."
        )
    if report.fatal:
        grade.statuses.append("grader_error")
        grade.notes.append(f"Grader error: {report.fatal}")
    for qid, spec_notes in grade.question_notes.items():
        spec = next(q for q in assignment.questions if q.qid == qid)
        if spec.kind == "manual":
            by_id = {}
            for cell in clean.cells:
                try:
                    info = cell_info(cell)
                except ValueError:
                    info = None
                if info is not None and info.question == qid and info.kind == "manual":
                    by_id.setdefault(info.id, cell_text(cell))
            if by_id and all(assignment.template.get(i, "").strip() == t.strip() for i, t in by_id.items()):
                spec_notes.append("Your answer cell looks unchanged from the template.")
    return grade


def grade_folder(
    submissions: str | Path,
    source: str | Path,
    out: str | Path,
    feedback_dir: str | Path | None = None,
    jobs: int = 1,
    options: GradeOptions | None = None,
    progress: Callable[[SubmissionGrade], None] | None = None,
) -> list[SubmissionGrade]:
    """Grade every ``*.ipynb`` in ``submissions``; write ``out`` (CSV) and feedback files.

    Args:
        submissions: folder of submitted notebooks (not searched recursively).
        source: the source notebook (solutions, hidden tests, metadata).
        out: CSV path, written atomically after the whole batch.
        feedback_dir: folder for ``<student>.md``; default ``<out stem>_feedback`` beside ``out``.
        jobs: submissions graded in parallel (each in its own processes).
        options: execution limits.
        progress: called with each finished grade.
    Returns:
        The grades, sorted by student.
    Raises:
        ValueError: when ``submissions`` is not a folder, ``jobs < 1``, or the source is invalid.
        OSError: ``out`` or ``feedback_dir`` cannot be written (checked before any grading).
    """
    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise ValueError(f"submissions must be a folder of .ipynb files, got {submissions} (not a folder)")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    assignment = load_assignment(source)
    options = options or GradeOptions()
    if options.threads is None:  # jobs kernels share the cores: no more threads than cores
        options = replace(options, threads=max(1, (os.cpu_count() or 1) // jobs))
    feedback_dir = Path(feedback_dir) if feedback_dir is not None else out.with_name(out.stem + "_feedback")
    check_outputs(out, feedback_dir)  # before grading: an unwritable --out fails now, not after the batch
    sweep_orphans(("vit-grade-", "vit-expected-"))  # folders of a grader killed with SIGKILL
    files = sorted(p for p in submissions.glob("*.ipynb") if p.is_file() and not p.name.startswith("."))
    plan = _Plan(assignment)  # once per batch, in a process of its own
    hide = [submissions, Path(source), out.parent, feedback_dir]

    def one(path: Path) -> SubmissionGrade:
        try:
            grade = grade_submission(path, assignment, options, plan, hide)
        except (ReferenceFailed, Stopped):  # no grade would be right; or the batch was stopped
            raise
        except Exception as exc:  # pragma: no cover - last line of defence
            grade = _zero(assignment, path.stem, "grader_error", f"Grader error: {type(exc).__name__}: {exc}")
        grade.sandbox = options.sandbox
        write_atomic(feedback_dir / f"{grade.student}.md", render_feedback(grade, assignment))
        if progress is not None:
            progress(grade)
        return grade

    allow_runs()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        grades = list(pool.map(one, files))
    except BaseException:  # Ctrl-C, SIGTERM: stop queued work, kill running processes, no CSV
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        raise
    pool.shutdown()
    grades.sort(key=lambda g: g.student)
    write_atomic(out, csv_text(grades, assignment))
    return grades


