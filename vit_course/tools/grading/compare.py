"""Compare outside: the grader scores the plain outputs a grading kernel handed back.

``grade_question(qid, entry, text)`` reads ``<qid>.json`` as written by ``collect`` (untrusted:
parsed as plain data only), compares each output with the expected value of the reference
process (``expected.load_plan``) and returns the payload the grader scores:
``{"question", "not_implemented", "fraction", "n_passed", "n_total", "cases": [...]}``.
Failed cases carry the question's hint (the likely misconception) when one matches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_course.tools.grading.checks import compare_values, describe, with_hint
from vit_course.tools.grading.plain import loads
from vit_course.tools.grading.questions import Q3_ALL_METHODS, Q3_METHODS, compare_rows, get_question


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double()
    return np.asarray(x, dtype=np.float64)


def _close(got: Any, expected: Any, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """``None`` when ``got`` and ``expected`` (arrays or tensors) agree in shape and values."""
    try:
        g = _numpy(got)
    except (TypeError, ValueError, RuntimeError):
        return f"{what}: expected numbers, got {type(got).__name__}"
    e = _numpy(expected)
    if g.shape != e.shape:
        return f"{what}: expected shape {e.shape}, got {g.shape}"
    if not np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True):
        i = int(np.nan_to_num(np.abs(g - e), nan=np.inf).argmax())
        return f"{what}: expected {e.flat[i]:.6g} at flat index {i}, got {g.flat[i]:.6g}"
    return None


def _suite_part(part: str, got: dict, exp: dict) -> str | None:
    if part == "methods":
        methods = list(got.get("methods", []))
        return None if sorted(methods) == sorted(exp["methods"]) else f"expected the methods {list(Q3_ALL_METHODS)}, got {methods}"
    if part in ("maps", "controls"):
        for m in Q3_METHODS if part == "maps" else ("random", "center_gaussian"):
            problem = _close(got["maps"][m], exp["maps"][m], f"maps of {m!r}")
            if problem:
                return problem + (f": is {m!r} mapped to explain(..., method={m!r})?" if part == "maps" else "")
        return None
    if part == "curves":
        for m in Q3_ALL_METHODS:
            for kind in ("deletion", "insertion"):
                g, e = np.asarray(got["curves"][m][kind]), exp["curves"][m][kind]
                if g.shape[-1:] != e.shape[-1:]:
                    return (f"the {kind} curve of {m!r} has {g.shape[-1:]} points, expected steps + 1 = "
                            f"{e.shape[-1]}: pass steps=steps to run_suite")
                problem = _close(g, e, f"{kind} curve of {m!r}")
                if problem:
                    return problem + "; keep run_suite's default (blur) baseline"
        return None
    if part == "chefer":
        for m in Q3_ALL_METHODS:
            for kind in ("chefer_positive", "chefer_negative"):
                if _close(got["curves"][m][kind], exp["curves"][m][kind], kind, atol=1e-6):
                    return (f"the {kind} test of {m!r} differs: the synthetic images are in [0, 1], so "
                            "pass mean=(0, 0, 0), std=(1, 1, 1) to run_suite")
        return None
    if part == "scores":
        for m in Q3_ALL_METHODS:
            for metric, value in exp["scores"][m].items():
                problem = _close(got["scores"][m][metric], value, f"{m} {metric}")
                if problem:
                    return problem
        return None
    if exp.get("grids") is None:
        return None if got.get("grids") is None else "expected no grids (too few correctly classified images)"
    if got.get("grids") is None:
        return "the suite has no grids: keep run_suite's grid game on"
    problem = _close(got["grids"]["target_tile"], exp["grids"]["target_tile"], "grid target tiles", atol=0)
    for m in Q3_METHODS:
        problem = problem or _close(got["grid_maps"][m], exp["grid_maps"][m], f"grid maps of {m!r}")
    return problem


def _compare(case: dict, got: Any, shared: Any) -> str | None:
    check = case["check"]
    if check == "values":
        return compare_values(got, case["expected"], rtol=case["rtol"], atol=case["atol"])
    if check == "rows":
        return compare_rows(got, case["expected"])
    if not isinstance(got, dict):
        return f"expected the SuiteResult of run_suite, got {describe(got)}"
    try:
        return _suite_part(check.split(":", 1)[1], got, shared)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"the suite is missing {exc}: return run_suite's result unchanged"


def grade_question(qid: str, entry: dict, text: str | None) -> dict:
    """Score ``qid`` from the kernel's outputs ``text`` (``None``: nothing was written)."""
    cases, payload = entry["cases"], {"question": qid, "not_implemented": False, "cases": []}
    try:
        calls = loads(text)["calls"] if text is not None else None
        if calls is not None and not isinstance(calls, list):
            raise ValueError("calls is not a list")
    except (ValueError, TypeError, KeyError) as exc:
        calls, payload["unreadable"] = None, f"{type(exc).__name__}: {exc}"
    if calls and isinstance(calls[0], dict) and calls[0].get("not_implemented"):
        payload["not_implemented"] = True
    try:
        hint = get_question(qid).hint
    except ValueError:
        hint = None
    for case in cases:
        i = case["call"]
        out = calls[i] if calls is not None and i < len(calls) and isinstance(calls[i], dict) else None
        inputs = entry["inputs"][i]
        shown = ", ".join(describe(a) for a in inputs.get("args", []) if not isinstance(a, dict)) if case["check"] in ("values", "rows") else ""
        where = f" (input: {shown})" if shown else ""
        if payload["not_implemented"]:
            message = "not implemented yet"
        elif out is None:
            message = "no result: the hidden test did not run to the end"
        elif "value" not in out:
            message = f"{out.get('error', 'no value')}{where}"
        else:
            problem = _compare(case, out["value"], entry["shared"])
            message = "" if problem is None else with_hint(f"{problem}{where}", hint, tuple(inputs.get("args", [])),
                                                           inputs.get("kwargs", {}), out["value"])
        payload["cases"].append({"name": case["name"], "passed": not message, "message": message,
                                 "weight": float(case["weight"])})
    total = sum(c["weight"] for c in payload["cases"])
    passed = sum(c["weight"] for c in payload["cases"] if c["passed"])
    payload.update(fraction=passed / total if total and not payload["not_implemented"] else 0.0,
                   n_passed=sum(c["passed"] for c in payload["cases"]), n_total=len(payload["cases"]))
    return payload
