"""File writing shared by the grading tools."""

from __future__ import annotations

from pathlib import Path

from vit_course.tools.files import atomic_write_text, check_writable


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines untranslated) to ``path`` through a temporary file and
    a rename, creating the parent folder; readers never see a half-written file, and a
    failed write leaves nothing behind (:func:`vit_course.tools.files.atomic_write`)."""
    atomic_write_text(path, text)


def check_outputs(out: Path, feedback_dir: Path) -> None:
    """Refuse, before any grading, a CSV path or feedback folder that cannot be written
    (an existing folder as ``out``, a file in the way, no write permission)."""
    check_writable(out, "grades.csv")
    if feedback_dir.exists() and not feedback_dir.is_dir():
        raise NotADirectoryError(f"the feedback folder {feedback_dir} is a file; remove it or "
                                 "pass --feedback-dir with another folder.")
    check_writable(feedback_dir / "student.md")
