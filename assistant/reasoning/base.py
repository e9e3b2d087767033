"""What every reasoning strategy takes and returns, and the bookkeeping of its model calls."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from assistant.config import ReasoningConfig
from assistant.engine import Completion, Engine, GenParams, Message
from assistant.sources import Source


class Documents(Protocol):
    """Read-only access to the user's indexed documents (retrieval's `DocumentAccess` is one)."""

    def search(self, query: str, k: int = 5) -> list[Source]: ...

    def read_source(self, source: str, location: str | None = None) -> list[Source]: ...

    def list_sources(self) -> list[dict[str, Any]]: ...


@dataclass
class Task:
    """A question to answer: the conversation so far (system message first, question last) and its sources.

    `documents`, when given, lets a strategy search the user's documents itself (the `react` agent does).
    """

    engine: Engine
    messages: list[Message]
    params: GenParams
    sources: list[Source] = field(default_factory=list)
    on_token: Callable[[str], None] | None = None
    cancel: threading.Event | None = None
    documents: Documents | None = None
    options: ReasoningConfig = field(default_factory=ReasoningConfig)

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


@dataclass
class Outcome:
    """A strategy's answer, with the exact prompt of its final generation and the trace of its steps."""

    text: str
    prompt: str
    messages: list[Message]
    trace: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0  # summed over every generation the strategy made
    completion_tokens: int = 0
    finish_reason: str = "stop"
    reasoning: str = ""  # the reasoning kept apart from the answer (shown on request)
    strategy: str = ""  # the strategy that ran (what `auto` picked)
    confidence: float | None = None  # self-consistency: the winning answer's share of the votes
    sources: list[Source] | None = None  # sources the strategy found and cited itself (react)


class Steps:
    """One strategy run's model calls: generates, keeps the trace and token totals, watches the budget."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.trace: list[dict[str, Any]] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def budget_left(self) -> int:
        return self.task.options.token_budget - self.tokens

    def generate(
        self,
        prompt: str,
        params: GenParams,
        stream: Callable[[str], None] | None = None,
        **constraints: Any,
    ) -> Completion:
        """One generation (streamed to `stream`, stopped early if the task is cancelled), counted."""
        generation = self.task.engine.generate(prompt, params, **constraints)
        for piece in generation:
            if stream is not None:
                stream(piece)
            if self.task.cancelled:
                generation.cancel()
        done = generation.result()
        self.prompt_tokens += done.prompt_tokens
        self.completion_tokens += done.completion_tokens
        return done

    def record(self, step: str, *done: Completion, **fields: Any) -> dict[str, Any]:
        """Add a trace entry (JSON-serialisable): its kind, fields, and the cost of its generations if any."""
        entry: dict[str, Any] = {"step": step, **fields}
        if done:
            entry.update(
                prompt_tokens=sum(d.prompt_tokens for d in done),
                completion_tokens=sum(d.completion_tokens for d in done),
                seconds=round(sum(d.seconds for d in done), 3),
            )
        self.trace.append(entry)
        return entry

    def outcome(self, text: str, prompt: str, messages: list[Message], **fields: Any) -> Outcome:
        fields.setdefault("finish_reason", "cancelled" if self.task.cancelled else "stop")
        return Outcome(
            text=text,
            prompt=prompt,
            messages=messages,
            trace=self.trace,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            **fields,
        )
