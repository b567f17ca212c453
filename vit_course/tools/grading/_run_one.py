"""Child process of the grader: run one submission in a fresh kernel, report as JSON lines.

``python -m vit_course.tools.grading._run_one JOB.json``. The parent (``executor.py``) starts this
in its own process group, with a hard wall-clock limit, and reads the events file even when
it had to kill us, so every finished step is on disk the moment it finishes.

What happens here:

1. A kernelspec in the job folder (``kernelspec_dir``, removed with it) runs the chosen kernel (default: this interpreter's
   ``ipykernel``) under ``vit_course.tools.grading._limit`` (memory cap).
2. The submission's code cells run in order with ``allow_errors``; a cell that raises is
   recorded and the next one runs. The submission's cells share one time budget; on
   overrun the kernel is interrupted (SIGINT), and killed if it does not stop; cells after
   the one that ran out of time are not run.
3. The hidden-test cells run after them, each with its own limit.
4. If the kernel dies (``os._exit``, a crash, the memory cap, an unstoppable loop), a fresh
   kernel replays the submission without the fatal cell and goes on with the hidden tests
   not yet run, at most ``max_restarts`` times.
5. Captured output is capped; output past the cap is dropped and reported.

The parent may run this process inside a bubblewrap sandbox (``sandbox.py``); then this
process is as untrusted as the kernel, and the parent reads what it wrote as plain data.
The hidden tests' outputs are written by the kernel (``collect``), not here.

Events (one JSON object per line): ``attempt``, ``kernel`` (pid, pgid), ``cell`` (index,
status ok|error|timeout|died|killed|not_run, ename, evalue, seconds), ``hidden`` (id, status,
ename, evalue), ``output_truncated``, ``fatal`` (message), ``done``. ``died``: the kernel
exited; ``killed``: a signal killed it.
"""

from __future__ import annotations

import sys

# jsonschema builds an IRI grammar (rfc3987_syntax) at import: 2-3 s of CPU per child on a
# busy machine, for a format nbformat's schema never uses. Skip it in this process only.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

import asyncio  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from time import monotonic  # noqa: E402
from typing import Any  # noqa: E402

import nbformat  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import DeadKernelError  # noqa: E402

SPEC_NAME = "vit-course-grading"
INTERRUPT_GRACE_S = 5.0
MAX_TRACEBACK_LINES = 40


class _Events:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8", buffering=1)

    def emit(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps({"event": event, **fields}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def _output_size(msg: dict) -> int:
    content = msg.get("content", {})
    if msg.get("msg_type") == "stream":
        return len(content.get("text", ""))
    data = content.get("data")
    return len(json.dumps(data)) if data is not None else 0


class GradingClient(NotebookClient):
    """``NotebookClient`` that keeps at most ``max_output_bytes`` of output per phase.

    Error outputs are always kept (tracebacks trimmed).
    """

    def __init__(self, nb: nbformat.NotebookNode, km: AsyncKernelManager, max_output_bytes: int, **kw: Any):
        super().__init__(nb, km=km, **kw)
        self.max_output_bytes = max_output_bytes
        self.output_used = 0
        self.truncated_cells: list[int] = []

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
        msg_type = msg["msg_type"]
        content = msg.get("content", {})
        if msg_type == "error":
            content["traceback"] = content.get("traceback", [])[-MAX_TRACEBACK_LINES:]
            return super().output(outs, msg, display_id, cell_index)
        size = _output_size(msg)
        left = self.max_output_bytes - self.output_used
        if size > left:
            if cell_index not in self.truncated_cells:
                self.truncated_cells.append(cell_index)
            if msg_type == "stream" and left > 0:  # keep the part that fits
                content["text"] = content["text"][:left] + "\n[output truncated by the grader]\n"
                self.output_used = self.max_output_bytes
                return super().output(outs, msg, display_id, cell_index)
            self.output_used = self.max_output_bytes
            return None
        self.output_used += size
        return super().output(outs, msg, display_id, cell_index)


@dataclass
class Outcome:
    status: str  # ok | error | timeout | died
    ename: str = ""
    evalue: str = ""
    seconds: float = 0.0
    restart: bool = False


def _first_error(cell: nbformat.NotebookNode) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return str(out.get("ename", "")), str(out.get("evalue", ""))[:500]
    return None


def _kill_kernel(km: AsyncKernelManager) -> None:
    provisioner = getattr(km, "provisioner", None)
    pid = getattr(provisioner, "pid", None)
    pgid = getattr(provisioner, "pgid", None) or pid
    try:
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
        elif pid:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def run_cell(client: GradingClient, index: int, limit: float) -> Outcome:
    """Execute cell ``index`` with a wall-clock ``limit`` (seconds); never raises."""
    cell = client.nb.cells[index]
    start = monotonic()
    task = asyncio.ensure_future(client.async_execute_cell(cell, index, execution_count=client.code_cells_executed + 1))

    def done(status: str, restart: bool = False, error: tuple[str, str] | None = None) -> Outcome:
        ename, evalue = error or _first_error(cell) or ("", "")
        return Outcome(status, ename, evalue, round(monotonic() - start, 3), restart)

    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=max(limit, 0.001))
    except asyncio.TimeoutError:
        try:
            await client.km.interrupt_kernel()
            await asyncio.wait_for(asyncio.shield(task), timeout=INTERRUPT_GRACE_S)
            return done("timeout")
        except asyncio.TimeoutError:
            _kill_kernel(client.km)  # it ignored the interrupt
        except Exception:
            pass
        try:
            await asyncio.wait_for(task, timeout=INTERRUPT_GRACE_S)
        except BaseException:
            pass
        return done("timeout", restart=True)
    except DeadKernelError:
        process = getattr(getattr(client.km, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        if code is not None and code < 0:
            return done("killed", restart=True, error=("DeadKernelError", f"the kernel was killed by signal {-code}"))
        return done("died", restart=True, error=("DeadKernelError", "the kernel died while running this cell"))
    except Exception as exc:  # nbclient internals: treat the kernel as unusable
        return done("died", restart=True, error=(type(exc).__name__, str(exc)[:500]))
    error = _first_error(cell)
    return done("error" if error else "ok")


def _make_kernelspec(job: dict, root: Path) -> Path:
    base_argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    env: dict = {}
    if job.get("kernel_name"):
        spec = KernelSpecManager().get_kernel_spec(job["kernel_name"])
        base_argv, env = list(spec.argv), dict(spec.env or {})
    argv = [sys.executable, "-m", "vit_course.tools.grading._limit", "--memory-mb", str(int(job["memory_mb"])), "--"]
    spec_dir = root / SPEC_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec_json = {"argv": argv + base_argv, "display_name": "vit-course grading", "language": "python", "env": env}
    (spec_dir / "kernel.json").write_text(json.dumps(spec_json), encoding="utf-8")
    return root


class Runner:
    def __init__(self, job: dict) -> None:
        self.job = job
        self.events = _Events(job["events"])
        self.base = nbformat.read(job["notebook"], as_version=4)
        self.hidden: list[dict] = job["hidden"]
        self.code_cells = [
            i for i, c in enumerate(self.base.cells) if c.cell_type == "code" and str(c.source).strip()
        ]
        self.skip: set[int] = set()
        self.stop_after: int | None = None
        self.hidden_done: set[str] = set()
        self.last_nb: nbformat.NotebookNode | None = None

    def _notebook(self) -> nbformat.NotebookNode:
        nb = copy.deepcopy(self.base)
        for h in self.hidden:
            nb.cells.append(nbformat.v4.new_code_cell(h["source"]))
        return nb

    async def attempt(self, spec_root: Path) -> tuple[str, int] | None:
        """One kernel's run; returns where the kernel was lost, or ``None`` when finished."""
        nb = self._notebook()
        self.last_nb = nb
        km = AsyncKernelManager(kernel_name=SPEC_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_root)]))
        client = GradingClient(
            nb,
            km=km,
            max_output_bytes=int(self.job["max_output_bytes"]),
            allow_errors=True,
            timeout=None,
            startup_timeout=int(self.job["startup_timeout"]),
            record_timing=False,
            shutdown_kernel="immediate",
        )
        async with client.async_setup_kernel(cwd=self.job["cwd"]):
            provisioner = km.provisioner
            self.events.emit("kernel", pid=getattr(provisioner, "pid", None), pgid=getattr(provisioner, "pgid", None))
            deadline = monotonic() + float(self.job["timeout"])
            for index in self.code_cells:
                if index in self.skip:
                    continue
                if self.stop_after is None and deadline - monotonic() <= 0:
                    self.stop_after = index - 1  # the budget ran out between cells
                if self.stop_after is not None and index > self.stop_after:
                    self.events.emit("cell", index=index, status="not_run", ename="", evalue="time limit reached", seconds=0)
                    continue
                out = await run_cell(client, index, deadline - monotonic())
                self.events.emit("cell", index=index, **out.__dict__)
                if out.status == "timeout":
                    self.skip.add(index)
                    self.stop_after = index
                if out.restart:
                    self.skip.add(index)
                    return ("student", index)
            self._flush_truncation(client)
            client.output_used = 0  # the hidden tests get their own output budget
            offset = len(self.base.cells)
            for j, h in enumerate(self.hidden):
                if h["id"] in self.hidden_done:
                    continue
                out = await run_cell(client, offset + j, float(self.job["test_timeout"]))
                self.hidden_done.add(h["id"])
                self.events.emit("hidden", id=h["id"], status=out.status, ename=out.ename, evalue=out.evalue,
                                 seconds=out.seconds)
                if out.restart:
                    return ("hidden", j)
        return None

    def _flush_truncation(self, client: GradingClient) -> None:
        student = [i for i in client.truncated_cells if i < len(self.base.cells)]
        if student:
            self.events.emit("output_truncated", cells=student, limit=int(self.job["max_output_bytes"]))
        client.truncated_cells = []

    async def run(self) -> None:
        spec_root = _make_kernelspec(self.job, Path(self.job["kernelspec_dir"]))
        for attempt in range(int(self.job["max_restarts"]) + 1):
            self.events.emit("attempt", n=attempt + 1)
            lost = await self.attempt(spec_root)
            for task in asyncio.all_tasks():  # nbclient pollers left by a dead kernel
                if task is not asyncio.current_task():
                    task.cancel()
            if lost is None:
                break
        else:
            self.events.emit("gave_up", restarts=int(self.job["max_restarts"]))
        if self.job.get("executed") and self.last_nb is not None:
            nb = self.last_nb
            nb.cells = nb.cells[: len(self.base.cells)]  # never write the hidden tests out
            nbformat.write(nb, self.job["executed"])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vit_course.tools.grading._run_one JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    runner = Runner(job)
    try:
        asyncio.run(runner.run())
    except Exception as exc:
        runner.events.emit("fatal", message=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1
    runner.events.emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
