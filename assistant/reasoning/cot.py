"""`cot`: the model reasons step by step, then gives a final answer; the reasoning is kept apart from it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from assistant.engine import GenParams, Message
from assistant.reasoning.answers import ANSWER_MARKER, NO_ANSWER, clean_answer, split_answer
from assistant.reasoning.base import Outcome, Steps, Task

INSTRUCTION = (
    "Think step by step, briefly. Then write the final answer on a last line that starts with "
    f'"{ANSWER_MARKER}".'
)
ANSWER_TOKENS = 64


def cot_messages(messages: list[Message]) -> list[Message]:
    """The conversation with the step-by-step instruction added to the question."""
    last = messages[-1]
    return [*messages[:-1], {**last, "content": f"{last['content']}\n\n{INSTRUCTION}"}]


def extract_answer(steps: Steps, prompt: str, reasoning: str, params: GenParams) -> tuple[str, str]:
    """(answer, prompt) when a reasoning text has no marked answer: the model continues it after "Answer:";
    if that gives nothing either, the reasoning's last line is the best there is."""
    prompt = f"{prompt}{reasoning.rstrip()}\n{ANSWER_MARKER}"
    done = steps.generate(prompt, replace(params, temperature=0.0, max_tokens=ANSWER_TOKENS, stop=["\n"]))
    lines = [clean_answer(line) for line in reasoning.splitlines()]
    answer = clean_answer(done.text) or next((line for line in reversed(lines) if line), NO_ANSWER)
    steps.record("extract-answer", done, answer=answer)
    return answer, prompt


def reason(steps: Steps, messages: list[Message], params: GenParams, **fields: Any) -> tuple[str, str, str]:
    """One chain of thought: (reasoning, answer, prompt of the generation the answer came from)."""
    prompt = steps.task.engine.render(messages)
    done = steps.generate(prompt, replace(params, max_tokens=steps.task.options.step_tokens))
    reasoning, answer = split_answer(done.text)
    entry = steps.record("reason", done, thought=reasoning, **fields)
    if answer is None and not steps.task.cancelled:
        answer, prompt = extract_answer(steps, prompt, done.text, params)
    entry["answer"] = answer or ""
    return reasoning, answer or "", prompt


def run(task: Task) -> Outcome:
    steps = Steps(task)
    messages = cot_messages(task.messages)
    reasoning, answer, prompt = reason(steps, messages, task.params)
    if task.on_token and answer:
        task.on_token(answer)
    return steps.outcome(answer, prompt, messages, reasoning=reasoning)
