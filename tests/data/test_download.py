"""vit_course.data.download (and the transport under it): download + verification against a real local HTTP server."""

from __future__ import annotations

import functools
import io
import os
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from vit_course.data import (
    create_dataloaders,
    default_data_dir,
    download_pizza_steak_sushi,
    simple_transform,
)
from vit_course.data.download import DATA_DIR_ENV, DATASET_URL, SOURCE_ENV, DataError, verify_dataset
from vit_course.data import download as download_module
from vit_course.tools import transport

# Read before the autouse fixture below removes it: CI points this at the real archive.
REAL_SOURCE = os.environ.get(SOURCE_ENV)

SMALL = {"train": {"pizza": 2, "steak": 1, "sushi": 1}, "test": {"pizza": 1, "steak": 1, "sushi": 1}}
COLORS = {"pizza": (200, 40, 40), "steak": (120, 60, 20), "sushi": (240, 240, 240)}


# --------------------------------------------------------------------------- helpers


def _jpeg(color, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def make_zip(path: Path, layout=SMALL, prefix: str = "", extra=(), symlink: str | None = None,
             compression=zipfile.ZIP_DEFLATED) -> Path:
    """A tiny dataset zip: ``layout`` = {split: {class: n_images}}; ``extra`` = [(name, bytes)]."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for split, classes in layout.items():
            for name, n in classes.items():
                for i in range(n):
                    zf.writestr(f"{prefix}{split}/{name}/{i:03d}.jpg", _jpeg(COLORS.get(name, (0, 0, 255))))
        for name, data in extra:
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.create_system = 3  # unix, so the mode bits below are read
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real HTTP server on 127.0.0.1 (port 0) serving registered bodies; records request paths."""

    def __init__(self) -> None:
        self.routes: dict[str, dict] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                if route["status"] != 200:
                    self.send_error(route["status"])
                    return
                body = route["body"]
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(route["declared"] or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, body: bytes = b"", *, declared: int | None = None, status: int = 200) -> str:
        self.routes[path] = {"body": body, "declared": declared, "status": status}
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches the internet: no source override, and the default URL is a closed local port."""
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(download_module, "DATASET_URL",
                        f"http://127.0.0.1:{_closed_port()}/pizza_steak_sushi.zip")


fetch = functools.partial(download_pizza_steak_sushi, expected=SMALL, retries=1, backoff=0, timeout=5)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def small_zip(tmp_path) -> Path:
    return make_zip(tmp_path / "small.zip")


# --------------------------------------------------------------------------- download: success paths


def test_download_verify_then_skip(server, data_dir, small_zip, capsys):
    url = server.add("/pss.zip", small_zip.read_bytes())
    root = fetch(data_dir, source=url)
    assert root == data_dir / "pizza_steak_sushi"
    assert verify_dataset(root, SMALL) == SMALL
    assert sorted(p.name for p in (root / "train" / "pizza").iterdir()) == ["000.jpg", "001.jpg"]
    assert _listing(data_dir) == ["pizza_steak_sushi"], "the temporary zip/folder must be gone"
    assert server.requests == ["/pss.zip"]

    capsys.readouterr()
    assert fetch(data_dir, source=url) == root
    assert server.requests == ["/pss.zip"], "a verified copy must not be downloaded again"
    out = capsys.readouterr().out
    assert str(root) in out and "skipping" in out

    fetch(data_dir, source=url, force=True)
    assert len(server.requests) == 2, "force=True downloads again"
    assert _listing(data_dir) == ["pizza_steak_sushi"]


def test_damaged_copy_is_downloaded_again(server, data_dir, small_zip):
    url = server.add("/pss.zip", small_zip.read_bytes())
    root = fetch(data_dir, source=url)
    (root / "test" / "sushi" / "000.jpg").unlink()
    fetch(data_dir, source=url)
    assert len(server.requests) == 2, "the recount must notice the missing image"
    assert (root / "test" / "sushi" / "000.jpg").is_file()
    assert _listing(data_dir) == ["pizza_steak_sushi"]


def test_unmarked_copy_in_place_is_verified_without_download(data_dir, small_zip):
    with zipfile.ZipFile(small_zip) as zf:
        zf.extractall(data_dir / "pizza_steak_sushi")  # as if unzipped by hand
    root = fetch(data_dir, source=f"http://127.0.0.1:{_closed_port()}/x.zip")
    assert verify_dataset(root, SMALL) == SMALL
    assert (root / transport.MARKER_NAME).is_file()


def test_local_path_source(data_dir, small_zip):
    root = fetch(data_dir, source=small_zip)
    assert verify_dataset(root, SMALL) == SMALL
    assert small_zip.is_file(), "a local source is read, not moved"
    assert _listing(data_dir) == ["pizza_steak_sushi"]


def test_file_url_source(data_dir, small_zip):
    root = fetch(data_dir, source=small_zip.as_uri())
    assert verify_dataset(root, SMALL) == SMALL


def test_env_var_override(server, data_dir, small_zip, monkeypatch):
    url = server.add("/env.zip", small_zip.read_bytes())
    monkeypatch.setenv(SOURCE_ENV, url)
    fetch(data_dir)
    assert server.requests == ["/env.zip"]


def test_source_argument_beats_env_var(data_dir, small_zip, monkeypatch):
    monkeypatch.setenv(SOURCE_ENV, f"http://127.0.0.1:{_closed_port()}/never.zip")
    assert verify_dataset(fetch(data_dir, source=str(small_zip)), SMALL) == SMALL


def test_zip_placed_in_data_dir_is_picked_up(data_dir, small_zip):
    data_dir.mkdir()
    manual = data_dir / "pizza_steak_sushi.zip"
    manual.write_bytes(small_zip.read_bytes())
    root = fetch(data_dir)  # no source, no env var, default URL unreachable
    assert verify_dataset(root, SMALL) == SMALL
    assert _listing(data_dir) == ["pizza_steak_sushi", "pizza_steak_sushi.zip"]


def test_default_data_dir_from_env(tmp_path, small_zip, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    assert fetch(source=small_zip) == tmp_path / "elsewhere" / "pizza_steak_sushi"
    assert DATASET_URL == "https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data/pizza_steak_sushi.zip"


def test_archive_wrapped_in_a_top_folder(data_dir, tmp_path):
    wrapped = make_zip(tmp_path / "wrapped.zip", prefix="pizza_steak_sushi/")
    root = fetch(data_dir, source=wrapped)
    assert verify_dataset(root, SMALL) == SMALL
    assert _listing(data_dir) == ["pizza_steak_sushi"]


# --------------------------------------------------------------------------- download: failures


def test_404_is_not_retried(server, data_dir):
    url = server.url("/missing.zip")
    with pytest.raises(DataError, match="404") as err:
        fetch(data_dir, source=url, retries=3)
    assert server.requests == ["/missing.zip"]
    assert SOURCE_ENV in str(err.value) and url in str(err.value)
    assert _listing(data_dir) == []


def test_server_error_is_retried(server, data_dir):
    url = server.add("/busy.zip", status=503)
    with pytest.raises(DataError, match="503"):
        fetch(data_dir, source=url, retries=2)
    assert server.requests == ["/busy.zip"] * 3
    assert _listing(data_dir) == []


def test_connection_refused_says_what_to_do(data_dir):
    url = f"http://127.0.0.1:{_closed_port()}/pizza_steak_sushi.zip"
    with pytest.raises(DataError) as err:
        fetch(data_dir, source=url)
    msg = str(err.value)
    assert "refused" in msg.lower()
    assert url in msg and SOURCE_ENV in msg
    assert str(data_dir / "pizza_steak_sushi.zip") in msg
    assert download_module.DATASET_URL in msg
    assert _listing(data_dir) == []


def test_no_network_and_no_override(data_dir):
    with pytest.raises(DataError) as err:
        fetch(data_dir)  # default URL = a closed port (see the offline fixture)
    msg = str(err.value)
    assert download_module.DATASET_URL in msg and SOURCE_ENV in msg
    assert str(data_dir / "pizza_steak_sushi.zip") in msg
    assert _listing(data_dir) == []


def test_truncated_download(server, data_dir, small_zip):
    body = small_zip.read_bytes()
    url = server.add("/short.zip", body[: len(body) // 2], declared=len(body))
    with pytest.raises(DataError, match="truncated"):
        fetch(data_dir, source=url)
    assert len(server.requests) == 2, "a truncated body is retried"
    assert _listing(data_dir) == []


def test_missing_local_source(data_dir, tmp_path):
    missing = tmp_path / "nope.zip"
    with pytest.raises(DataError, match="does not exist") as err:
        fetch(data_dir, source=missing)
    assert str(missing) in str(err.value) and SOURCE_ENV in str(err.value)
    assert _listing(data_dir) == []


def _flip_inside_member(zip_path: Path) -> Path:
    data = bytearray(zip_path.read_bytes())
    start = data.find(b"\xff\xd8")  # the first stored JPEG's start
    data[start + 60] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    return zip_path


@pytest.mark.parametrize("kind, message", [
    ("not_a_zip", "not a valid zip"),
    ("half_a_zip", "not a valid zip"),
    ("bad_crc", "corrupt"),
])
def test_corrupt_zip(server, data_dir, small_zip, tmp_path, kind, message):
    if kind == "not_a_zip":
        body = b"<html>not a zip</html>" * 50
    elif kind == "half_a_zip":
        body = small_zip.read_bytes()[:-200]
    else:
        body = _flip_inside_member(make_zip(tmp_path / "crc.zip", compression=zipfile.ZIP_STORED)).read_bytes()
    with pytest.raises(DataError, match=message):
        fetch(data_dir, source=server.add("/bad.zip", body))
    assert _listing(data_dir) == []


@pytest.mark.parametrize("member, symlink", [
    ("../evil.jpg", False),
    ("train/../../evil.jpg", False),
    ("/tmp/evil_absolute.jpg", False),
    ("train/pizza/link.jpg", True),
])
def test_unsafe_member_is_refused(server, data_dir, tmp_path, member, symlink):
    extra = [] if symlink else [(member, _jpeg((1, 2, 3)))]
    bad = make_zip(tmp_path / "bad.zip", extra=extra, symlink=member if symlink else None)
    with pytest.raises(DataError, match="refusing") as err:
        fetch(data_dir, source=server.add("/bad.zip", bad.read_bytes()))
    assert repr(member) in str(err.value)
    assert _listing(data_dir) == []
    assert not (tmp_path / "evil.jpg").exists() and not (data_dir.parent.parent / "evil.jpg").exists()


@pytest.mark.parametrize("layout, message", [
    ({"training": SMALL["train"], "test": SMALL["test"]}, "missing folder 'train'"),
    ({"train": {"pizza": 2, "steak": 1, "burger": 1}, "test": SMALL["test"]}, "wrong class folders"),
    ({"train": {"pizza": 2, "steak": 1}, "test": SMALL["test"]}, "wrong class folders"),
])
def test_wrong_folder_structure(data_dir, tmp_path, layout, message):
    bad = make_zip(tmp_path / "bad.zip", layout=layout)
    with pytest.raises(DataError, match=message):
        fetch(data_dir, source=bad)
    assert _listing(data_dir) == []


def test_wrong_counts(data_dir, tmp_path):
    bad = make_zip(tmp_path / "bad.zip", layout={"train": {"pizza": 2, "steak": 1, "sushi": 2},
                                                "test": SMALL["test"]})
    with pytest.raises(DataError, match="wrong image counts") as err:
        fetch(data_dir, source=bad)
    assert "'sushi': 2" in str(err.value)
    assert _listing(data_dir) == []


def test_default_expectation_is_the_real_dataset(data_dir, small_zip):
    with pytest.raises(DataError, match="225 images"):
        download_pizza_steak_sushi(data_dir, source=small_zip)
    assert _listing(data_dir) == []


def test_undecodable_image_in_archive(data_dir, tmp_path):
    layout = {"train": {"pizza": 1, "steak": 1, "sushi": 1}, "test": SMALL["test"]}
    bad = make_zip(tmp_path / "bad.zip", layout=layout, extra=[("train/pizza/broken.jpg", b"not a jpeg")])
    with pytest.raises(DataError, match="broken.jpg"):
        fetch(data_dir, source=bad)
    assert _listing(data_dir) == []


def test_failed_refresh_keeps_the_verified_copy(server, data_dir, small_zip):
    root = fetch(data_dir, source=small_zip)
    with pytest.raises(DataError, match="404"):
        fetch(data_dir, source=server.url("/gone.zip"), force=True)
    assert verify_dataset(root, SMALL) == SMALL
    assert _listing(data_dir) == ["pizza_steak_sushi"]


def test_verify_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        verify_dataset(tmp_path / "none", SMALL)
    with pytest.raises(TypeError, match="expected"):
        verify_dataset(tmp_path, expected=[("train", 3)])


# --------------------------------------------------------------------------- the real archive (CI)


@pytest.mark.skipif(not REAL_SOURCE, reason=f"{SOURCE_ENV} is not set (CI points it at a copy of the real archive)")
def test_real_archive(tmp_path):
    root = download_pizza_steak_sushi(tmp_path / "data", source=REAL_SOURCE)
    counts = verify_dataset(root)
    assert {split: sum(c.values()) for split, c in counts.items()} == {"train": 225, "test": 75}
    train_dl, test_dl, classes = create_dataloaders(
        root / "train", root / "test", simple_transform(), batch_size=4, max_per_class=4)
    assert classes == ["pizza", "steak", "sushi"]
    images, labels = next(iter(train_dl))
    assert images.shape == (4, 3, 224, 224) and labels.shape == (4,)
    assert next(iter(test_dl))[0].shape == (4, 3, 224, 224)
