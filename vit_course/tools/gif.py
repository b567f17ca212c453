"""Writing an animated GIF, atomically: the file-format plumbing behind
:func:`vit_course.animation.discard_sweep_gif` (frames in, one looping ``.gif`` out)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write, check_writable


def gif_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` if it can take the GIF: a .gif in an existing, writable folder."""
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"path must end in .gif, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"the folder {str(path.parent)!r} does not exist; create it first "
                         f"(Path({str(path.parent)!r}).mkdir(parents=True)).")
    return check_writable(path, "sweep.gif")     # not an existing folder, and writable


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 4.0,
             hold_last: float = 1.5, colors: int = 128) -> Path:
    """Write frames as a looping GIF, atomically.

    Args:
        frames: (H, W, 3) uint8 arrays of one size.
        path: the ``.gif`` file; its folder must exist.
        fps: frames per second. Default: 4.
        hold_last: seconds the last frame stays before the loop restarts. Default: 1.5.
        colors: palette size (2-256), one palette shared by all frames. Default: 128.

    Returns:
        ``path`` as a ``Path``. The file appears complete or not at all.
    """
    path = gif_path(path)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(hold_last, bool) or not isinstance(hold_last, (int, float)) or hold_last < 0:
        raise ValueError(f"hold_last must be a number of seconds >= 0, got {hold_last!r}")
    if isinstance(colors, bool) or not isinstance(colors, int) or not 2 <= colors <= 256:
        raise ValueError(f"colors must be an int in [2, 256] (GIF palettes), got {colors!r}")
    frames = list(frames)
    if not frames:
        raise ValueError("frames is empty; render at least one frame")
    shape = frames[0].shape
    for k, fr in enumerate(frames):
        if not isinstance(fr, np.ndarray) or fr.dtype != np.uint8 or fr.ndim != 3 \
                or fr.shape[-1] != 3 or fr.shape != shape:
            raise ValueError(f"frame {k} must be an (H, W, 3) uint8 array of shape {shape}, got "
                             f"{getattr(fr, 'dtype', type(fr).__name__)} "
                             f"{getattr(fr, 'shape', '')}")
    # One palette for all frames, from a sample of them, and no dithering: a palette per
    # frame plus dither noise makes the GIF several times larger for no visible gain.
    sample = np.concatenate(frames[::max(1, len(frames) // 6)], axis=0)
    palette = Image.fromarray(sample).quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(fr).quantize(palette=palette, dither=Image.Dither.NONE)
              for fr in frames]
    step = int(round(1000 / fps))
    durations = [step] * len(images)
    durations[-1] = max(step, int(round(1000 * hold_last)))
    with atomic_write(path) as fh:
        images[0].save(fh, format="GIF", save_all=True, append_images=images[1:],
                       duration=durations, loop=0)
    return path
