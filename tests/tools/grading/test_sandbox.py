"""Tests for the pieces of compute-inside / compare-outside that need no kernel: plain data
across the wall (``plain``), the grader's comparison (``compare``) and what a bubblewrap
sandbox shows (``sandbox``, one short ``python -c`` inside it)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _grading_exercise import Q1_CODE, solution_fn

import vit_course
from vit_course.grading.__main__ import main as grading_cli
from vit_course.tools.grading import plain, sandbox
from vit_course.tools.grading.compare import grade_question
from vit_course.tools.grading.executor import TOKEN_ENV
from vit_course.tools.grading.questions import get_question
from vit_course.tools.grading.reference import grading_plan


@dataclass
class _Result:
    name: str
    scores: dict


def test_plain_round_trip_keeps_values_dtypes_and_shapes():
    value = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int16),
             "c": [1, 2.5, float("nan"), "x", None, True], "d": (torch.tensor(3.0),),
             "e": _Result("r", {"m": torch.tensor([0.5], dtype=torch.bfloat16)})}
    back = plain.loads(json.dumps(plain.to_plain(value)), as_torch=True)
    assert torch.equal(back["a"], value["a"]) and back["a"].dtype == torch.float32
    assert back["b"].dtype == np.int16 and back["b"].tolist() == [1, 2]
    assert back["c"][:2] == [1, 2.5] and math.isnan(back["c"][2]) and back["c"][3:] == ["x", None, True]
    assert float(back["d"][0]) == 3.0
    assert back["e"] == {"name": "r", "scores": {"m": back["e"]["scores"]["m"]}}  # a dataclass → its fields
    assert float(back["e"]["scores"]["m"]) == 0.5


@pytest.mark.parametrize("value, words", [
    (lambda: 1, "function cannot be graded"),
    ({1: 2}, "keys must be strings"),
    (np.array(["a"]), "dtype <U1 cannot be graded"),
    (object(), "object cannot be graded"),
])
def test_plain_refuses_what_is_not_data(value, words):
    with pytest.raises(TypeError, match=words):
        plain.to_plain(value)


@pytest.mark.parametrize("bad", [
    {"__array__": "array", "dtype": "|O", "shape": [1], "data": ""},  # objects: never unpickled
    {"__array__": "array", "dtype": "<f8", "shape": [4], "data": "AAAA"},  # bytes do not match the shape
    {"__array__": "array", "dtype": "<f8", "shape": [-1], "data": ""},
])
def test_plain_refuses_malformed_arrays(bad):
    with pytest.raises((ValueError, TypeError)):
        plain.from_plain(bad)


def _entry(qid):
    calls, cases, shared = grading_plan(qid)
    return {"calls": plain.to_plain(calls), "cases": plain.from_plain(plain.to_plain(cases)), "shared": shared,
            "inputs": [plain.from_plain(plain.to_plain(c)) for c in calls]}


def _outputs(entry, fn):
    calls = [{"value": plain.to_plain(fn(*[torch.as_tensor(a) if isinstance(a, np.ndarray) else a
                                            for a in call["args"]]))} for call in entry["inputs"]]
    return json.dumps({"question": "q1", "calls": calls})


def test_compare_outside_scores_outputs_and_names_the_misconception():
    entry = _entry("q1")
    assert len(entry["cases"]) == len(get_question("q1").hidden_cases())  # hidden cases only count
    good = grade_question("q1", entry, _outputs(entry, solution_fn(Q1_CODE, "deletion_auc")))
    assert good["fraction"] == 1.0 and good["n_passed"] == good["n_total"]
    wrong = grade_question("q1", entry, _outputs(entry, lambda c: float(torch.as_tensor(c).double().mean())))
    assert wrong["fraction"] < 0.5
    assert any("did you average the points instead of integrating?" in c["message"] for c in wrong["cases"])
    forged = grade_question("q1", entry, json.dumps({"calls": [{"value": 0.123456}] * 64}))
    assert forged["fraction"] == 0.0
    stub = grade_question("q1", entry, json.dumps({"calls": [{"not_implemented": True}]}))
    assert stub["not_implemented"] and stub["fraction"] == 0.0
    for text in (None, "not json", json.dumps({"calls": "x"}), json.dumps([1])):
        result = grade_question("q1", entry, text)
        assert result["fraction"] == 0.0 and all(not c["passed"] for c in result["cases"])


def _bwrap_or_skip():
    problem = sandbox.bwrap_problem()
    if problem:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"the grading sandbox cannot run here: {problem}")


def test_the_sandbox_shows_the_course_and_hides_the_rest(tmp_path, monkeypatch):
    _bwrap_or_skip()
    monkeypatch.setenv("GRADER_SECRET_TOKEN", "not for students")
    job, secret = tmp_path / "job", tmp_path / "secret.ipynb"
    (job / "work").mkdir(parents=True)
    secret.write_text("solutions")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    package = Path(vit_course.__file__).resolve().parent
    hidden_in_package = package / "tools" / "grading" / "reference.py"
    probe = f"""
import json, os, socket, subprocess
out = {{}}
out["reference"] = open({str(hidden_in_package)!r}).read()
out["secret"] = os.path.exists({str(secret)!r})
out["checkout"] = sorted(os.listdir({str(package.parent)!r}))
out["pid"] = os.getpid()
out["env"] = sorted(os.environ)
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    out["network"] = True
except OSError:
    out["network"] = False
try:
    open({str(package / "x")!r}, "w")
    out["package_writable"] = True
except OSError:
    out["package_writable"] = False
open("/grading/written", "w").write("ok")
import torch, vit_course.metrics
print(json.dumps(out))
"""
    env = sandbox.sandbox_env(TOKEN_ENV, "t")
    argv = sandbox.bwrap_argv(job, empty, env, hide=[secret]) + [sys.executable, "-c", probe]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["reference"] == "" and not out["secret"] and not out["network"] and not out["package_writable"]
    assert "tests" not in out["checkout"] and "notebooks" not in out["checkout"] and ".git" not in out["checkout"]
    assert out["pid"] < 10  # its own PID namespace
    assert TOKEN_ENV in out["env"] and "HOME" in out["env"] and not any("SECRET" in k for k in out["env"])
    assert (job / "written").read_text() == "ok"


def test_sandbox_none_is_loud_on_the_terminal_and_in_the_csv(exercise, tmp_path, capsys):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "broken.ipynb").write_text("{", encoding="utf-8")  # graded without starting a kernel
    out = tmp_path / "g.csv"
    assert grading_cli(["grade", str(subs), "--source", str(exercise["source"]), "--out", str(out),
                        "--sandbox", "none"]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING: grading WITHOUT a sandbox") == 2
    with open(out, newline="") as fh:
        assert [r["sandbox"] for r in csv.DictReader(fh)] == ["NONE-not-isolated"]
    assert grading_cli(["grade", str(subs), "--source", str(exercise["source"]), "--out", str(out),
                        "--sandbox", "bwrap", "--cwd", str(tmp_path)]) == 2
    assert "--cwd needs --sandbox none" in capsys.readouterr().err


def test_files_written_in_the_sandbox_are_read_as_untrusted(tmp_path):
    from vit_course.tools.grading.executor import read_untrusted

    secret, good = tmp_path / "secret", tmp_path / "q1.json"
    secret.write_text("the instructor's key")
    good.write_text('{"calls": []}')
    (tmp_path / "link.json").symlink_to(secret)  # a link made inside the sandbox, followed outside
    (tmp_path / "dir.json").mkdir()
    assert read_untrusted(good, 1 << 20) == '{"calls": []}'
    assert read_untrusted(tmp_path / "link.json", 1 << 20) is None
    assert read_untrusted(tmp_path / "dir.json", 1 << 20) is None
    assert read_untrusted(good, 4) is None  # over the size limit: not read at all
    assert read_untrusted(tmp_path / "missing.json", 1 << 20) is None


@pytest.mark.parametrize("mode", ["none", "bwrap"])
def test_kernels_get_absolute_course_folders_and_their_share_of_threads(mode, tmp_path, monkeypatch):
    """A relative VIT_COURSE_ARTIFACTS (as `make test` sets it) must reach the kernel, which works
    in another folder, as the same folder; else every submission retrains the synthetic ViT."""
    if mode == "bwrap":
        _bwrap_or_skip()
    import nbformat

    from vit_course.tools.grading.executor import execute_notebook

    (tmp_path / "arts").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIT_COURSE_ARTIFACTS", "arts")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, torch\nprint(os.environ['VIT_COURSE_ARTIFACTS'], torch.get_num_threads())")])
    executed = tmp_path / "executed.ipynb"
    report = execute_notebook(nb, sandbox=mode, executed_path=executed, threads=1, timeout=120)
    assert report.finished, report.log_tail
    text = nbformat.read(executed, as_version=4).cells[0].outputs[0]["text"].split()
    assert text == [str((tmp_path / "arts").resolve()), "1"]
