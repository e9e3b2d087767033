"""`nightjar train` and `nightjar schedule`: turn today's feedback into tomorrow's model, every night."""

from __future__ import annotations

import click

from assistant.cli.base import State, cli, pass_state


@cli.command()
@click.option(
    "-o",
    "--objective",
    metavar="OBJECTIVE",
    help="auto, sft, dpo, kto, raft, or a sequence such as raft+dpo (default: train.objective; auto: SFT, "
    "DPO and KTO, each where there are new rows).",
)
@click.option("--dry-run", is_flag=True, help="Say what a run would train on, and stop.")
@click.option("--report", "show_report", is_flag=True, help="Print the last run's report, and stop.")
@click.option(
    "--scheduled", is_flag=True, help="As the nightly schedule runs it: wait or skip if the machine is busy."
)
@pass_state
def train(state: State, objective: str | None, dry_run: bool, show_report: bool, scheduled: bool) -> None:
    """Train the model on your feedback and publish it if it got better.

    Reads the feedback not trained on yet (plus a replay of older feedback), trains a LoRA on the float
    master of the served model, merges and requantizes it to GGUF, and evaluates it against the served
    version on held-out feedback. It is published as a new version (`nightjar models`) only when it is better
    there and no worse on a reference text and a few general questions; otherwise the reasons are recorded.
    A run's report (report.md, report.json, plots) goes to the logs folder and into the version.

    \b
    Examples:
      nightjar train                  # a run now
      nightjar train --dry-run        # what it would train on
      nightjar train -o kto           # learn from thumbs only
      nightjar train --report         # the last run's report
      nightjar schedule --at 03:00    # every night at 3
    """
    from rich.console import Console

    from assistant import runs as run_log
    from trainer.run import train as run_training

    config = state.config
    if show_report:
        runs = run_log.all_runs(config)
        if not runs:
            click.echo("no training run yet")
            return
        # runs that trained have a report; later ones that did not (nothing to do, busy, killed) are listed
        for run in reversed(runs):
            path = run_log.report_dir(config, run["run"]) / run_log.REPORT_MD
            if path.is_file():
                click.echo(path.read_text(encoding="utf-8").rstrip())
                click.echo(f"\n(report folder: {path.parent})")
                break
            click.echo(f"run {run['run']}: {run['outcome']}; {'; '.join(run.get('reasons', []))}")
        return
    result = run_training(
        config, objective=objective, dry_run=dry_run, scheduled=scheduled, console=Console(stderr=True)
    )
    plan = result.plan
    if result.outcome == "dry run":
        click.echo(f"would train {'+'.join(plan['objectives'])} from {plan['parent']} on {plan['base']}")
        for kind, n in plan["rows"].items():
            this_run = f" ({n['new']} this run)" if n["new"] != n["fresh"] else ""
            click.echo(
                f"  {kind}: {n['fresh']} new{this_run}, {n['replay']} replayed, {n['holdout']} held out"
            )
        for line in plan.get("left_out", []) + plan.get("notes", []):
            click.echo(f"  {line}")
        for kind, fitting in plan.get("fitting", {}).items():
            click.echo(f"  {kind} at train.max_length: {fitting}")
        click.echo(f"  then quantize to {plan['quant_type']}")
        return
    if result.outcome == "published":
        click.echo(f"published {result.version}: it answers from now on (`nightjar models` lists versions)")
        for line in model_server_hint(config, result.version):
            click.echo(line)
    elif result.outcome == "rejected":
        click.echo("the new model was not better, so the served model stays:")
    else:
        click.echo(f"{result.outcome}:")
    for reason in result.reasons:
        click.echo(f"  {reason}")
    if result.report_dir:
        click.echo(f"report: {result.report_dir / 'report.md'}")
    if scheduled and result.outcome != "skipped":  # a busy machine skips the reranker too
        nightly_reranker(state)


def nightly_reranker(state: State) -> None:
    """The scheduled run also trains the reranker, when the documents or the approved answers changed."""
    why = state.assistant.reranker_due()
    if why is None:
        return
    click.echo(f"reranker: training ({why})")
    click.echo(f"  {state.assistant.train_reranker().verdict}")


def model_server_hint(config, version: str) -> list[str]:
    """With `[model] backend = "openai"`, how to make the model server load a newly published version (a
    server loads its GGUF at start; Nightjar renders prompts with the new one from now on)."""
    if config.model.backend != "openai":
        return []
    from assistant import registry

    gguf = registry.get(config, version).gguf
    return [
        f"  the model server at {config.model.url} still serves the previous model: restart it on {gguf}",
        f"  e.g. `llama-server -m {gguf} --port 8080`; Ollama: `FROM {gguf}` in the Modelfile (README, "
        "Remote model), then `ollama create NAME -f Modelfile`",
    ]


@cli.command()
@click.option("--at", "at", metavar="HH:MM", help="Install (or move) the nightly run at this time of day.")
@click.option("--status", "show_status", is_flag=True, help="Show the schedule and the last run's outcome.")
@click.option("--remove", is_flag=True, help="Remove the nightly run.")
@pass_state
def schedule(state: State, at: str | None, show_status: bool, remove: bool) -> None:
    """Run `nightjar train` every night.

    Uses a per-user systemd timer where systemd user sessions exist, otherwise a crontab entry. A run finding
    the machine busy (train.max_load) waits or skips (train.busy); the outcome of every run is logged in the
    logs folder of your Nightjar home.

    \b
    Examples:
      nightjar schedule --at 03:00    # every night at 3
      nightjar schedule --status      # next and last runs
      nightjar schedule --remove
    """
    from assistant import schedule as sched

    config = state.config
    if sum([at is not None, show_status, remove]) != 1:
        raise click.UsageError("give one of --at HH:MM, --status or --remove")
    if remove:
        removed = sched.remove(config)
        click.echo("nightly training removed" if removed else "no nightly training was scheduled")
        return
    status = sched.install(config, at) if at is not None else sched.status(config)
    lines = sched.describe(status)
    if not show_status and status.last_run is None:
        lines = lines[:-1]  # just installed: no need to say that nothing ran yet
    for line in lines:
        click.echo(line)
