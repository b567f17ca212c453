"""Fetching for :mod:`vit_course.tools.transport`: where a source points (a URL or a local
file) and the HTTP download, with the retries, ``timeout`` and ``deadline`` described there.
A download goes to a temporary file in the target folder, removed on any failure.
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3
from tqdm.auto import tqdm

from .archive import MAX_TOTAL_BYTES

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _TransientError(Exception):
    """A failure worth retrying (connection, timeout, 5xx, truncated body)."""


class _PermanentError(Exception):
    """A failure retrying will not fix (404, bad URL)."""


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


def _fetch_once(url: str, fh: BinaryIO, timeout: float, desc: str, end: float, deadline: float) -> None:
    """One GET of ``url`` into ``fh``; gives up at ``time.monotonic() == end`` (``deadline`` s overall)."""
    received = 0
    wait = min(timeout, max(end - time.monotonic(), 0.01))
    try:
        with requests.get(
            url, stream=True, timeout=(wait, wait),
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
                      desc=desc, leave=False) as bar:
                # read1 returns what has arrived, so the deadline is checked after every read
                # (iter_content blocks until a whole chunk is in, however slowly it comes).
                while chunk := resp.raw.read1(1 << 16):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if max(received, total or 0) > MAX_TOTAL_BYTES:
                        raise _PermanentError(
                            f"the server sends more than {MAX_TOTAL_BYTES >> 20} MB, the most accepted "
                            "(the real zip is about 16 MB): that is not the dataset")
                    if time.monotonic() > end:
                        raise _PermanentError(
                            f"the download did not finish within deadline={deadline:g} s ({received} "
                            "bytes received): the server or the network is too slow. Pass a larger "
                            "deadline=, or fetch the zip another way and use it as the source")
            if total is not None and received != total:
                raise _TransientError(f"truncated download: received {received} of {total} bytes")
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as exc:
        raise _TransientError(
            f"truncated download: the connection closed after {received} bytes ({exc})"
        ) from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            urllib3.exceptions.TimeoutError) as exc:
        raise _TransientError(f"{type(exc).__name__}: {_reason(exc)}") from exc
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise _PermanentError(f"{type(exc).__name__}: {exc}") from exc


def _download(url: str, folder: Path, name: str, *, timeout: float, retries: int, backoff: float,
              deadline: float) -> Path:
    """Download ``url`` into a temporary file in ``folder``; return its path. Retries transient
    errors, all within ``deadline`` seconds."""
    last = "unknown error"
    end = time.monotonic() + deadline
    for attempt in range(retries + 1):
        if attempt:
            pause = backoff * 2 ** (attempt - 1)
            if time.monotonic() + pause > end:
                raise _PermanentError(f"{last} (gave up after {attempt} attempt(s): deadline={deadline:g} s "
                                      "reached; pass a larger deadline= or fetch the zip another way)")
            time.sleep(pause)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".zip.part")
        try:
            with os.fdopen(fd, "wb") as fh:
                _fetch_once(url, fh, timeout, f"Downloading {name}.zip", end, deadline)
            return Path(tmp)
        except _TransientError as exc:
            last = str(exc)
            Path(tmp).unlink(missing_ok=True)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    raise _TransientError(f"{last} (gave up after {retries + 1} attempts)")
