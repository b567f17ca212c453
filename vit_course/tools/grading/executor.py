"""Run one notebook in a fresh kernel, in its own process, with time, memory and output limits.

``execute_notebook`` starts ``python -m vit_course.tools.grading._run_one`` in a new session
(process group), inside a bubblewrap sandbox (``sandbox="bwrap"``, see ``sandbox.py``) or
without one (``"none"``), waits for it with a hard wall-clock limit, and reads the JSON-lines
events and the hidden tests' outputs it wrote. Everything it wrote is untrusted: read as
plain data only, symlinks and oversized files refused. Afterwards every process that carries
this run's token in its environment (the child, the kernel, anything the submission
started) is killed, and the job folder (kernelspec, connection files, the copy of the
notebook) is removed, also after a timeout, a kill or a grader error. POSIX only; the
memory cap is Linux only (see ``_limit.py``); the sandbox needs Linux and ``bwrap``.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from vit_course.tools.files import owned_tempdir
from vit_course.tools.grading.collect import INPUTS_ENV, OUTPUTS_ENV

TOKEN_ENV = "VIT_COURSE_GRADING_TOKEN"
MAX_EVENTS_BYTES = 8 << 20
MAX_RESULT_BYTES = 64 << 20
SANDBOXES = ("bwrap", "none")

_LIVE: dict[str, subprocess.Popen] = {}  # token → running child, for stop_all()
_LIVE_LOCK = threading.Lock()


_STOPPED = threading.Event()  # set by stop_all(): no new process starts until allow_runs()


class Stopped(RuntimeError):
    """The batch was stopped (Ctrl-C, SIGTERM): no new process is started."""


def stop_all() -> None:
    """Kill every run in progress (their children and kernels too, and the reference process)
    and refuse new ones (:class:`Stopped`) until :func:`allow_runs`; used on Ctrl-C and SIGTERM."""
    with _LIVE_LOCK:
        _STOPPED.set()
        live = list(_LIVE.items())
    for token, proc in live:
        _kill_group(proc.pid)
        _sweep(token, [])


def stopped() -> bool:
    """True after :func:`stop_all` until :func:`allow_runs`."""
    return _STOPPED.is_set()


def allow_runs() -> None:
    """Let processes start again after :func:`stop_all` (a new batch)."""
    _STOPPED.clear()


def start_tracked(token: str, argv: list[str], **popen: object) -> subprocess.Popen:
    """``Popen(argv)`` in a session of its own, registered so that :func:`stop_all` kills its
    process group; call :func:`untrack` when it is done. Raises :class:`Stopped` after stop_all."""
    with _LIVE_LOCK:
        if _STOPPED.is_set():
            raise Stopped("grading was stopped; no new process is started")
        proc = subprocess.Popen(argv, start_new_session=True, **popen)
        _LIVE[token] = proc
    return proc


def untrack(token: str) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(token, None)


@dataclass(kw_only=True)
class _Run:
    status: str  # ok | error | timeout | died | killed | not_run
    ename: str = ""
    evalue: str = ""


@dataclass(kw_only=True)
class CellRun(_Run):
    """Final state of one submission cell (``index`` into the notebook's cells)."""

    index: int
    seconds: float = 0.0


@dataclass(kw_only=True)
class HiddenRun(_Run):
    """Result of one hidden-test cell (its outputs are in ``ExecutionReport.outputs``)."""

    id: str
    seconds: float = 0.0


@dataclass
class ExecutionReport:
    """What happened when a notebook ran; see ``execute_notebook``."""

    cells: dict[int, CellRun] = field(default_factory=dict)
    hidden: dict[str, HiddenRun] = field(default_factory=dict)
    kernel_deaths: list[int | str] = field(default_factory=list)
    kernel_kills: list[int | str] = field(default_factory=list)
    output_truncated_cells: list[int] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # qid → the text collect wrote (untrusted)
    attempts: int = 0
    killed: bool = False  # the hard wall-clock limit ran out
    child_killed: bool = False  # the grading child ended without finishing (a signal, a kill)
    finished: bool = False
    fatal: str = ""
    log_tail: str = ""
    seconds: float = 0.0
    sandbox: str = "bwrap"

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


def read_untrusted(path: Path, limit: int) -> str | None:
    """Text of a regular file the sandbox wrote, or ``None`` (missing, a link, not a file, too big)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read(limit).decode("utf-8", errors="replace")


def _read_events(path: Path, report: ExecutionReport) -> list[int]:
    kernel_groups: list[int] = []
    text = read_untrusted(path, MAX_EVENTS_BYTES) or ""
    for line in text.splitlines():
        try:
            ev = json.loads(line)
            kind = ev.pop("event", "")
            if kind == "attempt":
                report.attempts = int(ev.get("n", report.attempts))
            elif kind == "kernel":
                kernel_groups.append(int(ev.get("pgid") or ev.get("pid") or 0))
            elif kind == "cell":
                ev.pop("restart", None)
                run = CellRun(**ev)
                report.cells[int(run.index)] = run
            elif kind == "hidden":
                report.hidden[str(ev["id"])] = HiddenRun(**ev)
            elif kind == "output_truncated":
                report.output_truncated_cells.extend(int(i) for i in ev.get("cells", []))
            elif kind == "fatal":
                report.fatal = str(ev.get("message", "unknown error"))[:500]
            elif kind == "done":
                report.finished = True
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a line cut short by a kill, or not ours
    for status, found in (("died", report.kernel_deaths), ("killed", report.kernel_kills)):
        found[:] = [i for i, c in sorted(report.cells.items()) if c.status == status] + [
            h.id for h in report.hidden.values() if h.status == status]
    return [g for g in kernel_groups if g > 1]


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
    sandbox: str = "bwrap",
    inputs: str | None = None,
    hide: list[Path] | None = None,
    threads: int | None = None,
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
        sandbox: ``"bwrap"`` (see ``sandbox.py``) or ``"none"`` (no isolation).
        inputs: the hidden inputs file's text (``expected.kernel_inputs``); ``None``: none.
        hide: paths the sandbox must not show even if they lie in a folder it shows.
        threads: torch threads of the kernel (``OMP_NUM_THREADS``); ``None``: as inherited.
    Returns:
        An ``ExecutionReport``; it never raises for anything the notebook does.
    """
    if timeout <= 0 or test_timeout <= 0:
        raise ValueError(f"timeout and test_timeout must be > 0 seconds, got {timeout} and {test_timeout}")
    if sandbox not in SANDBOXES:
        raise ValueError(f"sandbox must be one of {SANDBOXES}, got {sandbox!r}")
    if sandbox == "bwrap" and cwd is not None:
        raise ValueError("cwd cannot be used with the bwrap sandbox (the kernel works in its private folder)")
    hidden = list(hidden or [])
    started = time.monotonic()
    token = uuid.uuid4().hex
    report = ExecutionReport(sandbox=sandbox)
    with owned_tempdir("vit-grade-") as tmp:
        tmpdir = Path(tmp)
        host_job = tmpdir / "job"  # all the child may write; /grading inside the sandbox
        inside = Path("/grading") if sandbox == "bwrap" else host_job
        (host_job / "work").mkdir(parents=True)
        (host_job / "outputs").mkdir()
        work = Path(cwd) if cwd is not None else inside / "work"
        events, log = host_job / "events.jsonl", tmpdir / "child.log"
        nbformat.write(nbformat.from_dict(dict(nb)), str(host_job / "work" / "submission.ipynb"))
        (host_job / "inputs.json").write_text(inputs or '{"questions": {}}', encoding="utf-8")
        job = {
            "notebook": str(inside / "work" / "submission.ipynb"),
            "hidden": hidden,
            "timeout": timeout,
            "test_timeout": test_timeout,
            "memory_mb": memory_mb,
            "max_output_bytes": max_output_bytes,
            "kernel_name": kernel_name,
            "cwd": str(work),
            "events": str(inside / "events.jsonl"),
            "executed": str(inside / "executed.ipynb") if executed_path else None,
            "max_restarts": max_restarts,
            "startup_timeout": startup_timeout,
            "kernelspec_dir": str(inside / "kernelspec"),
        }
        (host_job / "job.json").write_text(json.dumps(job), encoding="utf-8")
        python = os.path.abspath(sys.executable)  # no "..": a path through an unmounted folder fails inside
        command = [python, "-m", "vit_course.tools.grading._run_one", str(inside / "job.json")]
        from vit_course.tools.grading import sandbox as bw

        if sandbox == "bwrap":
            (tmpdir / "empty").write_bytes(b"")
            env = bw.sandbox_env(TOKEN_ENV, token) | bw.thread_env(threads)
            env[INPUTS_ENV], env[OUTPUTS_ENV] = str(inside / "inputs.json"), str(inside / "outputs")
            command = bw.bwrap_argv(host_job, tmpdir / "empty", env, list(hide or [])) + command
        else:
            env = bw.absolute_paths(dict(os.environ)) | bw.thread_env(threads)
            env[TOKEN_ENV] = token
            env["IPYTHONDIR"] = str(host_job / "ipython")  # no user startup files, no shared history
            env["JUPYTER_RUNTIME_DIR"] = str(host_job / "runtime")  # connection files go with the job
            env["TMPDIR"] = str(host_job / "tmp")  # so do the kernel's temporary files
            (host_job / "tmp").mkdir()
            env.setdefault("MPLBACKEND", "Agg")
            env[INPUTS_ENV], env[OUTPUTS_ENV] = str(inside / "inputs.json"), str(inside / "outputs")
        per_attempt = startup_timeout + timeout + 10 + len(hidden) * (test_timeout + 10)
        hard_limit = (max_restarts + 1) * per_attempt + 30
        kernel_groups: list[int] = []
        with open(log, "wb") as log_fh:
            proc = start_tracked(token, command, cwd=host_job, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log_fh, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=hard_limit)
            except subprocess.TimeoutExpired:
                report.killed = True
            finally:
                untrack(token)
                _kill_group(proc.pid)
                proc.wait()
                kernel_groups = _read_events(events, report)
                _sweep(token, kernel_groups)
        for qid_file in sorted((host_job / "outputs").glob("*.json"))[:64]:
            text = read_untrusted(qid_file, MAX_RESULT_BYTES)
            if text is not None:
                report.outputs[qid_file.stem] = text
        if executed_path is not None:
            text = read_untrusted(host_job / "executed.ipynb", MAX_RESULT_BYTES)
            if text is not None:
                Path(executed_path).write_text(text, encoding="utf-8")
        log_text = read_untrusted(log, MAX_EVENTS_BYTES) or ""
        if report.attempts == 0 and not report.killed:
            last = log_text.strip().splitlines()[-1:] or [""]
            report.fatal = report.fatal or f"the {sandbox} sandbox did not start (exit code {proc.returncode}): {last[0][:300]}"
        elif not report.finished and not report.killed and not report.fatal:
            report.child_killed = True  # killed by a signal, or stopped without finishing
        if report.fatal or report.killed or report.child_killed:
            report.log_tail = log_text[-3000:]
    report.seconds = round(time.monotonic() - started, 2)
    return report
