"""`nightjar ask`: one question, answer streamed to the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from assistant.cli.base import State, cli, pass_state
from assistant.config import STRATEGIES


@cli.command()
@click.argument("question", nargs=-1, required=True)
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), help="Serve this GGUF file.")
@click.option("--no-retrieval", is_flag=True, help="Ask the model alone, without searching your documents.")
@click.option("-s", "--strategy", type=click.Choice(STRATEGIES), help="How the model reasons (default: config).")
@click.option("-t", "--temperature", type=float, help="Sampling temperature (0: greedy).")
@click.option("--max-tokens", type=int, help="Longest answer, in tokens.")
@click.option("--seed", type=int, help="Sampling seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole interaction as JSON instead of streaming.")
@pass_state
def ask(
    state: State,
    question: tuple[str, ...],
    model: Path | None,
    no_retrieval: bool,
    strategy: str | None,
    temperature: float | None,
    max_tokens: int | None,
    seed: int | None,
    as_json: bool,
) -> None:
    """Ask a question; the answer streams as it is generated.

    \b
    Examples:
      nightjar ask "What is the capital of France?"
      nightjar ask --no-retrieval --temperature 0.7 "Write a haiku about owls"
    """
    state.overrides.update({"model.path": str(model) if model else None, "ask.strategy": strategy})
    if no_retrieval:
        state.overrides["ask.retrieval"] = False
    assistant = state.assistant
    params = assistant.params(temperature=temperature, max_tokens=max_tokens, seed=seed)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    answer = assistant.answer(
        " ".join(question),
        strategy=state.config.ask.strategy,
        params=params,
        on_token=None if as_json else show,
    )
    if as_json:
        click.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    click.echo()
    for notice in answer.notices:
        click.secho(f"note: {notice}", fg="yellow", err=True)
