"""Fitting a conversation into the model's context window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from assistant.engine import Engine, Message


@dataclass
class Fitted:
    messages: list[Message]
    dropped_turns: int = 0  # earlier messages left out, oldest first
    truncated: bool = False  # the newest message itself had to be cut

    @property
    def notice(self) -> str | None:
        parts = []
        if self.dropped_turns:
            parts.append(f"left out the {self.dropped_turns} oldest message(s) of the conversation")
        if self.truncated:
            parts.append("cut the start of your message")
        return ("to fit the model's context, " + " and ".join(parts)) if parts else None


def fit_messages(engine: Engine, messages: list[Message], reserve: int) -> Fitted:
    """Fit `messages` into `engine.n_ctx` less `reserve` tokens for the answer (see `fit`)."""
    return fit(messages, engine.n_ctx - reserve, lambda m: engine.count_tokens(engine.render(m)))


def fit(messages: list[Message], budget: int, count: Callable[[list[Message]], int]) -> Fitted:
    """Drop the oldest non-system messages until `count(messages)`, their rendered tokens, is within `budget`.

    System messages and the newest message are always kept; if the newest alone is still too long, its
    beginning is cut (the end of a message usually holds the question).
    """
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    dropped = 0
    while len(rest) > 1 and count(system + rest) > budget:
        rest.pop(0)
        dropped += 1
        # never start the kept history with an assistant reply
        while len(rest) > 1 and rest[0]["role"] == "assistant":
            rest.pop(0)
            dropped += 1
    fitted = Fitted(system + rest, dropped)
    if count(fitted.messages) > budget and rest:
        last = rest[-1]
        text = last["content"]

        def fits(cut: int) -> bool:
            return count(system + rest[:-1] + [{**last, "content": text[cut:]}]) <= budget

        # binary search for the smallest cut from the start that fits
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        fitted = Fitted(system + rest[:-1] + [{**last, "content": text[lo:]}], dropped, truncated=True)
    return fitted
