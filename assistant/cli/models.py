"""`nightjar models`: the model versions the nightly trainer published, and which one answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from assistant import registry
from assistant.cli.base import State, cli, pass_state
from assistant.config import Config


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
      nightjar models base FILE.gguf  # train and serve your own model from now on
      nightjar models pull REPO FILE.gguf --base  # download a GGUF from the hub, and make it the base
    """
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.find_object(State)
    config = state.config
    rows = [("", "VERSION", "DATE", "OBJECTIVE", "ROWS", "METRICS")]
    base = str(registry.base_model_path(config))
    for v in state.assistant.versions():
        data = "" if v.data_size is None else str(v.data_size)
        served = "*" if v.served else ""
        objective = v.objective
        if v.name == registry.BASE:
            objective = f"base model ({registry.base_model_path(config).name})"
        elif v.meta.get("base") and v.meta["base"] != base:  # an earlier lineage, still usable
            objective += f" (from {v.meta['base'].rsplit('/', 1)[-1]})"
        rows.append((served, v.name, _date(v.created), objective, data, _metrics(v.metrics)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        click.echo(line.rstrip())
    if config.model.path:
        click.secho(f"note: model.path is set: {config.model.path} is served instead", fg="yellow", err=True)


@models.command("base")
@click.argument("gguf", required=False, type=click.Path(dir_okay=False))
@pass_state
def base_cmd(state: State, gguf: str | None) -> None:
    """Make GGUF the base model: served from now on, and what nightly training improves.

    Versions trained from an earlier base stay listed and usable (`nightjar models use vN`). Without GGUF,
    says which base is in use. To serve a file exactly, with no versions and no training, set model.path.
    """
    config = state.config
    if gguf is None:
        click.echo(str(registry.base_model_path(config)))
        return
    _make_base(config, gguf)


def _make_base(config: Config, gguf: str | Path) -> None:
    """What `models base GGUF` does (and `models pull --base`): check the file and its architecture, record it
    as the base, serve it."""
    from assistant.modelfile import check_gguf
    from trainer.gguf_layout import check_supported, open_gguf

    path = check_gguf(gguf)
    check_supported(open_gguf(path), path)  # one line naming the architectures training supports
    chosen = registry.set_base(config, path)
    click.echo(f"base model: {chosen}; it answers from now on, and nightly training improves it")
    if config.model.path:
        click.secho(f"note: model.path is set: {config.model.path} is served instead", fg="yellow", err=True)


@models.command()
@click.argument("repo", metavar="REPO")
@click.argument("file", metavar="[FILE]", required=False)
@click.option("--revision", help="A branch, tag or commit of the repository (default: main).")
@click.option(
    "--base/--no-base",
    "make_base",
    default=None,
    help="Make the file the base model, or not, without asking (unasked: no when stdin is not a terminal).",
)
@pass_state
def pull(state: State, repo: str, file: str | None, revision: str | None, make_base: bool | None) -> None:
    """Download the GGUF FILE of Hugging Face Hub repository REPO (or hf://REPO/FILE) into the models folder.

    The only command that uses the network (HF_ENDPOINT names a mirror). The download resumes when the
    connection drops, and the file is kept only when its size and sha256 are what the hub lists. Then it
    offers to make the file the base model (as `nightjar models base FILE` does).

    \b
    Examples:
      nightjar models pull Qwen/Qwen2.5-1.5B-Instruct-GGUF qwen2.5-1.5b-instruct-q4_k_m.gguf --base
      nightjar models pull hf://Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf
    """
    from assistant import pull as pull_mod

    config = state.config
    source = pull_mod.parse_source(repo, file, revision)
    path = pull_mod.pull(config, source, echo=click.echo)
    if make_base is None:
        interactive = sys.stdin.isatty()
        make_base = interactive and click.confirm("make it the base model?", default=False)
    if make_base:
        _make_base(config, path)
    else:
        click.echo(f"to make it the base model: nightjar models base {path}")


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
