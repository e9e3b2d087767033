"""Loaders: a file's bytes -> text blocks that remember where they came from (page, heading path, lines).

One loader per format. A loader raises `LoadError` with a short reason when a file cannot be used (corrupt,
binary, empty, not UTF-8); the indexer reports the reason and skips the file.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class LoadError(Exception):
    """This file cannot be indexed; the message is the reason shown to the user."""


@dataclass
class Block:
    """A paragraph-like piece of a document and its place in it."""

    text: str
    page: int | None = None  # 1-based PDF page
    heading: tuple[str, ...] = ()  # heading path, outermost first
    lines: tuple[int, int] | None = None  # 1-based inclusive line range in the file
    paragraphs: tuple[int, int] | None = None  # 1-based paragraph range (DOCX)


TEXT = {".txt", ".text"}
MARKDOWN = {".md", ".markdown", ".mdown", ".mkd"}
RST = {".rst", ".rest"}
HTML = {".html", ".htm", ".xhtml"}
# fmt: off
CODE = {
    ".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".go", ".rs", ".c", ".h", ".cc", ".cpp",
    ".cxx", ".hpp", ".hh", ".java", ".kt", ".kts", ".scala", ".rb", ".php", ".cs", ".swift", ".m", ".mm",
    ".sh", ".bash", ".zsh", ".fish", ".ps1", ".lua", ".pl", ".pm", ".r", ".jl", ".sql", ".toml", ".yaml",
    ".yml", ".ini", ".cfg", ".conf", ".css", ".scss", ".less", ".vue", ".svelte", ".tex", ".el", ".clj",
    ".hs", ".ml", ".ex", ".exs", ".erl", ".dart", ".proto", ".cmake", ".mk", ".gradle", ".groovy",
    ".zig", ".nim", ".v", ".sv", ".vhd", ".f90", ".bat", ".json", ".xml",
}
# fmt: on
TEXT_NAMES = {
    "readme",
    "license",
    "licence",
    "copying",
    "authors",
    "changelog",
    "notice",
    "todo",
    "makefile",
    "dockerfile",
    "containerfile",
    "justfile",
    "procfile",
    "gemfile",
    "rakefile",
    "vagrantfile",
}


def format_of(path: Path) -> str | None:
    """The loader name for a path, by extension (or well-known name); None: not a document Nightjar reads."""
    suffix = path.suffix.lower()
    if suffix in TEXT:
        return "text"
    if suffix in MARKDOWN:
        return "markdown"
    if suffix in RST:
        return "rst"
    if suffix in HTML:
        return "html"
    if suffix == ".pdf":
        return "pdf"
    if suffix == ".docx":
        return "docx"
    if suffix in CODE:
        return "code"
    if path.stem.lower() in TEXT_NAMES and suffix in ("", ".md", ".txt"):
        return "text"
    return None


def load(path: Path, data: bytes) -> list[Block]:
    """The blocks of a file whose bytes are `data`; raises LoadError with the reason it cannot be used."""
    fmt = format_of(path)
    if fmt is None:
        raise LoadError(f"unsupported file type '{path.suffix or path.name}'")
    if not data.strip():
        raise LoadError("empty file")
    blocks = LOADERS[fmt](data)
    if not any(b.text.strip() for b in blocks):
        raise LoadError("no text in it" if fmt != "pdf" else "no extractable text (a scanned PDF?)")
    return [b for b in blocks if b.text.strip()]


# ---- plain text and source code ----


def decode_text(data: bytes) -> str:
    """UTF-8 (or BOM-marked UTF-16) text; binary data and other encodings are refused with the reason."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LoadError("damaged UTF-16 text") from exc
    if b"\x00" in data[:8192]:
        raise LoadError("binary data, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise LoadError("empty file")
    return text


def line_blocks(text: str, first_line: int = 1) -> list[Block]:
    """Runs of non-blank lines, each a block with its line range."""
    blocks: list[Block] = []
    run: list[str] = []
    start = first_line
    for number, line in enumerate(text.splitlines(), first_line):
        if line.strip():
            if not run:
                start = number
            run.append(line.rstrip())
        elif run:
            blocks.append(Block("\n".join(run), lines=(start, number - 1)))
            run = []
    if run:
        blocks.append(Block("\n".join(run), lines=(start, start + len(run) - 1)))
    return blocks


def load_text(data: bytes) -> list[Block]:
    return line_blocks(decode_text(data))


# ---- Markdown (markdown-it: the CommonMark parser rich uses) ----


def load_markdown(data: bytes) -> list[Block]:
    from markdown_it import MarkdownIt

    text = decode_text(data)
    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    heading: list[tuple[int, str]] = []  # (level, title)
    blocks: list[Block] = []
    leaf = {"paragraph_open", "fence", "code_block", "html_block", "table_open"}
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            level = int(tok.tag[1:])
            title = tokens[i + 1].content.strip()
            heading = [h for h in heading if h[0] < level] + [(level, title)]
        elif tok.type in leaf and tok.map:
            start, end = tok.map  # 0-based, end exclusive
            raw = "\n".join(lines[start:end]).strip()
            blocks.append(Block(raw, heading=tuple(t for _, t in heading), lines=(start + 1, end)))
    return blocks


# ---- reStructuredText: section titles are underlined (optionally overlined) with punctuation ----

_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1+\s*$")


def load_rst(data: bytes) -> list[Block]:
    text = decode_text(data)
    lines = text.splitlines()
    styles: list[tuple[str, bool]] = []  # adornment styles in order of first use = heading levels
    heading: list[tuple[int, str]] = []
    blocks: list[Block] = []
    body: list[str] = []
    body_start = 0

    def flush() -> None:
        nonlocal body
        if body:
            for b in line_blocks("\n".join(body), body_start):
                blocks.append(Block(b.text, heading=tuple(t for _, t in heading), lines=b.lines))
        body = []

    i = 0
    while i < len(lines):
        line = lines[i]
        title = line.strip()
        under = lines[i + 1] if i + 1 < len(lines) else ""
        over = i > 0 and bool(_ADORNMENT.match(lines[i - 1])) and not lines[i - 1].startswith(" ")
        if (
            title
            and not _ADORNMENT.match(line)
            and _ADORNMENT.match(under)
            and len(under.strip()) >= len(title)
        ):
            if over and body and body[-1] == lines[i - 1]:
                body.pop()  # the overline was taken for body text
            flush()
            style = (under.strip()[0], over)
            if style not in styles:
                styles.append(style)
            level = styles.index(style)
            heading = [h for h in heading if h[0] < level] + [(level, title)]
            i += 2
            continue
        if not body:
            body_start = i + 1
        body.append(line)
        i += 1
    flush()
    return blocks


# ---- HTML: the main text, not the markup ----

_DROP = ["script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form", "head"]
_LEAF = {"p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption", "address"}
_CONTAINER = {
    "div",
    "section",
    "article",
    "main",
    "body",
    "ul",
    "ol",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "dl",
    "figure",
    "details",
    "summary",
    "html",
    "center",
}


def load_html(data: bytes) -> list[Block]:
    from bs4 import BeautifulSoup, Comment, NavigableString

    if b"\x00" in data[:8192]:
        raise LoadError("binary data, not HTML")
    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(_DROP):
        tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    heading: list[tuple[int, str]] = []
    blocks: list[Block] = []
    inline: list[str] = []

    def emit(text: str) -> None:
        text = re.sub(r"[ \t\r\f\v]+", " ", text).strip()
        if text:
            blocks.append(Block(text, heading=tuple(t for _, t in heading)))

    def flush() -> None:
        emit(" ".join(inline))
        inline.clear()

    def walk(element) -> None:
        nonlocal heading
        for child in element.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                inline.append(str(child))
                continue
            name = child.name or ""
            if re.fullmatch(r"h[1-6]", name):
                flush()
                level = int(name[1])
                heading = [h for h in heading if h[0] < level] + [(level, child.get_text(" ", strip=True))]
            elif name in _LEAF:
                flush()
                emit(child.get_text() if name == "pre" else child.get_text(" ", strip=True))
            elif name in _CONTAINER:
                flush()
                walk(child)
                flush()
            elif name == "br":
                inline.append("\n")
            else:
                inline.append(child.get_text(" "))

    walk(root)
    flush()
    return blocks


# ---- PDF (pypdf): text with page numbers ----


def load_pdf(data: bytes) -> list[Block]:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # damaged files are reported by us, once
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError("encrypted PDF (needs a password)")
        blocks = []
        for number, page in enumerate(reader.pages, 1):
            text = page.extract_text() or ""
            # PDF lines are layout, not structure: join them, keep blank-line paragraph breaks
            paragraphs = re.split(r"\n\s*\n", text)
            for para in paragraphs:
                para = re.sub(r"-\n(?=[a-z])", "", para)  # re-join hyphenated line breaks
                para = re.sub(r"\s*\n\s*", " ", para).strip()
                if para:
                    blocks.append(Block(para, page=number))
    except LoadError:
        raise
    except Exception as exc:  # pypdf raises many kinds on damaged files
        raise LoadError(f"corrupt PDF ({_short(exc)})") from None
    return blocks


# ---- DOCX (python-docx): paragraphs, tables and heading styles ----


def load_docx(data: bytes) -> list[Block]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises zip, XML and package errors
        raise LoadError(f"corrupt DOCX ({_short(exc)})") from None
    heading: list[tuple[int, str]] = []
    blocks: list[Block] = []
    number = 0
    for element in document.element.body.iterchildren():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "p":
            paragraph = Paragraph(element, document)
            number += 1
            text = paragraph.text.strip()
            style = (paragraph.style.name if paragraph.style is not None else "") or ""
            level = _heading_level(style)
            if level is not None and text:
                heading = [h for h in heading if h[0] < level] + [(level, text)]
            elif text:
                blocks.append(Block(text, heading=tuple(t for _, t in heading), paragraphs=(number, number)))
        elif tag == "tbl":
            table = Table(element, document)
            number += 1
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
            text = "\n".join(r for r in rows if r.strip(" |"))
            if text:
                blocks.append(Block(text, heading=tuple(t for _, t in heading), paragraphs=(number, number)))
    return blocks


def _heading_level(style: str) -> int | None:
    if style == "Title":
        return 0
    match = re.fullmatch(r"Heading (\d)", style)
    return int(match.group(1)) if match else None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


LOADERS: dict[str, Callable[[bytes], list[Block]]] = {
    "text": load_text,
    "code": load_text,
    "markdown": load_markdown,
    "rst": load_rst,
    "html": load_html,
    "pdf": load_pdf,
    "docx": load_docx,
}
