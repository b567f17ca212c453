"""Tests for vit_course.tools.grading.grader and assignment: notebook 08's assignment (the
batch itself is tested in test_batch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vit_course.grading import get_question
from vit_course.tools.grading.assignment import load_assignment
from vit_course.tools.grading.markers import render_versions

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
