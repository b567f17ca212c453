"""Fixtures for the real-browser tests (``make test-browser``): a JupyterLab server of our
own and Debian's Chromium driven by Playwright.

These tests run only when ``VIT_COURSE_BROWSER_TEST=1`` (``make test-browser`` sets it):
``pytest tests`` skips collecting them, since they need Chromium and take minutes. When the
variable is set, a missing Chromium or Playwright is an error, not a skip.

- ``lab`` (session): JupyterLab on 127.0.0.1 with a random port and token, started with
  this interpreter in a temporary folder that holds COPIES of the notebooks (its root: the
  committed ones are out of its reach, checked, so nothing can save over them), the quick profile, stand-in
  ViT-B/16 weights (``TORCH_HOME``, as ``make test``), a private artifacts folder (seeded
  with a copy of ``make test``'s artifacts when they exist, so notebook 03's head and the
  synthetic ViT need not be rebuilt) and JupyterLab settings of its own (cells always
  rendered, no news or update checks). Stopped (its whole process group) afterwards.
- ``page`` (session): a Chromium page (headless; ``--no-sandbox`` when running as root).
- ``SHOTS``: where screenshots go (``.cache/test/browser/``), for a person to look at.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".cache" / "test" / "browser"
NOTEBOOKS = ("04_attention_rollout.ipynb", "05_gradient_rollout.ipynb", "08_evaluation.ipynb")

if os.environ.get("VIT_COURSE_BROWSER_TEST") != "1":
    collect_ignore_glob = ["test_*.py"]


@dataclass
class Lab:
    url: str
    token: str
    folder: Path
    log: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(folder: Path) -> None:
    """Lab settings: every cell rendered (Playwright must see them all), no news popup."""
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
    }.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _die_with_parent() -> None:
    """In the server's process: get SIGTERM when pytest dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (Debian) — "
                    ".ci/run does this on a clean machine.")
    return found


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lab")
    folder = tmp / "notebooks"
    folder.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, folder / name)
    artifacts = tmp / "artifacts"
    made = ROOT / ".cache" / "test" / "artifacts"
    if made.is_dir():
        shutil.copytree(made, artifacts)
    torch_home = Path(os.environ.get("TORCH_HOME", ROOT / ".cache" / "test" / "torch-standin"))
    if not any(torch_home.glob("hub/checkpoints/vit_b_16-*.pth")):
        subprocess.run([sys.executable, "-m", "vit_course.standin", str(torch_home)], check=True)
    _settings(tmp / "settings")
    token, port = secrets.token_hex(16), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}   # inline figures
    env.update(VIT_COURSE_PROFILE="quick", TORCH_HOME=str(torch_home), PYTHONHASHSEED="0",
               VIT_COURSE_ARTIFACTS=str(artifacts), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    log = tmp / "lab.log"
    # a SIGTERM to pytest (CI timeout) still runs the teardown that stops the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("JupyterLab did not start; log:\n" + log.read_text()[-3000:])
            try:
                if requests.get(f"{url}/api/status?token={token}", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        # the server sees only the copies: the committed notebooks are out of its reach
        listed = requests.get(f"{url}/api/contents?token={token}", timeout=10).json()
        assert {item["name"] for item in listed["content"]} == set(NOTEBOOKS)
        escape = requests.get(f"{url}/api/contents/..%2F..%2F..?token={token}", timeout=10)
        assert escape.status_code in (400, 403, 404), escape.status_code
        yield Lab(url, token, folder, log)
    finally:
        stop_group(proc, timeout=20)



@pytest.fixture(scope="session")
def page(lab: Lab):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True,
                                    args=["--no-sandbox"] if root else [])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        context.close()
        browser.close()
