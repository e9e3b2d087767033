"""`nightjar feedback ...` and `nightjar history`: rate and correct answers, manage the replay buffer."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from assistant.cli.base import State, cli, pass_state
from assistant.errors import NightjarError
from assistant.feedback import FeedbackStore, Interaction, ReplayBuffer
from assistant.feedback.formats import KINDS, SOURCE_FORMATS
from assistant.feedback.store import FLAG_REASONS

SCISSORS = "# ------------------------ >8 ------------------------"


def _store(state: State) -> FeedbackStore:
    return FeedbackStore(state.config.db_path)


def _target(store: FeedbackStore, ref: str | None, last: bool) -> Interaction:
    if ref and last:
        raise NightjarError("give an interaction ID or --last, not both")
    return store.get(store.resolve(ref))


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _acknowledge(action: str, i: Interaction) -> None:
    click.echo(f"{action} {i.id[:8]}: {_short(i.question, 70)}")


interaction_arg = click.argument("interaction", required=False, metavar="[ID]")
last_opt = click.option("--last", is_flag=True, help="The latest answer (the default when no ID is given).")


@cli.group()
def feedback() -> None:
    """Rate answers and turn your feedback into training data.

    Every answer is recorded with an ID (see `nightjar history`); commands take an ID (a unique prefix is
    enough) or `--last`. The nightly trainer learns from thumbs, corrections and chosen regenerations.

    \b
    Examples:
      nightjar feedback up --last
      nightjar feedback down 3f2a9c1d --comment "it ignored my notes"
      nightjar feedback correct --last --text "The meeting is on Tuesday."
      nightjar feedback export --format dpo --out prefs.jsonl
    """


def _rate(state: State, interaction: str | None, last: bool, comment: str | None, up: bool) -> None:
    with _store(state) as store:
        target = _target(store, interaction, last)
        store.rate(target.id, up, comment)
    _acknowledge("thumbs up for" if up else "thumbs down for", target)


@feedback.command()
@interaction_arg
@last_opt
@click.option("-c", "--comment", help="Why: kept with the rating.")
@pass_state
def up(state: State, interaction: str | None, last: bool, comment: str | None) -> None:
    """Thumbs up: this answer was good.

    \b
    Examples:
      nightjar feedback up
      nightjar feedback up 3f2a9c1d --comment "short and right"
    """
    _rate(state, interaction, last, comment, up=True)


@feedback.command()
@interaction_arg
@last_opt
@click.option("-c", "--comment", help="Why: kept with the rating.")
@pass_state
def down(state: State, interaction: str | None, last: bool, comment: str | None) -> None:
    """Thumbs down: this answer was bad.

    \b
    Examples:
      nightjar feedback down --last --comment "wrong date"
    """
    _rate(state, interaction, last, comment, up=False)


@feedback.command()
@interaction_arg
@last_opt
@click.option("--text", help="The corrected answer (without it, your $EDITOR opens on the original).")
@click.option("-c", "--comment", help="A note kept with the correction.")
@pass_state
def correct(state: State, interaction: str | None, last: bool, text: str | None, comment: str | None) -> None:
    """Write the answer the assistant should have given.

    Your answer becomes the preferred response to this prompt and the original the rejected one.

    \b
    Examples:
      nightjar feedback correct --last --text "Paris is the capital of France."
      nightjar feedback correct 3f2a9c1d          # edit the answer in $EDITOR
    """
    with _store(state) as store:
        target = _target(store, interaction, last)
        if text is None:
            template = (
                f"{target.response}\n\n{SCISSORS}\n# Write the answer you wanted above this line.\n"
                f"# Everything from the line above down is ignored. The question was:\n#\n"
                + "".join(f"#   {line}\n" for line in target.question.splitlines())
            )
            edited = click.edit(template, extension=".md")
            if edited is None:
                raise NightjarError("no correction saved: the editor was closed without saving")
            text = edited.split(SCISSORS, 1)[0]
        store.correct(target.id, text, comment)
    _acknowledge("correction saved for", target)


@feedback.command()
@interaction_arg
@last_opt
@pass_state
def regenerate(state: State, interaction: str | None, last: bool) -> None:
    """Answer the same question again, to compare.

    \b
    Examples:
      nightjar feedback regenerate --last
      nightjar feedback choose 7c0e91aa      # then keep the one you prefer
    """
    if interaction and last:
        raise NightjarError("give an interaction ID or --last, not both")

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    answer = state.assistant.regenerate(interaction, on_token=show)
    click.echo()
    ids = [i.id for i in state.assistant.feedback_store.alternatives(answer.interaction_id)]
    click.secho(
        f"recorded as {answer.interaction_id[:8]}; responses to this question: "
        f"{', '.join(i[:8] for i in ids)}. Keep the best with `nightjar feedback choose ID`.",
        fg="cyan",
        err=True,
    )


@feedback.command()
@click.argument("interaction", metavar="ID")
@pass_state
def choose(state: State, interaction: str) -> None:
    """Keep this response as the best answer to its question.

    It is preferred to the other responses to the same question (see `regenerate`).

    \b
    Examples:
      nightjar feedback choose 7c0e91aa
    """
    with _store(state) as store:
        target = store.get(store.resolve(interaction))
        store.choose(target.id)
        others = len(store.alternatives(target.id)) - 1
    _acknowledge(f"chosen over {others} other response(s):", target)


@feedback.command()
@interaction_arg
@last_opt
@click.option(
    "-s",
    "--source",
    "sources",
    multiple=True,
    required=True,
    help="The source's citation number (1 for [1]) or id; repeat for several.",
)
@click.option(
    "-r",
    "--reason",
    type=click.Choice(FLAG_REASONS),
    default="irrelevant",
    show_default=True,
    help="What was wrong with it.",
)
@click.option("-c", "--comment", help="A note kept with the flag.")
@pass_state
def flag(
    state: State,
    interaction: str | None,
    last: bool,
    sources: tuple[str, ...],
    reason: str,
    comment: str | None,
) -> None:
    """Flag a source of an answer as wrong or irrelevant.

    Flags tell retrieval which passages should not have been used.

    \b
    Examples:
      nightjar feedback flag --last --source 2
      nightjar feedback flag 3f2a9c1d --source 1 --reason wrong --comment "outdated policy"
    """
    with _store(state) as store:
        target = _target(store, interaction, last)
        for source in sources:
            store.flag(target.id, source, reason, comment)
    _acknowledge(f"flagged {len(sources)} source(s) as {reason} for", target)


@feedback.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@pass_state
def stats(state: State, as_json: bool) -> None:
    """Show how much feedback and training data there is."""
    with ReplayBuffer(state.config) as buf:
        figures = {**buf.store.stats(), "rows": buf.counts()}
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    fb = figures["feedback"]
    click.echo(f"database        {figures['database']} (schema v{figures['schema_version']})")
    click.echo(f"interactions    {figures['interactions']} in {figures['conversations']} conversation(s)")
    click.echo(
        f"feedback        {fb['up']} up, {fb['down']} down, {fb['correct']} correction(s), "
        f"{fb['choose']} choice(s), {fb['flag']} flagged source(s)"
    )
    imported = figures["imported"]
    click.echo("imported rows   " + ", ".join(f"{imported[k]} {k}" for k in KINDS))
    click.echo(f"training runs   {figures['training_runs']}")
    click.echo("training rows   kind  train  holdout")
    for kind in KINDS:
        split = figures["rows"][kind]
        click.echo(f"                {kind:<5} {split['train']:>5}  {split['holdout']:>7}")


@feedback.command("export")
@click.option(
    "-f",
    "--format",
    "kind",
    type=click.Choice(KINDS),
    required=True,
    help="dpo: preference pairs; kto: single rated answers; sft: good answers to imitate.",
)
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSONL file."
)
@click.option("--split", type=click.Choice(["train", "holdout"]), help="Only this split (default: both).")
@pass_state
def export_rows(state: State, kind: str, out: Path, split: str | None) -> None:
    """Write training rows as JSONL in TRL's conversational format.

    Each line has an "id" and the TRL columns: dpo {prompt, chosen, rejected}, kto {prompt, completion,
    label}, sft {prompt, completion}; prompts are the exact messages the model saw.

    \b
    Examples:
      nightjar feedback export --format dpo --out prefs.jsonl
      nightjar feedback export --format kto --split holdout --out eval.jsonl
    """
    with ReplayBuffer(state.config) as buf:
        count = buf.export(kind, out, split)
    click.echo(f"wrote {count} {kind} row(s) to {out}")


@feedback.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--from",
    "source_format",
    type=click.Choice(SOURCE_FORMATS),
    default="trl",
    show_default=True,
    help="trl: JSONL rows in any TRL preference, unpaired or prompt-completion shape; hh-rlhf: "
    "Anthropic HH-RLHF records ({chosen, rejected} Human/Assistant transcripts) made into DPO pairs; "
    "open-webui: Open WebUI's feedback export (Admin Panel -> Evaluations -> Feedbacks -> Export, "
    "feedback-history-export-*.json); llm-logs: llm's logs.db (`llm logs path`) rated with the "
    "llm-logs-feedback plugin. A client's thumbs become DPO pairs where answers to the same prompt were "
    "rated up and down, else KTO rows.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Import at most this many rows.")
@pass_state
def import_rows(state: State, file: Path, source_format: str, limit: int | None) -> None:
    """Add training data from a JSONL file or a chat client's feedback.

    Lines (or a client's records) that cannot be used are reported with why and skipped; rows already
    present are not added twice, so importing a newer export of the same client adds only what is new.

    \b
    Examples:
      nightjar feedback import prefs.jsonl
      nightjar feedback import --from hh-rlhf --limit 500 hh-rlhf/harmless-base/test.jsonl
      nightjar feedback import --from open-webui feedback-history-export-1718000000.json
      nightjar feedback import --from llm-logs "$(llm logs path)"
    """
    with ReplayBuffer(state.config) as buf:
        report = buf.import_file(file, source_format, limit)
    unit = report.unit
    if report.added + report.duplicates == 0 and report.bad:
        number, why = report.bad[0]
        if unit == "line":
            raise NightjarError(
                f"no usable rows in {file} ({len(report.bad)} bad line(s); line {number}: {why})"
            )
        raise NightjarError(
            f"no usable feedback in {file} ({len(report.bad)} {unit}(s) left out; {unit} {number}: {why})"
        )
    for number, why in report.bad[:20]:
        click.secho(f"skipped {unit} {number}: {why}", fg="yellow", err=True)
    if len(report.bad) > 20:
        more = "bad line(s)" if unit == "line" else f"{unit}(s) left out"
        click.secho(f"... and {len(report.bad) - 20} more {more}", fg="yellow", err=True)
    if unit == "line":
        click.echo(
            f"imported {report.added} row(s) from {file}; {report.duplicates} already present, "
            f"{len(report.bad)} bad line(s) skipped"
        )
        return
    counts = sorted(report.reasons.items(), key=lambda r: -r[1])
    why = ": " + ", ".join(f"{n} {reason}" for reason, n in counts) if counts else ""
    click.echo(
        f"imported {report.added} row(s) from {file}; {report.duplicates} already present, "
        f"{len(report.bad)} {unit}(s) left out{why}"
    )


def _parse_date(value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise NightjarError(f"--before '{value}' is not a date like 2026-01-31 or 2026-01-31T18:00") from None


@feedback.command()
@click.option("--before", required=True, metavar="DATE", help="Delete what was recorded before this date.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def purge(state: State, before: str, yes: bool) -> None:
    """Delete everything recorded before a date, for good.

    Interactions, their feedback and imported rows from before DATE are deleted.

    The deleted records are overwritten in the database file, not just unlinked.

    \b
    Examples:
      nightjar feedback purge --before 2026-01-01
    """
    cutoff = _parse_date(before)
    if cutoff > time.time() + 86400:
        raise NightjarError(f"{before} is in the future: that would delete everything")
    if not yes:
        click.confirm(f"Delete everything recorded before {before}? This cannot be undone", abort=True)
    with _store(state) as store:
        counts, scrubbed = store.purge(cutoff)
    click.echo("deleted " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    if not scrubbed:
        click.secho(
            "note: another Nightjar process has the database open; the deleted records leave its "
            "write-ahead log when that process closes it",
            fg="yellow",
            err=True,
        )


@cli.command()
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many.")
@click.option("--json", "as_json", is_flag=True, help="Print the full interactions as JSON lines.")
@pass_state
def history(state: State, limit: int, as_json: bool) -> None:
    """Recent answers, newest first, with the feedback given on them.

    \b
    Examples:
      nightjar history -n 5
      nightjar feedback up 3f2a9c1d       # rate one of them by its ID
    """
    with _store(state) as store:
        recent = store.recent(limit)
    if as_json:
        for i in recent:
            click.echo(json.dumps(i.to_dict(), ensure_ascii=False))
        return
    if not recent:
        click.echo("nothing recorded yet: ask something first")
    for i in recent:
        rating = {"up": click.style("up  ", fg="green"), "down": click.style("down", fg="red")}.get(
            i.rating or "", "    "
        )
        click.echo(
            f"{click.style(i.id[:8], fg='cyan')}  {_when(i.created_at)}  {rating}  {_short(i.question, 70)}"
        )
        click.echo(f"          {_short(i.response)}")
        for e in i.feedback:
            if e.kind == "correct":
                click.echo(f"          corrected: {_short(e.text or '', 78)}")
            elif e.kind == "choose":
                click.echo("          chosen over its other responses")
            elif e.kind == "flag":
                click.echo(f"          flagged source {e.target} as {e.text}")
            if e.comment:
                click.echo(f"          comment: {_short(e.comment, 80)}")
