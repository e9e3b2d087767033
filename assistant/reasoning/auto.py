"""`auto`: picks a strategy from the question itself, and says which it picked and why."""

from __future__ import annotations

import re

from assistant.reasoning.base import Task

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_ARITHMETIC = re.compile(
    r"\b(how (many|much|old|long|far)|total|sum|difference|average|percent|times|twice|half|altogether|"
    r"in all|left|remain\w*|each|per|cost|profit|calculate|compute)\b|[+*/×÷=%]|\d\s*-\s*\d",
    re.IGNORECASE,
)
_MULTI_PART = re.compile(
    r"\b(and (what|who|where|when|which|how|why)|compare|both|difference between|as well as|then)\b",
    re.IGNORECASE,
)
_NESTED = re.compile(  # a question about something named through something else: two lookups
    r"\b(the (person|people|one|leader|head|owner|author|manager|office|city|company|team) "
    r"(who|that|which|of|in|at)|whose)\b",
    re.IGNORECASE,
)
_EXPLAIN = re.compile(r"\b(why|explain|step by step|reason|prove|derive)\b", re.IGNORECASE)


def pick(question: str, has_documents: bool) -> tuple[str, str]:
    """(strategy, reason) for a question: arithmetic and multi-part questions get more reasoning."""
    numbers = len(_NUMBER.findall(question))
    arithmetic = bool(_ARITHMETIC.search(question))
    multi_part = question.count("?") > 1 or bool(_MULTI_PART.search(question) or _NESTED.search(question))
    if arithmetic and numbers >= 2:
        return "self-consistency", "a word problem with its numbers in the question: several chains vote"
    if has_documents and (multi_part or arithmetic):
        kind = "several steps" if multi_part else "arithmetic"
        return "react", f"{kind} over your documents: the agent searches per part and can calculate"
    if multi_part or arithmetic or _EXPLAIN.search(question):
        return "cot", "a question that needs reasoning: think step by step"
    return "direct", "a lookup: answer directly"


def run(task: Task):
    from assistant.reasoning import STRATEGY_FUNCTIONS

    name, reason = pick(task.question, task.documents is not None)
    outcome = STRATEGY_FUNCTIONS[name](task)
    outcome.trace.insert(0, {"step": "auto", "picked": name, "reason": reason})
    outcome.strategy = name
    return outcome
