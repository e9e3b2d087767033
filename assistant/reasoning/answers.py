"""Final answers in reasoning text: where they are, and when two of them say the same thing."""

from __future__ import annotations

import re
import string
from collections import Counter

ANSWER_MARKER = "Answer:"
NO_ANSWER = "I could not work out an answer."
_MARKER = re.compile(r"\b(?:final\s+)?answer\s*(?:is\s*)?[:=]|\bthe (?:final )?answer is\b", re.IGNORECASE)
_LEADING_MARKERS = re.compile(r"^(?:\s*(?:final\s+)?answer\s*(?:is\s*)?[:=])+", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def split_answer(text: str) -> tuple[str, str | None]:
    """(reasoning, answer) of a reasoning text: the answer follows its last "Answer:" marker, if any."""
    matches = list(_MARKER.finditer(text))
    if not matches:
        return text.strip(), None
    last = matches[-1]
    answer = clean_answer(text[last.end() :].strip().split("\n")[0])
    return text[: last.start()].strip(), answer or None


def clean_answer(answer: str) -> str:
    """An answer without the markers a small model repeats in front of it ("Answer: Answer: 7" -> "7")."""
    return _LEADING_MARKERS.sub("", answer).strip().lstrip(":=").strip()


def number_in(text: str) -> str | None:
    """The last number in `text`, in a canonical form ("$1,200.00" -> "1200"), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(round(value, 6))


def normalize(answer: str) -> str:
    """The key equivalent answers vote under: a number if the answer holds one, else its words."""
    number = number_in(answer)
    if number is not None:
        return number
    text = answer.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def vote(answers: list[str | None]) -> tuple[str | None, dict[str, int]]:
    """Majority vote over normalized answers: (the winning key, votes per key). Ties go to the earliest."""
    keys = [normalize(a) for a in answers if a]
    counts = Counter(k for k in keys if k)
    if not counts:
        return None, {}
    best = max(counts.values())
    winner = next(k for k in keys if counts.get(k) == best)
    return winner, dict(counts)
