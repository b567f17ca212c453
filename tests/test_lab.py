"""`make lab` starts a JupyterLab server that answers on localhost, and stops cleanly."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from _processes import stop_group

ROOT = Path(__file__).resolve().parents[1]
STAMP = Path(sys.prefix) / ".vit_course_installed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(not STAMP.exists(), reason="run through `make test` (needs the venv made by make)")
def test_make_lab_serves_jupyterlab(tmp_path):
    port = _free_port()
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
            f"--ServerApp.port_retries=0 --IdentityProvider.token=")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "lab", f"VENV={sys.prefix}", f"LAB_ARGS={args}"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                status = requests.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
                if status.ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        assert status is not None and status.ok, (
            "JupyterLab did not answer within 120 s; log:\n" + (tmp_path / "lab.log").read_text()[-3000:]
        )
        lab = requests.get(f"http://127.0.0.1:{port}/lab", timeout=10)
        assert lab.status_code == 200 and "JupyterLab" in lab.text
        tree = requests.get(f"http://127.0.0.1:{port}/api/contents", timeout=10).json()
        names = {item["name"] for item in tree["content"]}
        assert any(n.endswith(".ipynb") for n in names), f"lab is not serving notebooks/: {names}"
    finally:
        stop_group(proc, timeout=30)
        log.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
