"""The evaluation suite of notebook 08: deletion + insertion, the Chefer perturbation test
and the grid pointing game for several explainers and the controls, in one call.

Work shared between explainers is done once: the unperturbed images, the full baseline and
the all-black image are each run through the model once (one :class:`LogitCache`), the
baseline image is computed once, and the grid images are built once.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checks import check_choice, check_images, check_labels, check_positive_int
from ..explain import ExplainFn, explain
from ..imaging import IMAGENET_MEAN, IMAGENET_STD
from ..runtime import SEED
from ._common import PRECISIONS, LogitCache, as_generator, explain_maps
from .localisation import GridImages, grid_pointing_score, make_grid_images
from .perturbation import CURVE_BASELINES, _chefer_curves, _curve, auc, make_baseline
from .summary import format_table, summarise

#: The controls, registered explain methods (:mod:`vit_course.explain.controls`).
CONTROLS = ("random", "center_gaussian")


@dataclass
class SuiteResult:
    """Everything :func:`run_suite` computed.

    Attributes:
        methods: explainer names, controls last.
        targets: (B,) class explained and scored in deletion/insertion (predicted class).
        labels: (B,) ground truth (Chefer accuracy, grid construction).
        maps: method → (B, h, w) maps of the images.
        curves: method → {"deletion", "insertion": (B, steps+1) probabilities;
            "chefer_positive", "chefer_negative": (B, 10) hits}.
        scores: method → {"deletion_auc", "insertion_auc", "chefer_positive_auc",
            "chefer_negative_auc": (B,); "grid_pointing": (G,)} per-image values.
        grids: the grid images (``None`` if too few correctly classified images).
        grid_maps: method → (G, h, w) maps of the grids for their target class.
        timings: seconds per stage (``"<method>/explain"``, ``"<method>/deletion"``, …).
        forwards: images run through the model by the metrics (explainers not counted).
        precision: arithmetic of those forwards, ``"float32"`` or ``"bfloat16"``.
    """

    methods: list[str]
    targets: Tensor
    labels: Tensor
    maps: dict[str, Tensor] = field(default_factory=dict)
    curves: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    grids: GridImages | None = None
    grid_maps: dict[str, Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    forwards: int = 0
    precision: str = "float32"

    def table(self, n_boot: int = 1000, ci: float = 0.95, seed: int = SEED) -> list[dict[str, Any]]:
        """Rows of mean and bootstrap interval per metric and method (see :func:`summarise`)."""
        return summarise(self.scores, n_boot=n_boot, ci=ci, seed=seed)

    def format(self, **kwargs: Any) -> str:
        """The table as plain text."""
        return format_table(self.table(**kwargs))


def _explain_batched(fn: ExplainFn, model: nn.Module, images: Tensor, targets: Tensor, batch_size: int,
                     name: str) -> Tensor:
    return torch.cat([explain_maps(fn, model, images[i:i + batch_size], targets[i:i + batch_size],
                                   name=f"maps of explainer {name!r}")
                      for i in range(0, images.shape[0], batch_size)])


def control_explainers(controls: Sequence[str] = CONTROLS, seed: int = SEED) -> dict[str, ExplainFn]:
    """The controls as :data:`ExplainFn` s: ``explain(model, images, "random", seed=g)`` and
    ``explain(model, images, "center_gaussian")``.

    The random control gets one ``torch.Generator`` seeded with ``seed``, so successive calls
    (chunks of images, then the grids) continue one random stream, as a single call would.
    """
    fns: dict[str, ExplainFn] = {}
    for c in [controls] if isinstance(controls, str) else controls:      # one name is a list of one
        opts = {"seed": as_generator(seed, SEED)} if c == "random" else {}
        fns[check_choice(c, "control", CONTROLS)] = functools.partial(explain, method=c, **opts)
    return fns


def run_suite(model: nn.Module, images: Tensor, labels: Any, explainers: Mapping[str, ExplainFn], *,
              steps: int = 20, baseline: str = "blur", mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD, controls: Sequence[str] = CONTROLS,
              grid_game: bool = True, n_grids: int | None = None, batch_size: int = 64,
              explain_batch_size: int = 16, seed: int = SEED, progress: bool = True,
              precision: str = "float32") -> SuiteResult:
    """Score every explainer (and the controls) with deletion, insertion, Chefer's
    perturbation test and the grid pointing game.

    Maps are computed for the class the model predicts on each image; deletion and insertion
    record that class's probability; Chefer's test counts top-1 hits against ``labels``;
    grids are built from the correctly classified images (one tile of the target class, three
    of others) and explained for their target class.

    Args:
        model: ``model(images) -> logits``.
        images: (B, C, H, W) normalised with ``mean``/``std``.
        labels: B ground-truth labels.
        explainers: name → :data:`~vit_course.metrics.ExplainFn`, called as
            ``fn(model, images, target=t)`` and returning (B, h, w), e.g.
            ``functools.partial(vit_course.explain.explain, method="rollout")`` (target is
            passed by keyword, so ``partial`` may bind ``method`` and any options).
        steps: deletion/insertion steps. Default: 20.
        baseline: deletion/insertion baseline, one of :data:`CURVE_BASELINES`;
            ``"token_drop"`` also drops (instead of blackening) the tokens Chefer's test
            removes. Default: ``"blur"``.
        mean, std: the images' normalisation (Chefer's "0 before normalisation").
        controls: which controls to add: any of ``"random"``, ``"center_gaussian"`` (the
            registered explain methods of those names, see :func:`control_explainers`, on the
            patch grid of the explainers' maps, or the model's if there are none).
        grid_game: run the grid pointing game. Default: True.
        n_grids: number of grids; default B.
        batch_size: perturbed images per forward pass. Default: 64.
        explain_batch_size: images per explainer call. Default: 16.
        seed: seed of the random control and the grid construction. Default: SEED.
        progress: tqdm bars. Default: True.
        precision: ``"float32"`` (default; the same numbers as a loop over the model) or
            ``"bfloat16"``: the metrics' forward passes run under bfloat16 autocast, several
            times faster on CPUs with bfloat16 instructions, numbers slightly different (see
            :data:`vit_course.metrics.PRECISIONS` and docs/BENCHMARKS.md). Explainers always
            run as they are.

    Returns:
        :class:`SuiteResult`; ``result.format()`` prints the table.
    """
    images = check_images(images, finite=True)
    B = images.shape[0]
    n_grids = B if n_grids is None else check_positive_int(n_grids, "n_grids", "the number of 2x2 grids.")
    steps = check_positive_int(steps, "steps", "the number of deletion/insertion steps, e.g. 20.")
    check_choice(baseline, "baseline", CURVE_BASELINES)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(explain_batch_size, "explain_batch_size")
    check_choice(precision, "precision", PRECISIONS)
    if not isinstance(explainers, Mapping) or not all(callable(f) for f in explainers.values()):
        raise TypeError("explainers must be a dict name -> explain_fn(model, images, target=t); "
                        f"got {type(explainers).__name__}.")
    control_fns = control_explainers(controls, seed)
    for c in control_fns:
        if c in explainers:
            raise ValueError(f"explainer name {c!r} clashes with the control of that name; rename it.")
    all_fns: dict[str, ExplainFn] = {**explainers, **control_fns}
    if not all_fns:
        raise ValueError("nothing to score: pass at least one explainer or control.")

    cache = LogitCache(precision)
    t0 = time.perf_counter()
    clean = cache.get("clean", model, lambda: images, batch_size)
    y = check_labels(labels, B, clean.shape[1]).to(clean.device)
    targets = clean.argmax(dim=1)
    base = None if baseline == "token_drop" else make_baseline(images, baseline)
    res = SuiteResult(methods=list(all_fns), targets=targets, labels=y, precision=precision)
    res.timings["clean+baseline"] = time.perf_counter() - t0

    grids = None
    if grid_game:
        correct = (targets == y).nonzero().flatten()
        try:
            grids = make_grid_images(images[correct.to(images.device)], y[correct], None,
                                     n_grids, seed)
        except ValueError as err:
            warnings.warn(f"grid pointing game skipped: {err}", RuntimeWarning, stacklevel=2)
    res.grids = grids

    grid: tuple[int, int] | None = None      # the controls use the explainers' grid (or the model's)
    for name, fn in tqdm(all_fns.items(), desc="suite", disable=not progress):
        if name in control_fns and grid is not None:
            fn = functools.partial(fn, grid=grid)

        def timed(stage: str, f: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            out = f()
            res.timings[f"{name}/{stage}"] = time.perf_counter() - t
            return out

        maps = timed("explain", lambda: _explain_batched(fn, model, images, targets, explain_batch_size, name))
        res.maps[name] = maps
        grid = grid or tuple(maps.shape[1:])
        dele = timed("deletion", lambda: _curve(model, images, maps, targets, steps, baseline, batch_size,
                                                progress, insertion=False, cache=cache, baseline_images=base))
        ins = timed("insertion", lambda: _curve(model, images, maps, targets, steps, baseline, batch_size,
                                                progress, insertion=True, cache=cache, baseline_images=base))
        ch = timed("chefer", lambda: _chefer_curves(model, images, maps, y, mean, std, batch_size, progress,
                                                    cache=cache, baseline="token_drop" if base is None else "black"))
        res.curves[name] = {"deletion": dele, "insertion": ins,
                            "chefer_positive": ch["positive"], "chefer_negative": ch["negative"]}
        scores = {"deletion_auc": auc(dele), "insertion_auc": auc(ins),
                  "chefer_positive_auc": ch["positive_auc"], "chefer_negative_auc": ch["negative_auc"]}
        if grids is not None:
            gm = timed("grid", lambda: _explain_batched(fn, model, grids.grids, grids.target_class.to(images.device),
                                                       explain_batch_size, name))
            res.grid_maps[name] = gm
            scores["grid_pointing"] = grid_pointing_score(gm, grids.target_tile)
        res.scores[name] = scores
    res.forwards = cache.forwards
    return res

