"""The training runs panel: the nightly schedule, the last run's outcome, and every run's report."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from assistant import schedule
from assistant.runs import RunReport
from tui.models import ReportScreen


class TrainingScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("v", "report", "Report")]

    def compose(self) -> ComposeResult:
        yield Static("Training runs", classes="screen-title")
        yield Static("reading the schedule…", id="training-schedule", classes="muted")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="runs")
        yield Footer()

    def on_mount(self) -> None:
        self.reports: list[RunReport] = []
        self.query_one(DataTable).display = False
        self.load()

    @work(thread=True, group="training-status", exit_on_error=False)
    def load(self) -> None:
        """The schedule asks systemd or cron, which can take a while: off the UI thread."""
        assistant = self.app.assistant
        status, reports = assistant.training_status(), assistant.training_runs()
        self.app.call_from_thread(self.show, schedule.describe(status), reports)

    def show(self, lines: list[str], reports: list[RunReport]) -> None:
        self.query_one("#training-schedule", Static).update(Content("\n".join(lines)))
        self.reports = reports
        table = self.query_one(DataTable)
        table.add_columns("run", "outcome", "objective", "version")
        for run in reports:
            data = run.data
            table.add_row(
                run.run_id,
                data.get("outcome", "?"),
                "+".join(data.get("objectives", [])),
                data.get("version") or "",
            )
        table.display = bool(reports)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_report()

    def action_report(self) -> None:
        if not self.reports:
            return
        run = self.reports[self.query_one(DataTable).cursor_row]
        self.app.push_screen(ReportScreen(f"Training run {run.run_id}", run.markdown()))
