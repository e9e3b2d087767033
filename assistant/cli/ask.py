"""`nightjar ask`: one question, answer streamed to the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from assistant.cli.base import State, cli, pass_state
from assistant.config import STRATEGIES
from assistant.reasoning.trace import format_trace


@cli.command()
@click.argument("question", nargs=-1, required=True)
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), help="Serve this GGUF file.")
@click.option("--no-retrieval", is_flag=True, help="Ask the model alone, without searching your documents.")
@click.option(
    "-s", "--strategy", type=click.Choice(STRATEGIES), help="How the model reasons (default: config)."
)
@click.option("-t", "--temperature", type=float, help="Sampling temperature (0: greedy).")
@click.option("--max-tokens", type=int, help="Longest answer, in tokens.")
@click.option("--seed", type=int, help="Sampling seed.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the whole interaction as JSON instead of streaming."
)
@click.option("--show-reasoning", is_flag=True, help="Print the model's reasoning before its answer.")
@click.option(
    "--trace", "show_trace", is_flag=True, help="Print every reasoning step: calls, scores, tokens."
)
@click.option("--samples", type=click.IntRange(1), help="self-consistency: reasoning samples that vote.")
@click.option("--breadth", type=click.IntRange(1), help="tot: next thoughts proposed per state.")
@click.option("--beam", type=click.IntRange(0), help="tot: states kept per depth (0: all, breadth-first).")
@click.option("--depth", type=click.IntRange(1), help="tot: most reasoning steps.")
@click.option("--max-steps", type=click.IntRange(1), help="react: most tool-using steps.")
@click.option("--budget", type=click.IntRange(1), help="tot and react: most tokens one answer may use.")
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
    show_reasoning: bool,
    show_trace: bool,
    samples: int | None,
    breadth: int | None,
    beam: int | None,
    depth: int | None,
    max_steps: int | None,
    budget: int | None,
) -> None:
    """Ask a question; the answer streams as it is generated.

    \b
    Examples:
      nightjar ask "What is the capital of France?"
      nightjar ask --no-retrieval --temperature 0.7 "Write a haiku about owls"
      nightjar ask --strategy cot --show-reasoning "A $12 shirt is 25% off. What does it cost?"
      nightjar ask --strategy self-consistency --samples 7 "..."
      nightjar ask --strategy tot --breadth 3 --beam 2 --depth 4 "..."
      nightjar ask --strategy react --max-steps 8 --trace "Who leads the project in my notes, and since when?"
      nightjar ask --strategy auto "..."      # picks a strategy from the question and says which
    """
    state.overrides.update({"model.path": str(model) if model else None, "ask.strategy": strategy})
    reasoning = {
        "samples": samples,
        "breadth": breadth,
        "beam": beam,
        "depth": depth,
        "max_steps": max_steps,
        "token_budget": budget,
    }
    state.overrides.update({f"reasoning.{key}": value for key, value in reasoning.items()})
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
        on_token=None if as_json or show_reasoning else show,
    )
    if as_json:
        click.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    if show_reasoning:
        if answer.reasoning:
            click.secho(answer.reasoning, dim=True)
            click.echo()
        click.echo(answer.text, nl=False)
    click.echo()
    if answer.sources:
        click.secho("\nSources:", bold=True)
        for source in answer.sources:
            click.echo(f"  [{source.n}] {source.source}, {source.location}")
    if show_trace:
        click.secho("trace:", bold=True)
        for line in format_trace(answer.trace):
            click.echo(f"  {line}")
    picked = next((e for e in answer.trace if e.get("step") == "auto"), None)
    if picked:
        click.secho(f"strategy: {picked['picked']} (auto-picked: {picked['reason']})", fg="cyan", err=True)
    vote = next((e for e in answer.trace if e.get("step") == "vote"), None)
    if vote:
        agree = max(vote["votes"].values(), default=0)
        click.secho(
            f"confidence: {vote['confidence']:.2f} ({agree} of {vote['samples']} samples agree)",
            fg="cyan",
            err=True,
        )
    for notice in answer.notices:
        click.secho(f"note: {notice}", fg="yellow", err=True)
