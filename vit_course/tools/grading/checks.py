"""``check``: immediate feedback in the notebook; ``autograde``: the hidden tests' entry point.

Both run a question's cases against the student's objects and report, per failed case, its
name, the input, the expected value and what the student's code gave (or raised). Messages
are built from values only, never from reference code. A ``NotImplementedError`` (the stub
the student version starts with) is reported as "not implemented yet", without a traceback.
"""

from __future__ import annotations

import copy
import importlib
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vit_course.tools.grading.questions import Case, get_question

GRADE_MIME = "application/vnd.vit-course.grade+json"
MAX_SHOWN_FAILURES = 5
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


def _run_case(case: Case, objects: tuple) -> CaseResult:
    args = copy.deepcopy(case.args)
    kwargs = copy.deepcopy(case.kwargs)
    inputs = _describe_inputs(case)
    where = f" (input: {inputs})" if inputs else ""
    try:
        if case.call is not None:
            got = case.call(*objects)
        else:
            if not objects or not callable(objects[0]):
                given = describe(objects[0]) if objects else "nothing"
                return CaseResult(case.name, False, f"expected your function as the argument, got {given}", case.weight)
            got = objects[0](*args, **kwargs)
    except NotImplementedError:
        raise _NotImplemented from None
    except Exception as exc:  # the student's code raised: report type and message only
        message = f"{type(exc).__name__}: {exc}"
        message = message if len(message) <= 300 else message[:297] + "..."
        return CaseResult(case.name, False, f"your code raised {message}{where}", case.weight)
    compare = case.compare or (lambda g, e: compare_values(g, e, rtol=case.rtol, atol=case.atol))
    problem = compare(got, case.expected)
    if problem is None:
        return CaseResult(case.name, True, "", case.weight)
    return CaseResult(case.name, False, f"{problem}{where}", case.weight)


def run_cases(qid: str, cases: list[Case], objects: tuple, title: str = "") -> CheckResult:
    """Run ``cases`` against ``objects``; stops at the first ``NotImplementedError``."""
    result = CheckResult(qid=qid, title=title)
    for case in cases:
        try:
            result.cases.append(_run_case(case, objects))
        except _NotImplemented:
            result.not_implemented = True
            result.cases = [CaseResult(c.name, False, "not implemented yet", c.weight) for c in cases]
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
    result = run_cases(qid, question.public_cases(), objects, question.title)
    print(result.report())
    return result


def autograde(qid: str, *objects: Any) -> CheckResult:
    """Hidden-test entry point: run public + hidden cases and publish the result to the grader.

    Displays the result as ``application/vnd.vit-course.grade+json`` (the grader reads it
    from the hidden-test cell's outputs) with a text summary, then raises ``AssertionError``
    when a case failed, so running the solution notebook under nbval fails loudly if the
    reference answer stops passing.

    The hidden cases come from ``HIDDEN_CASES_MODULE``, imported here (it attaches them to
    the registered questions), so ``autograde`` needs the instructor's copy of the package.
    """
    question = get_question(qid)
    importlib.import_module(HIDDEN_CASES_MODULE)
    cases = question.public_cases() + question.hidden_cases()
    result = run_cases(qid, cases, objects, question.title)
    bundle = {"text/plain": result.report(), GRADE_MIME: result.to_dict()}
    try:
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.display import display

        in_kernel = InteractiveShell.initialized()
    except ImportError:
        in_kernel = False
    if in_kernel:
        display(bundle, raw=True)
    else:  # plain Python: the summary is enough
        print(result.report())
    if not result.passed:
        raise AssertionError(f"{qid}: {result.n_passed} of {len(result.cases)} cases passed")
    return result
