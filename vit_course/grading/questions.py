"""Question registry: the public test cases ``check`` runs and the hidden ones the grader runs.

A question is registered once with its public cases (shown to students through ``check``)
and, optionally, a ``hidden`` callable that returns more cases for the grader. Hidden cases
and reference implementations live in ``vit_course.grading.reference`` and are imported only
when the grader asks for them, so that module can be left out of a student distribution
without breaking ``check``.

Cases may be given lazily (a zero-argument callable returning cases) so that importing the
registry does not import torch.

The notebook-06 questions registered here:

- ``q1``: ``deletion_auc(curve) -> float`` with ``curve`` a 1-D tensor of ``steps + 1``
  probabilities measured after removing 0, 1/steps, …, 1 of the tokens; the area under the
  curve by the trapezoid rule over the fraction removed, x in [0, 1].
- ``q2``: ``grid_pointing_score(attribution, target_tile) -> float`` with ``attribution`` an
  (h, w) map of a 2×2 grid image (h and w even) and ``target_tile`` in 0..3 (row-major:
  0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right); the positive attribution inside
  the target tile divided by the total positive attribution, 0.0 when nothing is positive.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "Case",
    "Question",
    "register_question",
    "get_question",
    "registered_questions",
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

    def public_cases(self) -> list[Case]:
        """The cases ``check`` runs (students see their names, inputs and expected values)."""
        return _resolve(self._public)

    def hidden_cases(self) -> list[Case]:
        """The grader's extra cases (empty when none are registered)."""
        return _resolve([self._hidden]) if self._hidden is not None else []


_REGISTRY: dict[str, Question] = {}


def register_question(
    qid: str,
    *cases: CaseSource,
    title: str = "",
    hidden: Callable[[], Iterable[Case]] | None = None,
    replace: bool = False,
) -> Question:
    """Register question ``qid`` with its public ``cases`` and optional ``hidden`` cases.

    Args:
        qid: question id, the same as the notebook cells' ``metadata.vit_course.question``.
        *cases: ``Case`` objects or zero-argument callables returning cases (lazy).
        title: what the student implements, e.g. ``"deletion_auc(curve) -> float"``.
        hidden: zero-argument callable returning the grader's extra cases.
        replace: allow replacing an existing registration.
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
    question = Question(qid=qid, title=title, _public=tuple(cases), _hidden=hidden)
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


def _lazy_hidden(name: str) -> Callable[[], Iterable[Case]]:
    def load() -> Iterable[Case]:
        module = importlib.import_module("vit_course.grading.reference")
        return getattr(module, name)()

    return load


# --------------------------------------------------------------------------- notebook 06


def _q1_public() -> list[Case]:
    import torch

    def t(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    return [
        Case("two points (steps=1)", (t([1.0, 0.0]),), 0.5),
        Case("linear decay, 4 steps", (t([1.0, 0.75, 0.5, 0.25, 0.0]),), 0.5),
        Case("constant curve", (t([0.8] * 6),), 0.8),
        Case("sharp drop, 3 steps", (t([1.0, 0.2, 0.1, 0.0]),), 0.8 / 3),
    ]


def _q2_public() -> list[Case]:
    import torch

    tile0 = torch.zeros(4, 4, dtype=torch.float64)
    tile0[:2, :2] = 1.0
    mixed = torch.zeros(4, 4, dtype=torch.float64)
    mixed[:2, 2:] = 2.0  # tile 1 positive
    mixed[2:, :2] = -5.0  # tile 2 negative: not counted
    ramp = torch.zeros(2, 6, dtype=torch.float64)
    ramp[0] = torch.arange(1.0, 7.0, dtype=torch.float64)
    return [
        Case("all attribution in tile 0", (tile0, 0), 1.0),
        Case("uniform map, target tile 3", (torch.ones(4, 4, dtype=torch.float64), 3), 0.25),
        Case("negative values ignored, target tile 1", (mixed, 1), 1.0),
        Case("negative values ignored, target tile 2", (mixed, 2), 0.0),
        Case("no positive attribution", (-torch.ones(4, 4, dtype=torch.float64), 0), 0.0),
        Case("2x6 map, target tile 1", (ramp, 1), 15.0 / 21.0),
    ]


register_question(
    "q1",
    _q1_public,
    title="deletion_auc(curve) -> float",
    hidden=_lazy_hidden("q1_hidden_cases"),
)
register_question(
    "q2",
    _q2_public,
    title="grid_pointing_score(attribution, target_tile) -> float",
    hidden=_lazy_hidden("q2_hidden_cases"),
)
