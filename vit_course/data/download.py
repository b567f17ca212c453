"""Download and verify the pizza/steak/sushi dataset (a 3-class slice of Food-101).

One call, safe to repeat::

    from vit_course.data import download_pizza_steak_sushi
    root = download_pizza_steak_sushi()        # data/pizza_steak_sushi/{train,test}/{pizza,steak,sushi}

Where the archive comes from, first match wins:

1. the ``source`` argument;
2. the environment variable ``VIT_COURSE_DATA_SOURCE`` (an ``http(s)://`` URL, a
   ``file://`` URL, or a path to a local copy of ``pizza_steak_sushi.zip``);
3. a zip you put by hand at ``<data_dir>/pizza_steak_sushi.zip``;
4. :data:`DATASET_URL` (GitHub).

Where it lands: ``<data_dir>/pizza_steak_sushi``, with ``data_dir`` from
:func:`default_data_dir` (``$VIT_COURSE_DATA_DIR``, else ``<checkout>/data``, else
``~/.cache/vit_course/data``).

Nothing is declared ready before it is checked: the zip's CRCs, that no member escapes the
target folder, its size and compression ratio, the ``train/`` and ``test/`` class folders
(hidden entries such as ``.ipynb_checkpoints`` ignored), the image counts (225 and 75) and
that every image decodes. The archive is checked by content rather than by a hash because
mirrors may repack the same images into different bytes. Downloads and extraction are
atomic, so ``data_dir`` never holds a half-written file or folder, and a small marker file
records a verified copy with each image's SHA-256, so later calls check the content without
decoding it again (a changed image means a new install) and return. ``docs/INPUTS.md`` lists
the limits. How all that is
done (argument checks, source order, retries, archive checks, markers) is
infrastructure: :mod:`vit_course.tools.transport`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..runtime import project_root
from ..tools.transport import (  # noqa: F401  (DataError: raised here, documented here)
    DataError, check_counts, check_network_options, choose_source, existing_copy,
    install_archive, make_data_dir, verify_folder,
)

__all__ = ["CLASS_NAMES", "DATASET_URL", "DATA_DIR_ENV", "EXPECTED_COUNTS", "SOURCE_ENV", "SPLITS",
           "DataError", "default_data_dir", "download_pizza_steak_sushi", "verify_dataset"]

DATASET_URL = "https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data/pizza_steak_sushi.zip"
SOURCE_ENV = "VIT_COURSE_DATA_SOURCE"
DATA_DIR_ENV = "VIT_COURSE_DATA_DIR"

DATASET_NAME = "pizza_steak_sushi"
ARCHIVE_NAME = f"{DATASET_NAME}.zip"
SPLITS = ("train", "test")
CLASS_NAMES = ("pizza", "steak", "sushi")
#: Images per split and class in the upstream archive (225 train, 75 test).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "train": {"pizza": 78, "steak": 75, "sushi": 72},
    "test": {"pizza": 25, "steak": 19, "sushi": 31},
}


def default_data_dir() -> Path:
    """Where datasets are stored: ``$VIT_COURSE_DATA_DIR``, else ``<checkout>/data``
    (when running from a clone), else ``~/.cache/vit_course/data``. Not created here."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    root = project_root()
    if root is not None:
        return root / "data"
    return Path.home() / ".cache" / "vit_course" / "data"


def _fix_text(data_dir: Path) -> str:
    return (
        "To fix it, do one of:\n"
        f"  - set {SOURCE_ENV} to a local copy of the zip or to a URL serving it, e.g.\n"
        f"      export {SOURCE_ENV}=/path/to/{ARCHIVE_NAME}\n"
        f"  - or download {DATASET_URL}\n"
        f"    on a machine with internet access and put it at {data_dir / ARCHIVE_NAME}\n"
        "    (that file is picked up automatically when no source is set),\n"
        "then run this again."
    )


def verify_dataset(root: str | os.PathLike, expected: Mapping[str, Mapping[str, int]] | None = None
                   ) -> dict[str, dict[str, int]]:
    """Check a dataset folder: split folders, class folders, image counts, every image decodes.

    Args:
        root: folder holding ``train/`` and ``test/``, each with one folder per class.
        expected: ``{split: {class_name: image_count}}``. Default: the real dataset,
            ``train`` 78/75/72 and ``test`` 25/19/31 images of pizza/steak/sushi.

    Returns:
        The counts found, ``{split: {class_name: image_count}}`` (equal to ``expected``).

    Raises:
        DataError: naming the folder or file that is wrong and what was expected.
    """
    return verify_folder(root, check_counts(expected, EXPECTED_COUNTS))


def download_pizza_steak_sushi(data_dir: str | os.PathLike | None = None,
                               source: str | os.PathLike | None = None, force: bool = False,
                               expected: Mapping[str, Mapping[str, int]] | None = None, *,
                               timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                               deadline: float = 600.0) -> Path:
    """Download, verify and extract the pizza/steak/sushi dataset; skip if a verified copy exists.

    Args:
        data_dir: folder to hold the dataset. Default: :func:`default_data_dir`.
        source: URL (``http(s)://``, ``file://``) or local path of the zip. Default:
            ``$VIT_COURSE_DATA_SOURCE``, else ``<data_dir>/pizza_steak_sushi.zip`` if present,
            else :data:`DATASET_URL`.
        force: fetch and verify again even when a verified copy is present.
        expected: ``{split: {class_name: image_count}}`` to verify against. Default: the real
            dataset (225 train, 75 test images).
        timeout: seconds to wait for the server to connect or send data (each wait).
        deadline: seconds the whole download may take, retries included; a slower one stops
            with a DataError (a server that trickles bytes never trips ``timeout``).
        retries: extra attempts after a transient failure (connection, timeout, HTTP 5xx/429,
            truncated body); a 404 is not retried.
        backoff: seconds before the first retry, doubled for each later one.

    Returns:
        The dataset root, ``<data_dir>/pizza_steak_sushi``, holding ``train/`` and ``test/``.

    Raises:
        DataError: the download, the archive or its content failed; the message says what to do.
    """
    expected = check_counts(expected, EXPECTED_COUNTS)
    check_network_options(timeout, retries, backoff, deadline)
    if not isinstance(force, bool):
        raise TypeError(f"force must be True or False, got {force!r}.")
    data_dir = make_data_dir(data_dir, default_data_dir, DATA_DIR_ENV)
    root = data_dir / DATASET_NAME

    stale_reason = None
    if not force:
        present, stale_reason = existing_copy(root, expected)
        if present:
            return root
    src, origin = choose_source(source, data_dir, ARCHIVE_NAME, SOURCE_ENV, DATASET_URL)
    return install_archive(src, origin, data_dir, DATASET_NAME, expected, default_url=DATASET_URL,
                           fix_text=_fix_text(data_dir), source_env=SOURCE_ENV, data_env=DATA_DIR_ENV,
                           stale_reason=stale_reason, timeout=timeout, retries=retries,
                           backoff=backoff, deadline=deadline)
