"""What the grader writes: one ``SubmissionGrade`` per student, rendered as a CSV row
(``csv_text``), a Markdown feedback file (``render_feedback``) and a progress line.

Statuses (``STATUS_ORDER``, joined by ``;`` in that order) and their explanations for
students (``STATUS_HELP``) are defined here; docs/GRADING.md lists them too.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field

from vit_course.tools.grading.assignment import Assignment

STATUS_ORDER = (
    "invalid_notebook",
    "cells_deleted",
    "cells_reordered",
    "cell_errors",
    "timeout",
    "kernel_died",
    "kernel_killed",
    "memory_limit",
    "output_truncated",
    "grader_error",
)
STATUS_HELP = {
    "ok": "the notebook ran without problems",
    "invalid_notebook": "the file is not a valid Jupyter notebook (not JSON, or not nbformat 4); nothing could be graded",
    "cells_deleted": "graded cells are missing from your notebook",
    "cells_reordered": "graded cells are not in their original order",
    "cell_errors": "some cells raised an error",
    "timeout": "the notebook ran out of time; cells after that point were not run",
    "kernel_died": "the Python kernel died (os._exit, a crash, or too much memory); it was restarted without that cell",
    "kernel_killed": "the kernel, or the grader's process running your notebook, was killed by a signal",
    "memory_limit": "a cell ran out of memory",
    "output_truncated": "your notebook printed too much; the extra output was dropped",
    "grader_error": "the grader could not run your notebook; your instructor will look at it",
}
CSV_FIXED = ("total", "max_total", "status", "manual_pending", "sandbox")
#: The ``sandbox`` column of a submission graded without one: loud on purpose.
UNSANDBOXED = "NONE-not-isolated"


@dataclass
class SubmissionGrade:
    """One CSV row plus the notes that go into the student's feedback file."""

    student: str
    points: dict[str, float | None]  # None: manual, pending
    statuses: list[str]
    manual_pending: float = 0.0
    question_notes: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sandbox: str = "bwrap"

    @property
    def total(self) -> float:
        return round(sum(p for p in self.points.values() if p is not None), 2)

    @property
    def status(self) -> str:
        ordered = [s for s in STATUS_ORDER if s in self.statuses]
        return ";".join(ordered) if ordered else "ok"


def fmt_points(x: float | None) -> str:
    """Points as the CSV shows them: 2 decimals at most, no trailing zeros, "" for None."""
    if x is None:
        return ""
    text = f"{round(x, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def render_feedback(grade: SubmissionGrade, assignment: Assignment) -> str:
    """Markdown feedback for one student: points, failed cases (expected vs got), statuses."""
    auto_max = sum(q.points for q in assignment.questions if q.kind == "auto")
    out = io.StringIO()
    out.write(f"# Feedback: {grade.student}\n\n")
    out.write(f"Assignment: `{assignment.source.name.replace('_source', '')}`\n\n")
    out.write(f"Automatically graded: **{fmt_points(grade.total)} / {fmt_points(auto_max)}** points")
    if grade.manual_pending:
        out.write(f" (+ {fmt_points(grade.manual_pending)} graded by hand)")
    out.write("\n\n")
    out.write(f"Status: `{grade.status}`")
    for status in grade.status.split(";"):
        out.write(f"\n- `{status}`: {STATUS_HELP[status]}")
    out.write("\n")
    for q in assignment.questions:
        got = grade.points.get(q.qid)
        shown = "pending" if got is None else fmt_points(got)
        out.write(f"\n## {q.qid}: {shown} / {fmt_points(q.points)}\n\n")
        for note in grade.question_notes.get(q.qid, []):
            out.write(f"- {note}\n")
    if grade.notes:
        out.write("\n## Notes\n\n")
        for note in grade.notes:
            out.write(f"- {note}\n")
    return out.getvalue()


def csv_text(grades: list[SubmissionGrade], assignment: Assignment) -> str:
    """The CSV: ``student, q1, q2, …, total, max_total, status, manual_pending, sandbox``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    qids = [q.qid for q in assignment.questions]
    writer.writerow(["student", *qids, *CSV_FIXED])
    for g in sorted(grades, key=lambda g: g.student):
        writer.writerow(
            [g.student, *(fmt_points(g.points.get(q)) for q in qids), fmt_points(g.total),
             fmt_points(assignment.max_total), g.status, fmt_points(g.manual_pending),
             g.sandbox if g.sandbox != "none" else UNSANDBOXED]
        )
    return buffer.getvalue()


def print_progress(grade: SubmissionGrade) -> None:
    """Default progress line on stderr."""
    print(f"{grade.student}: {fmt_points(grade.total)} points, {grade.status} ({grade.seconds:.1f} s)",
          file=sys.stderr)
