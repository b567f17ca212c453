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
target folder, the ``train/`` and ``test/`` class folders, the image counts (225 and 75) and
that every image decodes. The archive is checked by content rather than by a hash because
mirrors may repack the same images into different bytes. Downloads go to a temporary file
and extraction to a temporary folder next to the target; both are renamed into place only
when complete and verified, and removed on any failure, so ``data_dir`` never holds a
half-written file or folder. A small marker file records a verified copy, so later calls
only recount the files and return.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import requests
from PIL import Image
from tqdm.auto import tqdm

from ..runtime import project_root

DATASET_URL = "https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data/pizza_steak_sushi.zip"
SOURCE_ENV = "VIT_COURSE_DATA_SOURCE"
DATA_DIR_ENV = "VIT_COURSE_DATA_DIR"

DATASET_NAME = "pizza_steak_sushi"
ARCHIVE_NAME = f"{DATASET_NAME}.zip"
MARKER_NAME = ".vit_course_verified.json"
SPLITS = ("train", "test")
CLASS_NAMES = ("pizza", "steak", "sushi")
#: Images per split and class in the upstream archive (225 train, 75 test).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "train": {"pizza": 78, "steak": 75, "sushi": 72},
    "test": {"pizza": 25, "steak": 19, "sushi": 31},
}
#: File endings counted as images (the same list torchvision's ImageFolder accepts).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_IGNORED_TOP_LEVEL = {"__MACOSX"}


class DataError(RuntimeError):
    """The dataset could not be downloaded, extracted or verified; the message says how to fix it."""


class _TransientError(Exception):
    """A failure worth retrying (connection, timeout, 5xx, truncated body)."""


class _PermanentError(Exception):
    """A failure retrying will not fix (404, bad URL)."""


# --------------------------------------------------------------------------- paths


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


# --------------------------------------------------------------------------- verification


def _check_expected(expected: Mapping[str, Mapping[str, int]] | None) -> dict[str, dict[str, int]]:
    if expected is None:
        return {split: dict(counts) for split, counts in EXPECTED_COUNTS.items()}
    if not isinstance(expected, Mapping) or not expected:
        raise TypeError(
            "expected must be a non-empty mapping {split: {class_name: image_count}}, e.g. "
            f"{EXPECTED_COUNTS}; got {expected!r}. Pass None for the real dataset's counts."
        )
    out: dict[str, dict[str, int]] = {}
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


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_TOP_LEVEL


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, like ImageFolder), hidden files skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for fname in sorted(filenames):
            if not _is_hidden(fname) and fname.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / fname)
    return found


def _shown(path: Path, root: Path, label: str | None) -> str:
    """``path`` for messages: as is, or relative to ``root`` under ``label`` (e.g. "the archive")."""
    if label is None:
        return str(path)
    rel = path.relative_to(root).as_posix()
    return label if rel == "." else f"{rel} in {label}"


def _count(root: Path, expected: dict[str, dict[str, int]], label: str | None = None) -> dict[str, dict[str, int]]:
    """Check the folder layout and count images per split and class; raise DataError on a mismatch."""
    counts: dict[str, dict[str, int]] = {}
    for split, want in expected.items():
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if not _is_hidden(p.name)) if root.is_dir() else []
            raise DataError(
                f"missing folder {split!r} in {_shown(root, root, label)}: expected the splits {sorted(expected)}, "
                f"found {present}."
            )
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not _is_hidden(p.name))
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


def verify_dataset(
    root: str | os.PathLike, expected: Mapping[str, Mapping[str, int]] | None = None
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
    return _verify(Path(root), _check_expected(expected))


def _verify(root: Path, expected: dict[str, dict[str, int]], label: str | None = None) -> dict[str, dict[str, int]]:
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


def _marker_ok(root: Path, expected: dict[str, dict[str, int]]) -> bool:
    """Cheap check of a previously verified copy: marker present and file counts unchanged."""
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
        return marker.get("counts") == expected and _count(root, expected) == expected
    except (OSError, ValueError, DataError):
        return False


def _write_marker(root: Path, counts: dict[str, dict[str, int]], source: str) -> None:
    (root / MARKER_NAME).write_text(
        json.dumps({"counts": counts, "source": source, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
                   indent=1)
    )


# --------------------------------------------------------------------------- archive checks


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be extracted, or None when it is safe."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "contains '..' and would be written outside the target folder"
    return None


def _check_archive(zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        problem = _member_problem(info)
        if problem is not None:
            raise DataError(f"archive member {info.filename!r} {problem}; refusing to extract the archive.")
    bad = zf.testzip()
    if bad is not None:
        raise DataError(f"archive member {bad!r} is corrupt (CRC check failed).")


def _extract(zf: zipfile.ZipFile, dest: Path) -> None:
    members = [
        m for m in zf.infolist()
        if PurePosixPath(m.filename.replace("\\", "/")).parts[:1] not in {(n,) for n in _IGNORED_TOP_LEVEL}
    ]
    for member in tqdm(members, desc="Extracting", unit="file", leave=False):
        zf.extract(member, dest)


def _dataset_root_in(folder: Path, expected: dict[str, dict[str, int]]) -> Path:
    """The extracted dataset root: ``folder`` itself, or its only sub-folder if the zip wraps one."""
    if all((folder / split).is_dir() for split in expected):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name)]
    if len(subdirs) == 1 and all((subdirs[0] / split).is_dir() for split in expected):
        return subdirs[0]
    return folder  # let _count name what is missing


# --------------------------------------------------------------------------- fetching


def _resolve_source(source: str | os.PathLike | None, data_dir: Path) -> tuple[str, str]:
    """Return (source, where it came from)."""
    if source is not None:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(
                f"source must be a URL or a path to {ARCHIVE_NAME} (str or os.PathLike), "
                f"got {type(source).__name__}: {source!r}."
            )
        if not str(source).strip():
            raise ValueError(f"source is an empty string; pass a URL or a path to {ARCHIVE_NAME}, or None.")
        return os.fspath(source), "the source argument"
    env = os.environ.get(SOURCE_ENV, "").strip()
    if env:
        return env, f"${SOURCE_ENV}"
    manual = data_dir / ARCHIVE_NAME
    if manual.is_file():
        return str(manual), "the zip placed in the data folder"
    return DATASET_URL, "the default URL"


def _local_path(source: str) -> Path | None:
    """The local file a source names, or None when it is an http(s) URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise _PermanentError(
            f"unsupported URL scheme {parsed.scheme!r}; use http(s)://, file:// or a plain path"
        )
    return Path(source).expanduser()


def _reason(exc: Exception) -> str:
    """The useful end of a requests error ("[Errno 111] Connection refused"), else its full text."""
    inner = getattr(exc.args[0], "reason", None) if exc.args else None
    text = str(inner if inner is not None else exc)
    return text.rsplit("): ", 1)[-1] if "): " in text else text


def _fetch_once(url: str, fh: BinaryIO, timeout: float) -> None:
    received = 0
    try:
        with requests.get(
            url, stream=True, timeout=(timeout, timeout),
            headers={"Accept-Encoding": "identity", "User-Agent": "vit-course"},
        ) as resp:
            if resp.status_code >= 400:
                msg = f"HTTP {resp.status_code} {resp.reason}"
                if resp.status_code in _RETRY_STATUS:
                    raise _TransientError(msg)
                raise _PermanentError(f"{msg} (not retried: the file is not at that address)")
            try:
                total = int(resp.headers.get("Content-Length", ""))
            except ValueError:
                total = None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"Downloading {ARCHIVE_NAME}", leave=False) as bar:
                for chunk in resp.iter_content(chunk_size=1 << 16):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise _TransientError(f"truncated download: received {received} of {total} bytes")
    except requests.exceptions.ChunkedEncodingError as exc:
        raise _TransientError(
            f"truncated download: the connection closed after {received} bytes ({exc})"
        ) from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise _TransientError(f"{type(exc).__name__}: {_reason(exc)}") from exc
    except requests.exceptions.RequestException as exc:
        raise _PermanentError(f"{type(exc).__name__}: {exc}") from exc


def _download(url: str, data_dir: Path, *, timeout: float, retries: int, backoff: float) -> Path:
    """Download ``url`` into a temporary file in ``data_dir``; return its path. Retries transient errors."""
    last = "unknown error"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{DATASET_NAME}-", suffix=".zip.part")
        try:
            with os.fdopen(fd, "wb") as fh:
                _fetch_once(url, fh, timeout)
            return Path(tmp)
        except _TransientError as exc:
            last = str(exc)
            Path(tmp).unlink(missing_ok=True)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    raise _TransientError(f"{last} (gave up after {retries + 1} attempts)")


# --------------------------------------------------------------------------- public entry point


def download_pizza_steak_sushi(
    data_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    force: bool = False,
    expected: Mapping[str, Mapping[str, int]] | None = None,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
) -> Path:
    """Download, verify and extract the pizza/steak/sushi dataset; skip if a verified copy exists.

    Args:
        data_dir: folder to hold the dataset. Default: :func:`default_data_dir`.
        source: URL (``http(s)://``, ``file://``) or local path of the zip. Default:
            ``$VIT_COURSE_DATA_SOURCE``, else ``<data_dir>/pizza_steak_sushi.zip`` if present,
            else :data:`DATASET_URL`.
        force: fetch and verify again even when a verified copy is present.
        expected: ``{split: {class_name: image_count}}`` to verify against. Default: the real
            dataset (225 train, 75 test images).
        timeout: seconds to wait for the server to connect or send data.
        retries: extra attempts after a transient failure (connection, timeout, HTTP 5xx/429,
            truncated body); a 404 is not retried.
        backoff: seconds before the first retry, doubled for each later one.

    Returns:
        The dataset root, ``<data_dir>/pizza_steak_sushi``, holding ``train/`` and ``test/``.

    Raises:
        DataError: the download, the archive or its content failed; the message says what to do.
    """
    expected = _check_expected(expected)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}.")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if not isinstance(backoff, (int, float)) or backoff < 0:
        raise ValueError(f"backoff must be a number of seconds >= 0, got {backoff!r}.")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path (str or os.PathLike) or None, got {type(data_dir).__name__}.")
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(
            f"data_dir {data_dir} exists but is a file; pass a folder (or set ${DATA_DIR_ENV})."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    root = data_dir / DATASET_NAME

    # 1. A copy is already here: trust it after a recount (marker) or a full check (no marker).
    stale_reason = None
    if root.is_dir() and not force:
        if _marker_ok(root, expected):
            print(f"Dataset already present and verified at {root}; skipping download.")
            return root
        try:
            counts = verify_dataset(root, expected)
        except DataError as exc:
            stale_reason = str(exc)
        else:
            _write_marker(root, counts, "found in place")
            print(f"Dataset found and verified at {root}; skipping download.")
            return root

    # 2. Fetch the archive (a local file is read where it lies).
    src, origin = _resolve_source(source, data_dir)
    stale = f"\n(The existing folder {root} did not pass verification: {stale_reason})" if stale_reason else ""
    tmp_zip: Path | None = None
    tmp_dir: Path | None = None
    trash: Path | None = None
    try:
        try:
            archive = _local_path(src)
            if archive is None:
                print(f"Downloading {src} (from {origin}) into {data_dir}")
                tmp_zip = archive = _download(src, data_dir, timeout=timeout, retries=retries, backoff=backoff)
            elif not archive.is_file():
                raise _PermanentError(f"{archive} does not exist or is not a file")
            else:
                print(f"Using the local archive {archive} (from {origin})")
        except (_TransientError, _PermanentError) as exc:
            offline = " (no internet access?)" if src == DATASET_URL else ""
            raise DataError(
                f"Could not get the pizza/steak/sushi dataset from {src} (from {origin}){offline}: {exc}.\n"
                f"{_fix_text(data_dir)}{stale}"
            ) from None

        # 3. Check the archive, extract it beside the target, verify the content.
        tmp_dir = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{DATASET_NAME}-extract-"))
        try:
            try:
                with zipfile.ZipFile(archive) as zf:
                    _check_archive(zf)
                    _extract(zf, tmp_dir)
            except zipfile.BadZipFile as exc:
                raise DataError(f"{archive} is not a valid zip archive ({exc}); it is corrupt or not a zip.") from exc
            new_root = _dataset_root_in(tmp_dir, expected)
            counts = _verify(new_root, expected, label="the archive")
        except DataError as exc:
            hint = (f"Delete {archive} (placed by hand) and put a good copy there, or set {SOURCE_ENV}."
                    if origin.startswith("the zip placed") else
                    f"Check that {origin} points at the pizza/steak/sushi zip ({DATASET_URL}).")
            raise DataError(
                f"The archive from {src} failed verification: {exc}\n"
                f"Nothing was installed in {data_dir}. {hint}"
            ) from None
        _write_marker(new_root, counts, src)
        os.chmod(new_root, 0o755)  # mkdtemp made it private

        # 4. Move the verified copy into place (a stale copy is moved aside first, then removed).
        if root.exists():
            trash = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{DATASET_NAME}-old-"))
            os.replace(root, trash / DATASET_NAME)
        try:
            os.replace(new_root, root)
        except OSError:
            if _marker_ok(root, expected):  # another process finished first
                return root
            if trash is not None and not root.exists():  # put the old copy back
                os.replace(trash / DATASET_NAME, root)
            raise
    finally:
        if tmp_zip is not None:
            tmp_zip.unlink(missing_ok=True)
        for folder in (tmp_dir, trash):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    summary = " / ".join(f"{sum(c.values())} {split}" for split, c in counts.items())
    print(f"Dataset verified and ready at {root} ({summary} images)")
    return root
