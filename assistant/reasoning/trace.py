"""A reasoning trace as lines of text (for `nightjar ask --trace` and the TUI's trace view)."""

from __future__ import annotations

import json
from typing import Any


def _short(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cost(entry: dict[str, Any]) -> str:
    if "prompt_tokens" not in entry:
        return ""
    seconds = f", {entry['seconds']:.1f} s" if "seconds" in entry else ""
    return f"  [{entry['prompt_tokens']}+{entry['completion_tokens']} tok{seconds}]"


def _line(e: dict[str, Any]) -> str:
    step = e.get("step")
    if step == "auto":
        return f"auto: picked {e['picked']} ({e['reason']})"
    if step == "tools":
        return f"tools allowed: {', '.join(e['allowed'])}"
    if step == "plan":
        return f"plan: search {' | '.join(e['queries'])}"
    if step == "act":
        if not e.get("valid"):
            raw = _short(e.get("raw", ""), 80)
            return f"step {e['n']} ({e['by']}): invalid action {raw} -> {e['observation']}"
        args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in e["args"].items())
        seen = f" -> {_short(e['observation'], 100)}" if "observation" in e else ""
        call = f"{e['tool']}({_short(args, 120)})"
        return f"step {e['n']} ({e['by']}): {_short(e['thought'], 80)} | {call}{seen}"
    if step == "reason":
        sample = f" {e['sample']}" if "sample" in e else ""
        return f"reasoning{sample}: {_short(e['thought'])} => {e.get('answer')!r}"
    if step == "extract-answer":
        return f"answer extracted: {e['answer']!r}"
    if step == "vote":
        share = f"confidence {e['confidence']:.2f} of {e['samples']} samples"
        return f"vote: {e['votes']} -> {e['winner']!r} ({share})"
    if step == "thought":
        if e.get("duplicate"):
            return f"depth {e['depth']}: from #{e['parent']}, duplicate or empty thought dropped"
        solved = ", solved" if e.get("solved") else ""
        where = f"depth {e['depth']}: #{e['id']} from #{e['parent']}"
        return f"{where} value {e['value']:.1f}{solved}: {_short(e['thought'])}"
    if step == "prune":
        return f"depth {e['depth']}: kept {e['kept']}, pruned {e['pruned']}"
    if step == "search":
        return f"search stopped ({e['stop']}): best #{e['best']} ({e['value']:.1f}) of {e['states']} states"
    if step == "answer":
        return f"answer: {_short(e['text'])} citing {e['citations']}"
    fields = ", ".join(
        f"{k}={_short(v, 60)}"
        for k, v in e.items()
        if k not in ("step", "prompt_tokens", "completion_tokens", "seconds")
    )
    return f"{step}{': ' + fields if fields else ''}"


def format_trace(trace: list[dict[str, Any]]) -> list[str]:
    """One line per step: what it did, and its cost (prompt + completion tokens, seconds) if it generated."""
    return [_line(e) + _cost(e) for e in trace]
