"""A small file in Anthropic HH-RLHF's exact shape (one JSON object a line, `chosen` and `rejected`
transcripts that share every turn but the last), written by the tests so that they need no downloaded data.

Rows cycle through one-, two- and three-question conversations; `broken` rows at the end are malformed the
ways real dumps are (a transcript that starts with the Assistant, pairs that differ before their last turn).
"""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = [
    (
        "what are some pranks with a pen i can do?",
        "Harmless ones, like drawing a tiny face on a sticky note.",
    ),
    ("How do I keep basil alive indoors?", "Give it a sunny window and water when the soil is dry."),
    ("What is a good name for a grey cat?", "Ash, Smoky or Pebble are popular choices."),
    ("How long should I boil an egg?", "About nine minutes for a firm yolk."),
    ("Can you help me plan a picnic?", "Pack sandwiches, fruit, water and a blanket."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red light."),
    ("How do I fix a squeaky door?", "A drop of oil on the hinges usually stops it."),
    ("What should I read next?", "Try a short story collection if you want something light."),
]
FOLLOW_UPS = [
    ("Anything else?", "You could also ask a friend for ideas."),
    ("Thanks. And if that does not work?", "Then try a different approach step by step."),
]
REJECTED = [
    "I don't want to talk about that.",
    "No idea, figure it out yourself.",
    "That is a stupid question.",
]


def _transcript(turns: list[tuple[str, str]]) -> str:
    return "".join(f"\n\nHuman: {human}\n\nAssistant: {assistant}" for human, assistant in turns)


def row(i: int) -> dict[str, str]:
    """Row `i`: a conversation of 1 + (i + 2) % 3 questions ending in a chosen and a rejected reply."""
    question, answer = TOPICS[i % len(TOPICS)]
    earlier = [(question, answer)]
    for n in range((i + 2) % 3):
        earlier.append(FOLLOW_UPS[n])
    shared, (last_question, good) = earlier[:-1], earlier[-1]
    bad = REJECTED[i % len(REJECTED)]
    return {
        "chosen": _transcript([*shared, (last_question, f"{good} (#{i})")]),
        "rejected": _transcript([*shared, (last_question, f"{bad} (#{i})")]),
    }


def broken_rows() -> list[dict[str, str]]:
    return [
        {"chosen": "\n\nAssistant: Hello.", "rejected": "\n\nAssistant: Go away."},
        {
            "chosen": _transcript([("Hi?", "Hello."), ("How are you?", "Fine.")]),
            "rejected": _transcript([("Hey?", "Hello."), ("How are you?", "Bad.")]),
        },
    ]


def write(path: Path, rows: int, broken: bool = False) -> Path:
    """Write `rows` good rows (then the broken ones, when asked) to `path` as JSONL."""
    records = [row(i) for i in range(rows)] + (broken_rows() if broken else [])
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
