"""Chunking respects structure; sizes and overlap are in the embedder's own tokens (its real tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.chunking import chunk_blocks
from retrieval.config import embedded_embedder_path
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.loaders import Block, load


@pytest.fixture(scope="module")
def tokenizer() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(embedded_embedder_path())  # only its tokenizer is used here


def n_tokens(tok: SentenceTransformerEmbedder, text: str) -> int:
    return len(tok.token_spans([text])[0])


SENTENCES = [
    f"Sentence number {i} tells a small story about owl {i} and the moon over hill {i * 7}."
    for i in range(60)
]


def test_chunks_fit_the_limit_and_overlap(tokenizer):
    text = " ".join(SENTENCES)
    chunks = chunk_blocks([Block(text, lines=(1, 1))], tokenizer.token_spans, max_tokens=64, overlap=10)
    assert len(chunks) > 5
    for chunk in chunks:
        assert n_tokens(tokenizer, chunk.indexed_text) <= 64
        assert chunk.tokens == n_tokens(tokenizer, chunk.indexed_text)
    for before, after in zip(chunks, chunks[1:], strict=False):
        # the next chunk starts with the end of the previous one (whole sentences where they fit)
        head = after.text.split(". ")[0]
        assert head in before.text and 0 < n_tokens(tokenizer, head) <= 10
    # nothing is lost: every sentence is in some chunk
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in SENTENCES)


def test_no_overlap_when_asked(tokenizer):
    chunks = chunk_blocks([Block(" ".join(SENTENCES))], tokenizer.token_spans, max_tokens=64, overlap=0)
    assert sum(len(c.text) for c in chunks) <= len(" ".join(SENTENCES))


def test_paragraphs_are_kept_whole_when_they_fit(tokenizer):
    blocks = [Block(f"Paragraph {i}. " + "Word " * 15, lines=(3 * i + 1, 3 * i + 1)) for i in range(6)]
    chunks = chunk_blocks(blocks, tokenizer.token_spans, max_tokens=60, overlap=0)
    for chunk in chunks:
        for piece in chunk.text.split("\n\n"):
            assert piece.startswith("Paragraph ")  # split between paragraphs, not inside them
    assert chunks[0].lines[0] == 1 and chunks[-1].lines[1] == 16


def test_sections_are_never_mixed(tmp_path: Path, tokenizer):
    path = tmp_path / "doc.md"
    path.write_text("# A\n\nalpha text.\n\n## B\n\nbeta text.\n\n# C\n\ngamma text.\n")
    chunks = chunk_blocks(load(path, path.read_bytes()), tokenizer.token_spans, max_tokens=200, overlap=20)
    assert [(c.heading, c.text) for c in chunks] == [
        (("A",), "alpha text."),
        (("A", "B"), "beta text."),
        (("C",), "gamma text."),
    ]
    assert chunks[1].location == "§ A > B, line 7"
    assert chunks[1].indexed_text == "A > B\nbeta text."  # the heading path is part of what is indexed


def test_line_ranges_point_at_the_chunk_text(tmp_path: Path, tokenizer):
    lines = [f"line {i}: " + "lorem ipsum dolor " * 3 for i in range(1, 41)]
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines) + "\n")
    chunks = chunk_blocks(load(path, path.read_bytes()), tokenizer.token_spans, max_tokens=80, overlap=12)
    assert len(chunks) > 3
    for chunk in chunks:
        first, last = chunk.lines
        text_lines = chunk.text.split("\n")
        assert last - first + 1 == len(text_lines)
        assert text_lines[0].strip() in lines[first - 1]  # (an overlap may start inside a line)
        assert text_lines[-1].strip() == lines[last - 1].strip()


def test_an_unbreakable_run_is_cut_at_the_token_limit(tokenizer):
    blob = "-".join(["ab"] * 800)  # 1599 tokens, no spaces or sentences: only a hard cut can split it
    chunks = chunk_blocks([Block(blob)], tokenizer.token_spans, max_tokens=50, overlap=0)
    assert len(chunks) > 2 and "".join(c.text for c in chunks) == blob
    assert all(n_tokens(tokenizer, c.text) <= 50 for c in chunks)


def test_pdf_pages_are_separate_sections(tokenizer):
    blocks = [Block("Owls hunt at night.", page=1), Block("Budgets are due in May.", page=2)]
    chunks = chunk_blocks(blocks, tokenizer.token_spans, max_tokens=200, overlap=20)
    assert [(c.page, c.location) for c in chunks] == [(1, "p. 1"), (2, "p. 2")]
