"""Quantitative evaluation of explanation maps.

Maps are (B, h, w) on the patch grid (N = h·w tokens); models only need
``model(images) -> logits``; an explainer is one kind of callable everywhere, an
:data:`ExplainFn` used as ``fn(model, images, target=t) -> (B, h, w)`` (target by keyword),
e.g. ``functools.partial(vit_course.explain.explain, method="rollout")``. The controls (a
random map, a centre Gaussian) are the registered explain methods ``"random"`` and
``"center_gaussian"``: ``functools.partial(explain, method="random", seed=0)``.

Faithfulness (perturb the input by the map, watch the model):
    :func:`deletion_curve`, :func:`insertion_curve`, :func:`auc` (RISE, Petsiuk et al. 2018);
    :func:`perturbation_test`, :func:`chefer_auc` (Chefer et al. 2021);
    :func:`road_curve`, :func:`noisy_linear_impute` (ROAD, Rong et al. 2022).
Localisation:
    :func:`make_grid_images`, :func:`grid_pointing_score` (Böhle et al. 2022);
    :func:`mass_on_mask` (the share of a map on an object, used in notebooks 04-08),
    :func:`pointing_game`, :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy`
    against ground-truth masks (token masks from :func:`vit_course.imaging.mask_to_grid`).
Sanity checks (Adebayo et al. 2018):
    :func:`cascading_randomization`, :func:`class_sensitivity`, :func:`spearman`, :func:`ssim`.
Controls: :func:`control_explainers` (the two controls as :data:`ExplainFn` s).
Summaries: :func:`bootstrap_ci`, :func:`summarise`, :func:`format_table`; everything at once:
    :func:`run_suite`. Plots live in :mod:`vit_course.viz_metrics`.
Metrics that check each other: :func:`meta_evaluate` (agreement between metrics, stability
    under the image sample and the baseline, distance from the random control), :func:`kendall_tau`.
Ground truth on real photos: :func:`plant_shortcut`, :func:`shortcut_scores` (a planted square).
Aggregation as a hyperparameter: :func:`search_aggregation` (rollout's head fusion × start
    layer × discard ratio × row reading, chosen by deletion/insertion on held-out images).

Every perturbation metric stacks all (image, step) perturbations and runs them
``batch_size`` per forward pass, in eval mode under ``torch.inference_mode`` (the model's
training flags are restored afterwards); the unperturbed image and the fully perturbed one
are run once per image. ``precision="bfloat16"`` (deletion, insertion, the perturbation test
and :func:`run_suite`) runs those forwards under bfloat16 autocast: faster on hardware with
bfloat16 instructions, numbers slightly different from float32 (:data:`PRECISIONS`).
"""

from ..explain import ExplainFn
from ._common import PRECISIONS, rank_tokens, token_counts
from .aggregation import DEFAULT_SETTING, ROW_READINGS, AggregationSearch, search_aggregation, settings_grid
from .localisation import (
    GRID_CHANCE, GridImages, correctly_classified, grid_pointing_score, make_grid_images,
    mass_on_mask, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
)
from .perturbation import (
    BASELINES, BLUR_SIGMA, CHEFER_BASELINES, CHEFER_FRACTIONS, CURVE_BASELINES, auc, chefer_auc,
    deletion_curve, insertion_curve, make_baseline, perturbation_test
)
from .meta import MetaEvaluation, kendall_tau, meta_evaluate
from .road import ROAD_FRACTIONS, linear_impute, noisy_linear_impute, road_curve
from .sanity import (
    cascading_randomization, class_sensitivity, rank_average, randomization_steps,
    reinitialize_, spearman, ssim
)
from .shortcut import SQUARE_COLOUR, Shortcut, paint_square, plant_shortcut, shortcut_scores
from .suite import CONTROLS, SuiteResult, control_explainers, run_suite
from .summary import METRIC_DIRECTIONS, bootstrap_ci, format_table, summarise
