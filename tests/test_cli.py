"""The `nightjar` command as a user runs it: real subprocess, real model, temp home."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_nightjar


def test_ask_answers_with_the_default_model(home: Path):
    result = run_nightjar("ask", "--no-retrieval", "What is the capital of France?", home=home)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_help_lists_the_commands():
    result = run_nightjar("--help")
    assert result.returncode == 0
    for command in ("ask", "doctor", "config"):
        assert command in result.stdout


def test_doctor_describes_the_embedded_model(home: Path, model_path: Path):
    result = run_nightjar("doctor", home=home)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert str(model_path) in out and "llama" in out and "Q4_1" in out
    assert "MiniLM" in out or "minilm" in out.lower()
    assert str(home) in out
    assert "CUDA" in out


def test_model_flag_serves_the_given_gguf(home: Path, model_path: Path, tmp_path: Path):
    copy = tmp_path / "my-model.gguf"
    copy.write_bytes(model_path.read_bytes())
    result = run_nightjar("ask", "--no-retrieval", "--model", str(copy), "--json", "Say hello.", home=home)
    assert result.returncode == 0, result.stderr
    assert '"model_version": "custom"' in result.stdout


def test_config_precedence_file_env_flag(home: Path):
    (home / "config.toml").write_text("[generation]\nmax_tokens = 77\nseed = 5\n[model]\nn_ctx = 1024\n")
    shown = run_nightjar("config", home=home, env={"NIGHTJAR_GENERATION_SEED": "9"}).stdout
    assert "max_tokens = 77" in shown and "seed = 9" in shown and "n_ctx = 1024" in shown


def assert_one_line_error(result, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0]


def test_missing_model_file(home: Path, tmp_path: Path):
    result = run_nightjar("ask", "--no-retrieval", "--model", str(tmp_path / "nope.gguf"), "hi", home=home)
    assert_one_line_error(result, "not found", "nope.gguf")


def test_non_gguf_file(home: Path, tmp_path: Path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("just some text, not a model\n")
    assert_one_line_error(
        run_nightjar("ask", "--no-retrieval", "--model", str(bogus), "hi", home=home), "not a GGUF"
    )


def test_corrupt_gguf_file(home: Path, tmp_path: Path, model_path: Path):
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(model_path.read_bytes()[:3_000_000])  # a real header, then cut off
    result = run_nightjar("ask", "--no-retrieval", "--model", str(broken), "hi", home=home)
    assert_one_line_error(result, "truncated.gguf")


def test_unknown_config_key(home: Path):
    (home / "config.toml").write_text("[model]\ntemprature = 0.3\n")
    assert_one_line_error(run_nightjar("ask", "--no-retrieval", "hi", home=home), "model.temprature")


def test_unreadable_config(home: Path):
    (home / "config.toml").write_text("[model\npath = ")
    assert_one_line_error(run_nightjar("ask", "--no-retrieval", "hi", home=home), "not valid TOML")


def test_bad_env_value(home: Path):
    result = run_nightjar("ask", "--no-retrieval", "hi", home=home, env={"NIGHTJAR_MODEL_N_CTX": "lots"})
    assert_one_line_error(result, "n_ctx", "NIGHTJAR_MODEL_N_CTX")


def test_debug_shows_the_traceback(home: Path, tmp_path: Path):
    result = run_nightjar("--debug", "ask", "--model", str(tmp_path / "nope.gguf"), "hi", home=home)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_an_empty_question_is_refused(home: Path):
    for question in ("", "   "):
        assert_one_line_error(run_nightjar("ask", question, home=home), "the question is empty")


TRAINING_LIBRARIES = ("sentence_transformers", "peft", "trl", "bitsandbytes", "datasets")
SERVE_AND_LIST = f"""
import sys
from assistant import config
from assistant.service import Assistant
answer = Assistant(config.load(sys.argv[1], environ={{}})).answer("Who serviced the boiler?")
assert answer.sources, answer.notices
print(" ".join(m for m in {TRAINING_LIBRARIES!r} if m in sys.modules))
"""


def test_a_grounded_answer_is_quiet_and_imports_no_training_library(home: Path, tmp_path: Path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "boiler.md").write_text(
        "# Boiler\n\nThe boiler in the basement was serviced on 12 March by Ana.\n"
    )
    indexed = run_nightjar("index", str(docs), home=home)
    assert indexed.returncode == 0 and indexed.stderr == "", indexed.stderr
    asked = run_nightjar("ask", "--max-tokens", "24", "Who serviced the boiler?", home=home)
    assert asked.returncode == 0 and "Sources:" in asked.stdout
    assert asked.stderr == "", asked.stderr  # no library's warnings on the user's terminal
    loaded = subprocess.run(
        [sys.executable, "-c", SERVE_AND_LIST, str(home)], capture_output=True, text=True, cwd=ROOT
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [], f"serving imported {loaded.stdout.strip()}"
