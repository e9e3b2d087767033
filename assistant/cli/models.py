"""`nightjar models`: the model versions the nightly trainer published, and which one answers."""

from __future__ import annotations

import json
from typing import Any

import click

from assistant import registry
from assistant.cli.base import State, cli, pass_state


def _metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    shown = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        shown.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(shown[:limit])


def _date(created: str) -> str:
    return created[:16].replace("T", " ")


@cli.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List model versions, and choose which one answers.

    The nightly trainer publishes a new version when it beats the served one; the base model is always kept.
    The assistant serves the new choice from its next start (or on reload).

    \b
    Examples:
      nightjar models                 # versions; * marks the one served
      nightjar models show v3         # the training report of v3
      nightjar models use v2          # serve v2 from now on
      nightjar models rollback        # serve again the version served before
      nightjar models gc --keep 3     # delete all but the 3 newest versions
    """
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.find_object(State)
    config = state.config
    rows = [("", "VERSION", "DATE", "OBJECTIVE", "ROWS", "METRICS")]
    for v in state.assistant.versions():
        data = "" if v.data_size is None else str(v.data_size)
        served = "*" if v.served else ""
        rows.append((served, v.name, _date(v.created), v.objective, data, _metrics(v.metrics)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        click.echo(line.rstrip())
    if config.model.path:
        click.secho(f"note: model.path is set: {config.model.path} is served instead", fg="yellow", err=True)


@models.command()
@click.argument("version")
@pass_state
def use(state: State, version: str) -> None:
    """Serve VERSION (or `base`) from now on."""
    state.assistant.use_version(version)
    click.echo(f"serving {version}")


@models.command()
@pass_state
def rollback(state: State) -> None:
    """Serve again the version that was served before the current one."""
    click.echo(f"serving {state.assistant.rollback()}")


@models.command()
@click.option("--keep", type=click.IntRange(min=0), default=3, show_default=True, help="How many to keep.")
@pass_state
def gc(state: State, keep: int) -> None:
    """Delete old versions; the served version and the base model are always kept."""
    removed = registry.gc(state.config, keep)
    click.echo(f"deleted {', '.join(removed)}" if removed else "nothing to delete")


@models.command()
@click.argument("version")
@pass_state
def show(state: State, version: str) -> None:
    """Print VERSION's training report (or its details when it has none)."""
    v = registry.get(state.config, version)
    if v.report is not None:
        click.echo(v.report.read_text(encoding="utf-8"))
        return
    details = {"version": v.name, "model": str(v.gguf), "served": v.served, **v.meta}
    click.echo(json.dumps(details, indent=2, ensure_ascii=False))
