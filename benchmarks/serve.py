"""Serving speed: Nightjar's engine against raw `llama_cpp.Llama` on the same GGUF, settings and prompts.

The raw side runs in the variants that are safe on this build: llama.cpp's defaults (left out where the build
has ggml's AMX path, which crashes) and with extra buffer types off (`use_extra_bufts = False`, Nightjar's
protection on AMX builds). Prints prompt-processing and generation tokens/s for each, measured interleaved in
the same run, and Nightjar's ratio to the fastest safe raw variant (target: >= 0.95 for both).

    python benchmarks/serve.py [--model PATH.gguf] [--rounds 5] [--threads N]

`--server` instead times `nightjar serve` (a real server process, a streamed completion read over HTTP)
against `Assistant.answer` in-process and raw llama.cpp on the same prompt: time to first token and
generation tokens/s, and what the server adds (target: under 50 ms and under 5%).

    python benchmarks/serve.py --server [--rounds 10] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

from llama_cpp import Llama

from assistant import llamacpp
from assistant.engine import GenParams, LlamaCppEngine
from assistant.llamacpp import Protection, default_threads
from assistant.modelfile import embedded_llm_path

SYSTEM = "You are a helpful assistant. Answer briefly and accurately."
LONG = " ".join(
    f"Paragraph {i}: nightjars are nocturnal birds that hunt insects at dusk and rest on the ground by day."
    for i in range(30)
)


def raw_run(llm: Llama, prompt: str, max_tokens: int) -> tuple[int, int, float]:
    """(prompt tokens, generated tokens, seconds) for one streamed completion with the raw API."""
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()  # no prefix cache: every run processes the whole prompt
    start = time.perf_counter()
    n = sum(1 for _ in llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, stream=True))
    return len(tokens), n, time.perf_counter() - start


def engine_run(engine: LlamaCppEngine, prompt: str, max_tokens: int) -> tuple[int, int, float]:
    engine.llm.reset()
    start = time.perf_counter()
    generation = engine.generate(prompt, GenParams(max_tokens=max_tokens))
    n = sum(1 for _ in generation)
    return generation.result().prompt_tokens, n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(embedded_llm_path()))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--server", action="store_true", help="time `nightjar serve` over HTTP instead")
    parser.add_argument("--max-tokens", type=int, default=128, help="--server: tokens per answer")
    args = parser.parse_args()
    if args.server:
        server_benchmark(args)
        return

    info = llamacpp.build_info()
    safe = {
        "raw (llama.cpp defaults)": Protection(True, ""),
        "raw (extra buffers off)": Protection(False, ""),
    }
    if info.amx:  # llama.cpp's defaults crash on this build: measure only the protected variant
        print("this build has ggml's AMX path: 'raw (llama.cpp defaults)' would crash and is left out")
        del safe["raw (llama.cpp defaults)"]
    raws = {name: _raw(args, protection) for name, protection in safe.items()}
    engine = LlamaCppEngine(args.model, n_ctx=args.n_ctx, n_threads=args.threads)
    pp_prompt = engine.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": LONG}])
    gen_prompt = engine.render(
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Tell me a long story about a fox."},
        ]
    )

    runs = {name: (lambda p, m, llm=llm: raw_run(llm, p, m)) for name, llm in raws.items()}
    runs["nightjar"] = lambda p, m: engine_run(engine, p, m)
    rates: dict[str, dict[str, list[float]]] = {name: {"pp": [], "gen": []} for name in runs}
    for _ in range(args.rounds):  # interleaved so machine load hits all alike
        for name, run in runs.items():
            n_prompt, _, seconds = run(pp_prompt, 1)
            rates[name]["pp"].append(n_prompt / seconds)
            _, n_gen, seconds_pp = run(gen_prompt, 1)
            _, n_gen, seconds = run(gen_prompt, 128)
            # generation rate: tokens after the first, over the time after prompt processing
            rates[name]["gen"].append((n_gen - 1) / max(seconds - seconds_pp, 1e-6))

    print(f"model {args.model}\nthreads {args.threads}, n_ctx {args.n_ctx}, rounds {args.rounds} (median)")
    print(f"llama.cpp build: {', '.join(info.features)}")
    print(f"nightjar loads with: {llamacpp.protection(info).reason}")
    width = max(map(len, runs)) + 2
    print(f"{'':{width}}{'prompt tok/s':>14}{'gen tok/s':>12}")
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rates.items()}
    for name in runs:
        print(f"{name:{width}}{med[name]['pp']:14.1f}{med[name]['gen']:12.1f}")
    best = {k: max(med[name][k] for name in raws) for k in ("pp", "gen")}
    pp_ratio, gen_ratio = (med["nightjar"][k] / best[k] for k in ("pp", "gen"))
    print(
        f"{'ratio':{width}}{pp_ratio:14.3f}{gen_ratio:12.3f}   (nightjar / fastest safe raw; target >= 0.95)"
    )


def _raw(args: argparse.Namespace, protection: Protection) -> Llama:
    """Raw llama-cpp-python, loaded with `protection`'s model parameters and nothing else of Nightjar's."""
    with llamacpp.default_model_params(protection.model_params()):
        return Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=args.threads, verbose=False)


# ---- --server: what `nightjar serve` adds over an in-process answer, and over raw llama.cpp ----
SERVER_QUESTIONS = [f"Tell me a long story about a fox named {name}." for name in ("Ash", "Birch", "Cedar")]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(home, port: int, args: argparse.Namespace):
    """`nightjar serve` as a user runs it, on 127.0.0.1; returns once it answers."""
    import os
    import subprocess
    import sys
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
    env.update(
        HF_HUB_OFFLINE="1",
        NIGHTJAR_MODEL_PATH=args.model,
        NIGHTJAR_MODEL_N_CTX=str(args.n_ctx),
        NIGHTJAR_MODEL_N_THREADS=str(args.threads),
    )
    cmd = [sys.executable, "-m", "assistant", "--home", str(home), "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nightjar serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with direct.open(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("nightjar serve did not start within 300 s")


def _timed(pieces, start: float) -> tuple[float, float, int]:
    """(time to first piece, time of the last piece, pieces) of an iterable of text pieces, from `start`."""
    first = last = 0.0
    n = 0
    for _ in pieces:
        last = time.perf_counter() - start
        first = first or last
        n += 1
    return first, last, n


def _rates(first: float, last: float, tokens: int) -> tuple[float, float]:
    """(time to first token in ms, generation tokens/s after the first token)."""
    return first * 1000, (tokens - 1) / max(last - first, 1e-6)


def server_http_run(port: int, question: str, max_tokens: int) -> tuple[float, float]:
    """A streamed completion through `nightjar serve` over HTTP, read as an SSE client reads it."""
    import http.client
    import json

    body = {
        "model": "nightjar",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "retrieval": False,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    usage: dict = {}

    def pieces():
        response = conn.getresponse()
        assert response.status == 200, response.read()
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage.update(event.get("usage") or {})
            for choice in event.get("choices") or []:
                if choice["delta"].get("content"):
                    yield choice["delta"]["content"]

    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    first, last, _ = _timed(pieces(), start)
    conn.close()
    return _rates(first, last, usage["completion_tokens"])


def assistant_run(assistant, question: str, max_tokens: int) -> tuple[float, float, str]:
    """`Assistant.answer` in-process, streamed to `on_token` (as the CLI and the TUI call it)."""
    stamps: list[float] = []
    start = time.perf_counter()
    answer = assistant.answer(
        question,
        retrieval=False,
        strategy="direct",
        params=assistant.params(max_tokens=max_tokens, temperature=0.0, seed=0),
        on_token=lambda piece: stamps.append(time.perf_counter() - start),
    )
    return (*_rates(stamps[0], stamps[-1], answer.completion_tokens), answer.prompt)


def raw_stream_run(llm: Llama, prompt: str, max_tokens: int) -> tuple[float, float]:
    """Raw llama-cpp-python on the exact prompt Nightjar rendered, streamed."""
    start = time.perf_counter()
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    stream = llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, seed=0, stream=True)
    first, last, n = _timed(stream, start)
    return _rates(first, last, n)


def server_benchmark(args: argparse.Namespace) -> None:
    """Time to first token and generation tokens/s: raw llama.cpp, `Assistant.answer` in-process, and
    `nightjar serve` streamed over HTTP, on the same GGUF, prompts and settings, interleaved in one run."""
    import tempfile
    from pathlib import Path

    from assistant import config as config_mod
    from assistant.service import Assistant

    tmp = Path(tempfile.mkdtemp(prefix="nightjar-bench-"))
    port = _free_port()
    server = _start_server(tmp / "served", port, args)
    try:
        overrides = {"model.path": args.model, "model.n_ctx": args.n_ctx, "model.n_threads": args.threads}
        assistant = Assistant(config_mod.load(tmp / "in-process", overrides, environ={}))
        assistant.warm_up()
        raw = _raw(args, llamacpp.protection())
        prompts = {q: assistant_run(assistant, q, 2)[2] for q in SERVER_QUESTIONS}  # also warms each up
        for q in SERVER_QUESTIONS:
            raw_stream_run(raw, prompts[q], 2)
            server_http_run(port, q, 2)
        names = ("raw llama.cpp", "Assistant.answer", "nightjar serve (HTTP)")
        ttft: dict[str, list[float]] = {n: [] for n in names}
        rate: dict[str, list[float]] = {n: [] for n in names}
        for k in range(args.rounds):  # interleaved so machine load hits all alike; each saw the same prompts
            question = SERVER_QUESTIONS[k % len(SERVER_QUESTIONS)]
            for name, run in (
                (names[0], lambda q=question: raw_stream_run(raw, prompts[q], args.max_tokens)),
                (names[1], lambda q=question: assistant_run(assistant, q, args.max_tokens)[:2]),
                (names[2], lambda q=question: server_http_run(port, q, args.max_tokens)),
            ):
                first_ms, tokens_s = run()
                ttft[name].append(first_ms)
                rate[name].append(tokens_s)
    finally:
        server.terminate()
        server.wait(30)

    print(
        f"model {args.model}\nthreads {args.threads}, n_ctx {args.n_ctx}, {args.max_tokens} tokens per answer"
    )
    print(f"rounds {args.rounds}; streamed, temperature 0, no retrieval, direct strategy")
    # the median, and the best round (least disturbed by other load on the machine)
    stats = {
        "median": (
            {n: statistics.median(v) for n, v in ttft.items()},
            {n: statistics.median(v) for n, v in rate.items()},
        ),
        "best": ({n: min(v) for n, v in ttft.items()}, {n: max(v) for n, v in rate.items()}),
    }
    width = max(map(len, names)) + 2
    served, inproc, rawn = names[2], names[1], names[0]
    for label, (first, tokens) in stats.items():
        print(f"\n{label:{width}}{'first token ms':>16}{'gen tok/s':>12}")
        for name in names:
            print(f"{name:{width}}{first[name]:16.1f}{tokens[name]:12.1f}")
        for base in (inproc, rawn):
            added, ratio = first[served] - first[base], tokens[served] / tokens[base]
            print(f"server vs {base}: first token {added:+.1f} ms, tok/s x{ratio:.3f}")
    first, tokens = stats["median"]
    added, ratio = first[served] - first[inproc], tokens[served] / tokens[inproc]
    verdict = "met" if added < 50 and ratio >= 0.95 else "NOT met"
    print(
        f"\ntarget (median, vs Assistant.answer: the server adds < 50 ms to the first token and < 5% to "
        f"tok/s): {verdict}"
    )


if __name__ == "__main__":
    main()
