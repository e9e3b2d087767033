"""Index a folder from the app: pick it, watch the progress (files, chunks, ETA), see what was skipped.

Indexing runs in a thread worker through the same retrieval API as `nightjar index`; the chat stays usable,
and leaving this screen does not stop it (the status bar shows its progress).
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DirectoryTree, Footer, Input, ProgressBar, Static


class FolderTree(DirectoryTree):
    """Folders and files, hidden ones left out (the indexer leaves them out too)."""

    def filter_paths(self, paths):
        return [path for path in paths if not path.name.startswith(".")]


class Progress:
    """The indexer's progress callbacks (called in the worker's thread), forwarded to the screen's thread."""

    def __init__(self, screen: IndexScreen) -> None:
        self.screen = screen

    def start(self, files: int, size: int) -> None:
        self.screen.app.call_from_thread(self.screen.progress, 0, 0, 0, (files, size))

    def advance(self, files: int, size: int, chunks: int) -> None:
        self.screen.app.call_from_thread(self.screen.progress, files, size, chunks)

    def stop(self) -> None:
        pass


class IndexScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("f5", "start", "Index")]

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.running = False

    def compose(self) -> ComposeResult:
        yield Static("Index a folder or file", classes="screen-title")
        yield Input(str(self.folder), placeholder="path to a folder or file", id="index-path")
        yield FolderTree(self.folder, id="index-tree")
        with Vertical(id="index-progress"):
            yield ProgressBar(id="index-bar")
            yield Static(id="index-counts")
        with VerticalScroll(id="index-result"):
            yield Static(id="index-summary")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#index-progress").display = False
        self.query_one("#index-result").display = False
        self.query_one(Input).focus()

    @on(DirectoryTree.DirectorySelected)
    @on(DirectoryTree.FileSelected)
    def picked(self, event: DirectoryTree.DirectorySelected | DirectoryTree.FileSelected) -> None:
        self.query_one(Input).value = str(event.path)

    @on(Input.Submitted)
    def action_start(self) -> None:
        if self.running:
            self.notify("Already indexing.")
            return
        path = Path(self.query_one(Input).value.strip()).expanduser()
        if not str(path) or not path.exists():
            self.notify(f"Not found: {path}", severity="error")
            return
        self.running = True
        self.query_one("#index-progress").display = True
        self.query_one("#index-result").display = False
        self.query_one("#index-counts", Static).update("looking for documents…")
        self.index([path])

    @work(thread=True, group="index", exit_on_error=False)
    def index(self, paths: list[Path]) -> None:
        try:
            report = self.app.assistant.index(paths, progress=Progress(self))
        except Exception as exc:  # shown on the screen; the app keeps running
            self.app.call_from_thread(self.finished, None, str(exc) or type(exc).__name__)
            return
        self.app.call_from_thread(self.finished, report, None)

    def progress(self, files: int, size: int, chunks: int, total: tuple[int, int] | None = None) -> None:
        """Count `files`, `size` bytes and `chunks` more as done (`total`: the start, with what is to do)."""
        if total is not None:
            self.totals, self.done, self.chunks, self.t0 = total, [0, 0], 0, time.perf_counter()
            self.query_one(ProgressBar).update(total=max(total[1], 1), progress=0)
        self.done[0] += files
        self.done[1] += size
        self.chunks += chunks
        self.query_one(ProgressBar).update(progress=self.done[1])
        self.show_counts()
        self.app.chat.status.indexing = f"indexing {self.done[0]}/{self.totals[0]} files"

    def show_counts(self) -> None:
        seconds = time.perf_counter() - self.t0
        rate = self.chunks / seconds if seconds > 0 else 0.0
        eta = "–"
        if 0 < self.done[1] < self.totals[1]:
            eta = f"{seconds * (self.totals[1] - self.done[1]) / self.done[1]:.0f} s"
        self.query_one("#index-counts", Static).update(
            f"{self.done[0]}/{self.totals[0]} files · {self.chunks} chunks · {rate:.1f} chunks/s · ETA {eta}"
        )

    def finished(self, report, error: str | None) -> None:
        self.running = False
        self.app.chat.status.indexing = ""
        result = self.query_one("#index-result")
        result.display = True
        if error is not None:
            self.query_one("#index-summary", Static).update(Content(f"error: {error}"))
            self.notify(error, severity="error")
            return
        bar = self.query_one(ProgressBar)
        bar.update(total=bar.total or 1, progress=bar.total or 1)
        lines = [*(f"note: {n}" for n in report.notices), report.summary()]
        if report.skipped:
            lines.append(f"Skipped ({len(report.skipped)}):")
            lines += [f"  {s.path}: {s.reason}" for s in report.skipped]
        self.query_one("#index-summary", Static).update(Content("\n".join(lines)))
        self.app.index_changed()
        self.notify(f"Indexing finished: {report.summary()}")
