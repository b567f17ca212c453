"""Bad inputs to the data area (download, archive, image loading, loaders), one row each.

Refusals: ``(id, call, exception type, regex naming the problem and the fix)``; every call
that writes is also checked to leave nothing new in the data folder. Conversions: ``(id,
call, check)`` with the converted values checked. Offline: HTTP only on 127.0.0.1, bounded.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import re
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit_course.data import create_dataloaders, download_pizza_steak_sushi, load_image, simple_transform
from vit_course.data import download as download_module
from vit_course.data.download import DATA_DIR_ENV, SOURCE_ENV, DataError, verify_dataset
from vit_course.tools import archive, fetching, transport

SMALL = {"train": {"pizza": 2, "steak": 1, "sushi": 1}, "test": {"pizza": 1, "steak": 1, "sushi": 1}}
COLORS = {"pizza": (200, 40, 40), "steak": (120, 60, 20), "sushi": (240, 240, 240)}
fetch = functools.partial(download_pizza_steak_sushi, expected=SMALL, retries=0, backoff=0, timeout=5)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _zip(path: Path, extra=(), layout=SMALL, compression=zipfile.ZIP_DEFLATED) -> Path:
    """A tiny dataset zip; ``extra`` = [(name or ZipInfo, bytes)] added after the images."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for split, classes in layout.items():
            for name, n in classes.items():
                for i in range(n):
                    zf.writestr(f"{split}/{name}/{i:03d}.png", _png(Image.new("RGB", (8, 8), COLORS[name])))
        for name, data in extra:
            zf.writestr(name, data)
    return path


def _patch_headers(path: Path, field: int, value: int) -> Path:
    """Set a 2-byte field of every member's local and central header (``field``: its offset
    in the local header; 6 = flags, 8 = compression method)."""
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", field), (b"PK\x01\x02", field + 2)):
        at = data.find(sig)
        while at != -1:
            data[at + offset:at + offset + 2] = value.to_bytes(2, "little")
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))
    return path


def _damaged_deflate(path: Path) -> Path:
    _zip(path, extra=[("train/pizza/noise.bin", np.random.default_rng(0).bytes(4096) * 8)])
    data = bytearray(path.read_bytes())
    at = data.find(b"noise.bin") + 9 + 200  # inside that member's compressed data
    data[at:at + 16] = bytes(16)
    path.write_bytes(bytes(data))
    return path


class Server:
    """127.0.0.1 HTTP server: ``/ok`` the body, ``/trickle`` one byte every 0.2 s (10 s at most),
    ``/stall`` headers then silence (3 s at most), ``/huge`` a 2 GiB Content-Length."""

    def __init__(self, body: bytes = b"") -> None:
        self.body, self.requests = body, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                size = {"/huge": 2 << 30}.get(self.path, max(len(outer.body), 1000))
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    if self.path == "/ok":
                        self.wfile.write(outer.body)
                    elif self.path == "/huge":
                        self.wfile.write(b"\0" * (1 << 17))
                    elif self.path == "/stall":
                        time.sleep(3)
                    else:
                        for _ in range(50):
                            self.wfile.write(b"P")
                            self.wfile.flush()
                            time.sleep(0.2)
                except OSError:  # the client gave up
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


class Ctx:
    def __init__(self, tmp: Path, monkeypatch) -> None:
        self.tmp, self.mp = tmp, monkeypatch
        self.data = tmp / "data"
        self.data.mkdir()
        self._server: Server | None = None

    def server(self, body: bytes = b"") -> Server:
        self._server = Server(body)
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.httpd.shutdown()
            self._server.httpd.server_close()

    def zip(self, **kw) -> Path:
        return _zip(self.tmp / "src.zip", **kw)

    def image(self, name: str, img: Image.Image, **kw) -> Path:
        img.save(self.tmp / name, **kw)
        return self.tmp / name

    def installed(self) -> Path:
        """A verified install from a local zip; returns its root."""
        return fetch(self.data, source=self.zip())


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(download_module, "DATASET_URL", "http://127.0.0.1:9/pizza_steak_sushi.zip")
    c = Ctx(tmp_path, monkeypatch)
    yield c
    c.close()


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDisk(io.RawIOBase):
    def __init__(self, fd, mode):
        self.fd = fd

    def writable(self):
        return True

    def write(self, b):
        _enospc()


def _full_disk_download(c: Ctx):
    url = c.server(c.zip().read_bytes()).url("/ok")
    c.mp.setattr(fetching.os, "fdopen", _FullDisk)
    return fetch(c.data, source=url)


def _changed_then_offline(c: Ctx):
    root = c.installed()
    (root / "train" / "pizza" / "000.png").write_bytes(_png(Image.new("RGB", (8, 8), (0, 0, 0))))
    return fetch(c.data, source=c.tmp / "gone.zip")


def _exif_image(c: Ctx) -> Image.Image:
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    img.paste((0, 0, 255), (2, 0, 4, 2))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as phones write it
    return load_image(c.image("phone.png", img, exif=exif))


def _i32(value) -> Image.Image:
    return Image.fromarray(np.full((4, 4), value, np.int32))


def _float(value) -> Image.Image:
    return Image.fromarray(np.full((4, 4), value, np.float32))


def _loaders_with_hidden(c: Ctx):
    for split, classes in SMALL.items():
        for name, n in classes.items():
            folder = c.tmp / "ds" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), COLORS[name]).save(folder / f"{i}.png")
            (folder / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork
            (folder / ".ipynb_checkpoints").mkdir()
            Image.new("RGB", (8, 8)).save(folder / ".ipynb_checkpoints" / "0-checkpoint.png")
        (c.tmp / "ds" / split / ".ipynb_checkpoints").mkdir()
        (c.tmp / "ds" / split / ".DS_Store").write_bytes(b"\0Bud1")
    return create_dataloaders(c.tmp / "ds" / "train", c.tmp / "ds" / "test", simple_transform(8))


def _only_hidden_classes(c: Ctx):
    for split in ("train", "test"):
        (c.tmp / "ds" / split / ".ipynb_checkpoints").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(c.tmp / "ds" / split / ".ipynb_checkpoints" / "a.png")
    return create_dataloaders(c.tmp / "ds" / "train", c.tmp / "ds" / "test", simple_transform(8))


REFUSED = [
    # --- the data folder
    ("data_dir_parent_is_a_file",
     lambda c: (c.tmp / "afile").write_text("x") and fetch(c.tmp / "afile" / "data", source=c.zip()),
     DataError, r"cannot create the data folder .*NotADirectoryError.*data_dir=.*VIT_COURSE_DATA_DIR"),
    ("data_dir_mkdir_fails",
     lambda c: c.mp.setattr(Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError(2, "gone")))
     or fetch(c.tmp / "x" / "y", source=c.zip()),
     DataError, r"cannot create the data folder .*FileNotFoundError.*folder you can write"),
    ("data_dir_empty_string", lambda c: fetch("", source=c.zip()), ValueError, r"empty path; pass a folder"),
    ("data_dir_is_a_file", lambda c: (c.tmp / "f").write_text("x") and fetch(c.tmp / "f", source=c.zip()),
     ValueError, r"is a file; pass a folder"),
    # --- disk errors while writing
    ("disk_full_during_extraction",
     lambda c: c.mp.setattr(zipfile.ZipFile, "extract", _enospc) or fetch(c.data, source=c.zip()),
     DataError, r"No space left.*nothing was installed.*free some space.*VIT_COURSE_DATA_DIR"),
    ("disk_full_during_download", _full_disk_download,
     DataError, r"No space left.*free some space.*data_dir="),
    ("disk_full_writing_the_marker",
     lambda c: c.mp.setattr(transport, "_write_marker", _enospc) or fetch(c.data, source=c.zip()),
     DataError, r"No space left.*free some space"),
    ("folder_not_writable",
     lambda c: c.mp.setattr(transport.tempfile, "mkdtemp",
                            lambda **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
     or fetch(c.data, source=c.zip()),
     DataError, r"Permission denied.*make that folder writable"),
    # --- the network
    ("trickling_server_hits_the_deadline",
     lambda c: fetch(c.data, source=c.server().url("/trickle"), deadline=1.0),
     DataError, r"did not finish within deadline=1 s.*larger deadline="),
    ("stalled_body_times_out",
     lambda c: fetch(c.data, source=c.server().url("/stall"), timeout=0.5),
     DataError, r"(?i)timed? ?out.*VIT_COURSE_DATA_SOURCE"),
    ("download_larger_than_the_limit", lambda c: fetch(c.data, source=c.server().url("/huge")),
     DataError, r"more than 1024 MB.*not the dataset"),
    ("deadline_zero", lambda c: fetch(c.data, source=c.zip(), deadline=0), ValueError, r"deadline must be .* > 0"),
    ("deadline_inf", lambda c: fetch(c.data, source=c.zip(), deadline=float("inf")),
     ValueError, r"deadline must be a finite"),
    ("deadline_bool", lambda c: fetch(c.data, source=c.zip(), deadline=True), ValueError, r"deadline must be"),
    ("timeout_nan", lambda c: fetch(c.data, source=c.zip(), timeout=float("nan")),
     ValueError, r"timeout must be a finite number of seconds > 0"),
    ("backoff_negative", lambda c: fetch(c.data, source=c.zip(), backoff=-1), ValueError, r"backoff .* >= 0"),
    ("force_not_a_bool", lambda c: fetch(c.data, source=c.zip(), force="no"), TypeError, r"force must be True or False"),
    # --- the archive
    ("member_with_huge_ratio",
     lambda c: fetch(c.data, source=c.zip(extra=[("train/pizza/zeros.bin", bytes(20 << 20))])),
     DataError, r"zeros.bin' expands \d+ times .*limit of 100 times.*Nothing was installed.*Check that"),
    ("archive_over_the_total_size",
     lambda c: c.mp.setattr(archive, "MAX_TOTAL_BYTES", 100) or fetch(c.data, source=c.zip()),
     DataError, r"expands to .* more than the limit"),
    ("archive_with_too_many_members",
     lambda c: c.mp.setattr(archive, "MAX_MEMBERS", 5) or fetch(c.data, source=c.zip()),
     DataError, r"has 7 members, more than the limit of 5"),
    ("encrypted_member", lambda c: fetch(c.data, source=_patch_headers(c.zip(), 6, 0x1)),
     DataError, r"000.png' is encrypted .*without a password"),
    ("deflate64_member", lambda c: fetch(c.data, source=_patch_headers(c.zip(), 8, 9)),
     DataError, r"Deflate64, which Python's zipfile cannot read; make the zip again"),
    ("damaged_deflate_data", lambda c: fetch(c.data, source=_damaged_deflate(c.tmp / "dmg.zip")),
     DataError, r"corrupt"),
    ("changed_image_and_source_gone", _changed_then_offline,
     DataError, r"does not exist.*000.png changed since it was verified"),
    ("verify_dataset_not_a_path", lambda c: verify_dataset(123), TypeError, r"root must be a dataset folder"),
    # --- images
    ("decompression_bomb",
     lambda c: c.mp.setattr(Image, "MAX_IMAGE_PIXELS", 100) or load_image(c.image("big.png", Image.new("RGB", (40, 40)))),
     ValueError, r"big.png' is too large to open safely.*reduce\(8\)"),
    ("float_tiff_in_0_255", lambda c: load_image(c.image("f.tif", _float(200.0))),
     ValueError, r"mode-F image with values in \[200, 200\].*\[0, 1\].*Rescale"),
    ("float_tiff_with_nan",
     lambda c: load_image(c.image("nan.tif", Image.fromarray(np.array([[0.5, np.nan]], np.float32)))),
     ValueError, r"non-finite: 1.*Rescale"),
    ("int32_negative", lambda c: load_image(c.image("neg.tif", _i32(-5))),
     ValueError, r"mode-I image with values in \[-5, -5\].*16-bit"),
    ("int32_above_16_bit", lambda c: load_image(c.image("big.tif", _i32(70000))), ValueError, r"0\.\.65535"),
    ("unreadable_image",
     lambda c: c.mp.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
     or load_image(c.image("p.png", Image.new("RGB", (2, 2)))),
     PermissionError, r"p.png' cannot be read.*chmod"),
    ("empty_image_file", lambda c: (c.tmp / "e.jpg").write_bytes(b"") or load_image(c.tmp / "e.jpg"),
     ValueError, r"not an image PIL can decode.*force=True"),
    ("only_hidden_class_folders", _only_hidden_classes, ValueError, r"not an image-folder dataset.*one sub-folder"),
]


@pytest.mark.parametrize("row, call, exc, fix", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_with_the_fix(ctx, row, call, exc, fix):
    before = _snapshot(ctx.data)
    start = time.monotonic()
    with pytest.raises(exc) as err:
        call(ctx)
    assert re.search(fix, str(err.value), re.S), f"{fix!r} not in: {err.value}"
    assert time.monotonic() - start < 8, "bounded: no hang"
    after = _snapshot(ctx.data)
    if row == "changed_image_and_source_gone":  # installed by the row itself, then kept as it is
        before = _snapshot(ctx.data / "pizza_steak_sushi")
        assert [p for p in after if not p.startswith("pizza_steak_sushi")] == []
        after = _snapshot(ctx.data / "pizza_steak_sushi")
    assert after == before, f"nothing new may be left in the data folder: {set(after) - set(before)}"


def _installs_with_hidden_entries(c: Ctx):
    extra = [(".DS_Store", b"\0Bud1"), ("__MACOSX/train/._x", b"junk"), ("train/.ipynb_checkpoints/a.png",
             _png(Image.new("RGB", (2, 2)))), ("train/pizza/._000.png", b"\0\5\26\7"), ("test/steak/.DS_Store", b"x")]
    root = fetch(c.data, source=c.zip(extra=extra))
    assert verify_dataset(root, SMALL) == SMALL
    assert not (root / "__MACOSX").exists()


def _changed_image_is_reinstalled(c: Ctx):
    src = c.zip()
    root = fetch(c.data, source=src)
    good = (root / "train" / "pizza" / "000.png").read_bytes()
    # a valid image of its own (decoding alone would pass it), same count
    (root / "train" / "pizza" / "000.png").write_bytes(_png(Image.new("RGB", (8, 8), (0, 0, 0))))
    assert fetch(c.data, source=src) == root
    assert (root / "train" / "pizza" / "000.png").read_bytes() == good
    assert _snapshot(c.data)[0] == "pizza_steak_sushi"


def _old_marker_is_upgraded(c: Ctx):
    root = c.installed()
    marker = root / transport.MARKER_NAME
    marker.write_text(json.dumps({"counts": SMALL}))  # an older marker: counts only
    assert fetch(c.data, source=c.tmp / "gone.zip") == root  # verified in full, no download
    files = json.loads(marker.read_text())["files"]
    assert len(files) == 7 and all(len(v[1]) == 64 for v in files.values())


def _small_high_ratio_member_is_fine(c: Ctx):
    root = fetch(c.data, source=c.zip(extra=[("README.txt", bytes(500_000))]))
    assert (root / "README.txt").stat().st_size == 500_000


def _loaders_ignore_hidden(c: Ctx):
    train, test, classes = _loaders_with_hidden(c)
    assert classes == ["pizza", "steak", "sushi"]
    assert len(train.dataset) == 4 and len(test.dataset) == 3


def _exif_applied(c: Ctx):
    img = _exif_image(c)
    assert img.size == (2, 4), "rotated upright"
    assert img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((1, 3)) == (0, 0, 255)


def _pixel(c: Ctx, name: str, img: Image.Image) -> tuple:
    return load_image(c.image(name, img)).getpixel((1, 1))


CONVERTED = [
    ("exif_orientation_applied", _exif_applied),
    ("dark_16bit_png_stays_dark",  # 2570/65535 of full scale: 10 in 8 bits (was 255, clipped)
     lambda c: _pixel(c, "d.png", Image.fromarray(np.full((4, 4), 2570, np.uint16))) == (10, 10, 10)),
    ("very_dark_16bit_png",  # 200/65535: 1 in 8 bits (was read as 200, bright)
     lambda c: _pixel(c, "vd.png", Image.fromarray(np.full((4, 4), 200, np.uint16))) == (1, 1, 1)),
    ("float_tiff_half", lambda c: _pixel(c, "h.tif", _float(0.5)) == (128, 128, 128)),
    ("float_tiff_one", lambda c: _pixel(c, "o.tif", _float(1.0)) == (255, 255, 255)),
    ("int32_full_16bit", lambda c: _pixel(c, "i.tif", _i32(65535)) == (255, 255, 255)),
    ("archive_hidden_entries_ignored", _installs_with_hidden_entries),
    ("loaders_ignore_hidden_entries", _loaders_ignore_hidden),
    ("changed_image_is_reinstalled", _changed_image_is_reinstalled),
    ("old_marker_is_upgraded", _old_marker_is_upgraded),
    ("small_member_may_compress_well", _small_high_ratio_member_is_fine),
]


@pytest.mark.parametrize("check", [r[1] for r in CONVERTED], ids=[r[0] for r in CONVERTED])
def test_converted_or_accepted(ctx, check):
    assert check(ctx) is not False
