"""Citations in answers: `[n]` and `[n, m]` become highlighted, clickable `cite:n` links in Markdown."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline

CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def _citation_rule(state: StateInline, silent: bool) -> bool:
    if state.src[state.pos] != "[":
        return False
    match = CITATION.match(state.src, state.pos)
    if match is None or state.src[match.end() : match.end() + 1] == "(":  # a real Markdown link
        return False
    if not silent:
        for i, number in enumerate(re.findall(r"\d+", match.group(1))):
            if i:
                state.push("text", "", 0).content = " "
            state.push("link_open", "a", 1).attrs = {"href": f"cite:{number}"}
            state.push("text", "", 0).content = f"[{number}]"
            state.push("link_close", "a", -1)
    state.pos = match.end()
    return True


def citation_parser() -> MarkdownIt:
    """The Markdown parser Textual uses ("gfm-like"), plus citation links."""
    md = MarkdownIt("gfm-like")
    md.inline.ruler.before("link", "citation", _citation_rule)
    return md
