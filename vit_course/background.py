"""Slow work off the kernel's main thread, where the latest request wins.

A Jupyter kernel handles widget events (comm messages) one at a time on its main thread:
a callback that computes for ten seconds blocks every later slider move, which then
replays, one stale map after another. :class:`LatestOnly` runs such work in a daemon
thread instead, so the kernel keeps reading messages. Each request gets a generation
number; a newer request supersedes every older one: a job asks :meth:`LatestOnly.check`
between its steps (the explorer does it before every forward call of the model and of
each of its blocks, through :func:`on_forward`) and stops with :class:`Superseded`. Jobs
run one after another, never two at once (each waits for the one before it), so two jobs
never share the model. A job that calls no module for a long time (a method that computes
from cast copies of the weights, e.g. value zeroing) can only be dropped when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from torch import nn


class Superseded(Exception):
    """Raised inside a job whose request was replaced by a newer one."""


class LatestOnly:
    """Generations of requests and at most one running job (see the module docstring)."""

    def __init__(self) -> None:
        self.generation = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def new_request(self) -> int:
        """Start a new generation (superseding every job of an older one); returns it."""
        with self._lock:
            self.generation += 1
            return self.generation

    def is_current(self, generation: int) -> bool:
        return generation == self.generation

    def check(self, generation: int) -> None:
        """Raise :class:`Superseded` if ``generation`` is no longer the latest request."""
        if generation != self.generation:
            raise Superseded(f"request {generation} superseded by {self.generation}")

    def submit(self, generation: int, job: Callable[[], None]) -> None:
        """Run ``job()`` in a daemon thread once the previous job has finished; skipped if
        ``generation`` is superseded by then. ``job`` handles its own exceptions."""
        with self._lock:
            previous = self._thread
            self._thread = threading.Thread(target=self._run, args=(previous, generation, job),
                                            daemon=True, name=f"vit-course-job-{generation}")
            self._thread.start()

    def _run(self, previous: threading.Thread | None, generation: int,
             job: Callable[[], None]) -> None:
        if previous is not None:
            previous.join()
        if self.is_current(generation):
            job()

    @property
    def busy(self) -> bool:
        """A job is running or waiting."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the last submitted job (and the ones before it) has finished."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


@contextmanager
def on_forward(modules: Sequence[nn.Module], callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback()`` before each forward call of each of ``modules`` (e.g. a model
    and its blocks) made by this thread.

    An exception from ``callback`` (e.g. :class:`Superseded`) aborts that call. The hooks
    are removed on exit, also on exceptions.
    """
    me = threading.get_ident()

    def hook(_module: nn.Module, _args: tuple) -> None:
        if threading.get_ident() == me:
            callback()

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
