"""A discard-ratio sweep as an animated GIF: how rollout maps sharpen as low attention goes.

jacobgil/vit-explain's rollout (``vit_rollout.py`` ``rollout()``) discards the lowest
``discard_ratio`` fraction of every fused attention matrix before multiplying the layers
(its README shows discard-ratio sweeps as GIFs, ``examples/*_discard_ratio.gif``); the maps
here use :func:`vit_course.explain.rollout`, which discards per image. The animation
shows one image's map for each head fusion (``mean``, ``max``, ``min``) while the ratio
sweeps from 0 to 0.99::

    discard_sweep_gif(model, image, "assets/discard_sweep.gif", raw_image=raw)

Three steps, each usable on its own:

- :func:`discard_sweep_maps` (compute): one model pass, then every (ratio, fusion) map
  from the cached capture, (R, F, h, w).
- :func:`render_discard_sweep` (plot): one RGB frame per ratio, (H, W, 3) uint8.
- :func:`save_gif` (write, from :mod:`vit_course.tools.gif`): the frames as a looping GIF,
  written atomically (a temporary file in the same folder, renamed when complete; nothing
  is left behind on failure).

With a ground-truth mask (synthetic data), each panel's title gives the share of the map's
mass on the object (:func:`vit_course.metrics.mass_on_mask`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from .checks import HEAD_FUSIONS, check_fractions, check_fusion, check_images
from .explain import capture, explain, get_method
from .imaging import upsample
from .metrics import mass_on_mask
from .tools.gif import gif_path, save_gif
from .viz import overlay


#: Ratios of the default sweep: coarse at first, fine near the end where maps change most.
DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9,
                                     0.93, 0.95, 0.97, 0.98, 0.99)


# ----------------------------------------------------------------------------- checks
def _fusions(head_fusions: object) -> tuple[str, ...]:
    if isinstance(head_fusions, str) or not isinstance(head_fusions, Sequence) \
            or not head_fusions:
        raise ValueError(f"head_fusions must be a non-empty sequence drawn from "
                         f"{list(HEAD_FUSIONS)}, e.g. ('mean', 'max', 'min'); got {head_fusions!r}")
    return tuple(check_fusion(f) for f in head_fusions)


def _one_image(image: object, name: str = "image") -> Tensor:
    """One image (C, H, W) (or a batch of one) → (1, C, H, W)."""
    x = check_images(image.unsqueeze(0) if isinstance(image, Tensor) and image.ndim == 3
                     else image, name, finite=True)
    if x.shape[0] != 1:
        raise ValueError(f"{name} must be one image (C, H, W) (or (1, C, H, W)), got shape "
                         f"{tuple(x.shape)}; pick one image of the batch, e.g. x[0].")
    return x


# ----------------------------------------------------------------------------- compute
def discard_sweep_maps(model: nn.Module, image: Tensor,
                       head_fusions: Sequence[str] = HEAD_FUSIONS,
                       ratios: Sequence[float] = DEFAULT_RATIOS, *, method: str = "rollout",
                       target: int | None = None, start_layer: int = 0) -> Tensor:
    """One image's maps for every (discard ratio, head fusion) from a single model pass.

    The image is captured once; every map is then ``explain(..., capture=cap)`` (zero
    model passes).

    Args:
        model: a supported ViT (see :data:`vit_course.explain.SUPPORTED_MODELS`).
        image: (C, H, W) transformed for the model.
        head_fusions: fusions to show. Default: ``("mean", "max", "min")``.
        ratios: discard ratios in [0, 1). Default: :data:`DEFAULT_RATIOS`.
        method: a registered method with ``discard_ratio`` and ``head_fusion`` options that
            works from a capture (``"rollout"``, ``"grad_rollout"``). Default: ``"rollout"``.
        target: class for class-specific methods; ``None`` = predicted. Default: ``None``.
        start_layer: first layer of the rollout. Default: 0.

    Returns:
        (R, F, h, w): ``[r, f]`` is the map for ``ratios[r]`` and ``head_fusions[f]``,
        as the method returns it (not normalised).
    """
    fusions, values = _fusions(head_fusions), check_fractions(ratios, "ratios")
    x = _one_image(image)
    cls = get_method(method)
    if not {"discard_ratio", "head_fusion"} <= set(cls.defaults) or not cls.supports_capture:
        raise ValueError(f"method {method!r} has no discard_ratio/head_fusion options or cannot "
                         "work from a capture; use 'rollout' or 'grad_rollout'.")
    cap = capture(model, x, target=target, with_grad=cls.needs_grad)
    return torch.stack([torch.stack([
        explain(model, x, method, target, capture=cap, head_fusion=f, discard_ratio=r,
                start_layer=start_layer)[0] for f in fusions]) for r in values])   # (R, F, h, w)


# ----------------------------------------------------------------------------- plot
def render_discard_sweep(raw_image: Tensor, maps: Tensor, ratios: Sequence[float],
                         head_fusions: Sequence[str] = HEAD_FUSIONS, *,
                         mask: Tensor | np.ndarray | None = None, title: str | None = None,
                         method: str = "rollout", display_size: int | None = 192,
                         alpha: float = 0.5, cmap: str = "jet", dpi: int = 80
                         ) -> list[np.ndarray]:
    """Frames of the sweep: the image, then one overlay per fusion, one frame per ratio.

    Args:
        raw_image: (3, H, W) in [0, 1], the model's view of the image (no normalisation).
        maps: (R, F, h, w) from :func:`discard_sweep_maps`.
        ratios: the R ratios (for the frame titles).
        head_fusions: the F fusions (for the panel titles).
        mask: optional ground truth (H, W) or (K, H, W) at the image's resolution; its outline
            is drawn on every panel and each panel's title gives the share of the map's mass
            on it (see :func:`vit_course.metrics.mass_on_mask`).
        title: caption over the image panel. Default: ``"input"``.
        method: method name for the panel titles. Default: ``"rollout"``.
        display_size: upscale images smaller than this many pixels (longest side) so the
            overlays are not tiny; ``None`` keeps the size. Default: 192.
        alpha, cmap: as :func:`vit_course.viz.overlay`.
        dpi: figure resolution. Default: 80.

    Returns:
        R frames, each (H_frame, W_frame, 3) uint8, all the same size. Each map is scaled
        to [0, 1] on its own (the colours show where the map is high, not absolute values).
    """
    raw = _one_image(raw_image, "raw_image")[0].detach().cpu().float()
    fusions, values = _fusions(head_fusions), check_fractions(ratios, "ratios")
    R, Fn = len(values), len(fusions)
    if not isinstance(maps, Tensor) or maps.ndim != 4 or tuple(maps.shape[:2]) != (R, Fn):
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be (R, F, h, w) = ({R}, {Fn}, h, w) "
                         f"for {R} ratios and {Fn} fusions, got {got}")
    maps = maps.detach().cpu().float().flatten(0, 1)                  # (R·F, h, w)
    outlines = shares = None
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
        m = m[None] if m.ndim == 2 else m
        if m.ndim != 3:
            raise ValueError(f"mask must be (H, W) or (K, H, W) (one per object), got shape "
                             f"{tuple(m.shape)}")
        union = (m.float() > 0.5).any(dim=0)
        shares = mass_on_mask(maps, union).reshape(R, Fn)
    H, W = raw.shape[-2:]
    if display_size is not None and max(H, W) < display_size:
        scale = display_size / max(H, W)
        H, W = round(H * scale), round(W * scale)
        raw = upsample(raw, (H, W)).clamp(0, 1)
    if mask is not None:
        outlines = upsample(m.float(), (H, W), mode="nearest").numpy()
    heats = upsample(maps, (H, W), normalize=True).reshape(R, Fn, H, W)

    fig = Figure(figsize=(2.3 * (Fn + 1), 2.75), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, Fn + 1)
    axes[0].imshow(raw.permute(1, 2, 0).numpy())
    axes[0].set_title(title or "input", fontsize=9)
    artists, panel_titles = [], []
    for f, ax in enumerate(axes[1:]):
        artists.append(ax.imshow(overlay(raw, heats[0, f].numpy(), alpha=alpha, cmap=cmap)))
        panel_titles.append(ax.set_title(f"{method}, {fusions[f]}", fontsize=9))
    if outlines is not None:
        for ax in axes:
            for m in outlines:
                ax.contour(m, levels=[0.5], colors="white", linewidths=1.0)
    for ax in axes:
        ax.set(xticks=[], yticks=[])
    caption = fig.suptitle("", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    frames = []
    for r, ratio in enumerate(values):
        for f, artist in enumerate(artists):
            artist.set_data(overlay(raw, heats[r, f].numpy(), alpha=alpha, cmap=cmap))
            if shares is not None:
                panel_titles[f].set_text(f"{method}, {fusions[f]}: {shares[r, f]:.0%} on mask")
        caption.set_text(f"discard ratio {ratio:.2f}")
        canvas.draw()
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return frames


# ----------------------------------------------------------------------------- write
def discard_sweep_gif(model: nn.Module, image: Tensor, out_path: str | os.PathLike,
                      head_fusions: Sequence[str] = HEAD_FUSIONS,
                      ratios: Sequence[float] = DEFAULT_RATIOS, *,
                      raw_image: Tensor | None = None, method: str = "rollout",
                      target: int | None = None, start_layer: int = 0,
                      mask: Tensor | np.ndarray | None = None, title: str | None = None,
                      fps: float = 4.0, display_size: int | None = 192) -> Path:
    """Animate one image's maps per head fusion while the discard ratio sweeps; write a GIF.

    One model pass (:func:`discard_sweep_maps`), frames from :func:`render_discard_sweep`,
    written by :func:`save_gif` (atomically).

    Args:
        model: a supported ViT.
        image: (C, H, W) transformed for the model.
        out_path: the ``.gif`` to write (its folder must exist).
        head_fusions, ratios, method, target, start_layer: see :func:`discard_sweep_maps`.
        raw_image: (3, H', W') in [0, 1] to draw under the maps. Default: ``image`` when it
            lies in [0, 1] (e.g. :func:`vit_course.data.simple_transform`); required for
            normalised inputs.
        mask, title, display_size: see :func:`render_discard_sweep`.
        fps: frames per second. Default: 4.

    Returns:
        the path written.
    """
    image, _ = _one_image(image)[0], gif_path(out_path)    # a bad path fails before the work
    if raw_image is None:
        if image.min() < 0 or image.max() > 1 or image.shape[0] != 3:
            raise ValueError("image is normalised (values outside [0, 1]) or not RGB, so it "
                             "cannot be drawn as is; pass raw_image=(x * std + mean).clamp(0, 1).")
        raw_image = image
    maps = discard_sweep_maps(model, image, head_fusions, ratios, method=method, target=target,
                              start_layer=start_layer)
    frames = render_discard_sweep(raw_image, maps, ratios, head_fusions, mask=mask, title=title,
                                  method=method, display_size=display_size)
    return save_gif(frames, out_path, fps=fps)
