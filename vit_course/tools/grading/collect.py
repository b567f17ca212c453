"""The grading kernel's side of a hidden test: run the student's function, hand back plain data.

The grader starts the kernel with ``VIT_COURSE_GRADING_INPUTS`` (a JSON file of hidden inputs,
``plain`` format) and ``VIT_COURSE_GRADING_OUTPUTS`` (a folder). ``autograde(qid, fn, ...)``
then calls ``collect``: ``fn`` runs on each hidden input of ``qid`` (each call under the
time limit the inputs file gives) and the outputs (or what was raised) go to
``<outputs>/<qid>.json``. Expected values, tolerances and comparison code are not in this
process: the grader compares outside it (``compare``). Whatever a submission prints or
displays, and whatever it changes in this process, decides nothing.

``{"__model__": "synthetic_vit"}`` in the inputs stands for the course's synthetic-data ViT,
loaded here from the (read-only) artifacts folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INPUTS_ENV = "VIT_COURSE_GRADING_INPUTS"
OUTPUTS_ENV = "VIT_COURSE_GRADING_OUTPUTS"
GRADING_MODELS = ("synthetic_vit",)


def active() -> bool:
    """True inside a grading kernel (the grader set ``INPUTS_ENV``)."""
    return bool(os.environ.get(INPUTS_ENV))


def resolve_model(obj: dict) -> Any:
    """The model a ``{"__model__": name}`` input stands for (eval mode, CPU)."""
    name = obj.get("__model__")
    if name not in GRADING_MODELS:
        raise ValueError(f"unknown model {name!r} in the grading inputs")
    from vit_course.models import load_or_train_synthetic_vit

    model, _ = load_or_train_synthetic_vit(device="cpu", progress=False)
    return model.eval()


def _encode(ok: bool, value: Any) -> dict:
    from vit_course.tools.grading.plain import to_plain

    if not ok:
        return {"error": str(value)}
    try:
        return {"value": to_plain(value)}
    except TypeError as exc:
        return {"error": f"your function returned something that cannot be graded: {exc}"}


def collect(qid: str, *objects: Any) -> None:
    """Run ``objects[0]`` on the hidden inputs of ``qid``; write ``<outputs>/<qid>.json``."""
    from vit_course.tools.grading.checks import Interrupted, TimedOut, _NotImplemented, call_student
    from vit_course.tools.grading.plain import from_plain

    plan = json.loads(Path(os.environ[INPUTS_ENV]).read_text(encoding="utf-8"))
    calls = plan.get("questions", {}).get(qid)
    if calls is None:
        raise ValueError(f"the grader gave no hidden inputs for {qid!r}")
    seconds = float(plan.get("call_time_limit", 30.0))
    fn = objects[0] if objects else None
    results: list[dict] = []
    for call in calls:
        if not callable(fn):
            results.append({"error": f"expected your function, got {type(fn).__name__}"})
            continue
        args = from_plain(call.get("args", []), as_torch=True, resolve=resolve_model)
        kwargs = from_plain(call.get("kwargs", {}), as_torch=True, resolve=resolve_model)
        try:
            ok, value = call_student(lambda: fn(*args, **kwargs), seconds)
        except _NotImplemented:
            results = [{"not_implemented": True}]
            break
        except Interrupted:
            results.append({"error": "interrupted (KeyboardInterrupt)"})
            break
        except TimedOut as exc:  # a hang tends to repeat: the remaining calls are not run
            results.append({"error": str(exc)})
            break
        results.append(_encode(ok, value))
    out = Path(os.environ[OUTPUTS_ENV])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{qid}.json.tmp"
    tmp.write_text(json.dumps({"question": qid, "calls": results}), encoding="utf-8")
    os.replace(tmp, out / f"{qid}.json")
    print(f"{qid}: ran your code on {len(calls)} hidden input(s); the grader compares the results.")
