"""`nightjar index`, `search`, `sources`, `forget`: the documents Nightjar answers from."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from assistant.cli.base import State, cli, pass_state
from assistant.grounding import user_errors


class _Bar:
    """The indexing progress bar (rich, on stderr): files, chunks, chunks/s and time left."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("indexing"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            TextColumn("{task.fields[chunks]} chunks"),
            TextColumn("{task.fields[rate]} chunks/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=True,
        )
        self.done = self.chunks = 0
        self.total = 0
        self.started = time.perf_counter()

    def start(self, files: int, size: int) -> None:
        self.total = files
        self.started = time.perf_counter()
        self.task = self.progress.add_task("", total=max(size, 1), files=f"0/{files}", chunks=0, rate="-")
        self.progress.start()

    def advance(self, files: int, size: int, chunks: int) -> None:
        self.done += files
        self.chunks += chunks
        rate = self.chunks / max(time.perf_counter() - self.started, 1e-6)
        self.progress.update(
            self.task, advance=size, files=f"{self.done}/{self.total}", chunks=self.chunks, rate=f"{rate:.1f}"
        )

    def stop(self) -> None:
        self.progress.stop()


@cli.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_state
def index_command(state: State, paths: tuple[Path, ...]) -> None:
    """Index files and folders, so that `ask` and `search` answer from them.

    Folders are read recursively. Hidden files and folders, .git, and the patterns in .gitignore and
    .nightjarignore files are left out. Formats: plain text, Markdown, reStructuredText, HTML, PDF, DOCX
    and source code.

    Running it again is cheap: only new and changed files are embedded, renamed files keep their
    embeddings, and files deleted from the given folders leave the index. Stopping it at any moment
    (even kill -9) leaves the previous index whole; the next run picks up where it stopped.

    \b
    Exit codes:
      0  every file was indexed (or was already)
      1  some files were skipped; each is listed with the reason (corrupt, binary, empty, too large, not
         UTF-8, unreadable, symlink loop, path not found); the rest were indexed
      2  nothing could be done (for example another `nightjar index` is running)

    \b
    Examples:
      nightjar index ~/notes
      nightjar index ~/papers/attention.pdf ~/projects/nightjar/docs
    """
    bar = _Bar() if sys.stderr.isatty() else None
    report = state.assistant.index(list(paths), progress=bar)
    for notice in report.notices:
        click.secho(f"note: {notice}", fg="yellow", err=True)
    click.echo(report.summary())
    for skipped in report.skipped:
        click.echo(f"  skipped {skipped.path}: {skipped.reason}")
    if report.failed:
        sys.exit(1)


def _explain(hit, config) -> list[str]:
    def stage(name: str, digits: int) -> str:
        rank, score = hit.ranks.get(name), hit.scores.get(name)
        if score is None:
            return f"{name} -"
        if name == "bm25" and not score:
            return "bm25 no match"
        return f"{name} #{rank if rank else '-'} {score:.{digits}f}"

    parts = [stage("bm25", 3), stage("dense", 3), stage("fused", 4)]
    parts.append(stage("rerank", 3) if hit.scores.get("rerank") is not None else "rerank -")
    verdict = (
        "relevant: ask may use it"
        if hit.relevant
        else f"below min_relevance {config.min_relevance} and min_keyword_coverage "
        f"{config.min_keyword_coverage}: ask leaves it out"
    )
    return [" · ".join(parts), f"keyword coverage {hit.coverage:.3f} ({verdict})"]


@cli.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "--limit", type=click.IntRange(1), default=5, show_default=True, help="How many chunks.")
@click.option("--explain", is_flag=True, help="Show each stage's rank and score: BM25, dense, fused, rerank.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (for scripts).")
@pass_state
def search_command(state: State, query: tuple[str, ...], limit: int, explain: bool, as_json: bool) -> None:
    """Search your indexed documents: ranked chunks with their citation, a snippet and the score.

    \b
    Exit codes: 0 results found; 1 nothing found (or nothing indexed); 2 error.

    \b
    Examples:
      nightjar search "how do I install on linux"
      nightjar search --explain ERR_0x7F3A
      nightjar search --json -k 20 "quarterly budget" | jq '.[].source'
    """
    config = state.config.retrieval
    documents = state.assistant.documents
    if not documents.available():
        click.echo("no documents are indexed yet: add some with `nightjar index PATH`", err=True)
        sys.exit(1)
    hits = state.assistant.search(" ".join(query), k=limit)
    with user_errors():
        reranker = documents.index.reranker
    if as_json:
        rows = [
            {**h.source(n), "coverage": round(h.coverage, 6), "relevant": h.relevant, "ranks": h.ranks}
            for n, h in enumerate(hits, 1)
        ]
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        if explain:
            from retrieval.search import describe_fusion

            how = (
                f"reranking: the top {config.rerank_candidates} by the cross-encoder {reranker.name}"
                if reranker is not None
                else "reranking: skipped, no reranker (`nightjar reranker train` trains one on your "
                "documents, or set retrieval.reranker to a CrossEncoder)"
            )
            click.secho(f"fusion: {describe_fusion(config)}; {how}", dim=True)
        for n, hit in enumerate(hits, 1):
            click.secho(f"{n}. {hit.chunk.source}  {hit.chunk.location}", bold=True, nl=False)
            click.echo(f"   score {hit.score:.4f}")
            snippet = " ".join(hit.chunk.text.split())
            click.echo(f"   {snippet[:240]}{' ...' if len(snippet) > 240 else ''}")
            if explain:
                for line in _explain(hit, config):
                    click.secho(f"   {line}", dim=True)
    if not hits:
        click.echo("nothing found", err=True)
        sys.exit(1)


@cli.command("sources")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@pass_state
def sources_command(state: State, as_json: bool) -> None:
    """List the indexed documents: chunks and when each was last indexed."""
    docs = state.assistant.sources()
    if as_json:
        rows = [
            {
                "source": d.path,
                "chunks": d.chunks,
                "format": d.format,
                "indexed_at": datetime.fromtimestamp(d.indexed_at).isoformat(timespec="seconds"),
            }
            for d in docs
        ]
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not docs:
        click.echo("no documents are indexed yet: add some with `nightjar index PATH`")
        return
    for d in docs:
        when = datetime.fromtimestamp(d.indexed_at).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{d.chunks:6d} chunks  {when}  {d.path}")
    click.echo(f"{len(docs)} documents, {sum(d.chunks for d in docs)} chunks")


@cli.command("forget")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_state
def forget_command(state: State, paths: tuple[Path, ...]) -> None:
    """Remove documents from the index (a file, or everything indexed under a folder).

    The files themselves are not touched.

    \b
    Examples:
      nightjar forget ~/notes/old-diary.md
      nightjar forget ~/notes/archive
    """
    removed = state.assistant.forget(list(paths))
    for path in removed:
        click.echo(f"forgot {path}")
