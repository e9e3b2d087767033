"""The model versions panel: metrics per version, held-out metrics charted over versions, switch, rollback."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Markdown, Sparkline, Static

from assistant import registry
from tui.errors import reported


def numeric_metrics(version: registry.Version) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in version.metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


class ModelsScreen(Screen):
    """Versions oldest first; the served one is starred. Enter serves the highlighted version."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("enter", "use", "Serve this"),
        Binding("b", "rollback", "Roll back"),
        Binding("v", "report", "Report"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("Model versions", classes="screen-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="versions")
        yield Static("Held-out metrics over versions", classes="section-title")
        yield VerticalScroll(id="charts")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_versions()

    def refresh_versions(self) -> None:
        self.versions = self.app.assistant.versions()
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("", "version", "date", "objective", "rows", "metrics")
        for version in self.versions:
            metrics = ", ".join(f"{k} {v:.3g}" for k, v in numeric_metrics(version).items())
            rows = "" if version.data_size is None else str(version.data_size)
            served = "*" if version.served else ""
            date = version.created[:16].replace("T", " ")
            table.add_row(served, version.name, date, version.objective, rows, metrics, key=version.name)
        table.move_cursor(row=next(i for i, v in enumerate(self.versions) if v.served))
        self.draw_charts()

    def draw_charts(self) -> None:
        charts = self.query_one("#charts", VerticalScroll)
        charts.remove_children()
        series: dict[str, list[tuple[str, float]]] = {}
        for version in self.versions:
            for key, value in numeric_metrics(version).items():
                series.setdefault(key, []).append((version.name, value))
        if not series:
            charts.mount(Label("No trained versions yet: `nightjar train` publishes them.", classes="muted"))
            return
        for key, points in series.items():
            values = [v for _, v in points]
            summary = " ".join(f"{name} {value:.3g}" for name, value in points)
            charts.mount(
                Horizontal(
                    Label(key, classes="chart-label"),
                    Sparkline(values, summary_function=max, classes="chart"),
                    Label(Content(summary), classes="chart-values"),
                    classes="chart-row",
                )
            )

    def highlighted(self) -> registry.Version:
        return self.versions[self.query_one(DataTable).cursor_row]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_use()

    def action_use(self) -> None:
        version = self.highlighted()
        with reported(self):
            self.app.assistant.use_version(version.name)
            self.switched(f"Serving {version.name}.")

    def action_rollback(self) -> None:
        with reported(self):
            name = self.app.assistant.rollback()
            self.switched(f"Rolled back: serving {name}.")

    def switched(self, message: str) -> None:
        self.app.model_changed()
        self.refresh_versions()
        self.notify(message)

    def action_report(self) -> None:
        version = self.highlighted()
        if version.report is None:
            self.notify(f"{version.name} has no training report.")
            return
        self.app.push_screen(ReportScreen(f"Report of {version.name}", version.report.read_text("utf-8")))


class ReportScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, title: str, markdown: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.title_text = title
        self.markdown = markdown

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="screen-title")
            with VerticalScroll():
                yield Markdown(self.markdown, open_links=False)
        yield Footer()
