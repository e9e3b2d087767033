"""The grounded canary: on held-out grounded questions, a candidate must not get worse at citing the sources
it is given, nor at saying that it does not know when none of them is relevant.

The other canaries (reference perplexity, general questions) would not notice a model that forgot how to
answer from the user's documents, which is what Nightjar is for. This one answers held-out grounded prompts
(questions users asked, with the sources retrieval numbered for them in the system message) greedily, as
served, twice:
- as asked (`cited_ok`): the answer must cite, and cite only sources the prompt holds. The raw answer is
  judged: serving drops citation numbers that point nowhere (`strip_citations`), so a model that invents
  them would silently lose its citations in front of the user;
- with another prompt's sources in place of its own (`dont_know`): nothing relevant is given, and the
  answer must say that it does not know, as the instructions of every grounded prompt ask, rather than
  answer from unrelated text (or from memory, as if it had been given sources).
`score` counts both; the gate compares the candidate's to the served model's on the same prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from typing import Any

from assistant.engine import Engine, GenParams, Message, chat
from assistant.grounding import DONT_KNOW, cited_numbers, fit_grounded, split_sources

# how an answer says it does not know: the assistant's own DONT_KNOW, or the usual ways a model puts it
_NOT_KNOWN = re.compile(
    r"\b(?:do|does|did|can|could)(?: not|n't|not) (?:know|say|mention|contain|tell|answer|find|provide)\b"
    r"|\bno (?:information|mention)\b|\bnot (?:mentioned|stated|given|provided|specified)\b",
    re.IGNORECASE,
)


@dataclass
class GroundedCanary:
    questions: int = 0  # held-out grounded prompts answered
    cited_ok: int = 0  # answers whose every [n] citation points to a source in the prompt (and that cite one)
    swapped: int = 0  # the same questions given another question's sources (nothing relevant)
    dont_know: int = 0  # of those, answers that say they do not know / the sources do not say
    answers: list[str] = field(default_factory=list)  # the answers as asked, then the swapped ones

    @property
    def score(self) -> int:
        return self.cited_ok + self.dont_know

    def to_dict(self) -> dict[str, Any]:
        """The fields (`GroundedCanary(**d)` reads them back; `score` is derived)."""
        return asdict(self)


def says_dont_know(answer: str) -> bool:
    """Whether an answer says that it does not know (or that the sources do not say)."""
    text = answer.replace("\u2019", "'")
    return DONT_KNOW in text or _NOT_KNOWN.search(text) is not None


def cites_only(answer: str, numbers: set[int]) -> bool:
    """Whether `answer` cites at least one source, and only sources numbered `numbers` (citations as
    `strip_citations` reads them)."""
    cited = cited_numbers(answer)
    return bool(cited) and cited <= numbers


def _sources(prompt: list[Message]) -> tuple[str, list[tuple[int, str]]] | None:
    """A grounded prompt's system message as (its head, [(n, source block)]); None when not grounded."""
    if not prompt or prompt[0]["role"] != "system":
        return None
    return split_sources(prompt[0]["content"])


def grounded_prompts(holdout: dict[str, list[dict]], limit: int = 6) -> list[list[dict[str, str]]]:
    """Distinct held-out prompts (by content) whose system message holds numbered sources, newest last.

    Each kind's rows are oldest first; the newest of every kind are taken in turn (rows carry no time)."""
    newest_first = zip_longest(*(reversed(rows) for _, rows in sorted(holdout.items())))
    found: dict[str, list[Message]] = {}
    for row in (r for turn in newest_first for r in turn if r is not None):
        if len(found) == limit:
            break
        key = json.dumps(row["prompt"], sort_keys=True)
        if key not in found and _sources(row["prompt"]):
            found[key] = row["prompt"]
    return list(found.values())[::-1]


def _swapped(prompts: list[list[Message]]) -> list[list[Message]]:
    """Each prompt with the next one's sources in place of its own (the last gets the first's); left out
    where the two share a source, which would then still be relevant."""
    out = []
    for prompt, other in zip(prompts, prompts[1:] + prompts[:1], strict=True):
        (head, own), (_, theirs) = _sources(prompt), _sources(other)
        if {b.partition("\n")[2] for _, b in own} & {b.partition("\n")[2] for _, b in theirs}:
            continue
        system = head + "".join(f"\n\n{block}" for _, block in theirs)
        out.append([{**prompt[0], "content": system}, *prompt[1:]])
    return out


def _fitted(engine: Engine, prompt: list[Message], reserve: int) -> list[Message] | None:
    """`prompt` fitted next to `reserve` answer tokens as `fit_grounded` fits it (the lowest-ranked sources
    first); None where that would cut the question or leave no source."""
    count = lambda m: engine.count_tokens(engine.render(m))  # noqa: E731
    fitted = fit_grounded(prompt, engine.n_ctx - reserve, count)
    if fitted.cut_question or _sources(fitted.messages) is None:
        return None
    return fitted.messages


def run(engine: Engine, prompts: list[list[dict[str, str]]], max_tokens: int = 96) -> GroundedCanary:
    """Greedy answers (temperature 0) of `engine` to each prompt, and to each prompt with its sources
    swapped for the next prompt's (a rotation), fitted to the engine's context."""
    params = GenParams(temperature=0.0, max_tokens=max_tokens)
    out = GroundedCanary()

    def answer(prompt: list[Message]) -> tuple[list[Message], str] | None:
        fitted = _fitted(engine, prompt, max_tokens)
        if fitted is None:
            return None
        text = chat(engine, fitted, params).result().text.strip()
        out.answers.append(text)
        return fitted, text

    for prompt in prompts:
        if answered := answer(prompt):
            fitted, text = answered
            out.questions += 1
            out.cited_ok += cites_only(text, {n for n, _ in _sources(fitted)[1]})
    for prompt in _swapped(prompts):
        if answered := answer(prompt):
            out.swapped += 1
            out.dont_know += says_dont_know(answered[1])
    return out
