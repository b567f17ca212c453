"""How a dataset zip gets from a URL or a local file into a verified folder, and nothing less.

The transport behind :func:`vit_course.data.download_pizza_steak_sushi` (which holds the
dataset's name, URL, counts and source order):

- HTTP with retries (:mod:`vit_course.tools.fetching`): transient failures (connection,
  timeout, HTTP 408/425/429/5xx, a body shorter than its ``Content-Length``) are retried
  with exponential backoff; a 404 is not.
  ``timeout`` bounds each wait for the server; ``deadline`` the whole download, retries
  included, so a server that trickles bytes cannot hold a notebook forever.
- Archive checks (:mod:`vit_course.tools.archive`): paths, encryption, compression method,
  size and compression-ratio limits, then every member's CRC.
- Verification by content: the ``train/`` and ``test/`` class folders, the image counts and
  that every image decodes. The archive is checked by content rather than by a hash because
  mirrors may repack the same images into different bytes.
- Atomic writes: downloads go to a temporary file and extraction to a temporary folder next
  to the target; both are renamed into place only when complete and verified, and removed
  on any failure, so the data folder never holds a half-written file or folder.
- Markers: a small file records a verified copy with each image's size and SHA-256, so later
  calls check the content without decoding it again: a changed image means a new install.
- Disk errors (a full disk, a folder that cannot be written) are reported with the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from ..checks import check_nonnegative_int
from .archive import archive_problem
from .fetching import _download, _local_path, _PermanentError, _TransientError

MARKER_NAME = ".vit_course_verified.json"
#: File endings counted as images (the same list torchvision's ImageFolder accepts).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_IGNORED_TOP_LEVEL = {"__MACOSX"}

Counts = dict[str, dict[str, int]]


class DataError(RuntimeError):
    """The dataset could not be downloaded, extracted or verified; the message says how to fix it."""


# --------------------------------------------------------------------------- arguments


def check_counts(expected: Any, default: Counts) -> Counts:
    """``expected`` image counts ``{split: {class_name: count}}``, checked and copied;
    ``None`` gives a copy of ``default`` (the real dataset's)."""
    if expected is None:
        return {split: dict(counts) for split, counts in default.items()}
    if not isinstance(expected, Mapping) or not expected:
        raise TypeError(
            "expected must be a non-empty mapping {split: {class_name: image_count}}, e.g. "
            f"{default}; got {expected!r}. Pass None for the real dataset's counts."
        )
    out: Counts = {}
    for split, counts in expected.items():
        if not isinstance(split, str) or not isinstance(counts, Mapping) or not counts:
            raise TypeError(
                f"expected[{split!r}] must be a non-empty mapping {{class_name: image_count}}, "
                f"got {counts!r}."
            )
        for name, n in counts.items():
            if not isinstance(name, str) or not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise TypeError(
                    f"expected[{split!r}][{name!r}] must be a non-negative int image count, got {n!r}."
                )
        out[split] = dict(counts)
    return out


def check_network_options(timeout: Any, retries: Any, backoff: Any, deadline: Any) -> None:
    """``timeout`` and ``deadline`` > 0, ``backoff`` >= 0 finite seconds, ``retries`` an int >= 0."""
    check_nonnegative_int(retries, "retries", "the extra attempts after a transient failure")
    for name, value, zero_ok in (("timeout", timeout, False), ("backoff", backoff, True),
                                 ("deadline", deadline, False)):
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value < 0 or (value == 0 and not zero_ok)):
            raise ValueError(f"{name} must be a finite number of seconds {'>= 0' if zero_ok else '> 0'}, "
                             f"got {value!r}.")


def make_data_dir(data_dir: Any, default: Callable[[], Path], env: str) -> Path:
    """``data_dir`` (or ``default()`` for None) as a Path, created; refuses a file."""
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path (str or os.PathLike) or None, got {type(data_dir).__name__}.")
    if data_dir is not None and not os.fspath(data_dir).strip():
        raise ValueError(f"data_dir is an empty path; pass a folder, or None for the default (${env}).")
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default()
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(
            f"data_dir {data_dir} exists but is a file; pass a folder (or set ${env})."
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data folder {data_dir} ({type(exc).__name__}: {exc.strerror or exc}). "
                        f"Pass data_dir= (or set ${env}) to a folder you can write, e.g. under your "
                        "home folder.") from None
    return data_dir


def choose_source(source: Any, data_dir: Path, archive_name: str, source_env: str,
                  default_url: str) -> tuple[str, str]:
    """The archive to fetch and where that choice came from: ``source``, else
    ``$source_env``, else ``data_dir/archive_name`` if it is there, else ``default_url``."""
    if source is not None:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(
                f"source must be a URL or a path to {archive_name} (str or os.PathLike), "
                f"got {type(source).__name__}: {source!r}."
            )
        if not str(source).strip():
            raise ValueError(f"source is an empty string; pass a URL or a path to {archive_name}, or None.")
        return os.fspath(source), "the source argument"
    env = os.environ.get(source_env, "").strip()
    if env:
        return env, f"${source_env}"
    manual = data_dir / archive_name
    if manual.is_file():
        return str(manual), "the zip placed in the data folder"
    return default_url, "the default URL"


# --------------------------------------------------------------------------- verification


def is_hidden(name: str) -> bool:
    """Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.jpg``, ``__MACOSX``) are never data."""
    return name.startswith(".") or name in _IGNORED_TOP_LEVEL


def visible_classes(directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """ImageFolder's ``find_classes`` without hidden folders (``.ipynb_checkpoints/``)."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not is_hidden(e.name))
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
    return classes, {name: i for i, name in enumerate(classes)}


def is_visible_image(root: str | os.PathLike, path: str) -> bool:
    """An image file (by its ending) with no hidden part in its path below ``root``."""
    return path.lower().endswith(IMAGE_EXTENSIONS) and not any(
        is_hidden(part) for part in os.path.relpath(path, root).split(os.sep))


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, like ImageFolder), hidden files skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for fname in sorted(filenames):
            if not is_hidden(fname) and fname.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / fname)
    return found


def _shown(path: Path, root: Path, label: str | None) -> str:
    """``path`` for messages: as is, or relative to ``root`` under ``label`` (e.g. "the archive")."""
    if label is None:
        return str(path)
    rel = path.relative_to(root).as_posix()
    return label if rel == "." else f"{rel} in {label}"


def _count(root: Path, expected: Counts, label: str | None = None) -> Counts:
    """Check the folder layout and count images per split and class; raise DataError on a mismatch."""
    counts: Counts = {}
    for split, want in expected.items():
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if not is_hidden(p.name)) if root.is_dir() else []
            raise DataError(
                f"missing folder {split!r} in {_shown(root, root, label)}: expected the splits {sorted(expected)}, "
                f"found {present}."
            )
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p.name))
        if classes != sorted(want):
            raise DataError(
                f"wrong class folders in {_shown(split_dir, root, label)}: expected {sorted(want)}, found {classes}."
            )
        counts[split] = {name: len(_image_files(split_dir / name)) for name in sorted(want)}
        if counts[split] != dict(sorted(want.items())):
            raise DataError(
                f"wrong image counts in {_shown(split_dir, root, label)}: expected {dict(sorted(want.items()))} "
                f"({sum(want.values())} images), found {counts[split]} "
                f"({sum(counts[split].values())} images)."
            )
    return counts


def _decode(path: Path) -> None:
    """Fully decode one image (JPEGs at reduced scale, which still reads every byte)."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (64, 64))
        img.load()


def verify_folder(root: str | os.PathLike, expected: Counts, label: str | None = None) -> Counts:
    """Split folders, class folders, image counts and that every image decodes; DataError if not.

    ``label`` (e.g. ``"the archive"``) names the folder in messages instead of its path.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a dataset folder (str or os.PathLike), got {type(root).__name__}: {root!r}.")
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root} does not exist (or is not a folder). "
            "Run vit_course.data.download_pizza_steak_sushi() to download and extract it."
        )
    counts = _count(root, expected, label)
    for split, classes in expected.items():
        for name in classes:
            for path in _image_files(root / split / name):
                try:
                    _decode(path)
                except Exception as exc:  # PIL raises several types for bad files
                    fix = ("" if label is not None else f" The copy is damaged: delete {root} and download "
                           "again (download_pizza_steak_sushi(force=True)).")
                    raise DataError(
                        f"image {_shown(path, root, label)} does not decode ({type(exc).__name__}: {exc}).{fix}"
                    ) from exc
    return counts


def _fingerprints(root: Path, expected: Counts) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every image counted in ``root``."""
    out = {}
    for split, classes in expected.items():
        for name in classes:
            for path in _image_files(root / split / name):
                out[path.relative_to(root).as_posix()] = [path.stat().st_size,
                                                          hashlib.sha256(path.read_bytes()).hexdigest()]
    return out


def _marker_ok(root: Path, expected: Counts) -> bool | str:
    """Check a previously verified copy against its marker: True when every image is unchanged,
    False when there is no usable marker, else the reason (an image added, removed or changed)."""
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
        if marker.get("counts") != expected or not isinstance(marker.get("files"), dict):
            return False
        counts, now = _count(root, expected), _fingerprints(root, expected)
    except (OSError, ValueError, AttributeError):
        return False
    except DataError as exc:
        return str(exc)
    changed = sorted(set(now) ^ set(marker["files"]) | {f for f in now if now[f] != marker["files"].get(f)})
    return counts == expected and (not changed or f"{changed[0]} changed since it was verified "
                                                 f"({len(changed)} file(s) differ from the marker)")


def _write_marker(root: Path, counts: Counts, source: str) -> None:
    """Write the marker atomically (a temporary file renamed into place)."""
    text = json.dumps({"counts": counts, "source": source, "files": _fingerprints(root, counts),
                       "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1)
    tmp = root / f"{MARKER_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text)
        os.replace(tmp, root / MARKER_NAME)
    finally:
        tmp.unlink(missing_ok=True)


def existing_copy(root: Path, expected: Counts) -> tuple[bool, str | None]:
    """Is ``root`` a verified copy? Trusted after a recount (marker) or a full check (no marker).

    Returns:
        ``(True, None)`` when it is (printed), ``(False, why)`` when it is there but fails
        verification, ``(False, None)`` when there is nothing.
    """
    if not root.is_dir():
        return False, None
    state = _marker_ok(root, expected)
    if state is True:
        print(f"Dataset already present and verified at {root}; skipping download.")
        return True, None
    if state:  # a marked copy whose content changed: never trusted again as it is
        return False, state
    try:
        counts = verify_folder(root, expected)
    except DataError as exc:
        return False, str(exc)
    try:
        _write_marker(root, counts, "found in place")
    except OSError:  # a read-only copy: verified all the same, checked in full next time
        pass
    print(f"Dataset found and verified at {root}; skipping download.")
    return True, None


# --------------------------------------------------------------------------- archive checks


def _check_archive(zf: zipfile.ZipFile) -> None:
    problem = archive_problem(zf)
    if problem is not None:
        raise DataError(f"archive {problem}; refusing to extract the archive.")
    try:
        bad = zf.testzip()
    except Exception as exc:  # zlib.error, EOFError: a member's compressed data is damaged
        raise DataError(f"the archive is corrupt: a member does not decompress ({type(exc).__name__}: {exc}).") from None
    if bad is not None:
        raise DataError(f"archive member {bad!r} is corrupt (CRC check failed).")


def _extract(zf: zipfile.ZipFile, dest: Path) -> None:
    members = [
        m for m in zf.infolist()
        if PurePosixPath(m.filename.replace("\\", "/")).parts[:1] not in {(n,) for n in _IGNORED_TOP_LEVEL}
    ]
    for member in tqdm(members, desc="Extracting", unit="file", leave=False):
        zf.extract(member, dest)


def _dataset_root_in(folder: Path, expected: Counts) -> Path:
    """The extracted dataset root: ``folder`` itself, or its only sub-folder if the zip wraps one."""
    if all((folder / split).is_dir() for split in expected):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name)]
    if len(subdirs) == 1 and all((subdirs[0] / split).is_dir() for split in expected):
        return subdirs[0]
    return folder  # let _count name what is missing


# --------------------------------------------------------------------------- install


def install_archive(src: str, origin: str, data_dir: Path, name: str, expected: Counts, *,
                    default_url: str, fix_text: str, source_env: str, data_env: str,
                    stale_reason: str | None, timeout: float, retries: int, backoff: float,
                    deadline: float) -> Path:
    """Fetch the zip ``src``, check and extract it, verify the content, move it to ``data_dir/name``.

    Args:
        src, origin: the URL or path of the zip, and where that choice came from (for messages).
        name: the dataset's folder name (and the zip's, without ``.zip``).
        expected: ``{split: {class_name: image_count}}``.
        default_url, fix_text, source_env, data_env: the dataset's URL, what to do when
            fetching fails, its source and data-folder variables (for messages).
        stale_reason: why a copy already at the target failed verification, or None.
        timeout, retries, backoff, deadline: as in ``download_pizza_steak_sushi``.

    Returns:
        ``data_dir/name``. A stale copy there is replaced only once the new one is verified.

    Raises:
        DataError: fetching, checking or writing failed (a full disk included); nothing new
        is left in ``data_dir``.
    """
    root = data_dir / name
    stale = f"\n(The existing folder {root} did not pass verification: {stale_reason})" if stale_reason else ""
    tmp_zip: Path | None = None
    tmp_dir: Path | None = None
    trash: Path | None = None
    try:
        try:
            archive = _local_path(src)
            if archive is None:
                print(f"Downloading {src} (from {origin}) into {data_dir}")
                tmp_zip = archive = _download(src, data_dir, name, timeout=timeout, retries=retries,
                                              backoff=backoff, deadline=deadline)
            elif not archive.is_file():
                raise _PermanentError(f"{archive} does not exist or is not a file")
            else:
                print(f"Using the local archive {archive} (from {origin})")
        except (_TransientError, _PermanentError) as exc:
            offline = " (no internet access?)" if src == default_url else ""
            raise DataError(
                f"Could not get the pizza/steak/sushi dataset from {src} (from {origin}){offline}: {exc}.\n"
                f"{fix_text}{stale}"
            ) from None

        # Check the archive, extract it beside the target, verify the content.
        tmp_dir = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{name}-extract-"))
        try:
            try:
                with zipfile.ZipFile(archive) as zf:
                    _check_archive(zf)
                    _extract(zf, tmp_dir)
            except zipfile.BadZipFile as exc:
                raise DataError(f"{archive} is not a valid zip archive ({exc}); it is corrupt or not a zip.") from exc
            new_root = _dataset_root_in(tmp_dir, expected)
            counts = verify_folder(new_root, expected, label="the archive")
        except DataError as exc:
            hint = (f"Delete {archive} (placed by hand) and put a good copy there, or set {source_env}."
                    if origin.startswith("the zip placed") else
                    f"Check that {origin} points at the pizza/steak/sushi zip ({default_url}).")
            raise DataError(
                f"The archive from {src} failed verification: {exc}\n"
                f"Nothing was installed in {data_dir}. {hint}"
            ) from None
        _write_marker(new_root, counts, src)
        os.chmod(new_root, 0o755)  # mkdtemp made it private

        # Move the verified copy into place (a stale copy is moved aside first, then removed).
        if root.exists():
            trash = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{name}-old-"))
            os.replace(root, trash / name)
        try:
            os.replace(new_root, root)
        except OSError:
            if _marker_ok(root, expected) is True:  # another process finished first
                return root
            if trash is not None and not root.exists():  # put the old copy back
                os.replace(trash / name, root)
            raise
    except OSError as exc:  # a full disk, a folder that cannot be written
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = ("free some space on that disk (the zip and its extracted copy need about twice the "
               "zip's size)" if full else "make that folder writable")
        raise DataError(
            f"Could not write the dataset into {data_dir} ({type(exc).__name__}: {exc.strerror or exc}); "
            f"nothing was installed. To fix it, {fix}, or pass data_dir= (or set {data_env}) to a "
            f"folder elsewhere, then run this again.{stale}") from None
    finally:
        if tmp_zip is not None:
            tmp_zip.unlink(missing_ok=True)
        for folder in (tmp_dir, trash):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    summary = " / ".join(f"{sum(c.values())} {split}" for split, c in counts.items())
    print(f"Dataset verified and ready at {root} ({summary} images)")
    return root
