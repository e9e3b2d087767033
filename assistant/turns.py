"""`Turn`: one question and the answer shown for it, as every face holds a conversation.

Made from an answer just generated (`Answer`) or restored from the feedback store (an `Interaction`, with
its correction shown if it has one); `history` turns a conversation back into the messages the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from assistant.engine import Message
from assistant.sources import Source


@dataclass
class Turn:
    question: str
    text: str = ""
    interaction_id: str | None = None
    strategy: str = ""
    model_version: str = ""
    sources: list[Source] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str = ""
    notices: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    rating: str | None = None  # "up", "down" or None
    corrected: bool = False

    @classmethod
    def from_answer(cls, answer: Any) -> Turn:
        return cls(
            question=answer.question,
            text=answer.text,
            interaction_id=answer.interaction_id,
            strategy=answer.strategy,
            model_version=answer.model_version,
            sources=list(answer.sources),
            trace=list(answer.trace),
            reasoning=answer.reasoning,
            notices=list(answer.notices),
            finish_reason=answer.finish_reason,
        )

    @classmethod
    def from_interaction(cls, interaction: Any) -> Turn:
        """A stored interaction (assistant.feedback's `Interaction`), showing its correction if it has one."""
        data = interaction.data
        correction = interaction.correction
        return cls(
            question=interaction.question,
            text=correction if correction is not None else interaction.response,
            interaction_id=interaction.id,
            strategy=interaction.strategy,
            model_version=interaction.model_version,
            sources=[Source.from_dict({"n": k, **s}) for k, s in enumerate(interaction.sources, 1)],
            trace=list(data.get("trace") or []),
            reasoning=data.get("reasoning") or "",
            notices=list(data.get("notices") or []),
            finish_reason=data.get("finish_reason") or "stop",
            rating=interaction.rating,
            corrected=correction is not None,
        )

    @property
    def cancelled(self) -> bool:
        return self.finish_reason == "cancelled"


def history(turns: list[Turn]) -> list[Message]:
    """The conversation as the model sees it: each recorded question and the answer shown for it."""
    messages: list[Message] = []
    for turn in turns:
        if turn.interaction_id and turn.text:
            messages += [
                {"role": "user", "content": turn.question},
                {"role": "assistant", "content": turn.text},
            ]
    return messages
