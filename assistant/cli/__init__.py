"""The `nightjar` command (also `python -m assistant`). Nothing imports this package: it is the face."""

from __future__ import annotations

import logging
import sys

import click

# importing the command modules registers their subcommands
from assistant.cli import ask, chat, doctor, feedback, index, models, reranker, serve, train  # noqa: F401
from assistant.cli.base import cli
from assistant.errors import NightjarError


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit code 2 (`--debug` shows the traceback)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # bitsandbytes (imported by peft when training) warns on import that an optional CPU kernel package is
    # missing: nothing Nightjar uses (4-bit runs on CUDA only), so it stays off the user's terminal
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        cli.main(args=args, prog_name="nightjar", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except NightjarError as exc:
        if debug:
            raise
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
