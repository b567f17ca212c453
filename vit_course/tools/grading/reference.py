"""Reference answers and hidden test cases for the notebook-08 questions (grader only).

Importing this module attaches the hidden cases to the questions registered in
``vit_course.tools.grading.questions`` (``set_hidden_cases``, at the end of this file). The
hidden-test cells' ``autograde`` imports it inside the grading kernel (and under nbval, in
the solution version); student notebooks never import it. It can be left out of a student
distribution: ``check`` only needs ``vit_course.tools.grading.questions``.
"""

from __future__ import annotations

import torch

from vit_course.tools.grading.compare import _close
from vit_course.tools.grading.questions import (
    Q3_ALL_METHODS,
    Q3_CHEFER_IMAGES,
    Q3_METHODS,
    Case,
    _q3_case,
    compare_rows,
    set_hidden_cases,
)


def deletion_auc(curve: torch.Tensor) -> float:
    """Area under a deletion (or insertion) curve by the trapezoid rule, x in [0, 1].

    Args:
        curve: (steps+1,) scores after removing 0, 1/steps, …, 1 of the tokens.
    Returns:
        The area, a float.
    """
    curve = torch.as_tensor(curve, dtype=torch.float64)
    if curve.ndim != 1 or curve.numel() < 2:
        raise ValueError(f"curve must be 1-D with at least 2 points, got shape {tuple(curve.shape)}")
    steps = curve.numel() - 1
    return float(((curve[1:] + curve[:-1]) / 2).sum() / steps)


def reference_q2_pointing(attribution: torch.Tensor, target_tile: int) -> float:
    """The q2 answer: share of positive attribution inside the target tile of a 2×2 grid.

    Not ``vit_course.metrics.grid_pointing_score``: that one scores a map with no positive
    value 0.25 (chance), q2 asks for 0.0.

    Args:
        attribution: (h, w) map, h and w even.
        target_tile: 0..3, row-major (0 top-left, 3 bottom-right).
    Returns:
        Positive attribution in the tile / total positive attribution; 0.0 when none is positive.
    """
    m = torch.as_tensor(attribution, dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] % 2 or m.shape[1] % 2:
        raise ValueError(f"attribution must be (h, w) with h and w even, got shape {tuple(m.shape)}")
    if target_tile not in (0, 1, 2, 3):
        raise ValueError(f"target_tile must be 0, 1, 2 or 3, got {target_tile!r}")
    positive = m.clamp(min=0)
    total = positive.sum()
    if total == 0:
        return 0.0
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(positive[row * h : (row + 1) * h, col * w : (col + 1) * w].sum() / total)


def q1_hidden_cases() -> list[Case]:
    """Curves of several lengths and shapes (seeded)."""
    g = torch.Generator().manual_seed(6001)
    curves = [
        ("random curve, 10 steps", torch.rand(11, generator=g, dtype=torch.float64)),
        ("random curve, 100 steps", torch.rand(101, generator=g, dtype=torch.float64)),
        ("monotone decreasing, 20 steps", torch.rand(21, generator=g, dtype=torch.float64).sort(descending=True).values),
        ("float32 curve, 7 steps", torch.rand(8, generator=g)),
        ("all zeros, 5 steps", torch.zeros(6, dtype=torch.float64)),
        ("rising then falling, 2 steps", torch.tensor([0.2, 0.9, 0.1], dtype=torch.float64)),
    ]
    return [Case(f"hidden: {name}", (curve,), deletion_auc(curve), rtol=1e-5, atol=1e-6) for name, curve in curves]


def q2_hidden_cases() -> list[Case]:
    """Random signed maps on a ViT-B/16 grid (14×14) and others, every tile (seeded)."""
    g = torch.Generator().manual_seed(6002)
    cases = []
    for tile in range(4):
        m = torch.randn(14, 14, generator=g, dtype=torch.float64)
        cases.append(Case(f"hidden: signed 14x14 map, tile {tile}", (m, tile), reference_q2_pointing(m, tile)))
    m = torch.rand(8, 6, generator=g, dtype=torch.float64)
    cases.append(Case("hidden: positive 8x6 map, tile 2", (m, 2), reference_q2_pointing(m, 2)))
    m = torch.zeros(14, 14)
    m[10, 12] = 3.0  # one hot spot in tile 3
    cases.append(Case("hidden: single hot spot, tile 3", (m, 3), 1.0))
    cases.append(Case("hidden: single hot spot, tile 0", (m.clone(), 0), 0.0))
    cases.append(Case("hidden: all zero map", (torch.zeros(6, 6), 1), 0.0))
    return cases


# --------------------------------------------------------------------------- q3: the suite


def explainer(method: str):
    """``explain_fn(model, images, target)`` for ``run_suite``: ``explain`` with ``method`` bound."""
    from vit_course.explain import explain

    def explain_fn(model, images, target=None):
        return explain(model, images, method=method, target=target)

    explain_fn.__name__ = f"explain_{method}"
    return explain_fn


def run_course_suite(model, images: torch.Tensor, labels, steps: int):
    """The q3 answer: rollout, gradient rollout and Grad-CAM plus both controls, one suite call.

    Args:
        model: the course ViT trained on synthetic images.
        images: (B, 3, H, W) synthetic images in [0, 1] (not normalised).
        labels: (B,) true classes.
        steps: deletion/insertion steps.
    Returns:
        The ``SuiteResult`` of ``vit_course.metrics.run_suite``.
    """
    from vit_course.metrics import run_suite

    explainers = {method: explainer(method) for method in Q3_METHODS}
    return run_suite(model, images, labels, explainers, steps=steps, mean=(0.0, 0.0, 0.0),
                     std=(1.0, 1.0, 1.0), progress=False)


# The hidden q3 cases recompute parts of the student's suite from its own maps with the
# package's metric functions (a second full suite run would double the grading time).
Q3_CURVE_IMAGES = 2  # images whose deletion/insertion curves are recomputed, every method
Q3_EXTRA_MAPS = slice(2, 6)  # images whose explainer maps are recomputed (check did 0..1)
Q3_GRID_MAPS = 3  # grids whose maps are recomputed
_UNNORMALISED = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _q3_curves(suite, model, images, labels, steps) -> str | None:
    from vit_course.metrics import deletion_curve, insertion_curve

    k = min(Q3_CURVE_IMAGES, len(images))
    images, targets = images[:k], suite.targets[:k]
    for method in Q3_ALL_METHODS:
        for kind, fn in (("deletion", deletion_curve), ("insertion", insertion_curve)):
            ref = fn(model, images, suite.maps[method][:k], targets, steps=steps, baseline="blur",
                     progress=False)
            problem = _close(suite.curves[method][kind][:k], ref,
                             f"{kind} curve of {method!r} (blur baseline, steps={steps})")
            if problem:
                return problem + "; keep run_suite's default baseline and pass steps=steps"
    return None


def _q3_aucs(suite, model, images, labels, steps) -> str | None:
    from vit_course.metrics import auc, chefer_auc

    for method in Q3_ALL_METHODS:
        curves, scores = suite.curves[method], suite.scores[method]
        for metric, ref in (("deletion_auc", auc(curves["deletion"])), ("insertion_auc", auc(curves["insertion"])),
                            ("chefer_positive_auc", chefer_auc(curves["chefer_positive"])),
                            ("chefer_negative_auc", chefer_auc(curves["chefer_negative"]))):
            problem = _close(scores[metric], ref, f"{method} {metric} vs the area under its curve", atol=1e-9)
            if problem:
                return problem
    return None


def _q3_chefer(suite, model, images, labels, steps) -> str | None:
    from vit_course.metrics import perturbation_test

    k = min(Q3_CHEFER_IMAGES, len(images))
    for method in ("gradcam", "center_gaussian"):
        ref = perturbation_test(model, images[:k], suite.maps[method][:k], suite.labels[:k], progress=False,
                                **_UNNORMALISED)
        for kind in ("positive", "negative"):
            problem = _close(suite.curves[method][f"chefer_{kind}"][:k], ref[kind],
                             f"Chefer {kind} test of {method!r} (un-normalised images)", atol=0)
            if problem:
                return problem
    return None


def _q3_controls(suite, model, images, labels, steps) -> str | None:
    import inspect

    from vit_course.explain import explain
    from vit_course.metrics import run_suite

    chunk = inspect.signature(run_suite).parameters["explain_batch_size"].default
    seed = inspect.signature(run_suite).parameters["seed"].default
    stream = torch.Generator().manual_seed(seed)  # one random stream over the chunks, as run_suite
    ref = torch.cat([explain(model, images[i:i + chunk], method="random", target=suite.targets[i:i + chunk],
                             seed=stream) for i in range(0, len(images), chunk)])
    problem = _close(suite.maps["random"], ref, f"random control maps (run_suite's default seed {seed})", atol=0)
    if problem:
        return problem
    centre = explain(model, images, method="center_gaussian", target=suite.targets)
    return _close(suite.maps["center_gaussian"], centre, "centre-Gaussian maps")


def _q3_more_maps(suite, model, images, labels, steps) -> str | None:
    from vit_course.explain import explain

    rows = Q3_EXTRA_MAPS
    if len(images) <= rows.start:
        return None
    for method in Q3_METHODS:
        ref = explain(model, images[rows], method=method, target=suite.targets[rows])
        problem = _close(suite.maps[method][rows], ref, f"maps of {method!r} on images {rows.start}..")
        if problem:
            return problem
    return None


def _q3_grid(suite, model, images, labels, steps) -> str | None:
    from vit_course.explain import explain
    from vit_course.metrics import grid_pointing_score, make_grid_images

    import inspect

    from vit_course.metrics import run_suite

    seed = inspect.signature(run_suite).parameters["seed"].default
    correct = (suite.targets == suite.labels).nonzero().flatten()
    try:
        ref = make_grid_images(images[correct], suite.labels[correct], None, len(images), seed)
    except ValueError:
        return None if suite.grids is None else "expected no grids (too few correct images)"
    if suite.grids is None:
        return "the suite has no grids: keep run_suite's grid game on"
    problem = _close(suite.grids.target_tile, ref.target_tile,
                     "grid target tiles (grids from the correctly classified images, default n_grids and seed)", atol=0)
    problem = problem or _close(suite.grids.grids, ref.grids, "grid images", atol=1e-6)
    if problem:
        return problem
    k = min(Q3_GRID_MAPS, len(ref.grids))
    for method in Q3_METHODS:
        maps = explain(model, ref.grids[:k], method=method, target=ref.target_class[:k].to(ref.grids.device))
        problem = _close(suite.grid_maps[method][:k], maps, f"grid maps of {method!r}")
        problem = problem or _close(suite.scores[method]["grid_pointing"],
                                    grid_pointing_score(suite.grid_maps[method], suite.grids.target_tile),
                                    f"grid pointing scores of {method!r}", atol=1e-9)
        if problem:
            return problem
    return None


def q3_hidden_cases() -> list[Case]:
    """Recompute parts of the student's suite with the package's metric functions."""
    return [
        _q3_case(f"hidden: deletion and insertion curves of the first {Q3_CURVE_IMAGES} images", _q3_curves),
        _q3_case("hidden: every AUC is the area under its own curve", _q3_aucs),
        _q3_case("hidden: Chefer positive and negative tests recomputed", _q3_chefer),
        _q3_case("hidden: the random and centre-Gaussian controls are run_suite's defaults", _q3_controls),
        _q3_case("hidden: maps of images 2-5 match explain(...)", _q3_more_maps),
        _q3_case("hidden: grid pointing game built and scored with the defaults", _q3_grid),
    ]


# --------------------------------------------------------------------------- q4: the table


def summary_table(scores: dict) -> list[dict]:
    """The q4 answer: one row per (metric, method) with the mean and its 95 % bootstrap interval.

    Args:
        scores: ``scores[method][metric]`` = per-image values (tensor, array or list).
    Returns:
        Rows ``{"metric", "method", "mean", "lo", "hi", "n"}``: metrics in order of first
        appearance, then methods in the order of ``scores``; ``n`` counts non-NaN values.
    """
    import numpy as np

    from vit_course.metrics import bootstrap_ci

    metrics = list(dict.fromkeys(m for per in scores.values() for m in per))
    rows = []
    for metric in metrics:
        for method in [m for m, per in scores.items() if metric in per]:
            values = np.asarray(scores[method][metric], dtype=np.float64).ravel()
            values = values[~np.isnan(values)]        # NaN dropped here, so no warning below
            mean, lo, hi = bootstrap_ci(values)
            rows.append({"metric": metric, "method": method, "mean": mean, "lo": lo, "hi": hi,
                         "n": int(values.size)})
    return rows


def q4_hidden_cases() -> list[Case]:
    """Random score dicts of several sizes and types, with NaN, single values and gaps (seeded)."""
    import numpy as np

    g = torch.Generator().manual_seed(6004)
    methods = ["rollout", "grad_rollout", "gradcam", "random", "center_gaussian"]
    metrics = ["deletion_auc", "insertion_auc", "chefer_positive_auc", "chefer_negative_auc", "grid_pointing"]
    full = {m: {k: torch.rand(24, generator=g, dtype=torch.float64) for k in metrics} for m in methods}
    arrays = {m: {k: np.asarray(torch.rand(7, generator=g)) for k in metrics[:2]} for m in methods[:3]}
    lists = {m: {"pointing_game": torch.randint(0, 2, (10,), generator=g).double().tolist()} for m in methods[:2]}
    with_nan = {"rollout": {"relevance_mass_accuracy": torch.tensor([0.2, float("nan"), 0.6, 0.4, 0.9])},
                "random": {"relevance_mass_accuracy": torch.tensor([0.1, 0.3, float("nan"), float("nan"), 0.2])}}
    single = {"gradcam": {"deletion_auc": torch.tensor([0.42])}, "random": {"deletion_auc": torch.tensor([0.6, 0.7])}}
    ragged = {"gradcam": {"grid_pointing": torch.rand(5, generator=g)},
              "rollout": {"deletion_auc": torch.rand(9, generator=g), "grid_pointing": torch.rand(5, generator=g)}}
    cases = [
        ("five methods x five metrics, 24 images (tensors)", full),
        ("NumPy arrays, three methods", arrays),
        ("plain lists of 0/1 hits", lists),
        ("NaN values are dropped and not counted", with_nan),
        ("a single value: lo = mean = hi", single),
        ("metric order follows first appearance", ragged),
    ]
    return [Case(f"hidden: {name}", (scores,), summary_table(scores), compare=compare_rows) for name, scores in cases]


# --------------------------------------------------------------------------- attach


set_hidden_cases("q1", q1_hidden_cases)
set_hidden_cases("q2", q2_hidden_cases)
set_hidden_cases("q3", q3_hidden_cases)
set_hidden_cases("q4", q4_hidden_cases)


# --------------------------------------------------------------------------- the grader's plan

#: q3 is graded on a batch of its own: the student's ``run_course_suite`` runs on these
#: images in the grading kernel, the reference one here; the suites are compared part by part.
Q3_GRADING_IMAGES = 8
Q3_GRADING_STEPS = 4
Q3_PARTS = (
    ("methods", "the suite holds rollout, grad_rollout, gradcam and both controls"),
    ("maps", "maps of rollout, grad_rollout and gradcam match explain(...)"),
    ("controls", "the random and centre-Gaussian controls are run_suite's defaults"),
    ("curves", "deletion and insertion curves (blur baseline, steps + 1 points)"),
    ("chefer", "Chefer positive and negative tests on un-normalised images"),
    ("scores", "every AUC is the area under its own curve"),
    ("grid", "grid pointing game built and scored with the defaults"),
)
MODEL_INPUT = {"__model__": "synthetic_vit"}


def _q3_plan() -> tuple[list[dict], list[dict], object]:
    from vit_course.data.synthetic import SyntheticFood
    from vit_course.tools.grading.collect import resolve_model

    data = SyntheticFood(Q3_GRADING_IMAGES, split="test")
    images, labels = data.images.float() / 255, data.labels
    suite = run_course_suite(resolve_model(MODEL_INPUT), images, labels, Q3_GRADING_STEPS)
    calls = [{"args": [MODEL_INPUT, images, labels, Q3_GRADING_STEPS], "kwargs": {}}]
    cases = [{"name": f"hidden: {title}", "call": 0, "weight": 1.0, "check": f"suite:{part}"}
             for part, title in Q3_PARTS]
    return calls, cases, suite


def grading_plan(qid: str) -> tuple[list[dict], list[dict], object] | None:
    """What the grader needs for ``qid``: ``(calls, cases, shared)``, or ``None`` when unknown.

    ``calls`` are the hidden inputs (``{"args", "kwargs"}``) the grading kernel runs the
    student's function on; ``cases`` say how each output is compared (``check``: ``values``,
    ``rows`` or ``suite:<part>``, with ``rtol``, ``atol`` and ``expected``); ``shared`` is
    the reference suite for q3. Computed in the grader's reference process
    (``vit_course.tools.grading.expected``), never in a student's kernel.
    """
    from vit_course.tools.grading.questions import get_question

    if qid == "q3":
        return _q3_plan()
    try:
        question = get_question(qid)
    except ValueError:
        return None
    calls, cases = [], []
    for case in question.hidden_cases():
        check = "rows" if case.compare is compare_rows else "values" if case.compare is None else None
        if case.call is not None or check is None:
            return None
        calls.append({"args": list(case.args), "kwargs": dict(case.kwargs)})
        cases.append({"name": case.name, "call": len(calls) - 1, "weight": case.weight, "check": check,
                      "rtol": case.rtol, "atol": case.atol, "expected": case.expected})
    return (calls, cases, None) if cases else None
