"""The `react` agent's tools: read-only views of the user's indexed documents, and a calculator.

Sandboxed by construction: a tool only reads the index through `Documents` (the indexed sources) or does
arithmetic; none runs a shell, opens a connection, opens a file by itself or changes anything. Which tools a
question may use is decided from the question alone (`tools_for`), before any document text is read, so an
instruction written in a document cannot add a tool; and the JSON schema of each step only offers the tools,
sources and citations that exist at that point.
"""

from __future__ import annotations

import re
from typing import Any

from assistant.quoting import as_data
from assistant.reasoning.base import Documents
from assistant.reasoning.calculator import CalculatorError, calculate
from assistant.sources import Source

DESCRIPTIONS = {
    "search_documents": "search_documents(query): search the user's documents; results are numbered [n]",
    "read_source": "read_source(source, location): read the text around a place in a source already found",
    "list_sources": "list_sources(): list the user's indexed documents",
    "calculator": "calculator(expression): exact arithmetic, like 12*(3+4)/2",
    "final_answer": "final_answer(text, citations): the answer, with the numbers [n] of the results it uses",
}
SEARCH_K = 3  # results per search: enough to answer, small enough for a 2k context
SNIPPET_CHARS = 320  # of each result shown to the model
THOUGHT_CHARS = 100
QUERY_CHARS = 80
EXPRESSION_CHARS = 100
ANSWER_CHARS = 200

_ARITHMETIC = re.compile(
    r"\d|\b(how (many|much|old|long|far)|total|sum|difference|average|mean|percent|times|twice|double|"
    r"half|plus|minus|per|each|calculate|compute|cost|price|more than|less than)\b|%",
    re.IGNORECASE,
)
_CATALOGUE = re.compile(r"\b(documents?|files?|sources?|notes|indexed|folders?|what do (i|you) have)\b", re.I)


class ToolError(Exception):
    """A tool could not run with the arguments given; the agent sees the message as its observation."""


def tools_for(question: str, has_documents: bool) -> list[str]:
    """The tools a question may use, decided from the user's question alone (never from document text)."""
    tools = ["search_documents", "read_source"] if has_documents else []
    if has_documents and _CATALOGUE.search(question):
        tools.append("list_sources")
    if _ARITHMETIC.search(question):
        tools.append("calculator")
    return tools + ["final_answer"]


def _string(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_chars}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


class Toolbox:
    """The tools of one agent run, and what it has found so far: numbered sources and search hops."""

    def __init__(self, documents: Documents | None) -> None:
        self.documents = documents
        self.sources: dict[int, Source] = {}  # n -> source, in the order first seen
        self._numbers: dict[str, int] = {}  # chunk key -> n
        self.searches: dict[str, list[int]] = {}  # normalized query -> numbers of its results
        self.hops: list[list[int]] = []  # per search that found something new: the numbers it found first
        self.readable: dict[tuple[str, str], None] = {}  # (source, location) pairs read_source may open
        self._indexed: set[str] | None = None

    # ---- what each step may do ----
    def available(self, allowed: list[str]) -> list[str]:
        """The allowed tools that can do something now (read_source needs a source to read)."""
        return [t for t in allowed if t != "read_source" or self.readable]

    def citation_schema(self) -> dict[str, Any]:
        """Citations: one result from every hop (a search that found something new), or none if nothing was
        found; so a multi-hop answer cites what each hop added."""
        if self.hops:
            return {"type": "array", "prefixItems": [{"enum": numbers} for numbers in self.hops]}
        if self.sources:
            return {"type": "array", "items": {"enum": list(self.sources)}, "minItems": 1, "maxItems": 3}
        return {"type": "array", "items": {"type": "integer"}, "maxItems": 0}

    def args_schema(self, tool: str) -> dict[str, Any]:
        if tool == "search_documents":
            return _object({"query": _string(QUERY_CHARS)})
        if tool == "read_source":
            recent = list(self.readable)[-12:]
            pairs = [_object({"source": {"const": s}, "location": {"const": loc}}) for s, loc in recent]
            return pairs[0] if len(pairs) == 1 else {"anyOf": pairs}
        if tool == "list_sources":
            return {"type": "object", "properties": {}}
        if tool == "calculator":
            return _object({"expression": _string(EXPRESSION_CHARS)})
        if tool == "final_answer":
            return _object({"text": _string(ANSWER_CHARS), "citations": self.citation_schema()})
        raise ValueError(f"unknown tool {tool}")

    def action_schema(self, tools: list[str]) -> dict[str, Any]:
        """JSON schema of one action: a thought, then a call of one of `tools`."""
        actions = [
            _object({"thought": _string(THOUGHT_CHARS), "tool": {"const": t}, "args": self.args_schema(t)})
            for t in tools
        ]
        return actions[0] if len(actions) == 1 else {"oneOf": actions}

    # ---- checking an action ----
    def check(self, action: Any, tools: list[str]) -> tuple[str, dict[str, Any]]:
        """(tool, args) of a well-formed action using one of `tools`; ToolError says what is wrong."""
        if not isinstance(action, dict):
            raise ToolError("an action is a JSON object with thought, tool and args")
        tool, args = action.get("tool"), action.get("args", {})
        if tool not in tools:
            raise ToolError(f"tool {tool!r} is not available here; use one of: {', '.join(tools)}")
        if not isinstance(args, dict):
            raise ToolError(f"args of {tool} must be an object")
        expected = {
            "search_documents": {"query": str},
            "read_source": {"source": str, "location": str},
            "list_sources": {},
            "calculator": {"expression": str},
            "final_answer": {"text": str, "citations": list},
        }[tool]
        missing = [k for k in expected if k not in args]
        extra = [k for k in args if k not in expected]
        if missing or extra:
            raise ToolError(f"{tool} takes ({', '.join(expected)}); got ({', '.join(args)})")
        for key, kind in expected.items():
            if not isinstance(args[key], kind):
                raise ToolError(f"{tool}: {key} must be {'text' if kind is str else 'a list'}")
        if tool == "read_source" and args["source"] not in {source for source, _ in self.readable}:
            raise ToolError(f"read_source opens only sources a search returned, not {args['source']!r}")
        if tool == "final_answer":
            wrong = [c for c in args["citations"] if isinstance(c, bool) or c not in self.sources]
            if wrong:
                raise ToolError(f"final_answer cites {wrong}, which no tool returned")
            uncited = [hop for hop in self.hops if not set(hop) & set(args["citations"])]
            if uncited:
                raise ToolError(f"final_answer must cite a result of every hop: one of {uncited[0]}")
        return tool, args

    # ---- running a tool ----
    def call(self, tool: str, args: dict[str, Any]) -> str:
        """The observation of a tool call (the tool's result as text); raises ToolError."""
        if tool == "calculator":
            try:
                return f"{args['expression']} = {calculate(args['expression'])}"
            except CalculatorError as exc:
                raise ToolError(f"calculator: {exc}") from None
        if self.documents is None:
            raise ToolError(f"{tool}: no documents are indexed")
        try:
            if tool == "search_documents":
                return self._search(args["query"])
            if tool == "read_source":
                return self._read(args["source"], args["location"])
            if tool == "list_sources":
                return self._list()
        except ToolError:
            raise
        except Exception as exc:  # a retrieval failure is the agent's observation, not a crash
            raise ToolError(f"{tool} failed: {exc}") from None
        raise ToolError(f"{tool} is not a tool that returns an observation")

    def _number(self, source: Source) -> int:
        key = str(source.id or (source.source, source.location, source.text))
        if key not in self._numbers:
            n = len(self._numbers) + 1
            self._numbers[key] = n
            self.sources[n] = source.numbered(n)
        n = self._numbers[key]
        self.readable[(source.source, source.location)] = None
        return n

    def _show(self, results: list[Source]) -> tuple[str, list[int]]:
        lines, numbers = [], []
        for source in results:
            n = self._number(source)
            numbers.append(n)
            text = " ".join(as_data(source.text).split())
            if len(text) > SNIPPET_CHARS:
                text = text[:SNIPPET_CHARS] + " ..."
            where = f", {source.location}" if source.location else ""
            lines.append(f"[{n}] {source.source}{where}: {text}")
        return "\n".join(lines), numbers

    def _search(self, query: str) -> str:
        assert self.documents is not None
        key = " ".join(query.lower().split())
        if self.searches.get(key):
            found = "".join(f"[{n}]" for n in self.searches[key])
            raise ToolError(f"already searched for {query!r}: its results are {found} above")
        seen = set(self.sources)
        text, numbers = self._show(self.documents.search(query, k=SEARCH_K))
        self.searches[key] = numbers
        if not numbers:
            return f"no results for {query!r}"
        new = [n for n in numbers if n not in seen]
        if new:
            self.hops.append(new)
        return text

    def _read(self, source: str, location: str) -> str:
        assert self.documents is not None
        if self._indexed is None:
            self._indexed = {str(s.get("source")) for s in self.documents.list_sources()}
        if source not in self._indexed:
            raise ToolError(f"read_source: {source!r} is not an indexed source")
        seen = set(self.sources)
        text, numbers = self._show(self.documents.read_source(source, location or None))
        if not numbers:
            return f"nothing to read in {source}"
        for hop in self.hops:  # text read around a hop's result counts for that hop too
            if any(self.sources[n].source == source for n in hop):
                hop.extend(n for n in numbers if n not in seen and n not in hop)
        return text

    def _list(self) -> str:
        assert self.documents is not None
        listed = self.documents.list_sources()
        self._indexed = {str(s.get("source")) for s in listed}
        for s in listed:
            self.readable.setdefault((str(s.get("source")), ""), None)
        if not listed:
            return "no documents are indexed"
        return "\n".join(f"- {s.get('source')}" for s in listed[:50])
