"""`nightjar reranker`: the reranker Nightjar trains on your documents, its versions, and rolling one back."""

from __future__ import annotations

import json
import sys

import click

from assistant.cli.base import State, cli, pass_state


def _progress():
    """A one-line progress display on stderr for each stage of a training run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, update


@cli.group(invoke_without_command=True)
@click.pass_context
def reranker(ctx: click.Context) -> None:
    """List the trained rerankers; * marks the one that reorders search results.

    Nightjar trains its own reranker on your documents (no download): the model writes questions for
    passages of them, your up-voted and corrected answers add yours, and a cross-encoder learns to pick each
    question's passage. A version is kept only when it ranks held-out questions' passages higher than what
    serves now. A cross-encoder you name in retrieval.reranker always wins over a trained one.

    \b
    Examples:
      nightjar reranker                 # versions and the one in use
      nightjar reranker train           # train one on your documents (minutes)
      nightjar reranker rollback        # serve the one before (or none)
    """
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.find_object(State)
    versions, current = state.assistant.rerankers()
    config = state.config.retrieval
    if not versions:
        click.echo("no trained reranker yet: `nightjar reranker train` trains one on your documents")
    for v in versions:
        mark = "*" if current is not None and v.name == current.name else " "
        click.echo(f"{mark} {v.name}  {v.summary}")
    last = state.assistant.last_reranker_run()
    if last is not None and not last.get("version"):
        click.echo(f"last run: not kept: {'; '.join(last.get('reasons', []))}")
    if config.reranker:
        click.secho(
            f"note: retrieval.reranker is set: {config.reranker} reranks instead", fg="yellow", err=True
        )
    elif not config.trained_reranker and current is not None:
        click.secho("note: retrieval.trained_reranker is false: no reranking", fg="yellow", err=True)


@reranker.command("train")
@click.option("--queries", type=click.IntRange(1), help="Passages to write a question for (default: config).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's report as JSON.")
@pass_state
def train_cmd(state: State, queries: int | None, as_json: bool) -> None:
    """Train a reranker on your indexed documents; it serves only if it beats the current ranking.

    \b
    Exit codes: 0 a new version serves; 1 it was not better (what serves is unchanged); 2 error.
    """
    bar, update = _progress()
    with bar:
        report = state.assistant.train_reranker(queries, progress=update)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        given = ", ".join(f"{n} {origin}" for origin, n in report.examples.items()) or "none"
        click.echo(f"questions: {given}; {report.train_queries} trained on")
        for reason, n in report.left_out.items():
            click.echo(f"  left out {n}: {reason}")
        click.echo(report.verdict)
        if report.seconds:
            click.echo("seconds: " + ", ".join(f"{k} {v}" for k, v in report.seconds.items()))
        if report.version and state.config.retrieval.reranker:
            click.secho(
                f"note: retrieval.reranker is set: {state.config.retrieval.reranker} keeps reranking",
                fg="yellow",
                err=True,
            )
    sys.exit(0 if report.version else 1)


@reranker.command("rollback")
@pass_state
def rollback_cmd(state: State) -> None:
    """Serve the trained reranker used before the current one (past the first: none)."""
    previous = state.assistant.rollback_reranker()
    click.echo(f"now reranking with {previous.name}" if previous else "no trained reranker in use now")
