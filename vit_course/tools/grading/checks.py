"""``check``: immediate feedback in the notebook; ``autograde``: the hidden tests' entry point.

``check`` runs a question's public cases against the student's objects and reports, per
failed case, its name, the input, the expected value, what the student's code gave (or
raised) and, where the question has a ``hint``, the misconception it looks like. Messages
are built from values only, never from reference code. A ``NotImplementedError`` (the stub
the student version starts with) is reported as "not implemented yet", without a traceback.
Each call of the student's code has a time limit (``CALL_TIME_LIMIT_S``); a hang,
``SystemExit`` and ``KeyboardInterrupt`` become a message, not a stuck or dead cell.

Inside the grader's kernel ``autograde`` compares nothing: it runs the student's function on
the hidden inputs and writes the outputs as plain data (``collect``); the grader compares them
outside the kernel. Anywhere else (the solution version under nbval) it compares here.
"""

from __future__ import annotations

import copy
import importlib
import math
import numbers
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vit_course.tools.grading.questions import Case, get_question

MAX_SHOWN_FAILURES = 5
#: Seconds one call of the student's code may take in ``check`` (``$VIT_COURSE_CHECK_TIME_LIMIT``
#: overrides it); the grader's kernel gets its own limit from the grader (``--call-timeout``).
CALL_TIME_LIMIT_S = 30.0
CHECK_TIME_LIMIT_ENV = "VIT_COURSE_CHECK_TIME_LIMIT"
#: Reference answers and hidden cases of the course questions (instructor side). Importing it
#: attaches the hidden cases to the registry; ``autograde`` does, ``check`` never does.
HIDDEN_CASES_MODULE = "vit_course.tools.grading.reference"


@dataclass
class CaseResult:
    """Outcome of one case: ``message`` says what went wrong ("" when it passed)."""

    name: str
    passed: bool
    message: str = ""
    weight: float = 1.0


@dataclass
class CheckResult:
    """Outcome of ``check``/``autograde`` for one question.

    Truthy when every case passed. ``report()`` is the text ``check`` prints.
    """

    qid: str
    title: str = ""
    cases: list[CaseResult] = field(default_factory=list)
    not_implemented: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.cases) and not self.not_implemented and all(c.passed for c in self.cases)

    @property
    def n_passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def fraction(self) -> float:
        """Passed weight / total weight (0.0 when not implemented)."""
        total = sum(c.weight for c in self.cases)
        if self.not_implemented or total == 0:
            return 0.0
        return sum(c.weight for c in self.cases if c.passed) / total

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        state = "not implemented" if self.not_implemented else f"{self.n_passed}/{len(self.cases)} cases passed"
        return f"<CheckResult {self.qid}: {state}>"

    def _ipython_display_(self) -> None:
        """Show nothing: ``check`` already printed the report (avoids printing it twice)."""

    def report(self) -> str:
        head = f"{self.qid}" + (f" — {self.title}" if self.title else "")
        if self.not_implemented:
            return (
                f"{head}: not implemented yet. Replace the `raise NotImplementedError` line of "
                f"{self.qid} with your code, run that cell, then run this check again."
            )
        if self.passed:
            return f"{head}: all {len(self.cases)} cases passed."
        failed = [c for c in self.cases if not c.passed]
        lines = [f"{head}: {self.n_passed} of {len(self.cases)} cases passed."]
        for case in failed[:MAX_SHOWN_FAILURES]:
            lines.append(f"  ✗ {case.name}: {case.message}")
        if len(failed) > MAX_SHOWN_FAILURES:
            lines.append(f"  … and {len(failed) - MAX_SHOWN_FAILURES} more failing cases.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "question": self.qid,
            "not_implemented": self.not_implemented,
            "fraction": self.fraction,
            "n_passed": self.n_passed,
            "n_total": len(self.cases),
            "cases": [asdict(c) for c in self.cases],
        }


# --------------------------------------------------------------------------- formatting


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def describe(value: Any, limit: int = 12) -> str:
    """Short, value-only description: small arrays in full, large ones by shape and dtype."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, numbers.Real) and not hasattr(value, "shape"):
        return f"{float(value):.6g}" if isinstance(value, float) else repr(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        kind = "tensor" if hasattr(value, "detach") else "array"
        arr = _to_numpy(value)
        if arr.ndim == 0:
            return f"{kind}({arr.item():.6g})" if arr.dtype.kind == "f" else f"{kind}({arr.item()!r})"
        if arr.size <= limit:
            body = np.array2string(arr, precision=4, separator=", ", suppress_small=True, max_line_width=10_000)
            body = " ".join(body.split())  # one line, also for 2-D arrays
            return f"{kind}({body})"
        return f"{kind} of shape {tuple(arr.shape)}, dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _describe_inputs(case: Case) -> str:
    parts = [describe(a) for a in case.args] + [f"{k}={describe(v)}" for k, v in case.kwargs.items()]
    return ", ".join(parts)


def _as_number(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, numbers.Real):
        return float(x)
    try:
        arr = _to_numpy(x)
    except Exception:
        return None
    if arr.size == 1 and arr.dtype.kind in "fiu":
        return float(arr.reshape(()))
    return None


def compare_values(got: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-7) -> str | None:
    """``None`` when ``got`` matches ``expected``, else a sentence saying how it differs.

    Numbers: ``got`` must be a single number within ``rtol``/``atol``. Arrays/tensors: same
    shape, values within tolerance. Anything else: ``==``.
    """
    if isinstance(expected, numbers.Real) and not isinstance(expected, bool):
        value = _as_number(got)
        if value is None:
            return f"expected a single number like {describe(expected)}, got {describe(got)} ({type(got).__name__})"
        if math.isnan(expected) and math.isnan(value):
            return None
        if not math.isclose(value, float(expected), rel_tol=rtol, abs_tol=atol):
            return f"expected {describe(float(expected))}, got {describe(value)}"
        return None
    if hasattr(expected, "shape") and hasattr(expected, "dtype"):
        exp = _to_numpy(expected)
        try:
            arr = _to_numpy(got)
        except Exception:
            return f"expected {describe(expected)}, got {describe(got)} ({type(got).__name__})"
        if arr.shape != exp.shape:
            return f"expected shape {tuple(exp.shape)}, got shape {tuple(arr.shape)}"
        if arr.dtype.kind not in "fiub":
            return f"expected numbers, got dtype {arr.dtype}"
        if not np.allclose(arr.astype(np.float64), exp.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True):
            worst = np.unravel_index(np.nanargmax(np.abs(arr - exp)), exp.shape) if exp.size else ()
            return (
                f"expected {describe(expected)}, got {describe(got)}"
                + (f"; largest difference at index {tuple(int(i) for i in worst)}: "
                   f"expected {exp[worst]:.6g}, got {arr[worst]:.6g}" if exp.size else "")
            )
        return None
    try:
        equal = bool(got == expected)
    except Exception:
        equal = False
    return None if equal else f"expected {describe(expected)}, got {describe(got)}"


# --------------------------------------------------------------------------- running


class _NotImplemented(Exception):
    pass


class CallTimeout(BaseException):
    """Raised inside the student's code when a call runs past its limit (a BaseException, so
    that ``except Exception`` in student code does not swallow it)."""


class Interrupted(Exception):
    """The student interrupted a check (KeyboardInterrupt): stop, do not grade the rest."""


class TimedOut(Exception):
    """A call ran past its limit; the message says so. The remaining cases are not run."""


def check_time_limit() -> float:
    """Seconds per call in ``check``: ``$VIT_COURSE_CHECK_TIME_LIMIT`` or ``CALL_TIME_LIMIT_S``."""
    try:
        return float(os.environ.get(CHECK_TIME_LIMIT_ENV, CALL_TIME_LIMIT_S))
    except ValueError:
        return CALL_TIME_LIMIT_S


def call_with_limit(fn: Callable[[], Any], seconds: float | None) -> Any:
    """``fn()``, stopped with ``CallTimeout`` after ``seconds`` (SIGALRM: main thread of a POSIX
    process only; elsewhere, or with ``seconds`` None/0, without a limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return fn()

    def on_alarm(signum, frame):
        raise CallTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call_student(fn: Callable[[], Any], seconds: float | None = CALL_TIME_LIMIT_S) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, message)`` for what the student's code raised.

    Raises:
        _NotImplemented: the code still raises ``NotImplementedError`` (the stub).
        Interrupted: a ``KeyboardInterrupt`` (the stop button): the caller stops.
        TimedOut: the call ran past ``seconds``: the caller stops (a hang tends to repeat).
    """
    try:
        return True, call_with_limit(fn, seconds)
    except NotImplementedError:
        raise _NotImplemented from None
    except CallTimeout:
        raise TimedOut(f"your code took longer than {seconds:g} s (an endless loop, or a very slow one?)") from None
    except SystemExit as exc:
        return False, (f"your code called sys.exit({exc.code!r}) (or exit/quit), which would stop the "
                       "notebook: return a value instead")
    except KeyboardInterrupt:
        raise Interrupted from None
    except Exception as exc:  # the student's code raised: report type and message only
        message = f"{type(exc).__name__}: {exc}"
        return False, "your code raised " + (message if len(message) <= 300 else message[:297] + "...")


def with_hint(problem: str, hint: Callable | None, args: tuple, kwargs: dict, got: Any) -> str:
    """``problem`` followed by the question's hint for ``got``, when it has one."""
    try:
        text = hint(args, kwargs, got) if hint is not None else None
    except Exception:  # a hint never breaks a check
        text = None
    return f"{problem} — {text}" if text else problem


def _run_case(case: Case, objects: tuple, hint: Callable | None = None,
              seconds: float | None = CALL_TIME_LIMIT_S) -> CaseResult:
    try:
        return _run_one_case(case, objects, hint, seconds)
    except TimedOut as exc:
        inputs = _describe_inputs(case)
        raise TimedOut(f"{exc}" + (f" (input: {inputs})" if inputs else "")) from None


def _run_one_case(case: Case, objects: tuple, hint: Callable | None, seconds: float | None) -> CaseResult:
    args = copy.deepcopy(case.args)
    kwargs = copy.deepcopy(case.kwargs)
    inputs = _describe_inputs(case)
    where = f" (input: {inputs})" if inputs else ""
    if case.call is not None:
        ok, got = call_student(lambda: case.call(*objects), seconds)
    elif not objects or not callable(objects[0]):
        given = describe(objects[0]) if objects else "nothing"
        return CaseResult(case.name, False, f"expected your function as the argument, got {given}", case.weight)
    else:
        ok, got = call_student(lambda: objects[0](*args, **kwargs), seconds)
    if not ok:
        return CaseResult(case.name, False, f"{got}{where}", case.weight)
    compare = case.compare or (lambda g, e: compare_values(g, e, rtol=case.rtol, atol=case.atol))
    problem = compare(got, case.expected)
    if problem is None:
        return CaseResult(case.name, True, "", case.weight)
    return CaseResult(case.name, False, with_hint(f"{problem}{where}", hint, case.args, case.kwargs, got), case.weight)


def run_cases(qid: str, cases: list[Case], objects: tuple, title: str = "", hint: Callable | None = None,
              seconds: float | None = None) -> CheckResult:
    """Run ``cases`` against ``objects`` (``seconds`` per call, default ``check_time_limit()``);
    stops at the first ``NotImplementedError``, time-out or interrupt."""
    seconds = check_time_limit() if seconds is None else seconds
    result = CheckResult(qid=qid, title=title)
    for i, case in enumerate(cases):
        try:
            result.cases.append(_run_case(case, objects, hint, seconds))
        except _NotImplemented:
            result.not_implemented = True
            result.cases = [CaseResult(c.name, False, "not implemented yet", c.weight) for c in cases]
            break
        except Interrupted:
            result.cases += [CaseResult(c.name, False, "not run: interrupted (KeyboardInterrupt)", c.weight)
                             for c in cases[i:]]
            break
        except TimedOut as exc:
            result.cases.append(CaseResult(case.name, False, str(exc), case.weight))
            result.cases += [CaseResult(c.name, False, "not run: the case before ran out of time", c.weight)
                             for c in cases[i + 1:]]
            break
    return result


def check(qid: str, *objects: Any) -> CheckResult:
    """Run question ``qid``'s public cases against your answer and print what passed.

    Args:
        qid: question id, e.g. ``"q1"``.
        *objects: your answer, usually your function (``check("q1", deletion_auc)``).
    Returns:
        A ``CheckResult``; truthy when every case passed.
    Raises:
        ValueError: when ``qid`` is not a registered question.

    Example::

        check("q1", deletion_auc)   # prints e.g. "q1 — deletion_auc(curve) -> float: all 4 cases passed."
    """
    question = get_question(qid)
    result = run_cases(qid, question.public_cases(), objects, question.title, question.hint)
    print(result.report())
    return result


def autograde(qid: str, *objects: Any) -> CheckResult | None:
    """Hidden-test entry point.

    In the grader's kernel (``collect.active()``): run the student's function on the hidden
    inputs the grader handed in and write its outputs as plain data; the grader compares them
    outside this process, so nothing here decides a grade. Anywhere else (the solution version
    under nbval): run public + hidden cases here and raise ``AssertionError`` when one fails,
    so the reference answer failing its own tests shows loudly. The hidden cases come from
    ``HIDDEN_CASES_MODULE`` (the instructor's copy of the package).
    """
    from vit_course.tools.grading import collect

    if collect.active():
        collect.collect(qid, *objects)
        return None
    question = get_question(qid)
    importlib.import_module(HIDDEN_CASES_MODULE)
    cases = question.public_cases() + question.hidden_cases()
    result = run_cases(qid, cases, objects, question.title, question.hint)
    print(result.report())
    if not result.passed:
        raise AssertionError(f"{qid}: {result.n_passed} of {len(result.cases)} cases passed")
    return result
