"""Stopping the servers the tests start (JupyterLab in test_lab.py and tests/browser)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to ``proc``'s whole process group (started with ``start_new_session=True``),
    SIGKILL if it is still there after ``timeout`` seconds; returns once it has exited."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
