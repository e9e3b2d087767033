"""`direct`: one generation, streamed."""

from __future__ import annotations

from assistant.reasoning.base import Outcome, Task


def run(task: Task) -> Outcome:
    prompt = task.engine.render(task.messages)
    generation = task.engine.generate(prompt, task.params)
    for piece in generation:
        if task.on_token:
            task.on_token(piece)
        if task.cancel is not None and task.cancel.is_set():
            generation.cancel()
    done = generation.result()
    return Outcome(
        text=done.text.strip(),
        prompt=prompt,
        messages=task.messages,
        trace=[
            {
                "step": "generate",
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "seconds": round(done.seconds, 3),
            }
        ],
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        finish_reason=done.finish_reason,
    )
