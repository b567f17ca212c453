"""Benchmark: grading throughput with and without the bubblewrap sandbox (issue 12).

Grades a folder of ``--n`` copies of notebook 08's solution version (each a full, correct
submission: the notebook's own cells, then the hidden tests) with ``--jobs`` in parallel,
once per sandbox mode (``bwrap``, ``none``), in the quick profile, and reports wall time per
batch, seconds per submission, the sandbox's overhead and the time 100 submissions would
take (measured when ``--n 100``, else extrapolated linearly from the measured batch: said so
in the report). The modes alternate round by round (``--rounds``), so a change in the
machine's load hits both alike. The reference process (hidden inputs and expected values)
runs once per batch: it is timed on its own and counted once in the 100-submission figure.

A second, small batch measures how long a submission that never finishes holds its slot:
one copy with an endless loop in its first cell, graded with ``--loop-timeout``.

Needs the synthetic ViT in the artifacts folder (run notebook 08 once, quick profile) and
``bwrap``. Usage::

    VIT_COURSE_PROFILE=quick VIT_COURSE_ARTIFACTS=.cache/test/artifacts \\
        python benchmarks/bench_grading.py [--n 100] [--jobs 2] [--modes bwrap,none]
        [--rounds 1] [--loop-timeout 60] [--no-write]

Updates its section ("Grading throughput") of docs/BENCHMARKS.md; ``--no-write`` only prints it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
from _common import ROOT, fmt_s, load_average, load_note, publish

from vit_course.tools.grading.assignment import load_assignment
from vit_course.tools.grading.expected import load_plan
from vit_course.tools.grading.grader import GradeOptions, grade_folder

SOURCE = ROOT / "notebooks" / "source" / "08_evaluation_source.ipynb"
SOLUTION = ROOT / "notebooks" / "solutions" / "08_evaluation_solution.ipynb"


def _batch(folder: Path, n: int, loop: bool = False) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        if loop:
            nb = nbformat.read(SOLUTION, as_version=4)
            nb.cells.insert(0, nbformat.v4.new_code_cell("while True:\n    pass"))
            nbformat.write(nb, str(folder / f"loop{i:03d}.ipynb"))
        else:
            shutil.copy(SOLUTION, folder / f"s{i:03d}.ipynb")


def _grade(folder: Path, out: Path, mode: str, jobs: int, timeout: float) -> tuple[float, list]:
    options = GradeOptions(sandbox=mode, timeout=timeout)
    start = time.perf_counter()
    grades = grade_folder(folder, SOURCE, out, jobs=jobs, options=options)
    return time.perf_counter() - start, grades


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="submissions per mode (default 100)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--modes", default="bwrap,none")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --n submissions per mode, alternating")
    parser.add_argument("--loop-timeout", type=float, default=60.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("VIT_COURSE_PROFILE", "quick")
    modes = args.modes.split(",")
    rows, loads = [], [load_average()]
    results: dict[str, float] = {m: 0.0 for m in modes}
    grades_of: dict[str, list] = {m: [] for m in modes}
    start = time.perf_counter()
    load_plan([q.qid for q in load_assignment(SOURCE).questions if q.kind == "auto"])
    plan_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        root = Path(tmp)
        _batch(root / "subs", args.n)
        for r in range(args.rounds):
            for mode in modes:
                seconds, grades = _grade(root / "subs", root / f"{mode}{r}.csv", mode, args.jobs, 300.0)
                loads.append(load_average())
                results[mode] += seconds - plan_s
                grades_of[mode] += grades
        n = args.n * args.rounds
        for mode in modes:
            grades = grades_of[mode]
            per = sorted(g.seconds for g in grades)
            statuses = sorted({g.status for g in grades})
            rows.append(f"| {mode} | {n} | {fmt_s(results[mode])} | {per[len(per) // 2]:.1f} s | "
                        f"{fmt_s(plan_s + results[mode] / n * 100)} | {sorted({g.total for g in grades})} / "
                        f"{', '.join(statuses)} |")
        _batch(root / "loop", 1, loop=True)
        loop_rows = []
        for mode in modes:
            seconds, grades = _grade(root / "loop", root / f"loop-{mode}.csv", mode, 1, args.loop_timeout)
            loop_rows.append(f"| {mode} | {args.loop_timeout:g} s | {grades[0].seconds:.1f} s | {grades[0].status} |")
    overhead = ""
    if "bwrap" in results and "none" in results:
        overhead = (f"Sandbox overhead: bwrap / none = {results['bwrap'] / results['none']:.3f} "
                    f"({(results['bwrap'] / results['none'] - 1) * 100:+.1f} %).")
    n = args.n * args.rounds
    measured = ("measured" if n == 100 and args.rounds == 1 else
                f"extrapolated linearly from {n} submissions (not measured): reference process once + 100 x "
                "(batch time without it) / submissions")
    text = f"""## Grading throughput: sandbox vs none

`python benchmarks/bench_grading.py --n {args.n} --rounds {args.rounds} --jobs {args.jobs}`: {args.n} copies of
notebook 08's solution version (quick profile; each runs the notebook's cells, then the hidden
tests), graded with `--jobs {args.jobs}` per sandbox mode, {args.rounds} round(s), modes alternating, on
a {os.cpu_count()}-core machine. The reference process (hidden inputs and expected values, once per
batch) took {fmt_s(plan_s)}; batch times below leave it out. The "100 submissions" column is {measured}. 1-minute load averages during the run:
{", ".join(f"{x:.1f}" for x in loads)}. {load_note(*loads)}

| sandbox | submissions | wall time (sum of batches) | median per submission | 100 submissions | points / status |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{overhead} The goal of issue 12 is 100 submissions in at most 20 min on this 2-core machine
and a sandbox cost of at most 10 %.

A submission that never ends (an endless loop in its first cell) holds its slot for:

| sandbox | `--timeout` | seconds the submission took | status |
|---|---|---|---|
{chr(10).join(loop_rows)}

(its time limit covers the student's cells; the hidden tests then run with their own
`--test-timeout` each, here on the functions defined before the loop was cut short).
"""
    publish(text, args.no_write)


if __name__ == "__main__":
    main()
