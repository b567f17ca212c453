"""Files written whole or not at all: :func:`atomic_write`, :func:`atomic_write_text`, and
:func:`check_writable`, which refuses an unwritable target before any work is done.

Every writer of the package goes through :func:`atomic_write` (heads, checkpoints, feature
caches, GIFs, the grader's CSV and feedback files): a temporary file in the target's folder,
renamed onto it when complete, removed on any error. No torch import here (the grader uses it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def check_writable(path: str | os.PathLike, example: str = "name") -> Path:
    """Refuse, before any work is done, a file target that cannot be written; creates nothing.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
        NotADirectoryError: a part of its folder path is a file.
        PermissionError: its nearest existing folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save to {path}: it is an existing folder; pass a file "
                                f"path, e.g. {path / example}.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot save to {path}: {folder} is a file, not a folder; "
                                 "choose another path or move that file away.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save to {path}: the folder {folder} is not writable; "
                              "choose a folder you can write to.")
    return path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write a file through a temporary one beside ``path``, renamed onto it at the end.

    ``with atomic_write(path) as f: f.write(...)``: never a half-written file. The target is
    checked first (:func:`check_writable`), parent folders are created; the file gets mode
    0644 (``mkstemp`` makes 0600). On any error in the block (an interrupt included) the
    temporary file (and any folder made for it) is removed and ``path`` is untouched; an ``OSError`` (full disk, no
    permission) comes back as the same type with a message naming the file and the fix.
    """
    path = check_writable(path)
    tmp, created = None, [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        for folder in created:                     # deepest first; only the empty ones we made
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError) and exc.errno is not None:
            raise type(exc)(f"could not save {path} ({exc.strerror or exc}); nothing was written. "
                            "Free disk space or choose a folder you can write to, then save "
                            "again.") from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 ``text`` (newlines untranslated) through :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


# ----------------------------------------------------------------------------- temporary folders
OWNER_FILE = ".owner"


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None if
    there is no such process, "" where /proc does not tell (a live pid counts as the owner).
    POSIX only: on Windows ``os.kill(pid, 0)`` would end the process."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[19]
        except FileNotFoundError:
            return None
        except (OSError, IndexError):
            pass
    try:
        os.kill(pid, 0)                  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return None
    except OSError:                      # it exists (another user's: PermissionError)
        pass
    return ""


@contextmanager
def owned_tempdir(prefix: str) -> Iterator[str]:
    """``tempfile.TemporaryDirectory(prefix=prefix)`` that names its owner (pid and start time
    in ``.owner``), so that :func:`sweep_orphans` can remove it if the owner is killed with
    SIGKILL, which no cleanup code survives."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        Path(tmp, OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid()) or ''}\n")
        yield tmp


def sweep_orphans(prefixes: tuple[str, ...], root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the folders of :func:`owned_tempdir` under ``root`` (default: the temporary
    folder) whose owner process is gone; returns them. Folders of other users, without an
    owner file, or whose owner still runs are left alone. Does nothing outside POSIX."""
    root = Path(root if root is not None else tempfile.gettempdir())
    removed: list[Path] = []
    if os.name != "posix":
        return removed
    for path in root.iterdir() if root.is_dir() else ():
        if not path.name.startswith(prefixes) or path.is_symlink() or not path.is_dir():
            continue
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid, _, started = (path / OWNER_FILE).read_text().strip().partition(" ")
            now = _start_time(int(pid))
        except (OSError, ValueError):
            continue
        if now is None or (started and now and now != started):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
