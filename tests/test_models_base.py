"""`nightjar models base FILE`: a GGUF of the user's choosing becomes the base of a new version lineage."""

from __future__ import annotations

import shutil
from pathlib import Path

from assistant import config as config_mod
from assistant import registry
from tests.conftest import run_nightjar
from tests.test_feedback_cli import one_line_error


def _gguf_of_architecture(path: Path, arch: str) -> Path:
    """A small valid GGUF whose general.architecture is `arch` (one tensor; nothing llama.cpp could run)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_new_base_is_served_trained_from_and_keeps_earlier_versions(tmp_path: Path, model_path: Path):
    home = tmp_path / "home"
    config = config_mod.load(home, environ={})
    # a version of the embedded model's lineage, as the trainer publishes it
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(model_path, staging / registry.MODEL_FILE)
    registry.publish(config, staging, {"objective": "dpo", "base": str(model_path)})
    assert registry.current_version(config) == "v1"

    mine = tmp_path / "my-model" / "mine-Q4_1.gguf"
    mine.parent.mkdir()
    shutil.copy(model_path, mine)
    chosen = run_nightjar("models", "base", str(mine), home=home)
    assert chosen.returncode == 0, chosen.stderr
    assert f"base model: {mine}" in chosen.stdout
    assert registry.served_model(config) == (registry.BASE, mine), "the new base answers at once"
    assert registry.base_model_path(config) == mine, "and training starts from it"
    assert run_nightjar("models", "base", home=home).stdout.strip() == str(mine)

    listed = run_nightjar("models", home=home).stdout
    assert "base model (mine-Q4_1.gguf)" in listed
    assert f"(from {model_path.name})" in listed, "the earlier lineage stays listed, with its base"
    assert run_nightjar("models", "use", "v1", home=home).returncode == 0, "and usable"
    assert registry.served_model(config)[0] == "v1"

    doctor = run_nightjar("doctor", home=home).stdout
    assert "base (trained from)" in doctor and str(mine) in doctor


def test_a_bad_base_is_refused_in_one_line(tmp_path: Path):
    home = tmp_path / "home"
    one_line_error(run_nightjar("models", "base", str(tmp_path / "missing.gguf"), home=home), "missing.gguf")
    other = _gguf_of_architecture(tmp_path / "encoder.gguf", "bert")
    line = one_line_error(run_nightjar("models", "base", str(other), home=home), "bert")
    assert "llama" in line, "the line names the architectures training supports"
    assert not (home / "models" / registry.BASE_FILE).exists()


def test_model_path_serves_exactly_that_file_and_says_so(tmp_path: Path, model_path: Path):
    home = tmp_path / "home"
    env = {"NIGHTJAR_MODEL_PATH": str(model_path)}
    doctor = run_nightjar("doctor", home=home, env=env).stdout
    assert "model.path: this file exactly, no versions, no training" in doctor
    refused = one_line_error(run_nightjar("train", home=home, env=env), "model.path is set")
    assert "nightjar models base FILE" in refused
