"""Document text in a prompt is data: quoted, and unable to forge the chat template's own markers.

A retrieved chunk that says "ignore all previous instructions" must read to the model as something a
document says, not as something it is told. Three things make that so:
- `quote` sets the text off as a block quote (every line starts with "> "), so where the data ends is
  unambiguous whatever it contains;
- `defang` breaks the markers of the common chat templates (`<|im_start|>`, `<|eot_id|>`, `[INST]`,
  `<start_of_turn>`, `</s>` ...): the engine tokenizes prompts with special tokens enabled, so a document
  holding such a marker could otherwise end the system message and open a turn of its own;
- `withhold_instructions` takes out text addressed to the assistant itself ("ignore all previous
  instructions ...", "SYSTEM NOTICE: ...", "new instructions: ..."), from its first words to the end of its
  paragraph. Framing alone is not enough for a small model: the 135M default repeats whatever its sources
  say, an injected order included. What is withheld is marked in its place, and the answer says so.
No such filter is complete: a capable model reading the framing is the stronger guard, and the ReAct agent
additionally decides its tools from the question alone.
"""

from __future__ import annotations

import re

# <|...|> (ChatML, Llama 3, Phi), <start_of_turn>/<end_of_turn> (Gemma), [INST]/[/INST] and <s>/</s>
# (Llama 2, Mistral), <<SYS>>
_MARKER = re.compile(r"<\|[^|<>\s]{0,40}\|>|</?(?:s|start_of_turn|end_of_turn)>|\[/?INST\]|<</?SYS>>")


_ADDRESSED = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+)?"
    r"(?:previous|prior|above|earlier|preceding|system|original)\s+(?:instructions?|prompts?|rules|directions)"
    r"|\bsystem\s+(?:notice|prompt|message|override|instruction)s?\s*:"
    r"|\b(?:new|updated)\s+instructions?\s*:"
    r"|\b(?:do\s+not|don't)\s+answer\s+the\s+(?:user'?s?\s+)?question",
    re.IGNORECASE,
)
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?:])\s+|\n)")
WITHHELD = "[text addressed to the assistant withheld]"


def withhold_instructions(text: str) -> tuple[str, int]:
    """`text` with each passage addressed to the assistant (see the module docstring) replaced by WITHHELD:
    from the start of the sentence it begins in to the end of that paragraph. Returns the count too."""
    count = 0
    while match := _ADDRESSED.search(text):
        starts = [m.end() for m in _SENTENCE_START.finditer(text, 0, match.start() + 1)]
        start = max((s for s in starts if s <= match.start()), default=0)
        lead = text.rfind("\n", 0, start) + 1  # a short lead-in that is no sentence ("IMPORTANT:") goes too
        if len(text[lead:start].strip()) <= 24 and not text[lead:start].rstrip().endswith((".", "?", "!")):
            start = lead
        end = text.find("\n\n", match.end())
        end = len(text) if end < 0 else end
        text = text[:start] + WITHHELD + text[end:]
        count += 1
    return text, count


def defang(text: str) -> str:
    """`text` with every chat-template marker broken by a space after its first character."""
    return _MARKER.sub(lambda m: m.group(0)[0] + " " + m.group(0)[1:], text)


def as_data(text: str) -> str:
    """`text` as the model may read a document: passages addressed to it withheld, markers defanged."""
    return defang(withhold_instructions(text)[0])


def quote(text: str) -> str:
    """`as_data(text)` set off as a Markdown block quote."""
    return "\n".join(f"> {line}".rstrip() for line in as_data(text).strip().splitlines())


def addressed(text: str) -> bool:
    """Whether `text` holds a passage addressed to the assistant (that `quote` withholds)."""
    return _ADDRESSED.search(text) is not None
