"""Where training runs are recorded, as every face reads them: the run log and each run's report folder.

The trainer writes both (`log_event` as a run starts and ends, `trainer.report.write` for the report); the
CLI, the terminal app and the server only read them, through the assistant's API. The run log
`<logs>/runs.jsonl` has one line when a run starts and one when it ends, so a run that never ended (killed)
shows as such.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.config import Config

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def runs_log(config: Config) -> Path:
    return config.logs_dir / "runs.jsonl"


def report_dir(config: Config, run_id: str) -> Path:
    return config.logs_dir / "runs" / run_id


def log_event(config: Config, event: dict[str, Any]) -> None:
    """Append one line to the run log (flushed to disk: a kill right after leaves it there)."""
    path = runs_log(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event}, ensure_ascii=False) + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def all_runs(config: Config) -> list[dict[str, Any]]:
    """Every run in the log, oldest first, each with its start and end events merged; the outcome of a run
    that never ended is "unfinished"."""
    runs: dict[str, dict[str, Any]] = {}
    try:
        lines = runs_log(config).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash of the whole machine
        run = runs.setdefault(event.get("run", "?"), {"outcome": "unfinished"})
        if event.get("event") == "start":
            run["started"] = event.get("time")
        else:
            run["ended"] = event.get("time")
        run.update({k: v for k, v in event.items() if k not in ("event", "time")})
    return list(runs.values())


def last_run(config: Config) -> dict[str, Any] | None:
    runs = all_runs(config)
    return runs[-1] if runs else None


@dataclass(frozen=True)
class RunReport:
    """A run that wrote a report: its report.json data and its folder."""

    data: dict[str, Any]
    folder: Path

    @property
    def run_id(self) -> str:
        return str(self.data.get("run_id", self.folder.name))

    def markdown(self) -> str:
        """report.md, or the JSON data where the Markdown is missing."""
        path = self.folder / REPORT_MD
        return path.read_text("utf-8") if path.is_file() else json.dumps(self.data, indent=2)


def reports(config: Config) -> list[RunReport]:
    """Every run that wrote a report, newest first."""
    found = []
    for path in sorted((config.logs_dir / "runs").glob(f"*/{REPORT_JSON}"), reverse=True):
        try:
            found.append(RunReport(json.loads(path.read_text("utf-8")), path.parent))
        except (OSError, ValueError):
            continue  # a report being written, or damaged: the run log still has its outcome
    return found
