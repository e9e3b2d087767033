"""What clients send, parsed into typed requests (or a `RequestError` that says what is wrong), and the
bits of wire format shared by requests and responses (OpenAI's error shape, the sources footer)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from assistant.engine import Message
from assistant.sources import Source

MODEL = "nightjar"  # the configured strategy; f"{MODEL}-{strategy}" names each strategy
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4
_FOOTER = re.compile(r"\s*Sources:\n(?:- \[\d+\] [^\n]*(?:\n|\Z))+\s*\Z")


class RequestError(Exception):
    """A request the server cannot serve: its HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.kind = message, status, param, code, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(
    message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---- the sources footer: how a chat client that shows only the text still sees what [1] is ----
def sources_footer(sources: list[Source]) -> str:
    """'\n\nSources:\n- [1] /path/file.md, lines 3-9' (empty without sources)."""
    lines = [f"- [{s.n}] {s.source}, {s.location}" for s in sources]
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""


def strip_sources_footer(text: str) -> str:
    """An earlier answer as the model gave it: the footer the server added is not part of the history."""
    return _FOOTER.sub("", text)


# ---- requests ----
@dataclass
class ChatRequest:
    """POST /v1/chat/completions, as far as Nightjar uses it."""

    model: str
    question: str  # the last message, from the user
    history: list[Message]  # the earlier user and assistant messages (client system messages left out)
    system: list[str] = field(default_factory=list)  # the client's system messages (not given to the model)
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    retrieval: bool | None = None  # Nightjar's own: None as configured
    conversation_id: str | None = None  # Nightjar's own; else derived from the chat's first message
    user: str | None = None

    def conversation(self) -> str:
        """The conversation the turn belongs to: given, or the same for every turn of one chat (a client
        sends the whole chat each time, so its first message and `user` name it)."""
        if self.conversation_id:
            return self.conversation_id
        first = next((m["content"] for m in self.history if m["role"] == "user"), self.question)
        key = json.dumps([self.user or "", first], ensure_ascii=False)
        return uuid.uuid5(uuid.NAMESPACE_URL, "nightjar-serve:" + key).hex


@dataclass
class FeedbackRequest:
    """POST /v1/feedback."""

    id: str
    rating: str | None = None  # "up" | "down"
    comment: str | None = None
    correction: str | None = None


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _optional(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise RequestError(f"'{name}' must be {what}, got {json.dumps(value)}", param=name)
    if not isinstance(value, kinds):
        raise RequestError(f"'{name}' must be {what}, got {json.dumps(value)[:60]}", param=name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = _optional(body, name, (int, float), "a number")
    if value is not None and not low <= value <= high:
        raise RequestError(f"'{name}' must be between {low:g} and {high:g}, got {value}", param=name)
    return None if value is None else float(value)


def _content(message: dict[str, Any], where: str) -> str:
    """A message's text: a string, or OpenAI's list of text parts."""
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise RequestError(f"{where}.content: only text parts are supported", param=where)
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError(f"{where}.content must be a string or a list of text parts", param=where)


def _seed(body: dict[str, Any]) -> int | None:
    seed = _optional(body, "seed", int, "a whole number")
    if seed is not None and not 0 <= seed < 2**32:
        raise RequestError(f"'seed' must be between 0 and {2**32 - 1}, got {seed}", param="seed")
    return seed


def parse_chat(body: Any) -> ChatRequest:
    body = _object(body)
    model = _optional(body, "model", str, "a model name (GET /v1/models lists them)") or MODEL
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of messages", param="messages")
    parsed: list[Message] = []
    for k, message in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(
                f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}", param=where
            )
        parsed.append({"role": role, "content": _content(message, where)})
    last = parsed[-1]
    if last["role"] != "user":
        raise RequestError("the last message must be the user's question", param="messages")
    if not last["content"].strip():
        raise RequestError("the last message (the question) is empty", param="messages")
    history = [
        {
            "role": m["role"],
            "content": strip_sources_footer(m["content"]) if m["role"] == "assistant" else m["content"],
        }
        for m in parsed[:-1]
        if m["role"] in ("user", "assistant")
    ]
    system = [m["content"] for m in parsed if m["role"] in ("system", "developer")]

    n = _optional(body, "n", int, "1")
    if n not in (None, 1):
        raise RequestError("'n' must be 1: one answer per request", param="n")
    max_tokens = _optional(body, "max_completion_tokens", int, "a whole number")
    if max_tokens is None:
        max_tokens = _optional(body, "max_tokens", int, "a whole number")
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(f"'max_tokens' must be at least 1, got {max_tokens}", param="max_tokens")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP
    ):
        raise RequestError(f"'stop' must be a string or a list of up to {MAX_STOP} strings", param="stop")
    options = _optional(body, "stream_options", dict, "an object") or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise RequestError("'stream_options.include_usage' must be true or false", param="stream_options")
    return ChatRequest(
        model=model,
        question=last["content"],
        history=history,
        system=system,
        stream=bool(_optional(body, "stream", bool, "true or false")),
        include_usage=include_usage,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        max_tokens=max_tokens,
        seed=_seed(body),
        stop=stop or None,
        retrieval=_optional(body, "retrieval", bool, "true or false"),
        conversation_id=_optional(body, "conversation_id", str, "text"),
        user=_optional(body, "user", str, "text"),
    )


def parse_feedback(body: Any) -> FeedbackRequest:
    body = _object(body)
    ref = _optional(body, "id", str, "an interaction id (a completion's id)")
    if not ref or not ref.strip():
        raise RequestError("'id' is required: the id of the completion you rate", param="id")
    rating = _optional(body, "rating", str, '"up" or "down"')
    if rating is not None and rating not in ("up", "down"):
        raise RequestError(
            f'\'rating\' must be "up" or "down", got {json.dumps(rating)[:40]}', param="rating"
        )
    correction = _optional(body, "correction", str, "text: the answer you wanted")
    if rating is None and correction is None:
        raise RequestError("give a 'rating' (\"up\" or \"down\"), a 'correction', or both", param="rating")
    comment = _optional(body, "comment", str, "text")
    return FeedbackRequest(ref.strip(), rating, comment or None, correction)
