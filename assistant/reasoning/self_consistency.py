"""`self-consistency`: several chains of thought sampled at temperature > 0 vote on the final answer.

Answers are normalized before the vote (numbers to a canonical form, text to its lowercase words); the
winner's share of the samples is reported as the answer's confidence.
"""

from __future__ import annotations

from dataclasses import replace

from assistant.reasoning.answers import NO_ANSWER, normalize, vote
from assistant.reasoning.base import Outcome, Steps, Task
from assistant.reasoning.cot import cot_messages, reason


def run(task: Task) -> Outcome:
    steps = Steps(task)
    options = task.options
    messages = cot_messages(task.messages)
    samples: list[tuple[str, str, str]] = []  # (reasoning, answer, prompt)
    for i in range(options.samples):
        if task.cancelled:
            break
        params = replace(task.params, temperature=options.sample_temperature, seed=task.params.seed + i)
        samples.append(reason(steps, messages, params, sample=i))

    winner, votes = vote([answer for _, answer, _ in samples if answer != NO_ANSWER])  # no answer: no vote
    chosen = next((s for s in samples if winner is not None and normalize(s[1]) == winner), None)
    confidence = round(votes[winner] / len(samples), 3) if winner is not None else 0.0
    steps.record("vote", votes=votes, winner=winner, confidence=confidence, samples=len(samples))
    if chosen is None:  # cancelled before any sample, or no sample had an answer
        chosen = samples[0] if samples else ("", "", task.engine.render(messages))
    reasoning, answer, prompt = chosen
    if task.on_token and answer:
        task.on_token(answer)
    return steps.outcome(answer, prompt, messages, reasoning=reasoning, confidence=confidence)
