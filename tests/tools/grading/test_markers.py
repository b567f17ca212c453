"""Tests for vit_course.tools.grading.markers: source notebook → student and solution versions."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _grading_exercise import MANUAL_ANSWER, Q1_CODE, Q1_SOLUTION, Q2_SOLUTION, by_id, cell_code, meta

from vit_course.tools.grading.markers import (
    default_output_paths,
    graded_cells,
    make_versions,
    versions_out_of_sync,
)

ROOT = Path(__file__).resolve().parents[3]


def test_student_version_stubs_solutions_and_drops_hidden_tests(exercise):
    student = nbformat.read(exercise["student"], as_version=4)
    text = exercise["student"].read_text()
    cells = by_id(student)
    assert set(cells) == {"q1-code", "q1-check", "q2-code", "q2-check", "q3-answer"}
    assert "HIDDEN TESTS" not in text and "autograde" not in text
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    for line in (Q1_SOLUTION + "\n" + Q2_SOLUTION).splitlines():
        assert line.strip() not in text, f"solution line leaked: {line!r}"
    assert MANUAL_ANSWER not in text
    assert cell_code(cells["q1-code"]) == (
        'def deletion_auc(curve):\n    """Area under the curve, trapezoid rule, x in [0, 1]."""\n'
        '    raise NotImplementedError("q1: write your code here")'
    )
    assert cell_code(cells["q2-code"]).startswith("def grid_pointing_score(attribution, target_tile):\n")
    assert cell_code(cells["q2-code"]).endswith('    raise NotImplementedError("q2: write your code here")')
    assert "*Write your answer here.*" in cell_code(cells["q3-answer"])
    assert cells["q1-code"].metadata["deletable"] is False
    assert cells["q1-check"].metadata["editable"] is False
    code_cells = [c for c in student.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code_cells)
    assert student.metadata["vit_course"]["version"] == "student"


def test_solution_version_keeps_code_and_hidden_tests_without_markers(exercise):
    solution = nbformat.read(exercise["solution"], as_version=4)
    cells = by_id(solution)
    assert cell_code(cells["q1-code"]) == Q1_CODE.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", "")
    assert "q1-hidden" in cells and "q2-hidden" in cells
    assert "BEGIN SOLUTION" not in exercise["solution"].read_text()
    assert MANUAL_ANSWER in cell_code(cells["q3-answer"])


def test_default_output_paths_follow_the_convention(tmp_path):
    student, solution = default_output_paths(tmp_path / "notebooks" / "source" / "08_evaluation_source.ipynb")
    assert student == tmp_path / "notebooks" / "08_evaluation.ipynb"
    assert solution == tmp_path / "notebooks" / "solutions" / "08_evaluation_solution.ipynb"
    with pytest.raises(ValueError, match="_source.ipynb"):
        default_output_paths(tmp_path / "08_evaluation.ipynb")


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
    nb = v4.new_notebook(cells=[v4.new_code_cell(code, metadata=meta("q4-code", "solution", "q4"))])
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
        ("x = 1\n# BEGIN SOLUTION\nx = 2", meta("a", "solution", "q1"), "without an END"),
        ("# END SOLUTION\nx = 2", meta("a", "solution", "q1"), "without a BEGIN"),
        ("# BEGIN SOLUTION\nx = 2\n# END SOLUTION", {}, "no metadata"),
        ("# HIDDEN TESTS\nassert True", meta("a", "check", "q1"), "must agree"),
        ("assert True", meta("a", "hidden_test", "q1", 1), "must agree"),
        ("# HIDDEN TESTS\nassert True", meta("a", "hidden_test", "q1"), "points > 0"),
        ("x = 1", meta("a", "solution", "q1"), "needs a '# BEGIN SOLUTION'"),
        ("x = 1", {"vit_course": {"id": "a", "kind": "answer", "question": "q1"}}, "kind must be one of"),
        ("x = 1", meta("a b", "check", "q1"), "id must be"),
    ],
)
def test_malformed_sources_are_rejected_with_a_fix(source, meta, match):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata=meta)])
    with pytest.raises(ValueError, match=match):
        make_versions(nb)


def test_duplicate_ids_and_mixed_question_kinds_are_rejected():
    v4 = nbformat.v4
    dup = v4.new_notebook(cells=[v4.new_code_cell("x", metadata=meta("a", "check", "q1")),
                                 v4.new_code_cell("y", metadata=meta("a", "check", "q1"))])
    with pytest.raises(ValueError, match="already used"):
        graded_cells(dup)
    mixed = v4.new_notebook(cells=[v4.new_code_cell("# HIDDEN TESTS\n1", metadata=meta("a", "hidden_test", "q1", 1)),
                                   v4.new_markdown_cell("answer", metadata=meta("b", "manual", "q1", 1))])
    with pytest.raises(ValueError, match="both hidden_test and manual"):
        graded_cells(mixed)
