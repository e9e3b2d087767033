"""The training runs panel: the nightly schedule, the last run's outcome, and every run's report."""

from __future__ import annotations

import json

from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from assistant.errors import NightjarError
from tui.models import ReportScreen


def schedule_status(config):
    """The schedule's status (trainer.schedule), or None where nothing can schedule on this machine."""
    from trainer import schedule

    try:
        return schedule.status(config)
    except NightjarError:
        return None


def training_summary(config) -> str:
    """One line for the status bar: the last run's outcome and the next scheduled run."""
    from trainer import report

    status = schedule_status(config)
    last = status.last_run if status else report.last_run(config)
    when = (last.get("started") or last.get("ended") or "")[5:16].replace("T", " ") if last else ""
    shown = f"training {last['outcome']} {when}" if last else "training never run"
    return shown + (f", next {status.at}" if status and status.installed else ", not scheduled")


class TrainingScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("v", "report", "Report")]

    def compose(self) -> ComposeResult:
        yield Static("Training runs", classes="screen-title")
        yield Static(id="training-schedule", classes="muted")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="runs")
        yield Footer()

    def on_mount(self) -> None:
        from trainer import report

        config = self.app.assistant.config
        status = schedule_status(config)
        if status is None:
            lines = ["Nightly training cannot be scheduled here (no systemd user session, no crontab)."]
        elif status.installed:
            nxt = status.next_run.strftime("%Y-%m-%d %H:%M") if status.next_run else "?"
            lines = [f"Nightly training at {status.at} ({status.backend}); next run {nxt}."]
        else:
            lines = ["Not scheduled: `nightjar schedule --at 03:00` trains every night at 3."]
        last = status.last_run if status else report.last_run(config)
        if last:
            reasons = "; ".join(last.get("reasons") or [])
            lines.append(
                f"Last run {last.get('started') or last.get('ended') or '?'}: {last['outcome']}"
                + (f" ({reasons})" if reasons else "")
            )
        self.query_one("#training-schedule", Static).update(Content("\n".join(lines)))

        self.reports = self._reports(config)
        table = self.query_one(DataTable)
        table.add_columns("run", "outcome", "objective", "version")
        for data, _ in self.reports:
            table.add_row(
                data.get("run_id", "?"),
                data.get("outcome", "?"),
                "+".join(data.get("objectives", [])),
                data.get("version") or "",
            )
        if not self.reports:
            table.display = False

    @staticmethod
    def _reports(config) -> list[tuple[dict, object]]:
        """(report.json data, its folder) of every run that wrote a report, newest first."""
        from trainer import report

        found = []
        for path in sorted((config.logs_dir / "runs").glob(f"*/{report.REPORT_JSON}"), reverse=True):
            try:
                found.append((json.loads(path.read_text("utf-8")), path.parent))
            except (OSError, ValueError):
                continue  # a report being written, or damaged: the run log still has its outcome
        return found

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_report()

    def action_report(self) -> None:
        from trainer import report

        if not self.reports:
            return
        data, folder = self.reports[self.query_one(DataTable).cursor_row]
        path = folder / report.REPORT_MD
        text = path.read_text("utf-8") if path.is_file() else json.dumps(data, indent=2)
        self.app.push_screen(ReportScreen(f"Training run {data.get('run_id', '?')}", text))
