"""Tests for vit_course.tools.grading.questions: the registry and the public-case comparisons."""

from __future__ import annotations

import math

import pytest

from vit_course.grading import Case, check, register_question
from vit_course.tools.grading.questions import compare_rows, get_question, set_hidden_cases, unregister_question


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


def test_hidden_cases_are_attached_to_a_registered_question():
    register_question("t_hidden", Case("public", (2,), 4))
    try:
        question = get_question("t_hidden")
        assert question.hidden_cases() == []
        assert set_hidden_cases("t_hidden", lambda: [Case("hidden", (3,), 9)]) is question
        assert [c.name for c in question.hidden_cases()] == ["hidden"]
        set_hidden_cases("t_hidden", None)
        assert question.hidden_cases() == []
        with pytest.raises(TypeError, match="zero-argument callable"):
            set_hidden_cases("t_hidden", [Case("not lazy", (3,), 9)])
    finally:
        unregister_question("t_hidden")
    with pytest.raises(ValueError, match="unknown question 't_hidden'"):
        set_hidden_cases("t_hidden", lambda: [])


def test_compare_rows_messages():
    expected = [{"metric": "m", "method": "a", "mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 3}]
    assert compare_rows(expected, expected) is None
    assert "expected a list" in compare_rows({"m": 1}, expected)
    assert "missing keys ['n']" in compare_rows([{k: v for k, v in expected[0].items() if k != "n"}], expected)
    assert "expected lo 0.4, got 0.3" in compare_rows([{**expected[0], "lo": 0.3}], expected)
    nan = [{**expected[0], "mean": math.nan, "lo": math.nan, "hi": math.nan}]
    assert compare_rows(nan, nan) is None
