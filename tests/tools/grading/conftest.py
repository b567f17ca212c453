"""The exercise notebook of ``_grading_exercise``, generated once with the command line into
a temporary folder: ``exercise["source"]``, ``["student"]``, ``["solution"]``, ``["root"]``."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from _grading_exercise import build_source

PY = sys.executable


@pytest.fixture(scope="session")
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
