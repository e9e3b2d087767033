"""One model, many clients: every request that needs the model waits its turn in one FIFO queue, and one
worker thread runs them, one at a time, in the order they came.

A job carries a cancel `threading.Event`: set before its turn, the job is skipped; set while it runs, the
job's own code stops (the assistant checks the event after every token), and the next job starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Job:
    def __init__(self, fn: Callable[[], Any], cancel: threading.Event) -> None:
        self.fn = fn
        self.cancel = cancel
        self.future: Future[Any] = Future()


class ModelQueue:
    """A single worker thread running submitted jobs in FIFO order."""

    def __init__(self, name: str = "nightjar-model") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self.running: Job | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, fn: Callable[[], Any], cancel: threading.Event | None = None) -> Job:
        """Queue `fn` behind every job submitted before it; its result (or error) lands in `job.future`."""
        job = Job(fn, cancel or threading.Event())
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the model queue is closed")
            self._waiting.append(job)
            self._jobs.put(job)
        return job

    def waiting(self) -> int:
        """Jobs queued and not started yet."""
        with self._lock:
            return len(self._waiting)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what is queued and running, and stop the worker (waiting up to `timeout` for it)."""
        with self._lock:
            self._closed.set()
            for job in [*self._waiting, self.running]:
                if job is not None:
                    job.cancel.set()
            self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._waiting.remove(job)
                if job.cancel.is_set():  # its client went away before its turn
                    job.future.cancel()
                    continue
                self.running = job
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.fn())
                except BaseException as exc:  # the job's error goes to whoever waits for it
                    job.future.set_exception(exc)
            with self._lock:
                self.running = None


class Relay:
    """Hands what a job streams from the worker thread to the event loop: the worker appends, the loop takes
    all there is at once. While the loop holds (after sending, so that pieces arriving close together go out
    as one chunk, which saves the generating threads CPU time), only the job's last item wakes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_s: float) -> None:
        self._loop = loop
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._ended = False  # the last item is in
        self._waiting = False  # the loop waits for a wake-up...
        self._holding = False  # ...and only the last item may give it
        self._woken = False
        self._ready = asyncio.Event()

    def put(self, item: Any, last: bool = False) -> None:
        """From any thread; `last` for the job's final item."""
        with self._lock:
            self._items.append(item)
            self._ended = self._ended or last
            wake = self._waiting and not self._woken and (last or not self._holding)
            self._woken = self._woken or wake
        if wake:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                self._loop.call_soon_threadsafe(self._ready.set)

    async def _wait(self, seconds: float, holding: bool) -> None:
        with self._lock:
            if (self._ended if holding else self._items) or seconds <= 0:
                return
            self._waiting, self._holding, self._woken = True, holding, False
            self._ready.clear()
        timer = self._loop.call_later(seconds, self._ready.set)
        try:
            await self._ready.wait()
        finally:
            timer.cancel()
            with self._lock:
                self._waiting = self._holding = False

    async def hold(self, seconds: float) -> None:
        """Let pieces gather for up to `seconds` (less if the last item comes)."""
        await self._wait(seconds, holding=True)

    async def take(self) -> list[Any]:
        """Everything put since the last take, waiting for it if there is none; [] after `idle_s`."""
        await self._wait(self._idle_s, holding=False)
        with self._lock:
            items, self._items = self._items, []
        return items
