"""The reference process: hidden inputs and expected values, computed once per batch.

``python -m vit_course.tools.grading.expected OUT.json QID...`` imports the reference
solution (``reference``), builds each question's plan (``reference.grading_plan``) and writes
it as plain data. ``load_plan`` (grader side) starts that process and reads the file: the
grader keeps the expected values and hands only the inputs (``kernel_inputs``) to each
sandboxed kernel. Questions without a plan are listed under ``"unknown"``: their hidden
cells are graded the old way (points when the cell runs without error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from vit_course.tools.files import owned_tempdir
from vit_course.tools.grading.plain import from_plain, to_plain


class ReferenceFailed(RuntimeError):
    """The reference solution could not build the hidden tests: no grade would be right."""


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print("usage: python -m vit_course.tools.grading.expected OUT.json QID...", file=sys.stderr)
        return 2
    from vit_course.tools.grading import reference

    plan: dict = {"questions": {}, "unknown": []}
    for qid in argv[1:]:
        built = reference.grading_plan(qid)
        if built is None:
            plan["unknown"].append(qid)
            continue
        calls, cases, shared = built
        plan["questions"][qid] = {"calls": to_plain(calls), "cases": to_plain(cases), "shared": to_plain(shared)}
    out = Path(argv[0])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(plan), encoding="utf-8")
    os.replace(tmp, out)
    return 0


def load_plan(qids: list[str], timeout: float = 900.0) -> dict:
    """Run the reference process for ``qids``; ``{"questions": {qid: plan}, "unknown": [...]}``.

    Each plan holds ``calls`` (plain data, as the kernel gets them), ``cases`` and ``shared``
    (decoded to NumPy). Raises ``ReferenceFailed`` with the process's error when it fails.
    """
    from vit_course.tools.grading.executor import _kill_group, start_tracked, untrack

    with owned_tempdir("vit-expected-") as tmp:
        out, token = Path(tmp) / "plan.json", f"reference-{uuid.uuid4().hex}"
        proc = start_tracked(token, [sys.executable, "-m", "vit_course.tools.grading.expected", str(out), *qids],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:                                 # tracked: stop_all (Ctrl-C, SIGTERM) kills it too
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            _, stderr = proc.communicate()
            stderr += f"\n(the reference process ran out of its {timeout:.0f} s)"
        finally:
            untrack(token)
        if proc.returncode != 0 or not out.is_file():
            raise ReferenceFailed(f"the reference solution failed to build the hidden tests:\n{stderr[-3000:]}")
        plan = json.loads(out.read_text(encoding="utf-8"))
    for entry in plan["questions"].values():
        entry["cases"] = from_plain(entry["cases"])
        entry["shared"] = from_plain(entry["shared"])
        entry["inputs"] = [from_plain(call) for call in entry["calls"]]
    return plan


def kernel_inputs(plan: dict, call_time_limit: float) -> str:
    """The inputs file a grading kernel gets: hidden inputs only, no expected value."""
    questions = {qid: entry["calls"] for qid, entry in plan["questions"].items()}
    return json.dumps({"questions": questions, "call_time_limit": call_time_limit})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
