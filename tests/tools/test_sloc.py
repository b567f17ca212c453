"""vit_course.tools.sloc: the counter counts what it says, and the package keeps the measures
of issue 10 (a budget of lines of code a student reads, MAX_COURSE_LOC, no module over 350, no import
cycle, no name defined in two modules for the same job)."""

from __future__ import annotations

from vit_course.tools.sloc import MAX_COURSE_LOC, MAX_MODULE_LOC, count_loc, find_cycles, measure


def test_count_loc_skips_blanks_comments_and_docstrings():
    source = '''"""Module docstring,
over two lines."""

import os  # a comment counts with its code

# a comment alone


def f(x):
    """Docstring."""
    s = """a string that is not a docstring
    counts"""
    return (x +
            1)


class C:
    """Doc."""
    y = 1
'''
    # import, def f, s = (2 lines), return (2 lines), class C, y = 1
    assert count_loc(source) == 8


def test_find_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_the_package_keeps_its_measures():
    m = measure()
    assert m["course_loc"] <= MAX_COURSE_LOC, m["course_loc"]
    assert m["over_limit"] == {}, f"modules over {MAX_MODULE_LOC} lines of code: {m['over_limit']}"
    assert m["import_cycles"] == []
    assert m["defined_twice"] == {}
    assert "vit_course.explain.rollout" in m["modules"] and m["tools_loc"] > 0
