"""`tot` (tree of thoughts): a search over partial chains of reasoning steps.

A state is the list of steps written so far. Per state the model proposes `breadth` next steps (sampled
continuations of its own reasoning, one line each), and rates every new state from 1 to 10 (a value prompt,
grammar-constrained to a number). Beam search keeps the best `beam` states per depth; `beam = 0` keeps them
all (plain breadth-first search). The search stops at the depth limit, when the best state is solved (its
last step gives an "Answer:"), or when the token budget is spent; the best state's answer is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from assistant.engine import Completion, GenParams, Message
from assistant.reasoning.answers import split_answer
from assistant.reasoning.base import Outcome, Steps, Task
from assistant.reasoning.cot import extract_answer

THOUGHT_TOKENS = 80  # one step is one short line (at most reasoning.step_tokens)
INSTRUCTION = (
    'Solve this step by step, one short step per line, each starting with "Step N:". '
    'When you know the result, write a last line starting with "Answer:".'
)
VALUE = """Question: {question}

Steps so far:
{steps}

Do these steps make correct progress towards the answer? Rate them from 1 (wrong) to 10 (solved). \
Reply with the number only."""
SCORE_GRAMMAR = 'root ::= [1-9] | "10"'


@dataclass
class State:
    id: int
    thoughts: list[str] = field(default_factory=list)
    value: float = 0.0
    parent: int | None = None

    @property
    def answer(self) -> str | None:
        return split_answer(self.thoughts[-1])[1] if self.thoughts else None

    def text(self) -> str:
        return "\n".join(self.thoughts)


def _numbered(thoughts: list[str]) -> str:
    return "".join(f"Step {i}: {t}\n" for i, t in enumerate(thoughts, 1))


def _propose(steps: Steps, prompt: str, state: State, params: GenParams) -> tuple[str, Completion]:
    """One next step continuing the state's reasoning."""
    ahead = f"{prompt}{_numbered(state.thoughts)}Step {len(state.thoughts) + 1}:"
    max_tokens = min(THOUGHT_TOKENS, steps.task.options.step_tokens)
    done = steps.generate(ahead, replace(params, max_tokens=max_tokens, stop=["\n", "Step "]))
    return " ".join(done.text.split()), done


def _value(steps: Steps, task: Task, state: State) -> tuple[float, Completion]:
    """The state's score in [0.1, 1] from the value prompt."""
    content = VALUE.format(question=task.question, steps=_numbered(state.thoughts).strip())
    messages = [task.messages[0], {"role": "user", "content": content}]
    prompt = task.engine.render(messages)
    done = steps.generate(prompt, replace(task.params, temperature=0.0, max_tokens=3), grammar=SCORE_GRAMMAR)
    try:
        score = int(done.text.strip()) / 10
    except ValueError:
        score = 0.0
    return score, done


def _expand(
    steps: Steps, prompt: str, state: State, depth: int, sample: GenParams, first_id: int
) -> list[State]:
    """The state's children: `breadth` proposed next steps first (they share one prompt, which llama.cpp keeps
    in its cache), then the value of each distinct one."""
    task = steps.task
    proposals: dict[str, Completion] = {}
    for j in range(task.options.breadth):
        if steps.budget_left() <= 0 or task.cancelled:
            break
        seed = task.params.seed + 1000 * depth + 100 * state.id + j
        thought, proposed = _propose(steps, prompt, state, replace(sample, seed=seed))
        if not thought or thought in proposals:
            steps.record("thought", proposed, depth=depth, parent=state.id, thought=thought, duplicate=True)
            continue
        proposals[thought] = proposed
    children = []
    for thought, proposed in proposals.items():
        child = State(first_id + len(children), [*state.thoughts, thought], parent=state.id)
        child.value, valued = _value(steps, task, child)
        children.append(child)
        steps.record(
            "thought",
            proposed,
            valued,
            depth=depth,
            id=child.id,
            parent=state.id,
            thought=thought,
            value=child.value,
            solved=child.answer is not None,
        )
    return children


def run(task: Task) -> Outcome:
    steps = Steps(task)
    options = task.options
    question = {**task.messages[-1], "content": f"{task.question}\n\n{INSTRUCTION}"}
    messages: list[Message] = [*task.messages[:-1], question]
    prompt = task.engine.render(messages)
    sample = replace(task.params, temperature=options.sample_temperature)

    root = State(0)
    frontier, n_states, stop = [root], 1, "depth limit"
    for depth in range(1, options.depth + 1):
        candidates: list[State] = []
        for state in frontier:
            if state.answer is not None:  # solved states stay as they are
                candidates.append(state)
                continue
            children = _expand(steps, prompt, state, depth, sample, n_states)
            n_states += len(children)
            candidates += children
        if not candidates:
            stop = "no new thoughts"
            break
        candidates.sort(key=lambda s: s.value, reverse=True)  # stable: ties keep the earlier state
        kept = candidates if options.beam == 0 else candidates[: options.beam]
        steps.record(
            "prune",
            depth=depth,
            kept=[s.id for s in kept],
            pruned=[s.id for s in candidates if s not in kept],
            values={str(s.id): s.value for s in candidates},
        )
        frontier = kept
        if frontier[0].answer is not None or all(s.answer is not None for s in frontier):
            stop = "solved"
            break
        if steps.budget_left() <= 0 or task.cancelled:
            stop = "cancelled" if task.cancelled else "budget"
            break

    best = frontier[0]
    steps.record("search", stop=stop, best=best.id, value=best.value, states=n_states - 1)
    reasoning = _numbered(best.thoughts).strip()
    answer, final_prompt = best.answer, f"{prompt}{_numbered(best.thoughts)}"
    if answer is None and not task.cancelled:
        answer, final_prompt = extract_answer(steps, prompt, reasoning, task.params)
    answer = answer or ""
    if task.on_token and answer:
        task.on_token(answer)
    return steps.outcome(answer, final_prompt, messages, reasoning=reasoning)
