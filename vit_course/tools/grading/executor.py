"""Run one notebook in a fresh kernel, in its own process, with time, memory and output limits.

``execute_notebook`` starts ``python -m vit_course.tools.grading._run_one`` in a new session
(process group), waits for it with a hard wall-clock limit, and reads the JSON-lines events
it wrote. Afterwards every process that carries this run's token in its environment (the
child, the kernel, anything the submission started) is killed, so nothing outlives the
call. POSIX only; the memory cap is Linux only (see ``_limit.py``).

This is a fence against accidents (infinite loops, ``os._exit``, megabytes of output,
memory blow-ups), not a sandbox: code in a submission runs with the grader's rights.
See docs/GRADING.md for running the grader in a container.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

TOKEN_ENV = "VIT_COURSE_GRADING_TOKEN"

_LIVE: dict[str, subprocess.Popen] = {}  # token → running child, for stop_all()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Kill every run in progress (their children and kernels too); used on Ctrl-C."""
    with _LIVE_LOCK:
        live = list(_LIVE.items())
    for token, proc in live:
        _kill_group(proc.pid)
        _sweep(token, [])


@dataclass(kw_only=True)
class _Run:
    status: str  # ok | error | timeout | died | not_run
    ename: str = ""
    evalue: str = ""


@dataclass(kw_only=True)
class CellRun(_Run):
    """Final state of one submission cell (``index`` into the notebook's cells)."""

    index: int
    seconds: float = 0.0


@dataclass(kw_only=True)
class HiddenRun(_Run):
    """Result of one hidden-test cell; ``payload`` is ``CheckResult.to_dict()`` when published."""

    id: str
    payload: dict | None = None


@dataclass
class ExecutionReport:
    """What happened when a notebook ran; see ``execute_notebook``."""

    cells: dict[int, CellRun] = field(default_factory=dict)
    hidden: dict[str, HiddenRun] = field(default_factory=dict)
    kernel_deaths: list[int | str] = field(default_factory=list)
    output_truncated_cells: list[int] = field(default_factory=list)
    attempts: int = 0
    killed: bool = False
    fatal: str = ""
    log_tail: str = ""
    seconds: float = 0.0

    @property
    def timed_out(self) -> bool:
        return self.killed or any(c.status in ("timeout", "not_run") for c in self.cells.values()) or any(
            h.status == "timeout" for h in self.hidden.values()
        )

    @property
    def error_cells(self) -> list[int]:
        return sorted(i for i, c in self.cells.items() if c.status == "error")

    @property
    def memory_exceeded(self) -> bool:
        names = [c.ename for c in self.cells.values()] + [h.ename for h in self.hidden.values()]
        return any(n == "MemoryError" for n in names) or any(
            "can't allocate memory" in c.evalue or "Cannot allocate memory" in c.evalue for c in self.cells.values()
        )


def _token_pids(token: str) -> list[int]:
    """Live processes whose environment holds ``TOKEN_ENV=token`` (Linux /proc; [] elsewhere)."""
    marker = f"{TOKEN_ENV}={token}".encode()
    pids = []
    if not os.path.isdir("/proc"):
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != b"Z":
            pids.append(int(entry))
    return pids


def _kill_group(pgid: int | None) -> None:
    if not pgid:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(token: str, kernel_groups: list[int]) -> None:
    for pgid in kernel_groups:
        _kill_group(pgid)
    for _ in range(20):  # a process may fork while we kill; repeat until none is left
        pids = _token_pids(token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def _read_events(path: Path, report: ExecutionReport) -> list[int]:
    kernel_groups: list[int] = []
    if not path.exists():
        return kernel_groups
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        kind = ev.pop("event", "")
        if kind == "attempt":
            report.attempts = ev.get("n", report.attempts)
        elif kind == "kernel":
            kernel_groups.append(ev.get("pgid") or ev.get("pid"))
        elif kind == "cell":
            ev.pop("restart", None)
            run = CellRun(**ev)
            report.cells[run.index] = run
        elif kind == "hidden":
            report.hidden[ev["id"]] = HiddenRun(**ev)
        elif kind == "output_truncated":
            report.output_truncated_cells.extend(ev.get("cells", []))
        elif kind == "fatal":
            report.fatal = ev.get("message", "unknown error")
    report.kernel_deaths = [i for i, c in sorted(report.cells.items()) if c.status == "died"] + [
        h.id for h in report.hidden.values() if h.status == "died"
    ]
    return [g for g in kernel_groups if g]


def execute_notebook(
    nb: dict,
    hidden: list[dict] | None = None,
    *,
    timeout: float = 300.0,
    test_timeout: float = 60.0,
    memory_mb: int = 4096,
    max_output_bytes: int = 1 << 20,
    kernel_name: str | None = None,
    cwd: str | Path | None = None,
    executed_path: str | Path | None = None,
    max_restarts: int = 2,
    startup_timeout: float = 60.0,
) -> ExecutionReport:
    """Run the code cells of ``nb`` then the ``hidden`` cells, in a fresh kernel in a child process.

    Args:
        nb: notebook (dict or NotebookNode); its outputs are ignored.
        hidden: hidden-test cells to append, each ``{"id": str, "source": str}``.
        timeout: seconds for all of ``nb``'s cells together.
        test_timeout: seconds for each hidden cell.
        memory_mb: kernel memory cap (``RLIMIT_DATA``, Linux); ``0`` for none.
        max_output_bytes: output kept per phase (notebook cells, hidden cells).
        kernel_name: installed kernelspec to use; ``None`` = this interpreter's ipykernel.
        cwd: working directory of the kernel; ``None`` = a fresh empty temporary folder.
        executed_path: where to write the executed notebook (capped outputs, no hidden cells).
        max_restarts: fresh kernels allowed after the kernel dies.
        startup_timeout: seconds allowed for a kernel to start.
    Returns:
        An ``ExecutionReport``; it never raises for anything the notebook does.
    """
    if timeout <= 0 or test_timeout <= 0:
        raise ValueError(f"timeout and test_timeout must be > 0 seconds, got {timeout} and {test_timeout}")
    hidden = list(hidden or [])
    started = time.monotonic()
    token = uuid.uuid4().hex
    report = ExecutionReport()
    with tempfile.TemporaryDirectory(prefix="vit-grade-") as tmp:
        tmpdir = Path(tmp)
        work = Path(cwd) if cwd is not None else tmpdir / "work"
        work.mkdir(parents=True, exist_ok=True)
        nb_path, events, log = tmpdir / "submission.ipynb", tmpdir / "events.jsonl", tmpdir / "child.log"
        nbformat.write(nbformat.from_dict(dict(nb)), str(nb_path))
        job = {
            "notebook": str(nb_path),
            "hidden": hidden,
            "timeout": timeout,
            "test_timeout": test_timeout,
            "memory_mb": memory_mb,
            "max_output_bytes": max_output_bytes,
            "kernel_name": kernel_name,
            "cwd": str(work),
            "events": str(events),
            "executed": str(executed_path) if executed_path else None,
            "max_restarts": max_restarts,
            "startup_timeout": startup_timeout,
        }
        (tmpdir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        env = dict(os.environ)
        env[TOKEN_ENV] = token
        env["IPYTHONDIR"] = str(tmpdir / "ipython")  # no user startup files, no shared history
        env.setdefault("MPLBACKEND", "Agg")
        per_attempt = startup_timeout + timeout + 10 + len(hidden) * (test_timeout + 10)
        hard_limit = (max_restarts + 1) * per_attempt + 30
        kernel_groups: list[int] = []
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vit_course.tools.grading._run_one", str(tmpdir / "job.json")],
                cwd=tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            with _LIVE_LOCK:
                _LIVE[token] = proc
            try:
                proc.wait(timeout=hard_limit)
            except subprocess.TimeoutExpired:
                report.killed = True
            finally:
                with _LIVE_LOCK:
                    _LIVE.pop(token, None)
                _kill_group(proc.pid)
                proc.wait()
                kernel_groups = _read_events(events, report)
                _sweep(token, kernel_groups)
        if proc.returncode not in (0, -signal.SIGKILL) and not report.fatal:
            report.fatal = f"grader child exited with code {proc.returncode}"
        if report.fatal or report.killed:
            report.log_tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
    report.seconds = round(time.monotonic() - started, 2)
    return report
