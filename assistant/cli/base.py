"""The `nightjar` command group and the state its subcommands share."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from assistant import config as config_mod


class State:
    """Per-invocation state: the global options, and the config and assistant built lazily from them."""

    def __init__(self, home: Path | None, debug: bool) -> None:
        self.home = home
        self.debug = debug
        self.overrides: dict[str, Any] = {}

    @cached_property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.home, self.overrides)

    @cached_property
    def assistant(self):
        from assistant.service import Assistant

        return Assistant(self.config)


pass_state = click.make_pass_decorator(State)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="NIGHTJAR_HOME",
    help="Keep all state (config, index, feedback, model versions) in DIR. Env: NIGHTJAR_HOME.",
    metavar="DIR",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="nightjar", prog_name="nightjar")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, debug: bool) -> None:
    """Nightjar: a local, private assistant for your own documents.

    It answers from your documents with citations, and learns from your thumbs up and down every night.
    `nightjar` alone on a terminal opens the chat app (`nightjar chat`).
    Errors exit with code 2; `--debug` shows their traceback.
    """
    ctx.obj = State(home, debug)
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            ctx.invoke(cli.commands["chat"])
        else:
            click.echo(ctx.get_help())
