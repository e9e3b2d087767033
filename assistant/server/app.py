"""The routes of `nightjar serve`: OpenAI's chat completions and models, and Nightjar's feedback.

Every answer comes from `Assistant.answer`, exactly as `nightjar ask` gets it (retrieval, strategy,
citations, recording); the server only translates HTTP to it and back. Requests that need the model queue
in one FIFO (`ModelQueue`); a client that goes away cancels its generation and the next request proceeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from assistant.errors import NightjarError
from assistant.feedback.store import new_id
from assistant.server.queue import Job, ModelQueue, Relay
from assistant.server.schema import (
    MODEL,
    ChatRequest,
    RequestError,
    error_body,
    parse_chat,
    parse_feedback,
    parse_json,
    sources_footer,
)
from assistant.sources import Source

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from assistant.config import ServerConfig
    from assistant.service import Answer, Assistant

log = logging.getLogger("nightjar.server")
KEEPALIVE_S = 1.0  # a waiting stream sends an SSE comment this often (and so notices a client that left)
COALESCE_S = 0.02  # pieces of a stream that come within this time of the last chunk go out as one chunk
_FINISH = {"stop": "stop", "length": "length", "budget": "length", "cancelled": "stop"}
_DONE = object()


# ---- binding ----
def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str) -> None:
    """Off this machine's loopback, every request must carry the token: refuse to listen without one."""
    if not token and not is_loopback(host):
        raise NightjarError(
            f"refusing to listen on {host} without a token: anyone on the network could use your documents; "
            "give one with --token or NIGHTJAR_SERVER_TOKEN, or listen on 127.0.0.1"
        )


def listen(host: str, port: int) -> socket.socket:
    """A bound socket (port 0: any free port), or one clear line on why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise NightjarError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


# ---- responses ----
def _json(body: dict[str, Any], status: int = 200) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def public_sources(sources: list[Source]) -> list[dict[str, Any]]:
    keys = ("n", "id", "source", "location", "text", "score")
    return [{k: s.to_dict()[k] for k in keys} for s in sources]


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


SYSTEM_NOTICE = (
    "the client's system message was not used: Nightjar answers with its own (model.system_prompt)"
)


def _nightjar(answer: Answer, chat: ChatRequest) -> dict[str, Any]:
    """Nightjar's own fields, beside OpenAI's (clients that do not know them ignore them)."""
    return {
        "interaction_id": answer.interaction_id,
        "conversation_id": answer.conversation_id,
        "model_version": answer.model_version,
        "strategy": answer.strategy,
        "finish_reason": answer.finish_reason,
        "notices": answer.notices + ([SYSTEM_NOTICE] if chat.system else []),
    }


class StreamText:
    """What a stream sends is what the answer's text will be: leading whitespace dropped, trailing
    whitespace held back until more text follows (the recorded answer is stripped)."""

    def __init__(self) -> None:
        self.sent = ""
        self.held = ""

    def feed(self, piece: str) -> str:
        text = self.held + piece
        if not self.sent:
            text = text.lstrip()
        ready = text.rstrip()
        self.held = text[len(ready) :]
        self.sent += ready
        return ready

    def rest(self, final: str) -> str:
        """The part of the final text not sent yet."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""


class Server:
    """The app's state: the one assistant, its queue, and the names clients may ask for."""

    def __init__(self, assistant: Assistant) -> None:
        from assistant.reasoning import STRATEGY_FUNCTIONS

        self.assistant = assistant
        self.queue = ModelQueue()
        self.started = int(time.time())
        self.models = {MODEL: None, **{f"{MODEL}-{name}": name for name in STRATEGY_FUNCTIONS}}

    # -- models --
    def strategy(self, model: str) -> str:
        if model not in self.models:
            raise RequestError(
                f"the model '{model}' does not exist; GET /v1/models lists them ({', '.join(self.models)})",
                status=404,
                param="model",
                code="model_not_found",
            )
        return self.models[model] or self.assistant.config.ask.strategy

    def card(self, model: str) -> dict[str, Any]:
        return {
            "id": model,
            "object": "model",
            "created": self.started,
            "owned_by": "nightjar",
            "strategy": self.strategy(model),
            "version": self.assistant.model_version,
        }

    # -- answering (in the queue's worker thread) --
    def job(
        self,
        chat: ChatRequest,
        strategy: str,
        cancel: threading.Event,
        on_token=None,
        interaction_id: str | None = None,
    ) -> Job:
        def run() -> Answer:
            assistant = self.assistant
            assistant.reload()  # a version the nightly trainer published is served from the next request on
            params = assistant.params(
                temperature=chat.temperature,
                top_p=chat.top_p,
                max_tokens=chat.max_tokens,
                seed=chat.seed,
                stop=chat.stop,
            )
            return assistant.answer(
                chat.question,
                history=chat.history,
                conversation_id=chat.conversation(),
                strategy=strategy,
                retrieval=chat.retrieval,
                params=params,
                on_token=on_token,
                cancel=cancel,
                interaction_id=interaction_id,
            )

        return self.queue.submit(run, cancel)

    def completion(self, answer: Answer, chat: ChatRequest) -> dict[str, Any]:
        return {
            "id": answer.interaction_id or f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "system_fingerprint": f"nightjar-{answer.model_version}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text + sources_footer(answer.sources)},
                    "logprobs": None,
                    "finish_reason": _FINISH.get(answer.finish_reason, "stop"),
                }
            ],
            "usage": _usage(answer),
            "sources": public_sources(answer.sources),
            "nightjar": _nightjar(answer, chat),
        }

    async def answer(self, request: Request, chat: ChatRequest, strategy: str) -> Response:
        """A whole completion; a client that disconnects while it waits cancels it."""
        cancel = threading.Event()
        future = asyncio.wrap_future(self.job(chat, strategy, cancel).future)
        try:
            while not future.done():
                await asyncio.wait({future}, timeout=0.5)
                if not future.done() and await request.is_disconnected():
                    cancel.set()
                    return _json(error_body("the client disconnected", code="cancelled"), 499)
            return _json(self.completion(future.result(), chat))
        finally:
            cancel.set()

    async def stream(self, chat: ChatRequest, strategy: str) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk shape, ending with `data: [DONE]`. When the client goes away
        the generator is closed, and the generation is cancelled."""
        relay = Relay(asyncio.get_running_loop(), KEEPALIVE_S)
        cancel = threading.Event()
        stream_id = new_id()  # the interaction's id, named before the answer exists: every chunk carries it
        job = self.job(chat, strategy, cancel, on_token=relay.put, interaction_id=stream_id)
        job.future.add_done_callback(lambda _: relay.put(_DONE, last=True))  # after the job's last piece
        created = int(time.time())
        version = self.assistant.model_version

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse(
                {
                    "id": stream_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": chat.model,
                    "system_fingerprint": f"nightjar-{version}",
                    "choices": [] if delta is None else [choice],
                    **extra,
                }
            )

        text = StreamText()
        try:
            yield chunk({"role": "assistant", "content": ""})
            done = False
            while not done:
                pieces = await relay.take()
                if not pieces:
                    yield ": waiting for the model\n\n"
                    continue
                done = pieces[-1] is _DONE
                ready = "".join(text.feed(piece) for piece in pieces if piece is not _DONE)
                if ready:
                    yield chunk({"content": ready})
                    await relay.hold(COALESCE_S)
            answer: Answer = job.future.result()
            version = answer.model_version
            rest = text.rest(answer.text) + sources_footer(answer.sources)
            if rest:
                yield chunk({"content": rest})
            yield chunk(
                {},
                _FINISH.get(answer.finish_reason, "stop"),
                sources=public_sources(answer.sources),
                nightjar=_nightjar(answer, chat),
            )
            if chat.include_usage:
                yield chunk(None, usage=_usage(answer))
        except RequestError as exc:
            yield _sse(exc.body())
        except NightjarError as exc:
            yield _sse(error_body(str(exc), code="nightjar_error"))
        except Exception as exc:
            log.exception("a streamed answer failed")
            yield _sse(error_body(f"internal error: {exc}", kind="server_error"))
        finally:
            cancel.set()  # a no-op after the end; when the client left, this stops its generation
        yield _sse("[DONE]")

    # -- feedback (not queued: it does not need the model) --
    def feedback(self, body: Any) -> dict[str, Any]:
        request = parse_feedback(body)
        assistant = self.assistant
        try:
            full_id = assistant.feedback_store.resolve(request.id)
        except NightjarError as exc:
            raise RequestError(str(exc), status=404, param="id", code="interaction_not_found") from None
        if request.correction is not None:  # first: a correction that is refused leaves no rating behind
            comment = None if request.rating is not None else request.comment
            assistant.correct(full_id, request.correction, comment)
        if request.rating is not None:
            assistant.feedback(full_id, request.rating == "up", request.comment)
        return {
            "object": "feedback",
            "id": full_id,
            "rating": request.rating,
            "corrected": request.correction is not None,
        }


# ---- the ASGI app ----
def _handled(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Errors as OpenAI-shaped JSON: the request failed, the server goes on."""

    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RequestError as exc:
            return _json(exc.body(), exc.status)
        except NightjarError as exc:
            return _json(error_body(str(exc), code="nightjar_error"), 400)
        except Exception as exc:
            log.exception("request %s %s failed", request.method, request.url.path)
            return _json(error_body(f"internal error: {exc}", kind="server_error"), 500)

    return wrapper


class TokenAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer TOKEN`."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"").strip()
            if not hmac.compare_digest(given, self.expected):
                message = "a valid token is required: send the header `Authorization: Bearer TOKEN`"
                response = _json(error_body(message, code="invalid_api_key"), 401)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    assistant: Assistant, token: str = "", on_start: Callable[[], None] | None = None
) -> Starlette:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    server = Server(assistant)
    assistant.feedback_store  # noqa: B018  (open the database once, before requests share it)

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": [server.card(name) for name in server.models]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        server.strategy(name)
        return _json(server.card(name))

    async def chat_completions(request: Request) -> Response:
        chat = parse_chat(parse_json(await request.body()))
        strategy = server.strategy(chat.model)
        if not chat.stream:
            return await server.answer(request, chat, strategy)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            server.stream(chat, strategy), media_type="text/event-stream", headers=headers
        )

    async def feedback(request: Request) -> Response:
        body = parse_json(await request.body())
        return _json(await run_in_threadpool(server.feedback, body))

    async def health(request: Request) -> Response:
        return _json(
            {"status": "ok", "model_version": assistant.model_version, "queued": server.queue.waiting()}
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += "; the API: GET /v1/models, POST /v1/chat/completions, POST /v1/feedback"
        return _json(error_body(message, code=str(exc.status_code)), exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.queue.start()
        if on_start is not None:
            on_start()
        try:
            yield
        finally:
            await run_in_threadpool(server.queue.close)

    routes = [
        Route("/v1/models", _handled(models), methods=["GET"]),
        Route("/v1/models/{model:path}", _handled(model), methods=["GET"]),
        Route("/v1/chat/completions", _handled(chat_completions), methods=["POST"]),
        Route("/v1/feedback", _handled(feedback), methods=["POST"]),
        Route("/health", _handled(health), methods=["GET"]),
    ]
    middleware = [Middleware(TokenAuth, token=token)] if token else []
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def serve(
    assistant: Assistant,
    settings: ServerConfig,
    *,
    announce: Callable[[str], None] = print,
    log_level: str = "warning",
) -> None:
    """Listen on `settings.host:port` until interrupted (Ctrl+C, SIGTERM)."""
    import uvicorn

    host, token = settings.host.strip(), settings.token
    check_bind(host, token)
    sock = listen(host, settings.port)
    port = sock.getsockname()[1]
    assistant.warm_up()  # load the model (and the embedder) now, not on the first request

    def started() -> None:
        guard = "a token is required" if token else "no token (this machine only)"
        announce(
            f"serving {assistant.model_version} ({assistant.config.ask.strategy}) at {url(host, port)}; "
            f"{guard}; Ctrl+C stops"
        )

    app = create_app(assistant, token=token, on_start=started)
    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on", ws="none", timeout_graceful_shutdown=3
    )
    uvicorn.Server(config).run(sockets=[sock])
