"""What a dataset zip may hold, checked from its directory before one byte is extracted.

Used by :mod:`vit_course.tools.transport` before extraction, so a hostile or damaged
archive is refused before it can write outside the target folder or fill the disk:

- no absolute paths, no ``..``, no symbolic links;
- no encrypted member, and only the compression methods Python's ``zipfile`` reads (stored,
  deflate, bzip2, lzma): a zip made with 7-Zip's Deflate64 is refused with the fix;
- at most :data:`MAX_MEMBERS` members and :data:`MAX_TOTAL_BYTES` uncompressed in all, and no
  member (above :data:`RATIO_FLOOR_BYTES`) that expands more than :data:`MAX_RATIO` times:
  a decompression bomb (a small zip that expands to gigabytes) is refused.

The sizes come from the zip's directory; ``zipfile`` never writes more than a member's
declared size, so a directory that lies cannot get past these limits either.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import PurePosixPath

#: Limits on an archive (the real dataset: ~300 members, ~16 MB, JPEGs expand ~1x).
MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 1 << 30  # 1 GiB, uncompressed (also the largest download accepted)
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20  # smaller members may compress as well as they like

_READABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_REZIP = "make the zip again with plain deflate (e.g. `zip -r`, or 7-Zip with -mm=Deflate)"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one zip member must not be extracted, or None when it is safe."""
    name = info.filename.replace("\\", "/")
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "contains '..' and would be written outside the target folder"
    if info.flag_bits & 0x1:
        return f"is encrypted (password-protected); {_REZIP}, without a password"
    if info.compress_type not in _READABLE:
        method = "Deflate64" if info.compress_type == 9 else f"method {info.compress_type}"
        return f"is compressed with {method}, which Python's zipfile cannot read; {_REZIP}"
    if info.file_size > max(RATIO_FLOOR_BYTES, MAX_RATIO * info.compress_size):
        return (f"expands {info.file_size / max(info.compress_size, 1):.0f} times "
                f"({_mb(info.compress_size)} to {_mb(info.file_size)}), more than the limit of "
                f"{MAX_RATIO} times (a decompression bomb?)")
    return None


def archive_problem(zf: zipfile.ZipFile) -> str | None:
    """Why ``zf`` must not be extracted (one sentence, starting after "archive"), or None."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        return f"has {len(infos)} members, more than the limit of {MAX_MEMBERS}"
    for info in infos:
        problem = _member_problem(info)
        if problem is not None:
            return f"member {info.filename!r} {problem}"
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        return (f"expands to {_mb(total)}, more than the limit of {_mb(MAX_TOTAL_BYTES)} "
                "(the real dataset is about 16 MB)")
    return None
