"""Reasoning strategies: how the model gets from a question (and its sources) to an answer.

Each strategy is a function `run(task: Task) -> Outcome`; `run_strategy` picks one by name.

- `direct`: one generation.
- `cot`: reasoning step by step, then the answer; the reasoning is kept apart.
- `self-consistency`: several sampled chains of thought vote; the vote share is the confidence.
- `tot`: tree of thoughts, a beam (or breadth-first) search over reasoning steps scored by the model.
- `react`: an agent that searches the user's documents with sandboxed tools and cites what it used.
- `auto`: picks one of these from the question.
"""

from __future__ import annotations

from assistant.errors import ConfigError
from assistant.reasoning import auto, cot, direct, react, self_consistency, tot
from assistant.reasoning.base import Documents, Outcome, Task

STRATEGY_FUNCTIONS = {
    "direct": direct.run,
    "cot": cot.run,
    "self-consistency": self_consistency.run,
    "tot": tot.run,
    "react": react.run,
    "auto": auto.run,
}


def check_options(task: Task) -> None:
    """Reject settings no strategy can run with, as one line the user can act on."""
    o = task.options
    for name in ("samples", "breadth", "depth", "max_steps", "step_tokens"):
        if getattr(o, name) < 1:
            raise ConfigError(f"reasoning.{name} must be at least 1, got {getattr(o, name)}")
    if o.beam < 0 or o.token_budget < 1:
        raise ConfigError("reasoning.beam must be 0 or more and reasoning.token_budget at least 1")
    if o.sample_temperature <= 0:
        raise ConfigError(f"reasoning.sample_temperature must be above 0, got {o.sample_temperature}")


def cites_own_sources(name: str, question: str, has_documents: bool) -> bool:
    """Whether the strategy searches, numbers and cites sources itself (`react`), instead of step 1's."""
    if name == "auto":
        name = auto.pick(question, has_documents)[0]
    return name == "react" and has_documents


def run_strategy(name: str, task: Task) -> Outcome:
    try:
        fn = STRATEGY_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"strategy '{name}' is not available") from None
    check_options(task)
    outcome = fn(task)
    outcome.strategy = outcome.strategy or name
    return outcome


__all__ = ["Documents", "Outcome", "Task", "cites_own_sources", "run_strategy", "STRATEGY_FUNCTIONS"]
