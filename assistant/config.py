"""Nightjar's configuration, in one typed place.

Precedence, lowest to highest: defaults here < the TOML file < NIGHTJAR_<SECTION>_<KEY> environment
variables < command-line flags. All state lives under one home: `--home DIR` / `NIGHTJAR_HOME` puts the
config file and every data file there; without it the config file is in the user config dir and data in the
user data dir (platformdirs).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from assistant.errors import ConfigError
from retrieval.config import RetrievalConfig

STRATEGIES = ("direct", "cot", "self-consistency", "tot", "react", "auto")


MODEL_BACKENDS = ("llamacpp", "openai")
MODEL_CONSTRAINTS = ("auto", "llamacpp", "vllm", "none")


@dataclass
class ModelConfig:
    path: str = ""  # serve exactly this GGUF: no versions, no training; empty: the served model version
    base: str = ""  # the GGUF versions are trained from (`nightjar models base`); empty: that, or SmolLM2
    n_ctx: int = 4096
    n_threads: int = 0  # 0: one per available core
    n_gpu_layers: int = 0
    system_prompt: str = "Answer the user's question concisely and accurately."
    # where the model runs: llamacpp (in-process, the default) or openai (an OpenAI-compatible server at
    # `url`; prompts are still rendered and counted with the GGUF above, which training also starts from)
    backend: str = "llamacpp"
    url: str = ""  # backend openai: the server's API root, e.g. http://127.0.0.1:8080/v1
    model: str = ""  # backend openai: the server's model name; empty: the one model it serves
    api_key: str = field(default="", metadata={"secret": True})  # or NIGHTJAR_MODEL_API_KEY
    constraints: str = "auto"  # backend openai: how JSON-schema/grammar steps are sent (auto, llamacpp,
    # vllm, none); auto asks the server what it is

    def check(self) -> list[str]:
        """Problems with the values, one line each."""
        problems = []
        if self.backend not in MODEL_BACKENDS:
            problems.append(f"model.backend '{self.backend}': use {' or '.join(MODEL_BACKENDS)}")
        if self.constraints not in MODEL_CONSTRAINTS:
            problems.append(f"model.constraints '{self.constraints}': use {', '.join(MODEL_CONSTRAINTS)}")
        if self.backend == "openai":
            parts = urlsplit(self.url.strip())
            if not self.url.strip():
                problems.append(
                    'model.backend is "openai" but model.url is empty: set it to the server\'s API root, '
                    "e.g. http://127.0.0.1:8080/v1"
                )
            elif parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(
                    f"model.url '{self.url}' is not an http(s) URL: use e.g. http://127.0.0.1:8080/v1"
                )
        elif self.backend == "llamacpp" and self.url.strip():
            problems.append(
                f'model.url is set ({self.url}) but model.backend is "llamacpp" (in-process): '
                'set model.backend = "openai" to use that server, or clear model.url'
            )
        if self.api_key != self.api_key.strip():
            problems.append("model.api_key must not start or end with spaces")
        return problems


@dataclass
class GenerationConfig:
    temperature: float = 0.0
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0


@dataclass
class AskConfig:
    strategy: str = "direct"
    retrieval: bool = True


@dataclass
class ReasoningConfig:
    samples: int = 5  # self-consistency: reasoning samples that vote on the answer
    sample_temperature: float = 0.7  # self-consistency and tot: temperature of the samples
    breadth: int = 3  # tot: next thoughts proposed per state
    beam: int = 2  # tot: states kept per depth (0: keep all, plain breadth-first search)
    depth: int = 3  # tot: most reasoning steps
    max_steps: int = 6  # react: most Thought -> Action -> Observation steps
    token_budget: int = 24000  # tot and react: most tokens (prompt + completion) one answer may use
    step_tokens: int = 320  # cot and self-consistency: most tokens of one reasoning text


@dataclass
class FeedbackConfig:
    holdout_fraction: float = 0.2  # share of prompts kept out of training, for evaluation (stable by hash)
    max_rows: int = 2000  # cap: most rows of one kind a training run samples
    max_rows_per_prompt: int = 2  # most rows a run samples from one group of near-duplicate prompts
    near_duplicate_similarity: float = 0.8  # word overlap (Jaccard) making two prompts near-duplicates
    recency_half_life_days: float = 30.0  # a row's sampling weight halves with every this many days of age
    retention_days: int = 365  # rows older than this are no longer sampled for training (0: no limit)
    regenerate_temperature: float = 0.8  # a regeneration samples at least this warm, so it can differ


# ---- [train]: the nightly trainer (trainer/ builds its TRL configs from this) ----
OBJECTIVES = ("sft", "dpo", "kto", "raft")
REWARDS = ("model", "dpo", "rules")
BUSY_ACTIONS = ("wait", "skip")


@dataclass
class TrainConfig:
    # what to train on
    objective: str = "auto"  # auto (dpo+kto+sft where rows exist), sft, dpo, kto, raft, or e.g. "raft+dpo"
    min_new_rows: int = 20  # below this many new feedback rows a run does nothing
    replay_fraction: float = 0.5  # older rows replayed, as a fraction of the new ones
    # the LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # optimisation
    learning_rate: float = 5e-4
    epochs: int = 1  # passes over the rows; every run also replays a sample of older rows
    max_steps: int = 0  # >0: stop after this many optimiser steps (caps a run's time)
    batch_size: int = 4  # examples per optimiser step
    micro_batch_size: int = 0  # examples per forward pass; 0: the fewest the objective allows on the CPU
    # (padding a batch to its longest row costs more there than batching gains), batch_size on a GPU
    max_length: int = 512  # tokens of prompt + answer; a longer prompt loses its oldest part
    beta: float = 0.1  # DPO / KTO strength of the pull away from the current model
    sft_weight: float = 1.0  # DPO: weight of a likelihood loss on the chosen answers (RPO); 0: plain DPO
    general_replay: int = 16  # SFT also trains the served model's own answers to this many everyday
    # questions (data/general_prompts.txt), so a night's style stays where the feedback was; 0: none
    seed: int = 0
    # RAFT: sample K answers per prompt with the current model, keep the best by reward, fine-tune on it
    raft_k: int = 4
    raft_prompts: int = 64  # most prompts sampled in one run
    raft_reward: str = (
        "model+rules"  # "+"-joined: model (reward model on your pairs), dpo (last adapter), rules
    )
    raft_temperature: float = 0.8
    raft_max_new_tokens: int = 128
    # the written model
    export_type: str = "F32"  # float GGUF written from the merged model before quantizing: F32 or F16
    quant_type: str = ""  # served quantization (Q4_K_M, Q8_0, ...); empty: the base model's type
    # the evaluation gate
    canary_tolerance: float = 0.05  # reference perplexity may rise by at most this fraction
    min_holdout_rows: int = 8  # held-out rows of a trained kind needed to tell a gain from chance
    confidence: float = 0.95  # a gain counts when its paired-bootstrap lower bound at this level is above 0
    eval_n_ctx: int = 1024
    # a busy machine (scheduled runs only)
    max_load: float = 1.5  # 1-minute load average per CPU core above which the machine counts as busy
    busy: str = "wait"  # wait: retry every minute up to busy_wait_minutes, then skip; skip: skip at once
    busy_wait_minutes: int = 60
    threads: int = 0  # CPU threads for training and llama.cpp; 0: one per core

    def objectives(self) -> list[str]:
        """The configured objective as a sequence (empty for auto)."""
        if self.objective == "auto":
            return []
        return [part.strip() for part in self.objective.split("+") if part.strip()]

    def rewards(self) -> list[str]:
        return [part.strip() for part in self.raft_reward.split("+") if part.strip()]

    def check(self) -> list[str]:
        """Problems with the values, one line each (the config loader reports them)."""
        problems = []
        if self.objective != "auto" and (
            not self.objectives() or any(o not in OBJECTIVES for o in self.objectives())
        ):
            problems.append(
                f"train.objective '{self.objective}': use auto, {', '.join(OBJECTIVES)} or e.g. raft+dpo"
            )
        if any(r not in REWARDS for r in self.rewards()) or not self.rewards():
            problems.append(f"train.raft_reward '{self.raft_reward}': '+'-joined from {', '.join(REWARDS)}")
        if self.busy not in BUSY_ACTIONS:
            problems.append(f"train.busy '{self.busy}': use wait or skip")
        if self.export_type.upper() not in ("F32", "F16"):
            problems.append(f"train.export_type '{self.export_type}': use F32 or F16")
        for name in (
            "min_new_rows",
            "lora_r",
            "lora_alpha",
            "epochs",
            "batch_size",
            "raft_k",
            "raft_prompts",
            "min_holdout_rows",
        ):
            if getattr(self, name) < 1:
                problems.append(f"train.{name} must be at least 1")
        if self.micro_batch_size < 0:
            problems.append("train.micro_batch_size must be 0 (automatic) or more")
        if not 0.5 <= self.confidence < 1:
            problems.append("train.confidence must be at least 0.5 and below 1 (e.g. 0.95)")
        if self.sft_weight < 0:
            problems.append("train.sft_weight must be 0 or more")
        if self.general_replay < 0:
            problems.append("train.general_replay must be 0 or more")
        if not 0 <= self.replay_fraction <= 10:
            problems.append("train.replay_fraction must be between 0 and 10")
        if not self.target_modules:
            problems.append("train.target_modules must name at least one module")
        return problems


# ---- [server]: `nightjar serve`, the OpenAI-compatible HTTP server ----
@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # 127.0.0.1: this machine only; another address (0.0.0.0: all) needs a token
    port: int = 8411
    token: str = ""  # clients must send `Authorization: Bearer TOKEN`; empty: none (loopback only)

    def check(self) -> list[str]:
        """Problems with the values, one line each."""
        problems = []
        if not self.host.strip():
            problems.append("server.host is empty: use 127.0.0.1 (this machine only) or an address")
        if not 0 <= self.port <= 65535:
            problems.append(f"server.port must be between 0 (any free port) and 65535, got {self.port}")
        if self.token != self.token.strip():
            problems.append("server.token must not start or end with spaces")
        return problems


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ask: AskConfig = field(default_factory=AskConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    # where things live; set by load(), not by the file
    home: Path = field(default=Path("."), metadata={"internal": True})
    config_file: Path = field(default=Path("config.toml"), metadata={"internal": True})

    # ---- locations of state under the home ----
    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def db_path(self) -> Path:
        return self.home / "nightjar.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(Config) if not f.metadata.get("internal")}


def _section_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in _sections()}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check (and for env/CLI strings, convert) a value to the dataclass field's type."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind) or (str,)
        return [_coerce(v, item, where) for v in value]
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    return value


def _apply(config: Config, section: str, key: str, value: Any, where: str) -> None:
    types_ = _section_types()
    if section not in types_:
        raise ConfigError(f"unknown config section '{section}' ({where}); known: {', '.join(types_)}")
    target = getattr(config, section)
    hints = typing.get_type_hints(type(target))
    if key not in hints or key.startswith("_"):
        known = ", ".join(f.name for f in dataclasses.fields(target))
        raise ConfigError(f"unknown config key '{section}.{key}' ({where}); known: {known}")
    setattr(target, key, _coerce(value, hints[key], f"{section}.{key} ({where})"))


def default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("nightjar", appauthor=False))


def default_config_file() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("nightjar", appauthor=False)) / "config.toml"


def load(
    home: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration: defaults < file < environment < `overrides` ({"section.key": value})."""
    environ = os.environ if environ is None else environ
    home = home or environ.get("NIGHTJAR_HOME") or None
    config = Config()
    if home:
        config.home = Path(home).expanduser().resolve()
        config.config_file = config.home / "config.toml"
    else:
        config.home = default_home()
        config.config_file = default_config_file()

    if config.config_file.exists():
        try:
            data = tomllib.loads(config.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config.config_file}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config.config_file} is not valid TOML: {exc}") from exc
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"config file {config.config_file}: '{section}' must be a [section] table")
            for key, value in table.items():
                _apply(config, section, key, value, str(config.config_file))

    sections = _sections()
    for name, value in sorted(environ.items()):
        if not name.startswith("NIGHTJAR_") or name == "NIGHTJAR_HOME":
            continue
        section, _, key = name[len("NIGHTJAR_") :].lower().partition("_")
        if section in sections and key:
            _apply(config, section, key, value, f"environment {name}")

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply(config, section, key, value, "command line")

    if config.ask.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{config.ask.strategy}'; choose one of {', '.join(STRATEGIES)}")
    if not 0 <= config.feedback.holdout_fraction < 1:
        fraction = config.feedback.holdout_fraction
        raise ConfigError(f"feedback.holdout_fraction must be at least 0 and below 1, got {fraction}")
    problems = config.model.check() + config.retrieval.check() + config.server.check()
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def to_toml(config: Config) -> str:
    """The effective configuration as TOML (for `nightjar config`)."""
    lines: list[str] = []
    for name in _sections():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(getattr(config, name)):
            value = getattr(getattr(config, name), f.name)
            if f.metadata.get("secret") and value:  # a key is never printed
                lines.append(f'{f.name} = "***"  # set (hidden)')
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'
