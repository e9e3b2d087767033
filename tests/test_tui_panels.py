"""The model versions and training panels, driven through the real app and the real registry and run log."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from test_tui_chat import make_app, run_command
from textual.widgets import DataTable, Markdown, Sparkline

from assistant import config as config_mod
from assistant import registry
from tui.models import ModelsScreen, ReportScreen
from tui.training import TrainingScreen


def publish(home: Path, model_path: Path, tmp_path: Path, metrics: dict) -> str:
    config = config_mod.load(home, environ={})
    staging = tmp_path / f"staging-{len(registry.versions(config))}"
    staging.mkdir()
    shutil.copy(model_path, staging / "model.gguf")
    return registry.publish(config, staging, {"objective": "dpo", "data_size": 40, "metrics": metrics})


def test_model_versions_switch_and_roll_back(home: Path, engine, model_path: Path, tmp_path: Path):
    publish(home, model_path, tmp_path, {"preference_accuracy": 0.55, "reward_margin": 0.1})
    publish(home, model_path, tmp_path, {"preference_accuracy": 0.7, "reward_margin": 0.4, "promoted": True})
    app = make_app(home, engine)

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            assert app.chat.status.model == "v2"
            await run_command(pilot, "Model versions")
            screen = app.screen
            assert isinstance(screen, ModelsScreen)
            table = screen.query_one(DataTable)
            assert [table.get_row_at(i)[:2] for i in range(3)] == [["", "base"], ["", "v1"], ["*", "v2"]]
            assert "preference_accuracy 0.7" in table.get_row_at(2)[5]
            charts = {str(row.query_one(".chart-label").render()): row for row in screen.query(".chart-row")}
            assert set(charts) == {"preference_accuracy", "reward_margin"}  # numbers only, one chart each
            assert list(charts["reward_margin"].query_one(Sparkline).data) == [0.1, 0.4]

            await pilot.press("up", "up", "enter")  # serve the base model
            assert registry.current_version(app.assistant.config) == "base"
            assert app.assistant.model_version == "base" and app.chat.status.model == "base"
            assert table.get_row_at(0)[0] == "*"
            await pilot.press("b")  # roll back: v2 again
            assert registry.current_version(app.assistant.config) == "v2"
            assert app.chat.status.model == "v2"
            await pilot.press("escape")
            assert app.screen is app.chat

    asyncio.run(scenario())


def test_an_impossible_rollback_is_reported_not_a_crash(home: Path, engine):
    app = make_app(home, engine)

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await run_command(pilot, "Model versions")
            await pilot.press("b")
            assert isinstance(app.screen, ModelsScreen) and app.is_running
            assert [n.message for n in app._notifications] == [
                "nothing to roll back to: the base model is served"
            ]

    asyncio.run(scenario())


def test_training_runs_schedule_and_report(home: Path, engine, tmp_path: Path, monkeypatch):
    from assistant import runs, schedule
    from trainer import report

    monkeypatch.setenv(schedule.CRONTAB_ENV, str(tmp_path / "crontab"))
    config = config_mod.load(home, environ={})
    schedule.install(config, "03:00")
    run = {
        "run_id": "20250101-030000-abcdef",
        "outcome": "rejected",
        "objectives": ["kto"],
        "version": None,
        "reasons": ["held-out desirability did not improve"],
        "started": "2025-01-01T03:00:00",
    }
    runs.log_event(config, {"run": run["run_id"], "event": "start"})
    runs.log_event(
        config, {"run": run["run_id"], "event": "end", "outcome": "rejected", "reasons": run["reasons"]}
    )
    report.write(runs.report_dir(config, run["run_id"]), run)
    app = make_app(home, engine)

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await app.workers.wait_for_complete()  # the schedule is read in the background
            await pilot.pause()
            assert app.chat.status.training.startswith("training rejected ")
            assert app.chat.status.training.endswith(", next 03:00")
            await run_command(pilot, "Training runs")
            screen = app.screen
            assert isinstance(screen, TrainingScreen)
            await app.workers.wait_for_complete()
            await pilot.pause()
            text = str(screen.query_one("#training-schedule").render())
            assert "nightly training at 03:00 (cron" in text and "rejected (held-out desirability" in text
            table = screen.query_one(DataTable)
            assert table.get_row_at(0) == [run["run_id"], "rejected", "kto", ""]
            await pilot.press("enter")
            assert isinstance(app.screen, ReportScreen)
            assert "Training run 20250101-030000-abcdef" in app.screen.query_one(Markdown).source

    asyncio.run(scenario())


def test_without_systemd_or_cron_the_app_says_what_the_command_says(home: Path, engine, monkeypatch):
    """One text for the schedule in every face: here, that nothing on this machine can schedule."""
    from assistant import schedule

    for name in (schedule.UNIT_DIR_ENV, schedule.CRONTAB_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(schedule.shutil, "which", lambda _: None)  # no systemctl, no crontab
    config = config_mod.load(home, environ={})
    expected = schedule.describe(schedule.status(config))
    assert expected[0].startswith("no nightly training scheduled: cannot schedule")
    app = make_app(home, engine)

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.chat.status.training == "training never run, not scheduled"
            await run_command(pilot, "Training runs")
            await app.workers.wait_for_complete()
            await pilot.pause()
            shown = str(app.screen.query_one("#training-schedule").render())
            assert shown.split("\n") == expected

    asyncio.run(scenario())
