"""Chunking that respects structure: sections, then paragraphs, then sentences, then (only if it must) a
hard cut at the token limit. Sizes and overlap are counted in the embedder's own tokens.

A section is a run of blocks with the same page and heading path; a chunk never spans two sections, so its
citation (page, heading, line range) is exact. The heading path is put in front of the chunk's text for
both BM25 and the embedder (`Chunk.indexed_text`), inside the token budget.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

from retrieval.loaders import Block

Spans = list[tuple[int, int]]  # (start, end) character offsets of each token of a text
SpanFn = Callable[[list[str]], list[Spans]]

# tried in order to break a piece that is over the limit: paragraphs, sentences, lines, clauses, words
SEPARATORS = [re.compile(p) for p in (r"\n\s*\n", r"(?<=[.!?])\s+", r"\n", r"(?<=[;,:])\s+", r"\s+")]
HEADING_CHARS = 200


@dataclass
class Chunk:
    text: str
    tokens: int  # embedder tokens of indexed_text (without special tokens)
    page: int | None = None
    heading: tuple[str, ...] = ()
    lines: tuple[int, int] | None = None
    paragraphs: tuple[int, int] | None = None

    @property
    def location(self) -> str:
        return location_of(self.page, self.heading, self.lines, self.paragraphs)

    @property
    def indexed_text(self) -> str:
        return heading_prefix(self.heading) + self.text


def heading_prefix(heading: tuple[str, ...] | list[str]) -> str:
    return (" > ".join(heading)[:HEADING_CHARS] + "\n") if heading else ""


def location_of(page, heading, lines, paragraphs) -> str:
    """A human citation: 'p. 3', '§ Install > Linux, lines 10-24', 'lines 5-9', '¶ 4-6'."""
    parts = []
    if page:
        parts.append(f"p. {page}")
    if heading:
        parts.append("§ " + " > ".join(heading))
    if lines:
        parts.append(f"lines {lines[0]}-{lines[1]}" if lines[0] != lines[1] else f"line {lines[0]}")
    elif paragraphs:
        parts.append(
            f"¶ {paragraphs[0]}-{paragraphs[1]}" if paragraphs[0] != paragraphs[1] else f"¶ {paragraphs[0]}"
        )
    return ", ".join(parts) or "whole file"


@dataclass
class _Unit:
    """A piece of one block: characters [a, b) of blocks[block].text."""

    block: int
    a: int
    b: int
    tokens: int


class _Counter:
    """Token counts of any character range of a block, from one tokenization of the block."""

    def __init__(self, spans: Spans) -> None:
        self.spans = spans
        self.starts = [s for s, _ in spans]

    def count(self, a: int, b: int) -> int:
        return bisect_left(self.starts, b) - bisect_left(self.starts, a)

    def inside(self, a: int, b: int) -> Spans:
        return self.spans[bisect_left(self.starts, a) : bisect_left(self.starts, b)]


def chunk_blocks(blocks: list[Block], spans: SpanFn, max_tokens: int, overlap: int) -> list[Chunk]:
    if not blocks:
        return []
    counters = [_Counter(s) for s in spans([b.text for b in blocks])]
    headings = sorted({b.heading for b in blocks if b.heading})
    heading_tokens = dict(
        zip(headings, (len(s) for s in spans([heading_prefix(h) for h in headings])), strict=True)
    )
    chunks: list[Chunk] = []
    indexed = list(enumerate(blocks))
    for (_page, heading), group in groupby(indexed, key=lambda ib: (ib[1].page, ib[1].heading)):
        budget = max(max_tokens - heading_tokens.get(heading, 0), max_tokens // 2)
        units: list[_Unit] = []
        for i, block in group:
            units += _split(i, 0, len(block.text), block.text, counters[i], budget)
        chunks += _pack(
            units, blocks, counters, budget, min(overlap, budget // 2), heading_tokens.get(heading, 0)
        )
    return chunks


def _split(i: int, a: int, b: int, text: str, counter: _Counter, budget: int) -> list[_Unit]:
    """Break text[a:b] into units of at most `budget` tokens, at the largest structure that works."""
    n = counter.count(a, b)
    if n <= budget:
        return [_Unit(i, a, b, n)] if text[a:b].strip() else []
    for sep in SEPARATORS:
        cuts = [m.end() for m in sep.finditer(text, a, b) if a < m.start() and m.end() < b]
        if cuts:
            bounds = [a, *cuts, b]
            out: list[_Unit] = []
            for x, y in zip(bounds, bounds[1:], strict=False):
                out += _split(i, x, y, text, counter, budget)
            return out
    spans = counter.inside(a, b)  # one unbreakable run: cut at the token limit
    return [
        _Unit(i, spans[k][0], spans[min(k + budget, len(spans)) - 1][1], min(budget, len(spans) - k))
        for k in range(0, len(spans), budget)
    ]


def _pack(
    units: list[_Unit],
    blocks: list[Block],
    counters: list[_Counter],
    budget: int,
    overlap: int,
    prefix_tokens: int,
) -> list[Chunk]:
    """Greedily fill chunks with whole units; a new chunk repeats the previous one's last ~overlap tokens."""
    chunks: list[Chunk] = []
    current: list[_Unit] = []
    for unit in units:
        if current and sum(u.tokens for u in current) + unit.tokens > budget:
            chunks.append(_make(current, blocks, prefix_tokens))
            current = _tail(current, counters, overlap, budget - unit.tokens)
        current.append(unit)
    if current:
        chunks.append(_make(current, blocks, prefix_tokens))
    return chunks


def _tail(units: list[_Unit], counters: list[_Counter], overlap: int, room: int) -> list[_Unit]:
    """The last units (whole, or the token tail of the last one) of at most min(overlap, room) tokens."""
    limit = min(overlap, room)
    if limit <= 0:
        return []
    tail: list[_Unit] = []
    total = 0
    for unit in reversed(units):
        if total + unit.tokens > limit:
            break
        tail.insert(0, unit)
        total += unit.tokens
    if tail:
        return tail
    last = units[-1]
    spans = counters[last.block].inside(last.a, last.b)[-limit:]
    return [_Unit(last.block, spans[0][0], last.b, len(spans))] if spans else []


def _make(units: list[_Unit], blocks: list[Block], prefix_tokens: int) -> Chunk:
    # units of one block are consecutive character ranges: keep the block's own spacing between them
    pieces = [
        blocks[i].text[group[0].a : group[-1].b].strip()
        for i, group in ((i, list(g)) for i, g in groupby(units, key=lambda u: u.block))
    ]
    first, last = blocks[units[0].block], blocks[units[-1].block]
    lines = None
    if first.lines and last.lines:
        start = first.lines[0] + blocks[units[0].block].text.count("\n", 0, units[0].a)
        end = last.lines[0] + blocks[units[-1].block].text.count("\n", 0, max(units[-1].b - 1, 0))
        lines = (start, min(max(end, start), last.lines[1]))
    paragraphs = None
    if first.paragraphs and last.paragraphs:
        paragraphs = (first.paragraphs[0], last.paragraphs[1])
    return Chunk(
        text="\n\n".join(pieces),
        tokens=prefix_tokens + sum(u.tokens for u in units),
        page=first.page,
        heading=first.heading,
        lines=lines,
        paragraphs=paragraphs,
    )
