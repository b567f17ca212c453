"""Bad inputs to the metrics (and the mask helpers they use) get a clear answer (issue 13).

One row per bad input: ``(id, call, exception type, regex that must name the problem and
the fix, model may run first)``. ``call(e)`` gets the shared objects of :func:`e` (a tiny
ViT, images, maps with one NaN/inf entry in image 1, masks). Unless the last column says
so, the model must not have run a single forward pass when the error comes: bad inputs fail
at the public boundary, before any work. Then a few documented conversions, with the
converted values checked.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.metrics._models import tiny_vit
from vit_course import metrics as M
from vit_course.explain import explain
from vit_course.imaging import mask_coverage, mask_to_grid

pytestmark = pytest.mark.usefixtures("one_thread")

NAN, INF = float("nan"), float("inf")
IMG = r"images \[1\] \(batch index\) contain NaN or inf pixels.*Drop or repair.*nan_to_num"
MAP = r"contains NaN or inf in map\(s\) \[1\] \(batch index\).*nan_to_num"
NUM = r"holds NaN or inf at index .*nan_to_num"
Q = {"progress": False}                          # no tqdm bars in the tests


@pytest.fixture(scope="module")
def e() -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    maps = torch.rand(2, 4, 4, generator=g)
    nan_x, inf_x = x.clone(), x.clone()
    nan_x[1, 0, 3, 3], inf_x[1, 2, 0, 0] = NAN, -INF
    nan_maps, inf_maps = maps.clone(), maps.clone()
    nan_maps[1, 0, 0], inf_maps[1, 2, 1] = NAN, INF
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, :8, :8] = True                        # token 0 of the 4x4 grid
    return SimpleNamespace(m=tiny_vit(), x=x, maps=maps, nan_x=nan_x, inf_x=inf_x, nan_maps=nan_maps,
                           inf_maps=inf_maps, mask=mask, y=torch.tensor([0, 1]))


def _fn(out):                                     # an explainer returning ``out(images)``
    return lambda model, images, target: out(images)


def _suite(e, fn, **kw):
    return M.run_suite(e.m, e.x, e.y, {"mine": fn}, steps=2, controls=(), grid_game=False, **Q, **kw)


ROWS = [
    # --- non-finite images: refused, the image named by its batch index
    ("deletion NaN pixel", lambda e: M.deletion_curve(e.m, e.nan_x, e.maps, **Q), ValueError, IMG, False),
    ("insertion -inf pixel", lambda e: M.insertion_curve(e.m, e.inf_x, e.maps, **Q), ValueError, IMG, False),
    ("perturbation test NaN pixel", lambda e: M.perturbation_test(e.m, e.nan_x, e.maps, **Q),
     ValueError, IMG, False),
    ("ROAD NaN pixel", lambda e: M.road_curve(e.m, e.nan_x, e.maps, **Q), ValueError, IMG, False),
    ("linear_impute inf pixel", lambda e: M.linear_impute(e.inf_x, e.mask), ValueError, IMG, False),
    ("make_baseline NaN pixel", lambda e: M.make_baseline(e.nan_x, "mean"), ValueError, IMG, False),
    ("grid images NaN pixel", lambda e: M.make_grid_images(e.nan_x.repeat(2, 1, 1, 1), [0, 1, 2, 0]),
     ValueError, r"images \[1, 3\] \(batch index\).*nan_to_num", False),
    ("run_suite NaN pixel", lambda e: M.run_suite(e.m, e.nan_x, e.y, {}, **Q), ValueError, IMG, False),
    ("cascading randomisation NaN pixel", lambda e: M.cascading_randomization(
        e.m, e.nan_x, functools.partial(explain, method="rollout"), **Q), ValueError, IMG, False),
    ("correctly_classified inf pixel", lambda e: M.correctly_classified(e.m, e.inf_x, [0, 1]),
     ValueError, IMG, False),
    # --- non-finite maps (NaN, +inf, -inf): refused, the map named by its index
    ("deletion +inf map", lambda e: M.deletion_curve(e.m, e.x, e.inf_maps, **Q), ValueError, MAP, False),
    ("ROAD NaN map", lambda e: M.road_curve(e.m, e.x, e.nan_maps, **Q), ValueError, MAP, False),
    ("grid pointing +inf map", lambda e: M.grid_pointing_score(e.inf_maps, [0, 1]), ValueError, MAP, False),
    ("grid pointing -inf map", lambda e: M.grid_pointing_score(-e.inf_maps, [0, 1]), ValueError, MAP, False),
    ("mass on mask +inf map", lambda e: M.mass_on_mask(e.inf_maps, e.mask), ValueError, MAP, False),
    ("pointing game NaN map", lambda e: M.pointing_game(e.nan_maps, e.mask), ValueError, MAP, False),
    ("relevance mass +inf map", lambda e: M.relevance_mass_accuracy(e.inf_maps, e.mask),
     ValueError, MAP, False),
    # --- curves and summaries of numbers
    ("auc with a NaN", lambda e: M.auc([1, NAN, 0]), ValueError, r"curve holds NaN or inf at index \[1\]", False),
    ("auc with +inf", lambda e: M.auc(torch.tensor([[1.0, 0.5], [INF, 0.0]])), ValueError,
     r"curve holds NaN or inf at index \[1, 0\].*nan_to_num", False),
    ("auc of a string", lambda e: M.auc("0.5"), TypeError, r"curve must be numbers \(a tensor, NumPy array", False),
    ("auc of None", lambda e: M.auc(None), TypeError, "curve must be numbers", False),
    ("chefer_auc with a NaN", lambda e: M.chefer_auc([1.0] * 9 + [NAN]), ValueError, r"accuracy .*\[9\]", False),
    ("chefer_auc of a string", lambda e: M.chefer_auc("abcdefghij"), TypeError, "accuracy must be numbers", False),
    ("bootstrap of nothing", lambda e: M.bootstrap_ci([]), ValueError, "no value that is not NaN; score at least", False),
    ("bootstrap of NaNs only", lambda e: M.bootstrap_ci([NAN, NAN]), ValueError, "no value that is not NaN", False),
    ("bootstrap with inf", lambda e: M.bootstrap_ci([1.0, INF]), ValueError, r"holds inf at index \[1\]", False),
    ("bootstrap of a string", lambda e: M.bootstrap_ci("abc"), TypeError, "values must be numbers", False),
    ("bootstrap ci as a string", lambda e: M.bootstrap_ci([1.0, 2.0], ci="95%"), ValueError,
     r"ci must be in \(0, 1\), e.g. 0.95", False),
    ("bootstrap seed as a string", lambda e: M.bootstrap_ci([1.0, 2.0], seed="a"), TypeError,
     "seed must be an int >= 0", False),
    ("summarise inf", lambda e: M.summarise({"a": {"grid_pointing": [0.1, INF]}}),
     ValueError, r"results\['a'\]\['grid_pointing'\] holds inf", False),
    ("summarise a string", lambda e: M.summarise({"a": {"deletion_auc": "low"}}), TypeError,
     r"results\['a'\]\['deletion_auc'\] must be numbers", False),
    ("spearman with a NaN", lambda e: M.spearman(e.nan_maps, e.maps), ValueError, r"a holds NaN or inf at index \[1", False),
    ("ssim with inf", lambda e: M.ssim(e.maps, e.inf_maps), ValueError, r"b holds NaN or inf", False),
    ("ssim sigma 0", lambda e: M.ssim(e.maps, e.maps, sigma=0), ValueError, "sigma must be a positive number", False),
    ("ssim window 0", lambda e: M.ssim(e.maps, e.maps, window=0), ValueError, "window must be a positive int", False),
    # --- tile indices, labels, targets
    ("float tile index", lambda e: M.grid_pointing_score(e.maps, [1.7, 0]), TypeError,
     "target_tile must hold integer .*float", False),
    ("bool tile index", lambda e: M.grid_pointing_score(e.maps, torch.tensor([True, False])), TypeError,
     "target_tile must hold integer .*bool", False),
    ("tile index 4", lambda e: M.grid_pointing_score(e.maps, [4, 0]), ValueError, r"target_tile must be in 0..3", False),
    ("tile indices of wrong length", lambda e: M.grid_pointing_score(e.maps, [0]), ValueError,
     r"one label per image \(2\)", False),
    ("tile index a string", lambda e: M.grid_pointing_score(e.maps, "top"), TypeError, "target_tile must be", False),
    ("target out of range", lambda e: M.deletion_curve(e.m, e.x, e.maps, target=7, **Q), ValueError,
     r"use indices in \[0, 2\]", True),
    ("target a bool", lambda e: M.deletion_curve(e.m, e.x, e.maps, target=True, **Q), TypeError, "got a bool", True),
    ("targets of wrong length", lambda e: M.insertion_curve(e.m, e.x, e.maps, target=[0, 1, 2], **Q),
     ValueError, "one class index per image", True),
    ("labels out of range", lambda e: M.perturbation_test(e.m, e.x, e.maps, labels=[0, 9], **Q), ValueError,
     r"valid 0..2", True),
    ("labels as bools", lambda e: M.road_curve(e.m, e.x, e.maps, labels=[True, False], **Q), TypeError,
     "integer class indices", True),
    ("labels of wrong length", lambda e: M.run_suite(e.m, e.x, [0], {}, **Q), ValueError,
     r"one label per image \(2\)", True),
    ("grid target class a bool", lambda e: M.make_grid_images(e.x.repeat(2, 1, 1, 1), [0, 1, 2, 0],
                                                              target_class=True),
     TypeError, "target_class must be an int", False),
    ("grid target class a float", lambda e: M.make_grid_images(e.x.repeat(2, 1, 1, 1), [0, 1, 2, 0],
                                                               target_class=1.0),
     TypeError, "target_class must be an int", False),
    # --- options
    ("steps 0", lambda e: M.deletion_curve(e.m, e.x, e.maps, steps=0, **Q), ValueError, "e.g. 20", False),
    ("steps huge", lambda e: M.deletion_curve(e.m, e.x, e.maps, steps=10**9, **Q), ValueError,
     r"more than the 16 tokens.*use e.g. steps=20", False),
    ("steps a float", lambda e: M.insertion_curve(e.m, e.x, e.maps, steps=2.5, **Q), TypeError,
     "steps must be a positive int", False),
    ("baseline unknown", lambda e: M.deletion_curve(e.m, e.x, e.maps, baseline="noise", **Q), ValueError,
     r"\['blur', 'mean', 'zero', 'token_drop'\]", False),
    ("precision unknown", lambda e: M.deletion_curve(e.m, e.x, e.maps, precision="fp16", steps=2, **Q),
     ValueError, r"\['float32', 'bfloat16'\]", False),
    ("suite precision unknown", lambda e: M.run_suite(e.m, e.x, e.y, {}, precision="half", **Q), ValueError,
     r"\['float32', 'bfloat16'\]", False),
    ("ROAD fraction 1.0", lambda e: M.road_curve(e.m, e.x, e.maps, fractions=(0.5, 1.0), **Q), ValueError,
     r"fractions must be a non-empty sequence of numbers in \[0, 1\)", False),
    ("ROAD fraction NaN", lambda e: M.road_curve(e.m, e.x, e.maps, fractions=(NAN,), **Q), ValueError,
     r"in \[0, 1\)", False),
    ("ROAD fractions a string", lambda e: M.road_curve(e.m, e.x, e.maps, fractions="0.5", **Q), TypeError,
     "fractions must be a sequence of numbers", False),
    ("ROAD noise a string", lambda e: M.road_curve(e.m, e.x, e.maps, noise="0.01", **Q), ValueError,
     "finite number >= 0.*try 0.01", False),
    ("ROAD noise inf", lambda e: M.road_curve(e.m, e.x, e.maps, noise=INF, **Q), ValueError,
     "finite number >= 0", False),
    ("ROAD seed a string", lambda e: M.road_curve(e.m, e.x, e.maps, seed="0", **Q), TypeError,
     "seed must be an int >= 0.*torch.Generator", False),
    ("noisy_linear_impute noise -1", lambda e: M.noisy_linear_impute(e.x, e.mask, noise=-1), ValueError,
     "finite number >= 0", False),
    ("NaN mean", lambda e: M.perturbation_test(e.m, e.x, e.maps, mean=NAN, **Q), ValueError,
     "mean must be finite per channel.*transform's values", False),
    ("std 0", lambda e: M.road_curve(e.m, e.x, e.maps, std=(0.2, 0.0, 0.2), **Q), ValueError,
     "std must be > 0 and finite", False),
    ("suite n_grids 0", lambda e: M.run_suite(e.m, e.x, e.y, {}, n_grids=0, **Q), ValueError,
     "n_grids must be a positive int", False),
    ("suite seed a string", lambda e: M.run_suite(e.m, e.x, e.y, {}, seed="42", **Q), TypeError,
     "seed must be an int or a torch.Generator", False),
    ("suite control unknown", lambda e: M.run_suite(e.m, e.x, e.y, {}, controls=("noise",), **Q), ValueError,
     r"control must be one of \['random', 'center_gaussian'\]", False),
    ("class_sensitivity others unknown", lambda e: M.class_sensitivity(e.m, e.x, _fn(torch.rand), others="x"),
     ValueError, r"\['all', 'lowest'\]", False),
    # --- masks: 0/255, 0/1 ints, NaN fractions, not an array, wrong batch
    ("uint8 0/255 mask", lambda e: mask_coverage((e.mask[0].numpy() * 255).astype(np.uint8), 4), TypeError,
     "mask > 0", False),
    ("uint8 mask in mass_on_mask", lambda e: M.mass_on_mask(e.maps, e.mask.to(torch.uint8) * 255), TypeError,
     "mask > 0", False),
    ("int 0/1 mask in pointing game", lambda e: M.pointing_game(e.maps, e.mask.long()), TypeError, "mask > 0", False),
    ("uint8 mask in rank accuracy", lambda e: M.relevance_rank_accuracy(e.maps, e.mask.to(torch.uint8)),
     TypeError, "mask > 0", False),
    ("uint8 mask in mask_to_grid", lambda e: mask_to_grid(e.mask.to(torch.uint8) * 255, 4), TypeError,
     "mask > 0", False),
    ("NaN fraction mask", lambda e: mask_coverage(torch.full((8, 8), NAN), 4), ValueError,
     r"fractions in \[0, 1\] \(no NaN\).*mask > 0.5", False),
    ("mask as a list", lambda e: M.mass_on_mask(e.maps, [[True]]), TypeError,
     "masks must be a bool torch.Tensor or NumPy array", False),
    ("masks of another batch size", lambda e: M.pointing_game(e.maps, e.mask[:1]), ValueError,
     r"masks must be \(B, H, W\) with B = 2", False),
    # --- mismatched batches, explainers with bad output (named)
    ("maps for fewer images", lambda e: M.deletion_curve(e.m, e.x, e.maps[:1], **Q), ValueError,
     r"1 maps but images has 2 images.*one map per image", False),
    ("ROAD maps for more images", lambda e: M.road_curve(e.m, e.x, e.maps.repeat(2, 1, 1), **Q), ValueError,
     "one map per image", False),
    ("upsampled maps", lambda e: M.perturbation_test(e.m, e.x, torch.rand(2, 5, 5), **Q), ValueError,
     "not upsampled maps", False),
    ("suite explainer wrong shape", lambda e: _suite(e, _fn(lambda x: torch.rand(x.shape[0], 3, 3))),
     ValueError, "maps of explainer 'mine' grid 3x3 does not tile", True),
    ("suite explainer NaN maps", lambda e: _suite(e, _fn(lambda x: torch.full((x.shape[0], 4, 4), NAN))),
     ValueError, r"maps of explainer 'mine' contains NaN or inf in map\(s\) \[0, 1\]", True),
    ("suite explainer inf maps", lambda e: _suite(e, _fn(lambda x: torch.full((x.shape[0], 4, 4), INF))),
     ValueError, "maps of explainer 'mine' contains NaN or inf", True),
    ("suite explainer returns None", lambda e: _suite(e, _fn(lambda x: None)), TypeError,
     "maps of explainer 'mine' must be a torch.Tensor", True),
    ("suite explainer one map for two", lambda e: _suite(e, _fn(lambda x: torch.rand(1, 4, 4))), ValueError,
     "maps of explainer 'mine' has 1 maps but images has 2", True),
    ("cascading randomisation inf maps", lambda e: M.cascading_randomization(
        e.m, e.x, _fn(lambda x: torch.full((x.shape[0], 4, 4), INF)), **Q), ValueError,
     "explain_fn output contains NaN or inf", True),
]


@pytest.mark.parametrize("call, exc, fix, may_run", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_in_the_projects_words(e, call, exc, fix, may_run):
    forwards = []
    handle = e.m.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(exc, match=fix):
            call(e)
    finally:
        handle.remove()
    assert may_run or forwards == [], "refused only after running the model"


def test_there_are_enough_rows():
    assert len(ROWS) >= 20 and len({r[0] for r in ROWS}) == len(ROWS)


# ----------------------------------------------------------------------------- conversions
def test_a_bool_mask_counts_its_one_token_where_0_255_is_refused(e):
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:8, :8] = True                                          # exactly token 0 of the 4x4 grid
    assert int(mask_to_grid(mask, 4).sum()) == 1                 # not 16 of 16
    with pytest.raises(TypeError, match="mask > 0"):
        mask_to_grid(mask.to(torch.uint8) * 255, 4)
    assert int(mask_to_grid((mask.to(torch.uint8) * 255) > 0, 4).sum()) == 1   # the fix works


def test_numpy_masks_score_as_torch_masks(e):
    for fn in (M.pointing_game, M.relevance_mass_accuracy, M.relevance_rank_accuracy, M.mass_on_mask):
        assert torch.equal(fn(e.maps, e.mask.numpy()), fn(e.maps, e.mask))


def test_one_control_name_is_a_list_of_one():
    assert list(M.control_explainers("random")) == ["random"]


def test_auc_of_lists_and_nan_dropping_bootstrap_keep_their_values():
    assert M.auc([[1, 0], [0, 1]]).tolist() == [0.5, 0.5]
    with pytest.warns(RuntimeWarning, match="dropping 1 NaN"):
        assert M.bootstrap_ci([1.0, NAN, 3.0])[0] == pytest.approx(2.0)
    assert not math.isnan(M.grid_pointing_score(torch.zeros(1, 2, 2), [0]).item())   # chance level


def test_summarise_warns_when_methods_were_scored_on_different_images():
    with pytest.warns(RuntimeWarning, match=r"results\['b'\]\['deletion_auc'\] has 1 values but "
                                            r"results\['a'\]\['deletion_auc'\] has 2.*same images"):
        rows = M.summarise({"a": {"deletion_auc": [0.1, 0.2]}, "b": {"deletion_auc": [0.3]}})
    assert [r["n"] for r in rows] == [2, 1]                     # still summarised, counts shown
