"""A run's stages: `Stages` times each, samples its peak memory and shows its progress (a bar with an ETA on a
terminal, a line per stage elsewhere); the fault hook kills the run in a named stage.

Fault tests: NIGHTJAR_FAULT_KILL_AT="<stage>[+seconds]" makes the run SIGKILL itself that long into a stage.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

STAGES = ("read", "master", "train", "merge", "export", "quantize", "eval", "publish")
KILL_ENV = "NIGHTJAR_FAULT_KILL_AT"
log = logging.getLogger("nightjar.train")


class Stages:
    """Runs the pipeline's stages in order: times each, samples its peak memory, shows progress."""

    def __init__(self, console=None, expected: dict[str, float] | None = None) -> None:
        self.console = console
        self.expected = expected or {}
        self.times: dict[str, dict[str, float]] = {}
        self.current: str | None = None
        self._started = 0.0
        self._peak = 0
        self._stepped = False
        self._stop = threading.Event()
        self._progress = None
        self._task = None

    def __enter__(self) -> Stages:
        if self.console is not None and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<28}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._stop.set()
        if self._progress is not None:
            self._progress.stop()

    def start(self, name: str) -> None:
        self._finish()
        self.current, self._started, self._peak, self._stepped = name, time.monotonic(), _rss(), False
        log.info("stage %s", name)
        if self._progress is not None:
            # the last run's time: a clock-driven ETA until steps are known
            expected = self.expected.get(name)
            self._task = self._progress.add_task(name, total=expected)
        _kill_hook(name)

    def update(self, done: int, total: int, what: str | None = None) -> None:
        """Progress within the stage (steps, samples, rows)."""
        self._stepped = True
        if self._progress is not None and self._task is not None:
            description = f"{self.current}: {what}" if what else self.current
            self._progress.update(self._task, completed=done, total=total, description=description)

    def _finish(self) -> None:
        if self.current is None:
            return
        seconds = time.monotonic() - self._started
        self.times[self.current] = {"seconds": seconds, "peak_rss_mib": max(self._peak, _rss()) / 2**20}
        log.info("stage %s done in %.1f s", self.current, seconds)
        if self._progress is not None and self._task is not None:
            total = self._progress.tasks[-1].total or 1
            self._progress.update(self._task, total=total, completed=total)
        elif self.console is not None:
            self.console.print(f"{self.current}: done in {seconds:.1f} s")
        self.current = None

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._peak = max(self._peak, _rss())
            expected = self.expected.get(self.current or "")
            if self._progress is not None and self._task is not None and expected and not self._stepped:
                elapsed = time.monotonic() - self._started
                self._progress.update(self._task, completed=min(elapsed, 0.99 * expected))


def _rss() -> int:
    """Resident memory of this process in bytes."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _kill_hook(stage: str) -> None:
    spec = os.environ.get(KILL_ENV, "")
    name, _, delay = spec.partition("+")
    if name != stage:
        return
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if delay:
        threading.Timer(float(delay), kill).start()
    else:
        kill()
