"""Command line: ``python -m vit_course.grading {generate,grade} ...`` (see docs/GRADING.md)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from vit_course.tools.grading.markers import default_output_paths, generate_versions, versions_out_of_sync


def _generate(args: argparse.Namespace) -> int:
    if (args.student is None) != (args.solution is None):
        print("error: give both --student and --solution, or neither (conventional paths)", file=sys.stderr)
        return 2
    try:
        if args.student is None:
            student, solution = default_output_paths(args.source)
        else:
            student, solution = Path(args.student), Path(args.solution)
        if args.check:
            stale = versions_out_of_sync(args.source, student, solution)
            if stale:
                names = ", ".join(str(p) for p in stale)
                print(
                    f"out of sync with {args.source}: {names}\n"
                    f"regenerate with: python -m vit_course.grading generate {args.source} "
                    f"--student {student} --solution {solution}",
                    file=sys.stderr,
                )
                return 1
            print(f"in sync: {student}, {solution}")
            return 0
        generate_versions(args.source, student, solution)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {student} and {solution}")
    return 0


NO_SANDBOX_WARNING = """\
###########################################################################
# WARNING: grading WITHOUT a sandbox (--sandbox none). Submissions run with #
# your rights: they can read the source notebook and other submissions,   #
# reach the network and leave processes behind. Every CSV row says so.    #
###########################################################################"""


def _sandbox(choice: str) -> str:
    """The sandbox to use ("" after printing why the requested one cannot be used)."""
    from vit_course.tools.grading.sandbox import bwrap_problem

    problem = bwrap_problem() if choice in ("auto", "bwrap") else None
    if choice == "bwrap" and problem:
        print(f"error: --sandbox bwrap: {problem}; install bubblewrap, or pass --sandbox none "
              "(no isolation: see docs/GRADING.md)", file=sys.stderr)
        return ""
    if choice == "none" or problem:
        if problem:
            print(f"bwrap cannot be used: {problem}", file=sys.stderr)
        print(NO_SANDBOX_WARNING, file=sys.stderr)
        return "none"
    return "bwrap"


def _grade(args: argparse.Namespace) -> int:
    from vit_course.tools.grading.feedback import print_progress
    from vit_course.tools.grading.grader import GradeOptions, grade_folder

    options = GradeOptions(
        timeout=args.timeout,
        test_timeout=args.test_timeout,
        memory_mb=args.memory_mb,
        max_output_bytes=args.max_output_kb * 1024,
        kernel_name=args.kernel,
        cwd=args.cwd,
        executed_dir=args.executed_dir,
        max_restarts=args.max_restarts,
        sandbox=_sandbox(args.sandbox),
        call_time_limit=args.call_timeout,
    )
    if options.sandbox == "":
        return 2
    if options.cwd is not None and options.sandbox == "bwrap":
        print("error: --cwd needs --sandbox none (in the sandbox each kernel works in its own private folder)",
              file=sys.stderr)
        return 2
    if min(args.timeout, args.test_timeout, args.max_output_kb, args.call_timeout) <= 0 or args.max_restarts < 0:
        print("error: --timeout, --test-timeout, --call-timeout and --max-output-kb must be > 0, --max-restarts >= 0",
              file=sys.stderr)
        return 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if main_thread else None
    try:
        grades = grade_folder(
            args.submissions,
            args.source,
            args.out,
            feedback_dir=args.feedback_dir,
            jobs=args.jobs,
            options=options,
            progress=print_progress,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if options.sandbox == "none":
        print(NO_SANDBOX_WARNING, file=sys.stderr)
    print(f"graded {len(grades)} submission(s) → {args.out} (sandbox: {options.sandbox})")
    return 0


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (``kill``, a scheduler's time limit) stops the batch as Ctrl-C does: running
    kernels and their children are killed, their temporary folders removed, no CSV written."""
    print("stopped by SIGTERM: running submissions are stopped and cleaned up; no CSV written",
          file=sys.stderr)
    raise SystemExit(128 + signum)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vit_course.grading", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write the student and solution versions of a source notebook")
    gen.add_argument("source", help="source notebook with solution markers and hidden tests")
    gen.add_argument("--student", help="student version path (default: by convention from SOURCE)")
    gen.add_argument("--solution", help="solution version path (default: by convention from SOURCE)")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if the versions are out of sync")
    gen.set_defaults(func=_generate)

    grade = sub.add_parser("grade", help="grade a folder of submitted notebooks")
    grade.add_argument("submissions", help="folder of <student>.ipynb files")
    grade.add_argument("--source", required=True, help="source notebook (hidden tests are read from it)")
    grade.add_argument("--out", required=True, help="CSV file to write")
    grade.add_argument("--feedback-dir", help="folder for <student>.md (default: <out stem>_feedback)")
    grade.add_argument("--timeout", type=float, default=300.0, help="seconds for a submission's cells (default 300)")
    grade.add_argument("--test-timeout", type=float, default=60.0, help="seconds per hidden-test cell (default 60)")
    grade.add_argument("--memory-mb", type=int, default=4096, help="kernel memory cap, Linux only; 0 = none (default 4096)")
    grade.add_argument("--max-output-kb", type=int, default=1024, help="output kept per submission (default 1024)")
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel (default 1)")
    grade.add_argument("--kernel", help="installed kernelspec to use (default: this interpreter's ipykernel)")
    grade.add_argument("--cwd", help="working folder of the kernels (default: a fresh empty one per submission)")
    grade.add_argument("--executed-dir", help="also write each executed submission here (capped outputs)")
    grade.add_argument("--max-restarts", type=int, default=2, help="fresh kernels after a kernel death (default 2)")
    grade.add_argument("--call-timeout", type=float, default=30.0,
                       help="seconds for each call of the student's code in a hidden test (default 30)")
    grade.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                       help="isolate each submission with bubblewrap (default: bwrap where it works; "
                            "none = no isolation, with a loud warning)")
    grade.set_defaults(func=_grade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
