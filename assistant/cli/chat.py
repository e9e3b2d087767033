"""`nightjar chat` (and `nightjar` alone, on a terminal): the terminal app."""

from __future__ import annotations

from pathlib import Path

import click

from assistant.cli.base import State, cli, pass_state
from assistant.config import STRATEGIES


@cli.command()
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), help="Serve this GGUF file.")
@click.option(
    "-s", "--strategy", type=click.Choice(STRATEGIES), help="How the model reasons (default: config)."
)
@click.option("--no-retrieval", is_flag=True, help="Chat with the model alone, not your documents.")
@click.option("--new", is_flag=True, help="Start a new conversation instead of reopening the latest one.")
@pass_state
def chat(state: State, model: Path | None, strategy: str | None, no_retrieval: bool, new: bool) -> None:
    """Open the terminal app: chat with your documents, rate answers, index folders, switch models.

    Answers stream as they are generated, with their sources; Esc cancels. Enter sends, Ctrl+J adds a
    line, Esc selects answers (then + / - rate them, e correct, r regenerate, a choose among regenerations),
    F2 picks the reasoning strategy, Ctrl+P lists every command (index a folder, sources, model versions,
    training runs, theme). Conversations are kept and the latest reopens next time.

    \b
    Examples:
      nightjar chat
      nightjar                          # the same, on a terminal
      nightjar chat --strategy cot --new
      nightjar --home ~/work-notes chat
    """
    state.overrides.update({"model.path": str(model) if model else None, "ask.strategy": strategy})
    from tui.app import NightjarApp

    state.assistant.model_version  # noqa: B018  (a missing or broken model: one line before the app opens)
    app = NightjarApp(state.assistant, retrieval=False if no_retrieval else None, restore=not new)
    app.run()
