"""Cold start, as a user meets it: every `nightjar` command is a new process.

On a home with the first 200 documents of a BEIR corpus indexed (the default embedder backend), times whole
processes, each run alone on the machine:

- `nightjar search QUERY`: wall time until the process exits (target <= 1.0 s);
- `nightjar ask QUERY` (grounded: retrieval on, the embedded model, streamed): time until the answer's first
  byte reaches stdout (target <= 2.5 s) and until the process exits, with the prompt's length in tokens;
- the floor under both: `python -c "import assistant.cli"` (what starting the command costs before any work).

Medians of --runs runs over different queries (so no run reuses another's answer), min and max beside them.

    python benchmarks/cold_start.py ../shared/data/nq-open/derived_beir [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import beir_sets

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out" / "cold_start"
TARGETS = {"search": 1.0, "ask first token": 2.5}


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
    out["HF_HUB_OFFLINE"] = "1"
    return out


def command(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "assistant", "--home", str(home), *args]


def timed(cmd: list[str]) -> tuple[float, float | None, str]:
    """(seconds to exit, seconds to the first byte on stdout or None, stdout) of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=ROOT)
    first_byte = proc.stdout.read(1)
    first = time.perf_counter() - start if first_byte else None
    rest = proc.stdout.read()  # from the same buffered reader: communicate() would skip what it holds
    err = proc.stderr.read()
    proc.wait(timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return wall, first, (first_byte + rest).decode("utf-8", "replace")


def prepare(dataset: Path) -> tuple[Path, list[str]]:
    """A home with 200 of the corpus's documents indexed; the queries whose gold document is among them."""
    home, docs = OUT / "home", OUT / "docs"
    data = beir_sets.read(dataset)
    kept = dict(list(data.corpus.items())[:200])
    beir_sets.write_docs(kept, docs)
    if not (home / "index" / "catalog.db").exists():
        subprocess.run(
            command(home, "index", str(docs)), env=env(), cwd=ROOT, check=True, capture_output=True
        )
    queries = [text for qid, text in data.queries.items() if kept.keys() & data.qrels.get(qid, {}).keys()]
    return home, queries


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "dataset", type=Path, help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv"
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    home, queries = prepare(args.dataset)
    timed(command(home, "search", queries[-1]))  # the first use may export the embedder: not a cold start
    floor = [timed([sys.executable, "-c", "import assistant.cli"])[0] for _ in range(args.runs)]
    search = [timed(command(home, "search", q))[0] for q in queries[: args.runs]]
    ask_first, ask_wall, prompt_tokens = [], [], []
    for q in queries[args.runs : 2 * args.runs]:
        wall, first, _ = timed(command(home, "ask", "--max-tokens", "32", q))
        ask_wall.append(wall)
        ask_first.append(first if first is not None else wall)
        stats = timed(command(home, "ask", "--max-tokens", "1", "--json", q))[2]
        prompt_tokens.append(json.loads(stats)["prompt_tokens"])
    print(f"{args.runs} runs each on {home} (200 documents)")
    print(f"start-up floor (import assistant.cli): {summary(floor)}")
    print(f"search:           {summary(search)}   target <= {TARGETS['search']} s")
    print(f"ask first token:  {summary(ask_first)}   target <= {TARGETS['ask first token']} s")
    print(f"ask whole (32 tokens at most): {summary(ask_wall)}")
    if any(prompt_tokens):
        print(f"grounded prompts: median {statistics.median(prompt_tokens):.0f} tokens")


if __name__ == "__main__":
    main()
