"""Quantitative evaluation of explanation maps.

Maps are (B, h, w) on the patch grid (N = h·w tokens); models only need
``model(images) -> logits``; an explainer is any callable used as ``explain_fn(model, images,
target=t) -> (B, h, w)`` (target by keyword), e.g. ``functools.partial(vit_course.explain.explain,
method="rollout")``.

Faithfulness (perturb the input by the map, watch the model):
    :func:`deletion_curve`, :func:`insertion_curve`, :func:`auc` (RISE, Petsiuk et al. 2018);
    :func:`perturbation_test`, :func:`chefer_auc` (Chefer et al. 2021);
    :func:`road_curve`, :func:`noisy_linear_impute` (ROAD, Rong et al. 2022).
Localisation:
    :func:`make_grid_images`, :func:`grid_pointing_score` (Böhle et al. 2022);
    :func:`pointing_game`, :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy`
    against ground-truth masks (:func:`mask_to_grid`).
Sanity checks (Adebayo et al. 2018):
    :func:`cascading_randomization`, :func:`class_sensitivity`, :func:`spearman`, :func:`ssim`.
Controls: :func:`random_map`, :func:`center_gaussian_map`, :class:`RandomExplainer`,
    :class:`CenterGaussianExplainer`.
Summaries: :func:`bootstrap_ci`, :func:`summarise`, :func:`format_table`; everything at once:
    :func:`run_suite`. Plots live in :mod:`vit_course.viz_metrics`.

Every perturbation metric stacks all (image, step) perturbations and runs them
``batch_size`` per forward pass, in eval mode under ``torch.inference_mode`` (the model's
training flags are restored afterwards); the unperturbed image and the fully perturbed one
are run once per image. ``precision="bfloat16"`` (deletion, insertion, the perturbation test
and :func:`run_suite`) runs those forwards under bfloat16 autocast: faster on hardware with
bfloat16 instructions, numbers slightly different from float32 (:data:`PRECISIONS`).
"""

from ._common import IMAGENET_MEAN, IMAGENET_STD, PRECISIONS, rank_tokens, token_counts
from .controls import (
    CenterGaussianExplainer,
    RandomExplainer,
    center_gaussian_map,
    infer_grid,
    random_map,
)
from .localisation import (
    GRID_CHANCE,
    GridImages,
    correctly_classified,
    grid_pointing_score,
    make_grid_images,
    mask_coverage,
    mask_to_grid,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from .perturbation import (
    BASELINES,
    BLUR_SIGMA,
    CHEFER_FRACTIONS,
    auc,
    chefer_auc,
    deletion_curve,
    gaussian_blur,
    insertion_curve,
    make_baseline,
    perturbation_test,
)
from .road import ROAD_FRACTIONS, linear_impute, noisy_linear_impute, road_curve
from .sanity import (
    cascading_randomization,
    class_sensitivity,
    rank_average,
    randomization_steps,
    reinitialize_,
    spearman,
    ssim,
)
from .suite import SuiteResult, run_suite
from .summary import METRIC_DIRECTIONS, bootstrap_ci, format_table, summarise

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "PRECISIONS", "rank_tokens", "token_counts",
    "BASELINES", "BLUR_SIGMA", "CHEFER_FRACTIONS", "gaussian_blur", "make_baseline",
    "deletion_curve", "insertion_curve", "auc", "perturbation_test", "chefer_auc",
    "ROAD_FRACTIONS", "linear_impute", "noisy_linear_impute", "road_curve",
    "GRID_CHANCE", "GridImages", "correctly_classified", "make_grid_images", "grid_pointing_score",
    "mask_coverage", "mask_to_grid", "pointing_game", "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "randomization_steps", "reinitialize_", "cascading_randomization", "class_sensitivity",
    "rank_average", "spearman", "ssim",
    "random_map", "center_gaussian_map", "infer_grid", "RandomExplainer", "CenterGaussianExplainer",
    "bootstrap_ci", "summarise", "format_table", "METRIC_DIRECTIONS",
    "run_suite", "SuiteResult",
]
