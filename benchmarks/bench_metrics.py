"""Benchmark: the metrics suite of notebook 08 (issue 6's performance target).

The suite = deletion + insertion (20 steps, blur baseline), the Chefer et al. perturbation
test (positive and negative, 0 %..90 %) and the grid pointing game, for the test images ×
{rollout, grad_rollout, gradcam if ``vit_course.explain`` has it, random control}, on

- the course's small ViT (``build_vit("vit_course_small")``) and
- torchvision ViT-B/16 (``vit_b_16(weights=None)`` with a random 3-class head).

Weights are RANDOM in both: timings do not depend on the values (the grid game uses the
images the random model happens to classify correctly). Images: the pizza/steak/sushi test
split (75 images, ImageNet transform) when the dataset is available, else random tensors.

Two ways to compute the same numbers:

- batched: :func:`vit_course.metrics.run_suite`: all (image, step) perturbations stacked,
  ``--batch-size`` per forward pass; the clean and fully perturbed images run once.
- loop: a per-image, per-step loop (one forward per perturbed image, clean forward per image
  and metric, explainer called per image and per grid), as written from the papers'
  descriptions. It is timed on ``--loop-images`` images (all explainers) and extrapolated
  linearly to the full set; its numbers are compared with the batched ones on those images.

On a 2-core CPU the full ViT-B/16 suite takes hours either way, so ``--batched-images`` can
also run the batched suite on a subset and extrapolate; the report says which figures are
measured and which extrapolated. Because the machine is shared, the end-to-end ratio mixes
cost with load drift; a probe therefore measures forward throughput for batch 1 and a large
batch, on 1 thread and on all threads, interleaved round by round, and the report also gives
the full-set times modelled from those rates, the exact forward counts of both sides and the
measured explainer time per image.

Usage::

    python benchmarks/bench_metrics.py [--models small,vit_b_16] [--images 75]
        [--batched-images N | small=N,vit_b_16=M] [--loop-images 2] [--loop-grids 2]
        [--steps 20] [--batch-size 64] [--threads 2] [--loop-threads 1] [--no-probe]
        [--probe-rounds 3] [--no-write]

Updates its section ("Metrics suite") of docs/BENCHMARKS.md; ``--no-write`` only prints it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from _common import fmt_s, forward_rates, publish, random_vit_b16
from vit_course.imaging import IMAGENET_MEAN, IMAGENET_STD
from vit_course.metrics import (
    CHEFER_FRACTIONS,
    chefer_auc,
    control_explainers,
    grid_pointing_score,
    make_baseline,
    make_grid_images,
    run_suite,
)
from vit_course.runtime import SEED, set_seed

ROOT = Path(__file__).resolve().parents[1]
WANTED = ("rollout", "grad_rollout", "gradcam")


# ----------------------------------------------------------------------------- setup
def load_images(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """First ``n`` test images (ImageNet transform) and labels, or random stand-ins."""
    try:
        from vit_course.data import download_pizza_steak_sushi, imagenet_transform, load_image

        root = download_pizza_steak_sushi()
        classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
        per_class = [sorted((root / "test" / name).iterdir()) for name in classes]
        # round-robin over the classes, so any prefix mixes them
        paths = [(per_class[c][k], c) for k in range(max(map(len, per_class)))
                 for c in range(len(classes)) if k < len(per_class[c])][:n]
        tf = imagenet_transform(224)
        x = torch.stack([tf(load_image(p)) for p, _ in paths])
        y = torch.tensor([c for _, c in paths])
        return x, y, f"pizza/steak/sushi test split, {len(paths)} images (classes interleaved)"
    except Exception as err:  # no dataset here: timing does not depend on the pixels
        g = torch.Generator().manual_seed(SEED)
        return (torch.randn(n, 3, 224, 224, generator=g), torch.randint(3, (n,), generator=g),
                f"random tensors (dataset unavailable: {type(err).__name__})")


def build(name: str) -> nn.Module:
    set_seed(SEED)
    if name == "small":
        from vit_course.models import build_vit

        return build_vit("vit_course_small", num_classes=3).eval()
    return random_vit_b16(3)


def explainers() -> tuple[dict[str, Callable], list[str]]:
    """``partial(explain, method=m)`` for the wanted methods that exist; the missing ones."""
    try:
        from vit_course.explain import METHODS, explain
    except ImportError:
        return {}, list(WANTED)
    have = {m: functools.partial(explain, method=m) for m in WANTED if m in METHODS}
    return have, [m for m in WANTED if m not in METHODS]


# ----------------------------------------------------------------------------- the loop
def _perturb(x: torch.Tensor, src: torch.Tensor, tokens: list[int], grid: tuple[int, int]) -> torch.Tensor:
    """Copy ``src``'s pixel blocks of ``tokens`` into a copy of ``x`` (C, H, W)."""
    out = x.clone()
    h, w = grid
    ph, pw = x.shape[1] // h, x.shape[2] // w
    for t in tokens:
        r, c = divmod(t, w)
        out[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = src[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
    return out


def loop_suite(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, fns: dict[str, Callable],
               steps: int, grids, n_grids: int) -> tuple[dict, dict[str, dict[str, float]]]:
    """Per-image, per-step reference: (numbers, seconds per explainer for images and grids)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out: dict = {}
    secs: dict[str, dict[str, float]] = {}

    def prob(x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.inference_mode():
            return model(x[None]).softmax(-1)[0]

    for name, fn in fns.items():
        t0 = time.perf_counter()
        secs[name] = {"explain": 0.0, "grid_explain": 0.0}
        rec = {"deletion": [], "insertion": [], "chefer_positive": [], "chefer_negative": [], "grid": []}
        for i in range(images.shape[0]):
            x = images[i]
            target = int(prob(x, 0).argmax())
            te = time.perf_counter()
            m = fn(model, x[None], target=torch.tensor([target]))[0].detach()
            secs[name]["explain"] += time.perf_counter() - te
            h, w = m.shape
            N = h * w
            order = sorted(range(N), key=lambda t: (-m.flatten()[t].item(), t))
            base = make_baseline(x[None], "blur")[0]
            dele, ins = [], []
            for k in range(steps + 1):
                n = math.ceil(k * N / steps)
                dele.append(prob(_perturb(x, base, order[:n], (h, w)), target)[target].item())
                ins.append(prob(_perturb(base, x, order[:n], (h, w)), target)[target].item())
            black = ((0 - mean) / std).expand_as(x)
            y = int(labels[i])
            for key, ordr in (("chefer_positive", order),
                              ("chefer_negative", sorted(range(N), key=lambda t: (m.flatten()[t].item(), t)))):
                hits = []
                for f in CHEFER_FRACTIONS:
                    n = int(f * N + 1e-9)
                    hits.append(float(int(prob(_perturb(x, black, ordr[:n], (h, w)), y).argmax()) == y))
                rec[key].append(hits)
            rec["deletion"].append(dele)
            rec["insertion"].append(ins)
        secs[name]["images"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if grids is not None:
            for g in range(n_grids):
                te = time.perf_counter()
                gm = fn(model, grids.grids[g:g + 1], target=grids.target_class[g:g + 1]).detach()
                secs[name]["grid_explain"] += time.perf_counter() - te
                rec["grid"].append(float(grid_pointing_score(gm, grids.target_tile[g:g + 1])[0]))
        secs[name]["grids"] = time.perf_counter() - t0
        out[name] = {k: torch.tensor(v, dtype=torch.float64) for k, v in rec.items()}
    return out, secs


# ----------------------------------------------------------------------------- run
def per_model(value: str | None, model: str) -> int | None:
    """``"24"`` → 24 for every model; ``"small=24,vit_b_16=4"`` → that model's number."""
    if value is None:
        return None
    if "=" not in value:
        return int(value)
    table = dict(item.split("=") for item in value.split(","))
    return int(table[model]) if model in table else None


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def bench_model(name: str, images: torch.Tensor, labels: torch.Tensor, fns: dict[str, Callable], args
                ) -> dict:
    model = build(name)
    n_total = images.shape[0]
    nb = min(per_model(args.batched_images, name) or n_total, n_total)
    sub_x, sub_y = images[:nb], labels[:nb]
    load0 = load_average()
    print(f"[{name}] batched suite on {nb} images ...", flush=True)
    t0 = time.perf_counter()
    res = run_suite(model, sub_x, sub_y, fns, steps=args.steps, controls=("random",),
                    batch_size=args.batch_size, explain_batch_size=args.explain_batch_size,
                    progress=False)
    t_batched = time.perf_counter() - t0
    grid_note = "grids from the correctly classified images"
    if res.grids is None:
        # Random weights: too few correct images for a grid. Time the same grid game on grids
        # built from all images (what a trained model's correct images would give).
        t0 = time.perf_counter()
        res.grids = make_grid_images(sub_x, sub_y, None, nb, SEED)
        suite_fns = dict(fns, **control_explainers(("random",), SEED))
        for meth, fn in suite_fns.items():
            g = res.grids
            gm = torch.cat([fn(model, g.grids[i:i + args.explain_batch_size],
                               target=g.target_class[i:i + args.explain_batch_size]).detach()
                            for i in range(0, nb, args.explain_batch_size)])
            res.grid_maps[meth] = gm
            res.scores[meth]["grid_pointing"] = grid_pointing_score(gm, g.target_tile)
        t_grid = time.perf_counter() - t0
        t_batched += t_grid
        res.timings["grids (separate)"] = t_grid
        grid_note = "grids built from all images (too few correctly classified under random weights)"
    n_grids = res.grids.grids.shape[0]
    print(f"[{name}] batched: {t_batched:.1f} s, {res.forwards} forward images, {n_grids} grids", flush=True)

    # The loop on the first --loop-images images and --loop-grids grids; the random
    # control replays the batched run's random maps (images first, then grids).
    nl = min(per_model(args.loop_images, name), nb)
    gl = min(per_model(args.loop_grids, name), n_grids)
    print(f"[{name}] loop on {nl} images, {gl} grids ...", flush=True)
    loop_fns = dict(fns)
    replay = iter([res.maps["random"][i:i + 1] for i in range(nl)]
                  + [res.grid_maps["random"][g:g + 1] for g in range(gl)])
    loop_fns["random"] = lambda m, x, target=None: next(replay)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.loop_threads or threads)
    nums, secs = loop_suite(model, images[:nl], labels[:nl], loop_fns, args.steps, res.grids, gl)
    torch.set_num_threads(threads)

    # Same numbers?
    diff = 0.0
    for meth in loop_fns:
        c = res.curves[meth]
        for key in ("deletion", "insertion", "chefer_positive", "chefer_negative"):
            diff = max(diff, (c[key][:nl].double() - nums[meth][key]).abs().max().item())
        if gl:
            diff = max(diff, (res.scores[meth]["grid_pointing"][:gl] - nums[meth]["grid"]).abs().max().item())
        assert torch.allclose(chefer_auc(nums[meth]["chefer_positive"]),
                              res.scores[meth]["chefer_positive_auc"][:nl])

    # Extrapolate to the full set: batched linearly in images (grids ∝ images); loop from
    # its measured time per image and per grid, per explainer.
    grids_total = n_grids * n_total / nb
    loop_total = sum(s["images"] / nl * n_total + (s["grids"] / gl * grids_total if gl else 0.0)
                     for s in secs.values())
    batched_total = t_batched * n_total / nb
    # Per-forward cost, measured interleaved (robust to load drift), and forward counts give a
    # modelled time for the full set; explainer time per image comes from the runs above.
    probe: dict[tuple[int, int], float] = {}
    model_est: dict[str, float] = {}
    if args.probe:
        big = min(args.batch_size, 64 if name == "small" else 16)
        threads = torch.get_num_threads()
        cfgs = [(th, bs) for th in sorted({1, threads}) for bs in (1, big)]
        x = torch.randn(big, 3, 224, 224)
        rates = forward_rates(model, x, [(th, bs, "float32") for th, bs in cfgs],
                              rounds=args.probe_rounds, seconds=10.0)
        probe = {(th, bs): v for (th, bs, _), v in rates.items()}
        print(f"[{name}] forward img/s (threads, batch): {probe}", flush=True)
        n_methods = len(loop_fns)
        f_batched = res.forwards / nb
        f_loop = n_methods * (1 + 2 * (args.steps + 1) + 2 * len(CHEFER_FRACTIONS))
        e_batched = sum(v for k, v in res.timings.items()
                        if k.endswith(("/explain", "/grid")) or k == "grids (separate)") / nb
        e_loop = sum(v["explain"] / nl + (v["grid_explain"] / gl * n_grids / nb if gl else 0.0)
                     for v in secs.values())
        best_batched = max(probe[(th, big)] for th in sorted({1, threads}))
        model_est = {"f_batched": f_batched, "f_loop": f_loop,
                     "batched": n_total * (f_batched / best_batched + e_batched)}
        for th in sorted({1, threads}):
            model_est[f"loop_{th}"] = n_total * (f_loop / probe[(th, 1)] + e_loop)
    return {
        "probe": probe, "model_est": model_est,
        "model": name, "n_total": n_total, "nb": nb, "nl": nl, "gl": gl, "n_grids": n_grids,
        "t_batched": t_batched, "batched_total": batched_total, "loop_secs": secs,
        "loop_total": loop_total, "diff": diff, "forwards": res.forwards,
        "timings": res.timings, "load": (load0, load_average()), "labels": grid_note,
        "table": res.format(n_boot=1000),
    }


def report(results: list[dict], missing: list[str], data: str, args) -> str:
    n = results[0]["n_total"]
    th = torch.get_num_threads()
    loop_th = args.loop_threads or th
    lines = [
        "## Metrics suite: batched vs per-image, per-step loop",
        "",
        "Script: `benchmarks/bench_metrics.py` (rerun: `python benchmarks/bench_metrics.py`).",
        f"Suite: deletion + insertion ({args.steps} steps, blur baseline), Chefer positive + negative "
        "perturbation (0 %..90 %) and the grid pointing game, for "
        f"{', '.join(r for r in WANTED if r not in missing)} and the random control"
        + (f" ({', '.join(missing)}: not in `vit_course.explain` yet, skipped)" if missing else "") + ".",
        f"Data: {data}. Weights: random for both models (timing only; the scores are not results).",
        f"Batched: `run_suite`, {args.batch_size} perturbed images per forward pass, unperturbed and "
        "fully perturbed images run once and shared. Loop: one forward per perturbed image "
        f"({1 + 2 * (args.steps + 1) + 2 * len(CHEFER_FRACTIONS)} per image and explainer, "
        "clean image included), explainer called per image and per grid.",
        "",
        "### Same numbers",
        "",
        "| model | images / grids compared | max abs difference (curves, hits, grid scores) |",
        "|---|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['nl']} / {r['gl']} | {r['diff']:.1e} |")
    lines += ["", "### Measured end to end", "",
              f"| model | batched | loop ({loop_th} thread{'s' if loop_th > 1 else ''}) | "
              f"batched, {n} images (linear extrapolation) | loop, {n} images (extrapolation) | ratio |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        loop_meas = sum(v["images"] + v["grids"] for v in r["loop_secs"].values())
        lines.append(
            f"| {r['model']} | {fmt_s(r['t_batched'])} ({r['nb']} img, {r['n_grids']} grids) | "
            f"{fmt_s(loop_meas)} ({r['nl']} img, {r['gl']} grids) | {fmt_s(r['batched_total'])} | "
            f"{fmt_s(r['loop_total'])} | {r['loop_total'] / r['batched_total']:.1f}× |")
    lines += ["", "The two sides run one after the other, so on a shared machine this ratio also "
              "carries any change of load between them (load averages below); the loop runs on "
              f"{loop_th} thread{'s' if loop_th > 1 else ''}. The modelled figures below use "
              "per-forward costs measured interleaved for both thread settings."]
    if all(r["model_est"] for r in results):
        lines += ["", "### Modelled from forward counts and interleaved throughput", "",
                  "| model | forwards per image, batched / loop | forward img/s: batch 1 (1 thread, "
                  f"{th} threads) · batched (1 thread, {th} threads) | suite, {n} images: batched | "
                  f"loop, 1 thread | loop, {th} threads | speed-up vs loop 1 thread / {th} threads |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in results:
            e, p = r["model_est"], r["probe"]
            big = max(b for _, b in p)
            lines.append(
                f"| {r['model']} | {e['f_batched']:.0f} / {e['f_loop']:.0f} | "
                f"{p[(1, 1)]:.2f}, {p[(th, 1)]:.2f} · {p[(1, big)]:.2f}, {p[(th, big)]:.2f} (batch {big}) | "
                f"{fmt_s(e['batched'])} | {fmt_s(e['loop_1'])} | {fmt_s(e[f'loop_{th}'])} | "
                f"**{e['loop_1'] / e['batched']:.1f}× / {e[f'loop_{th}'] / e['batched']:.1f}×** |")
        goals = []
        for r in results:
            e = r["model_est"]
            fair = min(e["loop_1"], e[f"loop_{th}"]) / e["batched"]      # vs the loop's faster setting
            goals.append(f"{r['model']}: {fair:.1f}× faster than the loop at its faster thread setting "
                         f"(≥ 3×: {'met' if fair >= 3 else 'not met'})")
            if r["model"] == "vit_b_16":
                need = n * e["f_batched"] / 300
                goals.append(f"ViT-B/16 suite ≈ {fmt_s(e['batched'])} for {n} images, not ≤ 5 min: that "
                             f"needs ≈ {need:.0f} forward images/s, this CPU does "
                             f"{max(v for (t, b), v in r['probe'].items() if b > 1):.1f}")
        lines += ["", "Goals (issue 6): " + "; ".join(goals) + "."]
    lines += ["", "Reading: on this CPU batching raises forward throughput only a little (the img/s "
              "column: a ViT forward is compute-bound even at batch 1), so the batched suite's gain "
              "comes mostly from running fewer forwards (the unperturbed and fully perturbed images "
              "are shared across curves and explainers) and from calling each explainer once per "
              "batch. When other jobs load the CPU, batch-1 forwards on several threads slow down "
              "much more than batched ones (thread hand-offs), and the gap widens. On a GPU, batch-1 "
              "forwards leave the device mostly idle, which is where stacking the perturbations pays.",
              "", "Grid game: " + "; ".join(f"{r['model']}: {r['labels']}" for r in results) + ".", ""]
    for r in results:
        lines += [f"Stage times, {r['model']} (batched, seconds): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()) + "."]
    loads = [float(x) for r in results for x in r["load"] if x != "n/a"]
    busy = bool(loads) and max(loads) > (os.cpu_count() or 1) + 0.5
    lines += ["", f"Threads: batched {th}, loop {loop_th}. Machine: {platform.machine()}, {os.cpu_count()} "
              f"CPU cores, torch {torch.__version__}, no GPU. 1-minute load average at the start and end "
              "of each model's run: " + "; ".join(f"{r['model']} {r['load'][0]} → {r['load'][1]}" for r in results)
              + (f" on {os.cpu_count()} cores: other jobs shared the CPU, so absolute times are inflated "
                 "by an unknown factor." if busy else
                 " (the machine was otherwise idle; the first value of a run includes the run before it)."),
              ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="small,vit_b_16")
    ap.add_argument("--images", type=int, default=75)
    ap.add_argument("--batched-images", default=None,
                    help="run the batched suite on a subset: N, or per model 'small=24,vit_b_16=4'")
    ap.add_argument("--loop-images", default="2", help="N or per model, as --batched-images")
    ap.add_argument("--loop-grids", default="2", help="N or per model, as --batched-images")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--explain-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the batched suite")
    ap.add_argument("--loop-threads", type=int, default=None,
                    help="torch threads for the loop (default: as --threads); on a busy CPU, batch-1 "
                         "forwards can be faster on 1 thread")
    ap.add_argument("--no-probe", dest="probe", action="store_false",
                    help="skip the forward-throughput probe (batch 1 vs large, 1 vs all threads)")
    ap.add_argument("--probe-rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fns, missing = explainers()
    if missing:
        print(f"not in vit_course.explain (skipped): {missing}", flush=True)
    images, labels, data = load_images(args.images)
    results = [bench_model(m.strip(), images, labels, fns, args) for m in args.models.split(",")]
    text = report(results, missing, data, args)
    for r in results:
        print(f"\n{r['model']} (random weights) summary:\n{r['table']}")
    publish(text, args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
