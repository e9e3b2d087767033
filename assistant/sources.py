"""`Source`: a passage of the user's documents that an answer may cite, as every part of Nightjar passes it.

Retrieval finds chunks; grounding (or the ReAct agent) numbers the ones the model sees as [1], [2], ...;
the answer cites those numbers; the CLI, the terminal app and the server show them; feedback flags them.
Stored with an interaction as a plain dict (`to_dict`), read back with `from_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Source:
    source: str  # the document's path
    location: str = ""  # where in it: "p. 3", "§ Heading, lines 4-9", ...
    text: str = ""  # the chunk's text
    n: int = 0  # the citation number the model saw it under (0: not numbered yet)
    id: int | str | None = None  # the chunk's id in the index
    score: float = 0.0
    scores: dict[str, float | None] = field(default_factory=dict)  # bm25, dense, fused, rerank

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Source:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and (v is not None or k == "id")})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def numbered(self, n: int) -> Source:
        return replace(self, n=n)

    @property
    def name(self) -> str:
        """The file's name, for labels."""
        return Path(self.source).name

    def label(self) -> str:
        """`[n] file.md · p. 3`."""
        return f"[{self.n}] {self.name}" + (f" · {self.location}" if self.location else "")
