"""Tests for vit_course.tools.grading.reference: reference answers and hidden cases.

Notebook 08's questions, q1 and q2 (on hand-computed values), q3 (the evaluation suite) and
q4 (the results table). The reference answers must earn every case (public and hidden), and
the mistakes the questions are written to catch must lose cases. A tiny course ViT on 32-px synthetic images
(4×4 patch grid) keeps the suite runs to a second or two.
"""

from __future__ import annotations

import pytest
import torch

from vit_course.data.synthetic import SyntheticFood
from vit_course.grading import get_question
from vit_course.tools.grading.checks import run_cases
from vit_course.tools.grading.questions import Q3_ALL_METHODS, Q3_METRICS
from vit_course.metrics import run_suite, summarise
from vit_course.models import ViT
from vit_course.runtime import set_seed
from vit_course.tools.grading.reference import deletion_auc as ref_deletion_auc
from vit_course.tools.grading.reference import explainer, run_course_suite, summary_table
from vit_course.tools.grading.reference import reference_q2_pointing as ref_grid_pointing_score

# ----------------------------------------------------------------------------- q1, q2


def test_reference_answers_match_hand_computed_values():
    assert ref_deletion_auc(torch.tensor([1.0, 0.5, 0.0])) == pytest.approx(0.5)
    assert ref_deletion_auc(torch.tensor([1.0, 0.2, 0.1, 0.0])) == pytest.approx(0.8 / 3)
    m = torch.tensor([[1.0, 2.0], [-3.0, 1.0]])
    assert ref_grid_pointing_score(m, 1) == pytest.approx(0.5)
    assert ref_grid_pointing_score(m, 2) == 0.0
    with pytest.raises(ValueError, match="even"):
        ref_grid_pointing_score(torch.ones(3, 4), 0)


def test_hidden_cases_pass_for_the_reference_and_fail_for_mistakes():
    q2 = get_question("q2")
    cases = q2.public_cases() + q2.hidden_cases()
    assert len(cases) == 15
    assert run_cases("q2", cases, (ref_grid_pointing_score,)).fraction == 1.0
    assert run_cases("q2", cases, (_wrong_q2,)).n_passed == 6  # the partial submission's mistake
    assert run_cases("q2", q2.hidden_cases(), (_wrong_q2,)).n_passed == 3  # what the grader counts


def _wrong_q2(attribution, target_tile):  # counts negative attribution too
    m = torch.as_tensor(attribution, dtype=torch.float64)
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(m[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / m.sum())


# ----------------------------------------------------------------------------- q3


STEPS = 3


def _all_cases(qid):
    q = get_question(qid)
    return q.public_cases() + q.hidden_cases()


@pytest.fixture(scope="module")
def setup():
    set_seed(1)
    model = ViT(img_size=32, patch_size=8, num_transformer_layers=2, embedding_dim=32, mlp_size=64,
                num_heads=2, num_classes=3, attn_dropout=0.0, mlp_dropout=0.0, embedding_dropout=0.0).eval()
    torch.nn.init.normal_(model.head.weight, std=2.0)  # an untrained model: predict more than one class
    images = SyntheticFood(9, size=32, split="test").images.float() / 255
    with torch.inference_mode():
        predicted = model(images).argmax(dim=1)
    # Labels: the predictions (so the grid game has correct images), except two images made wrong.
    labels = predicted.clone()
    labels[:2] = (labels[:2] + 1) % 3
    suite = run_course_suite(model, images, labels, STEPS)
    return model, images, labels, suite


def _objects(setup, suite=None, fn=run_course_suite):
    model, images, labels, reference = setup
    return (fn, reference if suite is None else suite, model, images, labels, STEPS)


def test_reference_suite_is_complete(setup):
    _, images, _, suite = setup
    assert suite.methods == list(Q3_ALL_METHODS)
    assert all(set(suite.scores[m]) == set(Q3_METRICS) for m in Q3_ALL_METHODS)
    assert suite.grids is not None, "the fixture must give the grid game enough correct images"
    assert suite.curves["rollout"]["deletion"].shape == (len(images), STEPS + 1)


def test_q3_reference_earns_every_case(setup):
    cases = _all_cases("q3")
    assert len(cases) == 11
    result = run_cases("q3", cases, _objects(setup))
    assert result.fraction == 1.0, result.report()


def _suite(setup, **changes):
    model, images, labels, _ = setup
    explainers = changes.pop("explainers", {m: explainer(m) for m in ("rollout", "grad_rollout", "gradcam")})
    options = dict(steps=STEPS, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), progress=False)
    options.update(changes)
    return run_suite(model, images, labels, explainers, **options)


def test_q3_imagenet_normalisation_is_caught(setup):
    suite = _suite(setup, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    result = run_cases("q3", _all_cases("q3"), _objects(setup, suite))
    failed = {c.name for c in result.cases if not c.passed}
    assert "Chefer's test used the synthetic images' scale (mean 0, std 1)" in failed
    assert "hidden: Chefer positive and negative tests recomputed" in failed
    assert "mean=(0, 0, 0), std=(1, 1, 1)" in result.report()


def test_q3_missing_control_wrong_steps_and_swapped_methods_are_caught(setup):
    no_controls = _suite(setup, controls=())
    result = run_cases("q3", get_question("q3").public_cases(), _objects(setup, no_controls))
    assert not result.cases[0].passed and "expected the methods" in result.cases[0].message

    wrong_steps = _suite(setup, steps=STEPS + 2)
    result = run_cases("q3", _all_cases("q3"), _objects(setup, wrong_steps))
    assert [c.name for c in result.cases if not c.passed] == [
        "deletion and insertion curves have steps + 1 points",
        "hidden: deletion and insertion curves of the first 2 images",
    ]

    swapped = _suite(setup, explainers={"rollout": explainer("grad_rollout"), "grad_rollout": explainer("rollout"),
                                        "gradcam": explainer("gradcam")})
    result = run_cases("q3", _all_cases("q3"), _objects(setup, swapped))
    failed = [c for c in result.cases if not c.passed]
    assert any("maps of 'rollout' differ" in c.message for c in failed)
    assert result.fraction < 1.0

    other_baseline = _suite(setup, baseline="mean")
    result = run_cases("q3", _all_cases("q3"), _objects(setup, other_baseline))
    assert [c.name for c in result.cases if not c.passed] == [
        "hidden: deletion and insertion curves of the first 2 images"]


@pytest.mark.filterwarnings("ignore:grid pointing game skipped")
def test_q3_stub_is_not_implemented_and_a_failed_run_says_so(setup):
    def stub(model, images, labels, steps):
        raise NotImplementedError("q3: write your code here")

    result = run_cases("q3", _all_cases("q3"), (stub, None) + _objects(setup)[2:])
    assert result.not_implemented and result.fraction == 0.0
    result = run_cases("q3", get_question("q3").public_cases(), (run_course_suite, None) + _objects(setup)[2:])
    assert not result.not_implemented and result.fraction == 0.0
    assert all("`suite` is None: run the q3 cell" in c.message for c in result.cases)


# ----------------------------------------------------------------------------- q4


def _strip(rows):
    return [{k: r[k] for k in ("metric", "method", "mean", "lo", "hi", "n")} for r in rows]


def test_q4_reference_matches_summarise_and_earns_every_case():
    cases = _all_cases("q4")
    assert len(cases) == 11
    assert run_cases("q4", cases, (summary_table,)).fraction == 1.0
    assert run_cases("q4", cases, (lambda scores: summarise(scores),)).fraction == 1.0  # extra keys are fine
    scores = {"a": {"x": [0.1, float("nan"), 0.5]}, "b": {"y": [1.0, 2.0], "x": [0.3, 0.4]}}
    assert summary_table(scores) == _strip(summarise(scores))
    assert [(r["metric"], r["method"], r["n"]) for r in summary_table(scores)] == [("x", "a", 2), ("x", "b", 2),
                                                                                   ("y", "b", 2)]


def test_q4_mistakes_are_caught():
    cases = _all_cases("q4")

    def method_major(scores):  # rows method by method instead of metric by metric
        rows = summary_table(scores)
        order = list(scores)
        return sorted(rows, key=lambda r: order.index(r["method"]))

    def counts_nan(scores):
        rows = summary_table(scores)
        for r in rows:
            per = scores[r["method"]][r["metric"]]
            r["n"] = len(per)
        return rows

    def plain_mean_only(scores):  # no interval: lo = hi = mean
        return [{**r, "lo": r["mean"], "hi": r["mean"]} for r in summary_table(scores)]

    assert run_cases("q4", cases, (method_major,)).fraction < 1.0
    nan_result = run_cases("q4", cases, (counts_nan,))
    assert [c.name for c in nan_result.cases if not c.passed] == ["NaN values are dropped before counting n",
                                                                  "hidden: NaN values are dropped and not counted"]
    assert run_cases("q4", cases, (plain_mean_only,)).n_passed == 1  # only the constant-values case
