"""Tests for the command line (``python -m vit_course.grading``, vit_course.tools.grading.cli)."""

from __future__ import annotations

from vit_course.grading.__main__ import main as grading_cli
from vit_course.tools.grading.markers import render_versions, versions_out_of_sync


def test_generate_is_deterministic_and_check_mode_detects_drift(exercise, tmp_path, capsys):
    first = render_versions(exercise["source"])
    assert render_versions(exercise["source"]) == first
    assert exercise["student"].read_text(encoding="utf-8") == first[0]
    assert versions_out_of_sync(exercise["source"], exercise["student"], exercise["solution"]) == []
    args = ["generate", str(exercise["source"]), "--check", "--student", str(exercise["student"]), "--solution"]
    assert grading_cli(args + [str(exercise["solution"])]) == 0
    drifted = tmp_path / "drifted.ipynb"
    drifted.write_text(exercise["solution"].read_text().replace("steps = curve", "steps  = curve"))
    capsys.readouterr()
    assert grading_cli(args + [str(drifted)]) == 1
    err = capsys.readouterr().err
    assert "out of sync" in err and str(drifted) in err
    assert grading_cli(args + [str(tmp_path / "missing.ipynb")]) == 1


def test_generate_cli_uses_conventional_paths(exercise, tmp_path, capsys):
    source = tmp_path / "notebooks" / "source" / "ex_source.ipynb"
    source.parent.mkdir(parents=True)
    source.write_bytes(exercise["source"].read_bytes())
    assert grading_cli(["generate", str(source)]) == 0
    assert (tmp_path / "notebooks" / "ex.ipynb").read_bytes() == exercise["student"].read_bytes()
    assert (tmp_path / "notebooks" / "solutions" / "ex_solution.ipynb").read_bytes() == exercise["solution"].read_bytes()
    assert grading_cli(["generate", str(source), "--check"]) == 0


def test_grade_rejects_bad_arguments(exercise, tmp_path, capsys):
    base = ["grade", str(tmp_path / "nope"), "--source", str(exercise["source"]), "--out", str(tmp_path / "g.csv")]
    assert grading_cli(base) == 2
    assert "must be a folder" in capsys.readouterr().err
    assert grading_cli(base + ["--timeout", "0"]) == 2
    assert "must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()
