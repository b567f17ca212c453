"""Temporary folders that name their owner, and the sweep that removes a killed owner's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vit_course.tools import files
from vit_course.tools.files import OWNER_FILE, owned_tempdir, sweep_orphans


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_owned_tempdir_names_this_process_and_goes_on_exit(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with owned_tempdir("vit-grade-") as tmp:
        pid = Path(tmp, OWNER_FILE).read_text().split()[0]
        assert int(pid) == os.getpid()
        assert sweep_orphans(("vit-grade-",)) == [] and Path(tmp).is_dir()   # its owner runs
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_the_folders_of_dead_owners_only(tmp_path):
    def folder(name: str, owner: str | None) -> Path:
        path = tmp_path / name
        (path / "job").mkdir(parents=True)
        (path / "job" / "events.jsonl").write_text("{}")
        if owner is not None:
            (path / OWNER_FILE).write_text(owner)
        return path

    dead = folder("vit-grade-dead", f"{_dead_pid()} 123\n")
    reused = folder("vit-expected-reused", f"{os.getpid()} 1\n")     # our pid, another start time
    alive = folder("vit-grade-alive", f"{os.getpid()} {files._start_time(os.getpid())}\n")
    anonymous = folder("vit-grade-old", None)                          # no owner file: not ours to judge
    other = folder("something-else", f"{_dead_pid()} 1\n")
    assert sorted(sweep_orphans(("vit-grade-", "vit-expected-"), tmp_path)) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert alive.is_dir() and anonymous.is_dir() and other.is_dir()


def test_grading_a_folder_sweeps_a_killed_graders_folders_first(tmp_path, monkeypatch):
    from vit_course.tools.grading import grader
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    stale = tmp_path / "vit-grade-killed"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(f"{_dead_pid()} 5\n")
    subs = tmp_path / "subs"
    subs.mkdir()
    monkeypatch.setattr(grader, "load_assignment", lambda source: None)   # no notebook is graded
    monkeypatch.setattr(grader, "_Plan", lambda assignment: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        grader.grade_folder(subs, tmp_path / "source.ipynb", tmp_path / "out" / "g.csv")
    assert not stale.exists()


def test_without_proc_a_running_owner_is_kept_and_a_dead_one_swept(tmp_path, monkeypatch):
    """Where /proc is missing (macOS), the start time is unknown: a live pid must still count
    as the owner (reading a missing /proc file must not look like a dead process)."""
    real_isdir = os.path.isdir
    monkeypatch.setattr(files.os.path, "isdir", lambda p: False if p == "/proc/self" else real_isdir(p))
    assert files._start_time(os.getpid()) == "" and files._start_time(_dead_pid()) is None
    alive, dead = tmp_path / "vit-grade-a", tmp_path / "vit-grade-d"
    for path, pid in ((alive, os.getpid()), (dead, _dead_pid())):
        path.mkdir()
        (path / OWNER_FILE).write_text(f"{pid} 12345\n")
    assert sweep_orphans(("vit-grade-",), tmp_path) == [dead] and alive.is_dir()
