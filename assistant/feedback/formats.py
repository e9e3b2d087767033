"""Training rows in TRL's conversational formats: checking them, and converting what users import.

A row is a dict of message lists: dpo {"prompt", "chosen", "rejected"}, kto {"prompt", "completion",
"label"}, sft {"prompt", "completion"}. Import also takes TRL's other shapes (plain strings, a DPO pair
with an implicit prompt, an SFT "messages" conversation) and Anthropic HH-RLHF transcripts; the feedback
of chat clients (Open WebUI, llm) is read by `clients`.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = ("dpo", "kto", "sft")
ROLES = ("system", "user", "assistant", "tool")
CLIENT_FORMATS = ("open-webui", "llm-logs")  # chat clients' feedback, read by `clients`
SOURCE_FORMATS = ("trl", "hh-rlhf", *CLIENT_FORMATS)

Messages = list[dict[str, str]]


class RowError(ValueError):
    """A row that cannot be used (the message says why)."""


def _messages(value: Any, name: str, default_role: str) -> Messages:
    if isinstance(value, str):
        value = [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError(f"'{name}' must be text or a non-empty list of messages")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise RowError(f"'{name}' has a message without a known role and text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(value: Any) -> Messages:
    prompt = _messages(value, "prompt", "user")
    if prompt[-1]["role"] not in ("user", "tool"):
        raise RowError("'prompt' must end with the user's turn")
    return prompt


def _reply(value: Any, name: str) -> Messages:
    reply = _messages(value, name, "assistant")
    if any(m["role"] != "assistant" for m in reply) or not "".join(m["content"] for m in reply).strip():
        raise RowError(f"'{name}' must be a non-empty assistant reply")
    return reply


def kind_of(raw: dict[str, Any]) -> str:
    if "chosen" in raw and "rejected" in raw:
        return "dpo"
    if "label" in raw:
        return "kto"
    if "completion" in raw or "messages" in raw:
        return "sft"
    raise RowError(f"not a dpo, kto or sft row (keys: {', '.join(sorted(raw)) or 'none'})")


def normalize_row(raw: dict[str, Any], kind: str | None = None) -> tuple[str, dict[str, Any]]:
    """(kind, row) in TRL's conversational format, from any shape TRL accepts; RowError if unusable."""
    if not isinstance(raw, dict):
        raise RowError("a row must be a JSON object")
    found = kind_of(raw)
    if kind is not None and found != kind:
        raise RowError(f"expected a {kind} row, found a {found} row")
    if found == "dpo":
        if "prompt" in raw:
            row = {
                "prompt": _prompt(raw["prompt"]),
                "chosen": _reply(raw["chosen"], "chosen"),
                "rejected": _reply(raw["rejected"], "rejected"),
            }
        else:  # implicit prompt: the conversations share everything up to the replies
            chosen = _messages(raw["chosen"], "chosen", "assistant")
            rejected = _messages(raw["rejected"], "rejected", "assistant")
            n = 0
            while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                n += 1
            row = {
                "prompt": _prompt(chosen[:n]),
                "chosen": _reply(chosen[n:], "chosen"),
                "rejected": _reply(rejected[n:], "rejected"),
            }
        if row["chosen"] == row["rejected"]:
            raise RowError("'chosen' and 'rejected' are the same")
        return found, row
    if found == "kto":
        if not isinstance(raw["label"], bool):
            raise RowError("'label' must be true or false")
        return found, {
            "prompt": _prompt(raw.get("prompt")),
            "completion": _reply(raw.get("completion"), "completion"),
            "label": raw["label"],
        }
    if "messages" in raw and "completion" not in raw:
        messages = _messages(raw["messages"], "messages", "user")
        return found, {"prompt": _prompt(messages[:-1]), "completion": _reply(messages[-1:], "messages")}
    return found, {
        "prompt": _prompt(raw.get("prompt")),
        "completion": _reply(raw["completion"], "completion"),
    }


# ---- Anthropic HH-RLHF ----
_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def _transcript(text: Any, name: str) -> Messages:
    if not isinstance(text, str):
        raise RowError(f"'{name}' must be a Human/Assistant transcript")
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RowError(f"'{name}' does not start with a Human or Assistant turn")
    messages = [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    roles = [m["role"] for m in messages]
    if roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:], strict=False)):
        raise RowError(f"'{name}' does not alternate Human and Assistant turns")
    return messages


def from_hh_rlhf(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An HH-RLHF record ({"chosen", "rejected"} transcripts) as a DPO row: the shared conversation is the
    prompt, the two last Assistant turns the replies."""
    if not isinstance(raw, dict):
        raise RowError("a row must be a JSON object")
    chosen, rejected = _transcript(raw.get("chosen"), "chosen"), _transcript(raw.get("rejected"), "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RowError("'chosen' and 'rejected' differ before their last turn")
    return normalize_row({"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}, "dpo")
