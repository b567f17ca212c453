"""Synthetic pizza/steak/sushi images with pixel masks: ground truth for explanations.

Real photos say nothing about *where* the evidence for a class is. These procedurally drawn
scenes do: every object comes with its pixel mask, so an explanation map can be scored
against the truth (see :func:`vit_course.imaging.mask_coverage`), and two-object images show whether a method is
class-specific (its map moves with the target) or class-agnostic (it does not).

What is drawn (in object coordinates, then scaled, rotated and placed at random):

- ``pizza``: a round disc (sometimes with a slice missing), a golden crust ring, cheese with
  sauce patches, scattered pepperoni dots and a few green or black specks.
- ``steak``: an irregular elongated blob, brown with noisy shading, a lighter fat edge on one
  side, pale marbling veins and dark diagonal grill stripes.
- ``sushi``: one to three nigiri (rounded white rice blocks with an orange/pink/red fish top,
  white fat stripes and a dark seaweed band) or two to three maki (dark seaweed ring, white
  rice, coloured centre).

Backgrounds are drawn independently of the class: colour gradients, smooth colour noise, a
plate on a table, wood grain or a checked tablecloth, with colours spanning browns, reds and
whites, so no single global colour statistic gives the class away (nearest class mean on
an image's mean RGB classifies about 46 % of test images, chance being 33 %; the tests
check it stays below 70 %). Every colour is jittered.

Everything is deterministic from a seed: all randomness comes from a local
``numpy.random.Generator`` (never global state), and the dataset draws item ``i`` from its
own generator seeded with ``(seed, split, kind, i)``, so the same seed gives bit-identical
images and masks, and item ``i`` does not depend on how many items were asked for.

Backgrounds are drawn per pixel; objects at ``antialias``× resolution and averaged down,
so only object edges blend. A pixel belongs to an object's mask when at least half of it
is covered by the object; pixels the object does not touch at all are exactly background.

Public API:

- ``CLASS_NAMES``, ``DEFAULT_SIZE``, ``MIN_SIZE``, ``GENERATOR_VERSION``
- ``make_image(cls, rng, size)`` → image ``(3, H, W)`` float32 in [0, 1], mask ``(H, W)`` bool
- ``make_two_object_image(classes, rng, size)`` → image, masks ``(2, H, W)``, labels ``(2,)``
- ``SyntheticFood`` (a torch ``Dataset``; keeps each image's background and object
  coverage), ``paste_objects`` (the objects on other backgrounds), ``synthetic_dataloaders``

Masks on the patch grid: :func:`vit_course.imaging.mask_coverage` (fraction of each patch
inside) and :func:`vit_course.imaging.mask_to_grid` (which patches count as inside). The
small course ViT that learns this data is :mod:`vit_course.models.synthetic`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..checks import check_choice, check_nonnegative_int, check_positive_int
from ..runtime import SEED
from .download import CLASS_NAMES, SPLITS  # the photos' classes, same order: ("pizza", "steak", "sushi")

DEFAULT_SIZE = 64
MIN_SIZE = 16
GENERATOR_VERSION = 1  # bump when drawing changes: saved models trained on old images go stale

SINGLE_SCALE = (0.2, 0.45)  # object radius / image side, single-object images
TWO_OBJECT_SCALE = (0.19, 0.245)  # same, two-object images (each object fits its half)
_SPLIT_KEY = {"train": 0, "test": 1}
# Ordered pairs of distinct classes; two-object items cycle through them for exact balance.
CLASS_PAIRS: tuple[tuple[int, int], ...] = tuple(itertools.permutations(range(len(CLASS_NAMES)), 2))

Array = np.ndarray


# ----------------------------------------------------------------------------- validation
def _class_index(cls: int | str) -> int:
    """Turn a class name or index into an index in ``CLASS_NAMES``."""
    if isinstance(cls, bool) or not isinstance(cls, (str, int, np.integer)):
        raise TypeError(f"cls must be a class name or index, got {type(cls).__name__}: {cls!r}")
    if cls in CLASS_NAMES:
        return CLASS_NAMES.index(cls)
    if isinstance(cls, str) or not 0 <= cls < len(CLASS_NAMES):
        raise ValueError(f"cls={cls!r} is not a synthetic class or is out of range; expected a "
                         f"name in {CLASS_NAMES} or an index 0..{len(CLASS_NAMES) - 1}.")
    return int(cls)


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    """Turn ``size`` (int or (H, W)) into ``(H, W)``, each at least ``MIN_SIZE``."""
    pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                             for s in pair):
        raise TypeError(f"size must be an int or a pair (H, W) of ints, got {size!r}")
    if min(pair) < MIN_SIZE:
        raise ValueError(
            f"size={size!r} is too small to draw recognisable objects; use at least "
            f"{MIN_SIZE} pixels per side (e.g. size={DEFAULT_SIZE})."
        )
    return int(pair[0]), int(pair[1])


def _draw(layout: Callable[[np.random.Generator, int, int], list], size: int | Sequence[int],
          rng: np.random.Generator | int, antialias: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``size``, ``rng`` and ``antialias``, lay the objects out (``layout(rng, H, W)``)
    and render them: image ``(3, H, W)`` float32, masks ``(K, H, W)`` bool."""
    H, W = _check_size(size)
    if isinstance(rng, bool) or not isinstance(rng, (np.random.Generator, int, np.integer)):
        raise TypeError(
            f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(0)) or an int "
            f"seed, got {type(rng).__name__}"
        )
    rng = np.random.default_rng(rng)  # a Generator comes back unchanged
    s = check_positive_int(antialias, "antialias", "the supersampling factor (1 = off)")
    return _to_tensors(*_render(layout(rng, H, W), rng, H, W, s)[:2])


# ----------------------------------------------------------------------------- helpers
def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 0.08) -> Array:
    """A colour with per-channel and brightness jitter, clipped to [0, 1]."""
    c = np.asarray(rgb, dtype=np.float64) * rng.uniform(1 - amount, 1 + amount, 3)
    return np.clip(c * rng.uniform(0.88, 1.12), 0.0, 1.0).astype(np.float32)


def _wave_noise(rng: np.random.Generator, u: Array, v: Array, n_waves: int = 6,
                freq: tuple[float, float] = (1.5, 5.0)) -> Array:
    """Smooth noise in about [-1, 1]: a sum of random plane waves evaluated at (u, v).

    Being a function of coordinates (not a pixel grid), it moves and turns with the object.
    """
    out = np.zeros(np.broadcast(u, v).shape, dtype=np.float32)
    for _ in range(n_waves):
        theta = rng.uniform(0, 2 * math.pi)
        f = rng.uniform(*freq) * math.pi
        out += np.sin(f * (u * math.cos(theta) + v * math.sin(theta)) + rng.uniform(0, 2 * math.pi))
    return out * np.float32(1 / math.sqrt(n_waves / 2))


def _mix(a: Array, b: Array, t: Array) -> Array:
    """Blend colour/image ``a`` into ``b`` by weight ``t`` in [0, 1] (broadcast on channels)."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    return a * (1 - t) + b * t


def _paint(img: Array, where: Array, colour: Array) -> None:
    """Set ``img[where]`` to ``colour`` (an RGB triple or an image of the same shape)."""
    img[where] = colour[where] if colour.ndim == 3 else colour


def _round_rect_sdf(u: Array, v: Array, half_u: float, half_v: float, radius: float) -> Array:
    """Signed distance to a rounded rectangle centred at 0 (negative inside)."""
    qu = np.abs(u) - half_u + radius
    qv = np.abs(v) - half_v + radius
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0) - radius


# ----------------------------------------------------------------------------- objects
# Each painter draws inside the unit disc of object coordinates (u, v) and returns
# (inside (..,) bool, rgb (.., 3)). Placement scales the unit disc to the object's radius.

def _draw_pizza(rng: np.random.Generator, u: Array, v: Array) -> tuple[Array, Array]:
    squash = rng.uniform(0.9, 1.0)
    r = np.hypot(u, v / squash)
    phi = np.arctan2(v, u)
    inside = r < 0.98
    if rng.random() < 0.35:  # a slice already eaten
        start, width = rng.uniform(-math.pi, math.pi), rng.uniform(0.5, 1.1)
        inside &= np.mod(phi - start, 2 * math.pi) > width
    crust_in = rng.uniform(0.78, 0.86)
    noise = _wave_noise(rng, u, v, freq=(3, 9))
    img = np.empty(u.shape + (3,), dtype=np.float32)
    cheese = _jitter(rng, (0.97, 0.80, 0.38))
    sauce = _jitter(rng, (0.80, 0.22, 0.10))
    img[:] = _mix(cheese[None, None], sauce[None, None], (noise - 0.6) * 2.0)
    crust = _jitter(rng, (0.80, 0.52, 0.22))
    ring = r >= crust_in
    _paint(img, ring, _mix(crust[None, None], crust[None, None] * 0.65,
                           0.5 + 0.5 * _wave_noise(rng, u, v, freq=(4, 10))))
    pep = _jitter(rng, (0.62, 0.10, 0.08))
    for _ in range(int(rng.integers(5, 10))):
        rad = rng.uniform(0.11, 0.17)
        rho, ang = math.sqrt(rng.uniform(0, 1)) * (crust_in - rad - 0.02), rng.uniform(0, 2 * math.pi)
        d = np.hypot(u - rho * math.cos(ang), v / squash - rho * math.sin(ang))
        _paint(img, d < rad, pep * rng.uniform(0.85, 1.1))
        _paint(img, (d < rad * 0.35) & (noise > 0.3), pep * 0.6)
    speck = _jitter(rng, (0.15, 0.45, 0.12) if rng.random() < 0.5 else (0.08, 0.08, 0.08))
    for _ in range(int(rng.integers(2, 6))):
        rad = rng.uniform(0.04, 0.07)
        rho, ang = math.sqrt(rng.uniform(0, 1)) * (crust_in - 0.1), rng.uniform(0, 2 * math.pi)
        d = np.hypot(u - rho * math.cos(ang), v / squash - rho * math.sin(ang))
        _paint(img, d < rad, speck)
    return inside, img


def _draw_steak(rng: np.random.Generator, u: Array, v: Array) -> tuple[Array, Array]:
    elong = rng.uniform(0.5, 0.72)
    uu, vv = u, v / elong
    r = np.hypot(uu, vv)
    phi = np.arctan2(vv, uu)
    edge = np.ones_like(r)
    for k in (2, 3, 4):
        edge += rng.uniform(0.03, 0.09) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    rel = r / (0.74 * edge)  # < 1 inside; the blob stays within the unit disc
    inside = rel < 1
    meat = _jitter(rng, (0.50, 0.25, 0.13), 0.12)
    noise = _wave_noise(rng, u, v, freq=(2, 7))
    img = _mix(meat[None, None], meat[None, None] * 0.7, 0.5 + 0.4 * noise)
    fat = _jitter(rng, (0.90, 0.78, 0.58))
    side = rng.uniform(0, 2 * math.pi)
    on_side = np.cos(phi - side) > rng.uniform(-0.1, 0.4)
    _paint(img, (rel > rng.uniform(0.80, 0.88)) & on_side, fat)
    warp = _wave_noise(rng, u, v, n_waves=4, freq=(1, 3))
    veins = np.abs(np.sin(rng.uniform(4, 7) * (u + 0.4 * warp) + rng.uniform(0, 6.3)))
    _paint(img, veins < 0.09, _mix(img, fat[None, None], np.full(u.shape, 0.7, dtype=np.float32)))
    grill = _jitter(rng, (0.16, 0.08, 0.05), 0.15)
    g_ang = rng.uniform(0.5, 1.1) * rng.choice((-1, 1))
    period = rng.uniform(0.28, 0.38)
    s = (u * math.cos(g_ang) + v * math.sin(g_ang)) / period + rng.uniform(0, 1)
    _paint(img, (np.mod(s, 1.0) < 0.3) & (rel < 0.93), grill)
    return inside, img


def _draw_sushi(rng: np.random.Generator, u: Array, v: Array) -> tuple[Array, Array]:
    inside = np.zeros(u.shape, dtype=bool)
    img = np.zeros(u.shape + (3,), dtype=np.float32)
    rice = _jitter(rng, (0.96, 0.95, 0.90), 0.04)
    fish = _jitter(rng, [(0.98, 0.50, 0.30), (0.97, 0.62, 0.55), (0.85, 0.18, 0.22)][rng.integers(3)])
    nori = _jitter(rng, (0.07, 0.12, 0.08), 0.2)
    grain = _wave_noise(rng, u, v, n_waves=8, freq=(10, 18))
    rice_img = _mix(rice[None, None], rice[None, None] * 0.85, 0.5 + 0.5 * grain)
    if rng.random() < 0.6:  # nigiri, stacked along v
        n = int(rng.integers(1, 4))
        half_u, half_v, step = {1: (0.86, 0.42, 0.0), 2: (0.80, 0.26, 0.56),
                                3: (0.70, 0.19, 0.44)}[n]
        for i in range(n):
            pv = v - (i - (n - 1) / 2) * step
            body = _round_rect_sdf(u, pv, half_u, half_v, half_v * 0.6) < 0
            top = _round_rect_sdf(u, pv + 0.03, half_u - 0.05, half_v - 0.06, half_v * 0.5) < 0
            inside |= body
            _paint(img, body, rice_img)
            stripes = np.mod((u + 0.5 * pv) / 0.16 + rng.uniform(0, 1), 1.0) < 0.22
            fish_img = np.broadcast_to(fish, img.shape).copy()
            _paint(fish_img, stripes, _jitter(rng, (0.98, 0.90, 0.82), 0.03))
            _paint(img, top, fish_img)
            band_u = rng.uniform(-0.2, 0.2)
            _paint(img, top & (np.abs(u - band_u) < rng.uniform(0.09, 0.14)), nori)
    else:  # maki rolls
        n = int(rng.integers(2, 4))
        rad, dist = (0.46, 0.5) if n == 2 else (0.44, 0.52)
        turn = rng.uniform(0, 2 * math.pi)
        for i in range(n):
            a = turn + 2 * math.pi * i / n
            d = np.hypot(u - dist * math.cos(a), v - dist * math.sin(a))
            roll = d < rad
            inside |= roll
            _paint(img, roll, nori)
            _paint(img, d < rad * 0.82, rice_img)
            _paint(img, d < rad * rng.uniform(0.3, 0.42), fish)
    return inside, img


_PAINTERS: tuple[Callable[[np.random.Generator, Array, Array], tuple[Array, Array]], ...] = (
    _draw_pizza, _draw_steak, _draw_sushi)


# ----------------------------------------------------------------------------- backgrounds
def _f32(a: Any) -> Array:
    return np.asarray(a, dtype=np.float32)


def _draw_background(rng: np.random.Generator, H: int, W: int) -> Array:
    """A class-independent background, ``(H, W, 3)`` float32 in [0, 1] (drawn at pixel level)."""
    S = min(H, W)
    ys = (np.arange(H, dtype=np.float32) + 0.5 - H / 2) / S
    xs = (np.arange(W, dtype=np.float32) + 0.5 - W / 2) / S
    u, v = np.meshgrid(xs, ys)  # ~[-0.5, 0.5]
    kind = int(rng.integers(5))
    if kind == 0:  # gradient
        a = rng.uniform(0, 2 * math.pi)
        t = 0.5 + (u * math.cos(a) + v * math.sin(a))
        img = _mix(_f32(rng.uniform(0.05, 0.95, 3))[None, None],
                   _f32(rng.uniform(0.05, 0.95, 3))[None, None], t)
    elif kind == 1:  # smooth colour noise
        img = np.stack([0.5 + 0.22 * _wave_noise(rng, u, v, freq=(1, 4)) for _ in range(3)], -1)
        img = img * _f32(rng.uniform(0.6, 1.2, 3)) + _f32(rng.uniform(-0.2, 0.2, 3))
    elif kind == 2:  # plate on a table
        table = _f32(rng.uniform(0.1, 0.8, 3))
        img = _mix(table[None, None], table[None, None] * 0.7, 0.5 + 0.4 * _wave_noise(rng, u, v))
        cu, cv = rng.uniform(-0.1, 0.1, 2)
        d = np.hypot(u - cu, v - cv)
        pr = rng.uniform(0.42, 0.6)
        plate = _jitter(rng, [(0.95, 0.95, 0.93), (0.88, 0.92, 0.97), (0.95, 0.90, 0.80)][rng.integers(3)], 0.04)
        _paint(img, d < pr, plate * 0.88)
        _paint(img, d < pr * 0.86, plate)
    elif kind == 3:  # wood grain
        wood = _jitter(rng, [(0.55, 0.36, 0.20), (0.75, 0.58, 0.38), (0.35, 0.22, 0.14)][rng.integers(3)], 0.1)
        a = rng.uniform(0, math.pi)
        warp = _wave_noise(rng, u, v, n_waves=4, freq=(0.5, 2))
        g = np.sin((u * math.cos(a) + v * math.sin(a) + 0.08 * warp) * rng.uniform(25, 45))
        img = _mix(wood[None, None], wood[None, None] * 0.72, 0.5 + 0.5 * g)
    else:  # checked tablecloth
        c1 = _jitter(rng, (0.95, 0.95, 0.95), 0.04)
        c2 = _jitter(rng, [(0.80, 0.12, 0.12), (0.15, 0.30, 0.75), (0.20, 0.55, 0.25)][rng.integers(3)])
        a, period = rng.uniform(0, math.pi / 2), rng.uniform(0.12, 0.25)
        p = (u * math.cos(a) + v * math.sin(a)) / period
        q = (-u * math.sin(a) + v * math.cos(a)) / period
        img = np.where(((np.floor(p) + np.floor(q)) % 2 == 0)[..., None], c1, c2)
        img = _mix(img, c1[None, None], np.where((np.mod(p, 1) < 0.5) ^ (np.mod(q, 1) < 0.5),
                                                 np.float32(0.0), np.float32(0.35)))
    img = img + 0.025 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------- scenes
def _render(objects: Sequence[tuple[int, float, float, float, float]], rng: np.random.Generator,
            H: int, W: int, antialias: int) -> tuple[Array, Array, Array]:
    """Draw a background and then the objects in order.

    The background is drawn per pixel; objects are drawn at ``antialias``× resolution and
    averaged down, so only their edges blend with the background.

    Args:
        objects: ``(class_index, cx, cy, radius, angle)`` per object, in pixels/radians;
            an object fits in the disc of ``radius`` around ``(cx, cy)``.

    Returns:
        image ``(H, W, 3)`` float32, coverage ``(K, H, W)`` float32 (fraction of each pixel
        covered by each object; later objects hide earlier ones), background ``(H, W, 3)``.
    """
    s = antialias
    background = _draw_background(rng, H, W)
    canvas = np.repeat(np.repeat(background, s, axis=0), s, axis=1)
    owner = np.full((H * s, W * s), -1, dtype=np.int8)
    for k, (cls, cx, cy, radius, angle) in enumerate(objects):
        y0, y1 = max(0, int((cy - radius) * s) - 1), min(H * s, int(math.ceil((cy + radius) * s)) + 1)
        x0, x1 = max(0, int((cx - radius) * s) - 1), min(W * s, int(math.ceil((cx + radius) * s)) + 1)
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / s - np.float32(cy)
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / s - np.float32(cx)
        dx, dy = np.meshgrid(xs, ys)
        ca, sa = np.float32(math.cos(angle) / radius), np.float32(math.sin(angle) / radius)
        u, v = dx * ca + dy * sa, dy * ca - dx * sa
        inside, rgb = _PAINTERS[cls](rng, u, v)
        rgb = rgb + 0.02 * rng.standard_normal(rgb.shape, dtype=np.float32)
        region = canvas[y0:y1, x0:x1]
        region[inside] = np.clip(rgb[inside], 0.0, 1.0)
        owner[y0:y1, x0:x1][inside] = k

    def down(a: Array) -> Array:
        return a.reshape(H, s, W, s, *a.shape[2:]).mean(axis=(1, 3), dtype=np.float32)

    coverage = np.stack([down((owner == k).astype(np.float32)) for k in range(len(objects))])
    untouched = (coverage.sum(axis=0) == 0)[..., None]
    return np.where(untouched, background, down(canvas)), coverage, background


def _to_tensors(image: Array, coverage: Array) -> tuple[torch.Tensor, torch.Tensor]:
    img = np.clip(image.transpose(2, 0, 1), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)), torch.from_numpy(coverage >= 0.5)


def _single_layout(cls: int, rng: np.random.Generator, H: int, W: int,
                   scale: tuple[float, float]) -> tuple[int, float, float, float, float]:
    S = min(H, W)
    radius = rng.uniform(*scale) * S
    cx = rng.uniform(radius, W - radius)
    cy = rng.uniform(radius, H - radius)
    return cls, cx, cy, radius, rng.uniform(0, 2 * math.pi)


def make_image(cls: int | str, rng: np.random.Generator | int, size: int | Sequence[int] = DEFAULT_SIZE,
               *, scale: tuple[float, float] = SINGLE_SCALE, antialias: int = 2
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one object of class ``cls`` on a random background.

    Args:
        cls: class name (``"pizza"``, ``"steak"``, ``"sushi"``) or index into ``CLASS_NAMES``.
        rng: a ``numpy.random.Generator`` (advanced by the call) or an int seed.
        size: ``H`` (square) or ``(H, W)``; at least ``MIN_SIZE``.
        scale: range of the object's radius as a fraction of ``min(H, W)``; the object is
            always wholly inside the image. Default: ``(0.2, 0.45)``.
        antialias: supersampling factor (1 = off). Default: 2.

    Returns:
        image ``(3, H, W)`` float32 in [0, 1]; mask ``(H, W)`` bool, True where at least half
        of the pixel is covered by the object.

    Example::

        image, mask = make_image("pizza", np.random.default_rng(0), size=64)
        # image: (3, 64, 64), mask: (64, 64)
    """
    c = _class_index(cls)
    lo, hi = scale
    if not 0.05 <= lo <= hi <= 0.5:
        raise ValueError(f"scale must satisfy 0.05 <= low <= high <= 0.5 (a fraction of the "
                         f"image side), got {scale!r}; e.g. scale=(0.2, 0.45)")
    img, masks = _draw(lambda rng, H, W: [_single_layout(c, rng, H, W, scale)], size, rng,
                       antialias)
    return img, masks[0]


def _two_layout(pair: tuple[int, int], rng: np.random.Generator, H: int, W: int,
                scale: tuple[float, float]) -> list[tuple[int, float, float, float, float]]:
    """Two objects in opposite halves (left/right or top/bottom, order random): never overlap."""
    S = min(H, W)
    horizontal = W >= H if W != H else bool(rng.random() < 0.5)
    swap = bool(rng.random() < 0.5)
    objects = []
    for slot, cls in enumerate(pair):
        side = slot ^ swap
        bx, by, bw, bh = ((side * W / 2, 0.0, W / 2, float(H)) if horizontal
                          else (0.0, side * H / 2, float(W), H / 2))
        radius = min(rng.uniform(*scale) * S, bw / 2 - 0.5, bh / 2 - 0.5)
        cx = bx + rng.uniform(radius, bw - radius)
        cy = by + rng.uniform(radius, bh - radius)
        objects.append((cls, cx, cy, radius, rng.uniform(0, 2 * math.pi)))
    return objects


def make_two_object_image(classes: Sequence[int | str], rng: np.random.Generator | int,
                          size: int | Sequence[int] = DEFAULT_SIZE, *,
                          scale: tuple[float, float] = TWO_OBJECT_SCALE, antialias: int = 2
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw two objects of two different classes in opposite halves of the image.

    The image is split into left/right (or top/bottom) halves, at random which object goes
    where; each object lies wholly inside its half, so the masks never overlap.

    Args:
        classes: two different class names or indices, e.g. ``("pizza", "sushi")``.
        rng: a ``numpy.random.Generator`` (advanced by the call) or an int seed.
        size: ``H`` (square) or ``(H, W)``; at least ``MIN_SIZE``.
        scale: range of each object's radius as a fraction of ``min(H, W)`` (capped to fit
            the half). Default: ``(0.19, 0.245)``.
        antialias: supersampling factor (1 = off). Default: 2.

    Returns:
        image ``(3, H, W)`` float32 in [0, 1]; masks ``(2, H, W)`` bool (disjoint), in the
        order of ``classes``; labels ``(2,)`` int64 class indices.
    """
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or len(classes) != 2:
        raise ValueError(f"classes must be a pair of class names or indices, e.g. "
                         f"('pizza', 'sushi'), got {classes!r}")
    pair = (_class_index(classes[0]), _class_index(classes[1]))
    if pair[0] == pair[1]:
        raise ValueError(f"classes must be two different classes, got {classes!r}; "
                         f"pick two of {CLASS_NAMES}")
    img, masks = _draw(lambda rng, H, W: _two_layout(pair, rng, H, W, scale), size, rng,
                       antialias)
    return img, masks, torch.tensor(pair, dtype=torch.int64)


# ----------------------------------------------------------------------------- dataset
def _item_rng(seed: int, split: str, two_objects: bool, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_KEY[split], int(two_objects), index])


class SyntheticFood(Dataset):
    """``n`` synthetic images drawn once and held in memory (8-bit, like decoded PNGs).

    Single-object items cycle through the classes (label ``i % 3``) and two-object items
    through the ordered pairs in ``CLASS_PAIRS``, so classes are balanced to within one item.
    Item ``i`` is drawn from its own generator seeded with ``(seed, split, two_objects, i)``:
    the same arguments give identical data, and the ``"train"`` and ``"test"`` splits of one
    seed are different images.

    Args:
        n: number of images (> 0).
        size: ``H`` (square) or ``(H, W)``. Default: ``DEFAULT_SIZE`` (64).
        seed: data seed. Default: ``SEED``.
        two_objects: draw two objects of different classes per image. Default: False.
        split: ``"train"`` or ``"test"``. Default: ``"train"``.
        transform: optional callable applied to the float image ``(3, H, W)`` in ``__getitem__``.
        antialias: supersampling factor. Default: 2.

    Attributes:
        images: ``(n, 3, H, W)`` uint8.
        labels: ``(n,)`` int64, or ``(n, 2)`` for two-object images.
        masks: ``(n, H, W)`` bool, or ``(n, 2, H, W)`` (one per object, in label order).
        backgrounds: ``(n, 3, H, W)`` uint8, each image's own background with no object.
        coverage: ``(n, H, W)`` float32 in [0, 1], the fraction of each pixel the objects
            cover (0 exactly where the image is its background); see :func:`paste_objects`.
        classes: ``CLASS_NAMES`` as a list (as in ``torchvision.datasets.ImageFolder``).

    ``dataset[i]`` returns ``(image (3, H, W) float32 in [0, 1], label)`` where ``label`` is
    an int64 scalar (single object) or ``(2,)`` tensor (two objects).
    """

    def __init__(self, n: int, size: int | Sequence[int] = DEFAULT_SIZE, seed: int = SEED,
                 two_objects: bool = False, split: str = "train",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 antialias: int = 2) -> None:
        check_positive_int(n, "n", "n is the number of images")
        check_choice(split, "split", SPLITS)
        check_nonnegative_int(seed, "seed")
        H, W = self.size = _check_size(size)
        s = check_positive_int(antialias, "antialias", "the supersampling factor (1 = off)")
        self.n, self.seed, self.split, self.two_objects = int(n), int(seed), split, bool(two_objects)
        self.transform = transform
        self.classes = list(CLASS_NAMES)
        images = np.empty((self.n, H, W, 3), dtype=np.uint8)
        backgrounds = np.empty((self.n, H, W, 3), dtype=np.uint8)
        coverage = np.empty((self.n, H, W), dtype=np.float32)
        masks = np.empty((self.n, 2, H, W) if two_objects else (self.n, 1, H, W), dtype=bool)
        labels = np.empty((self.n, 2) if two_objects else (self.n,), dtype=np.int64)
        for i in range(self.n):
            rng = _item_rng(self.seed, split, self.two_objects, i)
            if two_objects:
                labels[i] = CLASS_PAIRS[i % len(CLASS_PAIRS)]
                objects = _two_layout(tuple(labels[i]), rng, H, W, TWO_OBJECT_SCALE)
            else:
                labels[i] = i % len(CLASS_NAMES)
                objects = [_single_layout(int(labels[i]), rng, H, W, SINGLE_SCALE)]
            image, cover, background = _render(objects, rng, H, W, s)
            images[i] = np.rint(np.clip(image, 0.0, 1.0) * 255)
            backgrounds[i] = np.rint(background * 255)
            coverage[i] = cover.sum(axis=0)
            masks[i] = cover >= 0.5
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.backgrounds = torch.from_numpy(backgrounds).permute(0, 3, 1, 2).contiguous()
        self.coverage = torch.from_numpy(coverage)
        self.masks = torch.from_numpy(masks if two_objects else masks[:, 0])
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 255
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def paste_objects(dataset: SyntheticFood, backgrounds: torch.Tensor) -> torch.Tensor:
    """The dataset's objects pasted, edges blended, onto other backgrounds.

    An image is ``coverage * object + (1 - coverage) * background`` pixel by pixel, so
    swapping the background term moves the object, unchanged, to another scene.

    Args:
        dataset: a ``SyntheticFood`` (its ``images``, ``backgrounds`` and ``coverage``).
        backgrounds: ``(n, 3, H, W)`` uint8 or float in [0, 1], one per image.

    Returns:
        images ``(n, 3, H, W)`` float32 in [0, 1].
    """
    if tuple(backgrounds.shape) != tuple(dataset.backgrounds.shape):
        raise ValueError(f"backgrounds must have the dataset's shape {tuple(dataset.backgrounds.shape)} "
                         f"(one per image), got {tuple(backgrounds.shape)}")
    new = backgrounds.float() / 255 if backgrounds.dtype == torch.uint8 else backgrounds.float()
    keep = (1 - dataset.coverage)[:, None]
    own = dataset.backgrounds.float() / 255
    return (dataset.images.float() / 255 + keep * (new - own)).clamp(0.0, 1.0)


def synthetic_dataloaders(n_train: int = 1500, n_test: int = 300, size: int | Sequence[int] = DEFAULT_SIZE,
                          batch_size: int = 64, seed: int = SEED, num_workers: int = 0
                          ) -> tuple[DataLoader, DataLoader, list[str]]:
    """Train and test loaders over single-object ``SyntheticFood`` images.

    The training loader shuffles with its own ``torch.Generator`` seeded from ``seed``, so
    batch order is reproducible without touching global state.

    Returns:
        ``(train_dl, test_dl, class_names)``, like ``vit_course.data.create_dataloaders``.
    """
    check_positive_int(batch_size, "batch_size")
    train = SyntheticFood(n_train, size, seed=seed, split="train")
    test = SyntheticFood(n_test, size, seed=seed, split="test")
    g = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(train, batch_size=batch_size, shuffle=True, generator=g, num_workers=num_workers)
    test_dl = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_dl, test_dl, list(CLASS_NAMES)
