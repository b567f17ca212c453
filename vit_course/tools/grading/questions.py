"""Question registry: the public test cases ``check`` runs and the hidden ones the grader runs.

A question is registered once with its public cases (shown to students through ``check``)
and, optionally, a ``hidden`` callable that returns more cases for the grader. The hidden
cases and reference implementations of the questions below live in
``vit_course.tools.grading.reference``, which imports this module and attaches them
(``set_hidden_cases``) when it is imported. This module never imports it: ``autograde``
does (see ``checks.HIDDEN_CASES_MODULE``), ``check`` does not, so that module can be left
out of a student distribution without breaking ``check``.

Cases may be given lazily (a zero-argument callable returning cases) so that importing the
registry does not import torch.

The notebook-08 questions registered here:

- ``q1``: ``deletion_auc(curve) -> float`` with ``curve`` a 1-D tensor of ``steps + 1``
  probabilities measured after removing 0, 1/steps, …, 1 of the tokens; the area under the
  curve by the trapezoid rule over the fraction removed, x in [0, 1].
- ``q2``: ``grid_pointing_score(attribution, target_tile) -> float`` with ``attribution`` an
  (h, w) map of a 2×2 grid image (h and w even) and ``target_tile`` in 0..3 (row-major:
  0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right); the positive attribution inside
  the target tile divided by the total positive attribution, 0.0 when nothing is positive.
- ``q3``: ``run_course_suite(model, images, labels, steps) -> SuiteResult``: one
  ``vit_course.metrics.run_suite`` call scoring ``rollout``, ``grad_rollout`` and ``gradcam``
  (plus the suite's default controls ``random`` and ``center_gaussian``) with ``steps``
  deletion/insertion steps, the blur baseline, Chefer's test for images that are *not*
  normalised (``mean=(0, 0, 0), std=(1, 1, 1)``), the grid game on, every other option at its
  default. ``check`` and ``autograde`` get ``(run_course_suite, suite, model, images,
  labels, steps)`` and inspect the ``suite`` the notebook computed: the public cases check the
  methods, scores per image, curve lengths, maps recomputed for two images and the
  normalisation; the hidden cases recompute curves, AUCs, Chefer hits, the controls, more
  maps and the grid game from the suite's own maps with the package's metric functions
  (cheap: no second suite run). ``suite`` is ``None`` while the function is a stub.
- ``q4``: ``summary_table(scores) -> list[dict]``: one row per (metric, method), metrics
  in order of first appearance and methods in the order of ``scores``, each
  ``{"metric", "method", "mean", "lo", "hi", "n"}`` with ``(mean, lo, hi) =
  vit_course.metrics.bootstrap_ci(values)`` (defaults: 1000 resamples, 95 %, seed 42) and
  ``n`` the number of non-NaN values; a method without a metric gets no row for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "Case",
    "Question",
    "register_question",
    "get_question",
    "registered_questions",
    "set_hidden_cases",
    "unregister_question",
]


@dataclass(frozen=True)
class Case:
    """One test case of a question.

    Args:
        name: short description shown in feedback, e.g. ``"linear decay, 4 steps"``.
        args: positional arguments passed to the student's function.
        expected: the value the student's answer should produce.
        kwargs: keyword arguments passed to the student's function.
        call: how to get the answer from the objects given to ``check``; default
            ``objects[0](*args, **kwargs)``. Use it for questions whose answer is a value
            (``call=lambda table: len(table)``).
        compare: ``compare(got, expected) -> str | None``; ``None`` means equal, a string says
            what differs. Default: numbers and arrays compared with ``rtol``/``atol``,
            everything else with ``==``.
        rtol: relative tolerance of the default comparison.
        atol: absolute tolerance of the default comparison.
        weight: share of the question's points this case carries.
    """

    name: str
    args: tuple = ()
    expected: Any = None
    kwargs: dict = field(default_factory=dict)
    call: Callable[..., Any] | None = None
    compare: Callable[[Any, Any], str | None] | None = None
    rtol: float = 1e-5
    atol: float = 1e-7
    weight: float = 1.0


CaseSource = Union[Case, Callable[[], Iterable[Case]]]


def _resolve(sources: Sequence[CaseSource]) -> list[Case]:
    cases: list[Case] = []
    for source in sources:
        items = [source] if isinstance(source, Case) else list(source())
        for case in items:
            if not isinstance(case, Case):
                raise TypeError(f"expected Case objects, got {type(case).__name__}: {case!r}")
            cases.append(case)
    return cases


@dataclass
class Question:
    """A registered question: id, title, public cases and (lazily) hidden cases."""

    qid: str
    title: str
    _public: tuple[CaseSource, ...]
    _hidden: Callable[[], Iterable[Case]] | None = None
    #: ``hint(args, kwargs, got) -> str | None``: the likely misconception behind a wrong
    #: answer, named without giving the solution (used by ``check`` and by the grader).
    hint: Callable[[tuple, dict, Any], str | None] | None = None

    def public_cases(self) -> list[Case]:
        """The cases ``check`` runs (students see their names, inputs and expected values)."""
        return _resolve(self._public)

    def hidden_cases(self) -> list[Case]:
        """The grader's extra cases (empty when none are registered or attached)."""
        return _resolve([self._hidden]) if self._hidden is not None else []


_REGISTRY: dict[str, Question] = {}


def register_question(
    qid: str,
    *cases: CaseSource,
    title: str = "",
    hidden: Callable[[], Iterable[Case]] | None = None,
    replace: bool = False,
    hint: Callable[[tuple, dict, Any], str | None] | None = None,
) -> Question:
    """Register question ``qid`` with its public ``cases`` and optional ``hidden`` cases.

    Args:
        qid: question id, the same as the notebook cells' ``metadata.vit_course.question``.
        *cases: ``Case`` objects or zero-argument callables returning cases (lazy).
        title: what the student implements, e.g. ``"deletion_auc(curve) -> float"``.
        hidden: zero-argument callable returning the grader's extra cases.
        replace: allow replacing an existing registration.
        hint: ``hint(args, kwargs, got) -> str | None`` naming the misconception behind a
            wrong answer (never the solution); called for failed cases only.
    Returns:
        The registered ``Question``.
    Raises:
        ValueError: when ``qid`` is taken and ``replace`` is false, or no case is given.
    """
    if not isinstance(qid, str) or not qid:
        raise TypeError(f"qid must be a non-empty string, got {qid!r}")
    if qid in _REGISTRY and not replace:
        raise ValueError(f"question {qid!r} is already registered; pass replace=True to redefine it")
    if not cases:
        raise ValueError(f"question {qid!r}: give at least one public case (students need feedback)")
    for case in cases:
        if not isinstance(case, Case) and not callable(case):
            raise TypeError(f"question {qid!r}: cases must be Case objects or callables, got {case!r}")
    question = Question(qid=qid, title=title, _public=tuple(cases), _hidden=hidden, hint=hint)
    _REGISTRY[qid] = question
    return question


def unregister_question(qid: str) -> None:
    """Remove ``qid`` from the registry (no error when absent)."""
    _REGISTRY.pop(qid, None)


def get_question(qid: str) -> Question:
    """The registered question ``qid``.

    Raises:
        ValueError: when no such question exists (the message lists the known ids).
    """
    try:
        return _REGISTRY[qid]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown question {qid!r}; registered questions: {known}") from None


def registered_questions() -> list[str]:
    """Ids of every registered question, sorted."""
    return sorted(_REGISTRY)


def set_hidden_cases(qid: str, hidden: Callable[[], Iterable[Case]] | None) -> Question:
    """Attach the grader's extra cases to the registered question ``qid`` (``None`` detaches them).

    ``vit_course.tools.grading.reference`` attaches the hidden cases of the course questions
    this way when it is imported, so the registry (all ``check`` needs) never imports them.

    Args:
        qid: a registered question id.
        hidden: zero-argument callable returning the extra cases, or ``None``.
    Returns:
        The ``Question``.
    Raises:
        ValueError: when ``qid`` is not registered.
    """
    if hidden is not None and not callable(hidden):
        raise TypeError(f"question {qid!r}: hidden must be a zero-argument callable or None, got {hidden!r}")
    question = get_question(qid)
    question._hidden = hidden
    return question


# --------------------------------------------------------------------------- notebook 08


def _q1_public() -> list[Case]:
    import torch

    def t(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    # Chosen so that every common wrong answer fails at least two: a plain mean, a sum over
    # the step index (dx = 1), dividing by the number of points, left or right rectangles.
    return [
        Case("two points (steps=1)", (t([1.0, 0.0]),), 0.5),
        Case("sharp drop, 3 steps", (t([1.0, 0.2, 0.1, 0.0]),), 0.8 / 3),
        Case("constant curve, 5 steps", (t([0.8] * 6),), 0.8),
        Case("rising curve, 2 steps", (t([0.0, 1.0, 1.0]),), 0.75),
        Case("halving, 4 steps", (t([1.0, 0.5, 0.25, 0.125, 0.0625]),), 1.40625 / 4),
    ]


def _numbers(x: Any) -> Any:
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _number(x: Any) -> float | None:
    try:
        arr = _numbers(x)
    except (TypeError, ValueError):
        return None
    return float(arr.reshape(())) if arr.size == 1 else None


def _matches(got: Any, variants: list[tuple[float, str]]) -> str | None:
    import math

    value = _number(got)
    if value is None:
        return None
    for wrong, hint in variants:
        if math.isfinite(wrong) and math.isclose(value, wrong, rel_tol=1e-5, abs_tol=1e-7):
            return hint
    if math.isnan(value) and any(math.isnan(w) for w, _ in variants):
        return next(h for w, h in variants if math.isnan(w))
    return None


def q1_hint(args: tuple, kwargs: dict, got: Any) -> str | None:
    """The misconception behind a wrong ``deletion_auc``, if ``got`` matches a known one."""
    c = _numbers(args[0]).ravel()
    s = c.size - 1
    if s < 1:
        return None
    pairs = (c[1:] + c[:-1]).sum() / 2
    return _matches(got, [
        (c.mean(), "did you average the points instead of integrating? A plain mean divides by the S+1 points "
                   "and weighs the end points fully; the trapezoid rule divides by the S intervals and halves them"),
        (pairs, "did you integrate over the step index instead of over x in [0, 1]? Each step moves x by 1/steps"),
        (pairs / (s + 1), "did you divide by the number of points? S+1 points make S intervals"),
        (c[:-1].mean(), "did you use rectangles (left sum)? Each interval is a trapezoid between two points"),
        (c[1:].mean(), "did you use rectangles (right sum)? Each interval is a trapezoid between two points"),
    ])


def q2_hint(args: tuple, kwargs: dict, got: Any) -> str | None:
    """The misconception behind a wrong ``grid_pointing_score``, if ``got`` matches a known one."""
    import numpy as np

    m, tile = _numbers(args[0]), int(args[1])
    if m.ndim != 2 or tile not in (0, 1, 2, 3):
        return None
    h, w = m.shape[0] // 2, m.shape[1] // 2

    def share(values: Any, row: int, col: int) -> float:
        total = values.sum()
        with np.errstate(all="ignore"):
            return float(values[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / total) if total else float("nan")

    row, col = divmod(tile, 2)
    return _matches(got, [
        (share(m, row, col), "did you count negative attribution? Only positive values count: "
                             "negative ones are evidence against the class, set them to 0 first"),
        (share(np.abs(m), row, col), "did you take absolute values? Negative attribution counts as 0, not by its size"),
        (share(m.clip(min=0), col, row), "tiles are numbered row by row: 0 top-left, 1 top-right, 2 bottom-left"),
        (float("nan"), "with no positive attribution the answer is 0.0, not a division by zero"),
    ])


def q4_hint(args: tuple, kwargs: dict, got: Any) -> str | None:
    """The misconception behind a wrong ``summary_table`` (NaN handling), if one is visible."""
    import math

    if not isinstance(got, (list, tuple)) or not args or not isinstance(args[0], dict):
        return None
    for row in got:
        if not isinstance(row, dict):
            return None
        values = args[0].get(row.get("method"), {}).get(row.get("metric"))
        if values is None:
            continue
        v = _numbers(values).ravel()
        nans = int(sum(map(math.isnan, v)))
        if not nans:
            continue
        n, mean = _number(row.get("n")), _number(row.get("mean"))
        if n == v.size:
            return "did you count the NaN values in n? Drop the NaNs first, then count what is left"
        if mean is not None and math.isnan(mean):
            return "did you drop the NaNs before the bootstrap? One NaN makes the mean NaN"
    return None


def _q2_public() -> list[Case]:
    import torch

    tile0 = torch.zeros(4, 4, dtype=torch.float64)
    tile0[:2, :2] = 1.0
    mixed = torch.zeros(4, 4, dtype=torch.float64)
    mixed[:2, 2:] = 2.0  # tile 1 positive
    mixed[2:, :2] = -5.0  # tile 2 negative: not counted
    ramp = torch.zeros(2, 6, dtype=torch.float64)
    ramp[0] = torch.arange(1.0, 7.0, dtype=torch.float64)
    # negative values everywhere, positive ones in tiles 0 and 3: counting negatives fails
    signed = torch.tensor([[2.0, 1.0, -1.0, -1.0], [1.0, 0.0, -1.0, -1.0],
                           [-3.0, -3.0, 1.0, 0.0], [-3.0, -3.0, 0.0, 1.0]], dtype=torch.float64)
    return [
        Case("all attribution in tile 0", (tile0, 0), 1.0),
        Case("uniform map, target tile 3", (torch.ones(4, 4, dtype=torch.float64), 3), 0.25),
        Case("negative values ignored, target tile 1", (mixed, 1), 1.0),
        Case("negative values ignored, target tile 2", (mixed, 2), 0.0),
        Case("no positive attribution", (-torch.ones(4, 4, dtype=torch.float64), 0), 0.0),
        Case("2x6 map, target tile 1", (ramp, 1), 15.0 / 21.0),
        Case("signed map, target tile 0", (signed, 0), 4.0 / 6.0),
    ]


register_question(
    "q1",
    _q1_public,
    title="deletion_auc(curve) -> float",
    hint=q1_hint,
)
register_question(
    "q2",
    _q2_public,
    title="grid_pointing_score(attribution, target_tile) -> float",
    hint=q2_hint,
)


# --------------------------------------------------------------------------- q3: the suite

#: The explainers of q3 (``explain`` method names) and every method the suite must hold.
Q3_METHODS = ("rollout", "grad_rollout", "gradcam")
Q3_ALL_METHODS = Q3_METHODS + ("random", "center_gaussian")
#: The per-image scores ``run_suite`` returns for every method.
Q3_METRICS = ("deletion_auc", "insertion_auc", "chefer_positive_auc", "chefer_negative_auc", "grid_pointing")
Q3_MAP_IMAGES = 2  # images whose maps ``check`` recomputes
Q3_CHEFER_IMAGES = 6  # images whose Chefer hits are recomputed (the two normalisations often agree on one)


def _message(got: Any, expected: Any) -> str | None:
    """``compare`` for cases whose ``call`` returns ``None`` (fine) or a sentence (the problem)."""
    return got


def _q3_case(name: str, inspect: Callable[..., str | None], probe: bool = False) -> Case:
    """A q3 case; ``probe``: when ``suite`` is None, call the function once so that the stub's
    NotImplementedError reports "not implemented yet" (give it to the first case only)."""

    def call(fn, suite, model, images, labels, steps):
        if suite is None:
            if probe:  # the stub raises at once; a written function runs on one image
                fn(model, images[:1], labels[:1], 1)
            return ("`suite` is None: run the q3 cell (it sets suite = run_course_suite(...)) "
                    "without errors, then run this check again")
        return inspect(suite, model, images, labels, steps)

    return Case(name, call=call, expected=None, compare=_message)


def _q3_methods(suite, model, images, labels, steps) -> str | None:
    methods = list(getattr(suite, "methods", []))
    if sorted(methods) != sorted(Q3_ALL_METHODS):
        return f"expected the methods {list(Q3_ALL_METHODS)}, got {methods}"
    return None


def _q3_scores(suite, model, images, labels, steps) -> str | None:
    import torch

    for method in Q3_ALL_METHODS:
        per = suite.scores.get(method, {})
        missing = [m for m in Q3_METRICS if m not in per]
        if missing:
            return (f"suite.scores[{method!r}] has no {missing}; keep the grid game on "
                    "(run_suite's default) and score every method")
        for metric in Q3_METRICS[:-1]:
            n = torch.as_tensor(per[metric]).numel()
            if n != len(images):
                return (f"suite.scores[{method!r}][{metric!r}] has {n} values, expected one per "
                        f"image ({len(images)}): pass all of `images`")
    return None


def _q3_steps(suite, model, images, labels, steps) -> str | None:
    for method in Q3_ALL_METHODS:
        for kind in ("deletion", "insertion"):
            curve = suite.curves.get(method, {}).get(kind)
            if curve is None:
                return f"suite.curves[{method!r}] has no {kind!r} curve"
            if curve.shape[-1] != steps + 1:
                return (f"the {kind} curve of {method!r} has {curve.shape[-1]} points, expected "
                        f"steps + 1 = {steps + 1}: pass steps=steps to run_suite")
    return None


def _q3_maps(suite, model, images, labels, steps) -> str | None:
    import torch

    from vit_course.explain import explain

    k = min(Q3_MAP_IMAGES, len(images))
    for method in Q3_METHODS:
        expected = explain(model, images[:k], method=method, target=suite.targets[:k])
        got = suite.maps[method][:k].to(expected.device)
        if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), rtol=1e-4, atol=1e-5):
            return (f"the maps of {method!r} differ from explain(model, images, method={method!r}, "
                    f"target=predicted class) on the first {k} images: is {method!r} mapped to "
                    "that explain method?")
    return None


def _q3_normalisation(suite, model, images, labels, steps) -> str | None:
    import torch

    from vit_course.metrics import perturbation_test

    k = min(Q3_CHEFER_IMAGES, len(images))
    maps = suite.maps["rollout"][:k]
    ref = perturbation_test(model, images[:k], maps, suite.labels[:k], mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0), progress=False)
    for kind in ("positive", "negative"):
        got = suite.curves["rollout"][f"chefer_{kind}"][:k].to(ref[kind].device)
        if not torch.equal(got.double(), ref[kind].double()):
            return ("the Chefer perturbation test does not match one run on un-normalised images: the "
                    "synthetic images are in [0, 1], so pass mean=(0, 0, 0), std=(1, 1, 1) to run_suite")
    return None


def _q3_public() -> list[Case]:
    return [
        _q3_case("the suite holds rollout, grad_rollout, gradcam and both controls", _q3_methods, probe=True),
        _q3_case("every method has the five scores, one per image", _q3_scores),
        _q3_case("deletion and insertion curves have steps + 1 points", _q3_steps),
        _q3_case(f"maps of the first {Q3_MAP_IMAGES} images match explain(...)", _q3_maps),
        _q3_case("Chefer's test used the synthetic images' scale (mean 0, std 1)", _q3_normalisation),
    ]


register_question(
    "q3",
    _q3_public,
    title="run_course_suite(model, images, labels, steps) -> SuiteResult",
)


# --------------------------------------------------------------------------- q4: the table

Q4_KEYS = ("metric", "method", "mean", "lo", "hi", "n")


def compare_rows(got: Any, expected: list[dict]) -> str | None:
    """``None`` when ``got`` has ``expected``'s rows (same order, keys and values, numbers
    within 1e-9 absolute / 1e-7 relative, NaN equal to NaN), else what differs."""
    import math

    if not isinstance(got, (list, tuple)):
        return f"expected a list of {len(expected)} row dicts, got {type(got).__name__}"
    if len(got) != len(expected):
        shown = [(r.get("metric"), r.get("method")) if isinstance(r, dict) else r for r in got][:8]
        want = [(r["metric"], r["method"]) for r in expected][:8]
        return f"expected {len(expected)} rows {want}, got {len(got)} rows {shown}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if not isinstance(g, dict):
            return f"row {i}: expected a dict with keys {list(Q4_KEYS)}, got {type(g).__name__}"
        missing = [k for k in Q4_KEYS if k not in g]
        if missing:
            return f"row {i}: missing keys {missing} (a row needs {list(Q4_KEYS)})"
        where = f"row {i} ({e['metric']}, {e['method']})"
        for key in ("metric", "method"):
            if g[key] != e[key]:
                return f"row {i}: expected {key} {e[key]!r}, got {g[key]!r} (rows go metric by metric, methods in order)"
        for key in ("mean", "lo", "hi", "n"):
            try:
                value = float(g[key])
            except (TypeError, ValueError):
                return f"{where}: {key} must be a number, got {g[key]!r}"
            want = float(e[key])
            if math.isnan(want) and math.isnan(value):
                continue
            if not math.isclose(value, want, rel_tol=1e-7, abs_tol=1e-9):
                return f"{where}: expected {key} {want:.6g}, got {value:.6g}"
    return None


def _q4_expected(scores: dict) -> list[dict]:
    from vit_course.metrics import summarise

    return [{k: row[k] for k in Q4_KEYS} for row in summarise(scores)]


def _q4_public() -> list[Case]:
    one = {"rollout": {"deletion_auc": [0.1, 0.2, 0.3, 0.6]}}
    two = {
        "rollout": {"deletion_auc": [0.2, 0.4, 0.3, 0.35], "insertion_auc": [0.7, 0.9, 0.8, 0.6]},
        "random": {"deletion_auc": [0.5, 0.6, 0.4, 0.45], "insertion_auc": [0.5, 0.4, 0.6, 0.55]},
    }
    gap = {
        "gradcam": {"deletion_auc": [0.3, 0.1], "grid_pointing": [0.5, 0.9, 0.7]},
        "random": {"deletion_auc": [0.6, 0.5]},
    }
    const = {"center_gaussian": {"grid_pointing": [0.25, 0.25, 0.25, 0.25]}}
    nan = float("nan")
    with_nan = {"rollout": {"deletion_auc": [0.2, nan, 0.4, 0.3, 0.5]}, "random": {"deletion_auc": [0.6, 0.4, nan, nan, 0.5]}}
    cases = [
        ("one method, one metric", one),
        ("two methods, two metrics: metric by metric", two),
        ("a method without one metric gets no row for it", gap),
        ("constant values: lo = mean = hi", const),
        ("NaN values are dropped before counting n", with_nan),
    ]
    return [Case(name, (scores,), _q4_expected(scores), compare=compare_rows) for name, scores in cases]


register_question(
    "q4",
    _q4_public,
    title="summary_table(scores) -> list of rows {metric, method, mean, lo, hi, n}",
    hint=q4_hint,
)
