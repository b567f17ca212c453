"""Tests for the command line (``python -m vit_course.grading``, vit_course.tools.grading.cli)."""

from __future__ import annotations

import pytest

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


# --------------------------------------------------------------------------- bad --out (issue 13)
import errno  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402

from vit_course.tools.grading import grader  # noqa: E402


def _tree(root):
    return {str(p.relative_to(root)) for p in root.rglob("*")}


OUT_ROWS = [  # (id, --out relative to tmp, extra args, message that names the problem and fix)
    ("out_is_a_folder", "taken", [], r"taken: it is an existing folder; pass a file path, e\.g\. .*grades\.csv"),
    ("out_under_a_file", "afile/grades.csv", [], r"afile is a file, not a folder; choose another path"),
    ("out_deep_under_a_file", "afile/x/y/grades.csv", [], r"afile is a file, not a folder"),
    ("feedback_dir_is_a_file", "g.csv", ["--feedback-dir", "afile"],
     r"feedback folder .*afile is a file; remove it or pass --feedback-dir"),
    ("feedback_dir_under_a_file", "g.csv", ["--feedback-dir", "afile/fb"], r"afile is a file, not a folder"),
]


@pytest.mark.parametrize("row_id, out, extra, pattern", OUT_ROWS, ids=[r[0] for r in OUT_ROWS])
def test_grade_checks_out_before_grading(row_id, out, extra, pattern, exercise, tmp_path, capsys,
                                         monkeypatch):
    import re

    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "alice.ipynb").write_text(exercise["student"].read_text())
    (tmp_path / "taken").mkdir()
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    graded = []
    monkeypatch.setattr(grader, "grade_submission", lambda *a, **k: graded.append(a))
    extra = [str(tmp_path / e) if i % 2 else e for i, e in enumerate(extra)]
    rc = grading_cli(["grade", str(subs), "--source", str(exercise["source"]),
                      "--out", str(tmp_path / out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(pattern, err), err
    assert graded == [], "the batch was graded before --out was checked"
    assert _tree(tmp_path) == before, "something was left behind"


def test_grade_csv_write_failure_leaves_nothing(exercise, tmp_path, monkeypatch):
    """The CSV is written through a temporary file; if the rename fails nothing is left."""
    from vit_course.tools import files

    def no_replace(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.os, "replace", no_replace)
    empty = tmp_path / "subs"
    empty.mkdir()
    before = _tree(tmp_path)
    with pytest.raises(PermissionError, match=r"could not save .*g\.csv.*nothing was written"):
        grader.grade_folder(empty, exercise["source"], tmp_path / "out" / "g.csv")
    assert _tree(tmp_path) == before and not any(".tmp" in n or ".partial" in n for n in _tree(tmp_path))
    assert os.listdir(empty) == []


@pytest.mark.parametrize("during", ["vit-expected-", "vit-grade-"])
def test_sigterm_stops_the_batch_and_leaves_nothing_behind(during, exercise, tmp_path):
    """``kill <grader>`` while the reference process runs, or a kernel: every process it
    started and every temporary folder goes, no CSV is written, and no kernel starts after."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import nbformat

    subs, tmp = tmp_path / "subs", tmp_path / "tmp"
    subs.mkdir()
    tmp.mkdir()
    nb = nbformat.read(exercise["student"], as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import time\nwhile True:\n    time.sleep(0.1)"))
    nbformat.write(nb, str(subs / "loop.ipynb"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vit_course.grading", "grade", str(subs), "--source", str(exercise["source"]),
         "--out", str(tmp_path / "g.csv"), "--timeout", "300"],
        env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running() -> list[int]:  # processes whose command line names a folder under tmp
        found = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and str(tmp).encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                    found.append(int(entry))
            except OSError:
                pass
        return found

    try:
        deadline = time.monotonic() + 240
        while not (any(p.name.startswith(during) for p in tmp.iterdir()) and running()) \
                and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running(), f"no {during}* run started (grader exit code {proc.poll()})"
        time.sleep(0.5 if during == "vit-expected-" else 3)     # the kernel reaches its endless loop
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:                                   # a failing test must not leave its grader running
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    assert not (tmp_path / "g.csv").exists(), "no CSV from a stopped batch"
    assert not list((tmp_path / "g_feedback").glob("*.md")), "no feedback on a run the stop cut short"
    time.sleep(1)
    assert running() == [], "a process of the stopped submission is still running"
    assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")] == []
