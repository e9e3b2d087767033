"""Configuration: one typed place, file < environment < flags, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant.errors import ConfigError


def test_defaults_and_home_layout(home: Path):
    cfg = config_mod.load(home, environ={})
    assert cfg.home == home.resolve() and cfg.config_file == home.resolve() / "config.toml"
    assert cfg.db_path.parent == cfg.index_dir.parent == cfg.models_dir.parent == home.resolve()
    assert cfg.model.n_ctx == 4096 and cfg.generation.temperature == 0.0


def test_nightjar_home_env_relocates_state(tmp_path: Path):
    cfg = config_mod.load(None, environ={"NIGHTJAR_HOME": str(tmp_path)})
    assert cfg.home == tmp_path.resolve()


def test_precedence(home: Path):
    (home / "config.toml").write_text("[generation]\ntemperature = 0.5\ntop_p = 0.8\nmax_tokens = 100\n")
    env = {"NIGHTJAR_GENERATION_TOP_P": "0.7", "NIGHTJAR_GENERATION_MAX_TOKENS": "200"}
    cfg = config_mod.load(home, {"generation.max_tokens": 300}, environ=env)
    assert (cfg.generation.temperature, cfg.generation.top_p, cfg.generation.max_tokens) == (0.5, 0.7, 300)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[model]\nbogus = 1\n", "unknown config key 'model.bogus'"),
        ("[nonsense]\nx = 1\n", "unknown config section 'nonsense'"),
        ("[model]\nn_ctx = 'big'\n", "expected a number"),
        ("[ask]\nstrategy = 'guess'\n", "unknown strategy"),
        ("[ask]\nretrieval = 3\n", "expected true or false"),
        ("model = 3\n", "must be a [section] table"),
        ("[model\n", "not valid TOML"),
        ("[retrieval]\nreranker_pair_tokens = 1024\n", "reranker_pair_tokens must be between 16 and 512"),
    ],
)
def test_bad_config_is_a_clear_error(home: Path, toml: str, message: str):
    (home / "config.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        config_mod.load(home, environ={})


def test_effective_config_round_trips_through_toml(home: Path):
    cfg = config_mod.load(home, {"model.system_prompt": 'Say "hi"\nthen stop.'}, environ={})
    (home / "config.toml").write_text(config_mod.to_toml(cfg))
    again = config_mod.load(home, environ={})
    assert again.model == cfg.model and again.generation == cfg.generation
