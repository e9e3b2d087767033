"""`nightjar serve`: an OpenAI-compatible HTTP server, for chat apps such as Open WebUI and for scripts."""

from __future__ import annotations

from pathlib import Path

import click

from assistant.cli.base import State, cli, pass_state
from assistant.config import STRATEGIES


@cli.command()
@click.option("--host", help="Listen on this address (default: server.host, 127.0.0.1: this machine only).")
@click.option(
    "-p", "--port", type=click.IntRange(0, 65535), help="Listen on this port (default: server.port)."
)
@click.option(
    "--token",
    help="Require `Authorization: Bearer TOKEN` on every request (needed off 127.0.0.1). "
    "Env: NIGHTJAR_SERVER_TOKEN.",
)
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), help="Serve this GGUF file.")
@click.option(
    "-s",
    "--strategy",
    type=click.Choice(STRATEGIES),
    help="The `nightjar` model's strategy (default: config).",
)
@click.option("--no-retrieval", is_flag=True, help="Answer from the model alone, not your documents.")
@pass_state
def serve(
    state: State,
    host: str | None,
    port: int | None,
    token: str | None,
    model: Path | None,
    strategy: str | None,
    no_retrieval: bool,
) -> None:
    """Serve the assistant over HTTP, as an OpenAI-compatible API at http://HOST:PORT/v1.

    Answers are the same as `nightjar ask` gives (your documents, citations, the strategy) and are
    recorded; POST /v1/feedback rates them. Requests take turns on the one model, in order.
    Listening on another address than 127.0.0.1 needs a token.

    \b
    Examples:
      nightjar serve                                 # http://127.0.0.1:8411/v1
      nightjar serve --port 9000 --strategy cot
      NIGHTJAR_SERVER_TOKEN=s3cret nightjar serve --host 0.0.0.0
      curl http://127.0.0.1:8411/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "nightjar", "messages": [{"role": "user", "content": "What do my notes say?"}]}'
    """
    state.overrides.update(
        {
            "server.host": host,
            "server.port": port,
            "server.token": token,
            "model.path": str(model) if model else None,
            "ask.strategy": strategy,
        }
    )
    if no_retrieval:
        state.overrides["ask.retrieval"] = False
    from assistant.server.app import check_bind, serve

    settings = state.config.server
    check_bind(settings.host, settings.token)  # before loading anything
    serve(
        state.assistant,
        settings,
        announce=lambda line: click.echo(line),
        log_level="info" if state.debug else "warning",
    )
