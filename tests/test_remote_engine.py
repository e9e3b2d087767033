"""The remote engine (`[model] backend = "openai"`) against a real OpenAI-compatible model server.

The server is llama-cpp-python's own (`python -m llama_cpp.server`), serving the embedded GGUF on 127.0.0.1
at a free port, with an API key. It is started through a small wrapper that loads the model the way
`assistant.llamacpp` does (without extra buffer types where the build has ggml's AMX path, which crashes),
so that it holds on any CPU. The 135M model is weak: these assert structure (answers, valid actions,
citations of real files, the exact prompt recorded), never its words.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from assistant import config as config_mod
from assistant.engine import GenParams, chat
from assistant.errors import ConfigError
from assistant.feedback import FeedbackStore
from assistant.reasoning.react import PLAN_SCHEMA
from assistant.reasoning.tot import SCORE_GRAMMAR
from assistant.remote_engine import ModelServerError, RemoteEngine, ServerInfo, Vocab, constraint_mode
from assistant.service import Assistant
from tests.conftest import ROOT, run_nightjar

KEY = "test-key-1234"
SYSTEM = {"role": "system", "content": "Answer the user's question concisely and accurately."}

# llama_cpp.server's own entry point, inside our loader's protection (sys.argv carries its options)
WRAPPER = """
import sys
from assistant import llamacpp
from llama_cpp.server.__main__ import main
fields = llamacpp.protection().model_params()
print(f"nightjar test server: model params {fields}", file=sys.stderr, flush=True)
with llamacpp.default_model_params(fields):
    main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory):
    """The URL of a llama-cpp-python server serving the embedded GGUF (API key `KEY`)."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--model", str(model_path), "--n_ctx", "2048", "--n_threads", "2"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--api_key", KEY]
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the model server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the model server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        assert "nightjar test server: model params" in log.read_text()  # the protected loader ran
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def remote(server: str, model_path: Path) -> RemoteEngine:
    return RemoteEngine(server, model_path, api_key=KEY, n_ctx=2048)


def remote_env(url: str, key: str = KEY) -> dict[str, str]:
    return {
        "NIGHTJAR_MODEL_BACKEND": "openai",
        "NIGHTJAR_MODEL_URL": url,
        "NIGHTJAR_MODEL_API_KEY": key,
        "NIGHTJAR_MODEL_N_CTX": "2048",
    }


def remote_config(home: Path, url: str) -> config_mod.Config:
    return config_mod.load(home, environ=remote_env(url))


# ---- the engine itself ----
def test_the_server_is_recognised_and_prompts_are_the_local_ones(remote: RemoteEngine, engine):
    assert remote.server.kind == "llama-cpp-python" and remote.constraints == "llamacpp"
    assert remote.model == remote.server.models[0] and remote.n_ctx == 2048
    assert remote.notices == []  # it serves the very GGUF the prompts are rendered with
    msgs = [SYSTEM, {"role": "user", "content": "Hi"}]
    # the exact text the model sees: the same template and tokenizer as in-process
    assert remote.render(msgs) == engine.render(msgs)
    assert remote.render(msgs, add_generation_prompt=False) == engine.render(
        msgs, add_generation_prompt=False
    )
    assert remote.count_tokens(remote.render(msgs)) == engine.count_tokens(engine.render(msgs))


def test_streaming_max_tokens_and_stop(remote: RemoteEngine):
    msgs = [SYSTEM, {"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    generation = chat(remote, msgs, GenParams(max_tokens=40))
    pieces = list(generation)
    free = generation.completion
    assert len(pieces) > 3 and "".join(pieces) == free.text and free.text.strip()
    assert free.prompt_tokens == remote.count_tokens(remote.render(msgs))
    short = chat(remote, msgs, GenParams(max_tokens=4)).result()
    assert short.finish_reason == "length" and 0 < short.completion_tokens <= 5
    if "5" in free.text:
        stopped = chat(remote, msgs, GenParams(max_tokens=40, stop=["5"])).result()
        assert "5" not in stopped.text and len(stopped.text) < len(free.text)


def test_cancel_stops_the_stream_and_the_server_keeps_serving(remote: RemoteEngine):
    msgs = [SYSTEM, {"role": "user", "content": "Write a long story about a nightjar."}]
    generation = chat(remote, msgs, GenParams(max_tokens=200))
    seen = []
    for piece in generation:
        seen.append(piece)
        if len(seen) == 3:
            generation.cancel()
    result = generation.result()
    assert result.finish_reason == "cancelled" and result.text == "".join(seen)
    assert chat(remote, msgs, GenParams(max_tokens=4)).result().text  # the next request is served


def test_grammar_and_json_schema_constrain_the_server(remote: RemoteEngine):
    msgs = [SYSTEM, {"role": "user", "content": "Rate this answer from 1 to 10: 2 + 2 = 4."}]
    score = chat(remote, msgs, GenParams(max_tokens=3), grammar=SCORE_GRAMMAR).result().text.strip()
    assert score.isdigit() and 1 <= int(score) <= 10
    msgs = [{"role": "user", "content": "Split into questions: who leads Falcon, and since when?"}]
    done = chat(remote, msgs, GenParams(max_tokens=120), json_schema=PLAN_SCHEMA).result()
    plan = json.loads(done.text, strict=False)
    assert isinstance(plan["sub_questions"], list) and 1 <= len(plan["sub_questions"]) <= 3


def test_vllm_and_no_constraints_are_sent_as_those_servers_take_them(remote: RemoteEngine, caplog):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    assert "root ::=" in remote.constraint_fields(None, schema)["grammar"]  # llama.cpp: GBNF
    saved = remote.constraints, remote.server
    try:
        remote.constraints = "vllm"
        remote.server = ServerInfo(remote.url, kind="vllm", version="0.12.1")
        assert remote.constraint_fields(None, schema) == {"structured_outputs": {"json": schema}}
        assert remote.constraint_fields("root ::= x", None) == {
            "structured_outputs": {"grammar": "root ::= x"}
        }
        remote.server = ServerInfo(remote.url, kind="vllm", version="0.9.2")
        assert remote.constraint_fields(None, schema) == {"guided_json": schema}
        remote.constraints = "none"
        with caplog.at_level(logging.INFO, logger="nightjar.engine"):
            assert remote.constraint_fields(None, schema) == {}
            assert remote.constraint_fields(None, schema) == {}
        notes = [r.getMessage() for r in caplog.records if r.name == "nightjar.engine"]
        assert len(notes) == 1 and "unconstrained" in notes[0] and "\n" not in notes[0]  # once, one line
        # unconstrained, the generation still runs; what it says is checked by the strategies
        msgs = [SYSTEM, {"role": "user", "content": "Say hi."}]
        assert chat(remote, msgs, GenParams(max_tokens=8), json_schema=schema).result().completion_tokens > 0
    finally:
        remote.constraints, remote.server = saved
        remote.notices.clear()
    assert constraint_mode("auto", ServerInfo("u", kind="ollama")) == "none"
    assert constraint_mode("auto", ServerInfo("u", kind="llama-server")) == "llamacpp"
    assert constraint_mode("vllm", ServerInfo("u", kind="unknown")) == "vllm"


def test_a_model_the_server_does_not_serve_is_one_clear_error(server: str, model_path: Path):
    from assistant.remote_engine import _pick_model, _status_error

    info = ServerInfo("http://h/v1", kind="vllm", models=["qwen", "llama"])
    with pytest.raises(ModelServerError, match=r"has no model 'mistral'; it serves: qwen, llama \(set model"):
        _pick_model(info, "mistral")
    with pytest.raises(ModelServerError, match="serves 2 models .*set model.model"):
        _pick_model(info, "")
    assert _pick_model(ServerInfo("u", kind="ollama", models=["smollm2:latest"]), "smollm2") == "smollm2"
    # llama-cpp-python serves its one model whatever it is called
    assert RemoteEngine(server, model_path, model="anything", api_key=KEY).model == "anything"
    with pytest.raises(ModelServerError, match=r"refused Nightjar's API key \(401"):
        RemoteEngine(server, model_path, api_key="wrong")
    # a server that goes away after the start: the next answer says so in one line
    gone = RemoteEngine(server, model_path, api_key=KEY)
    gone._client = gone._client.with_options(base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ModelServerError, match="cannot reach the model server"):
        chat(gone, [SYSTEM, {"role": "user", "content": "Hi"}], GenParams(max_tokens=4)).result()
    too_long = _status_error(server, 400, "This model's maximum context length is 2048 tokens")
    assert "set model.n_ctx" in str(too_long)


# ---- the assistant through the server ----
def test_cli_ask_direct_answers_through_the_server_and_records_the_exact_prompt(
    server: str, home: Path, model_path: Path
):
    question = "What is the capital of France?"
    result = run_nightjar(
        "ask", "--no-retrieval", "--json", "--max-tokens", "24", question, home=home, env=remote_env(server)
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["text"].strip() and answer["strategy"] == "direct"
    assert answer["messages"][-1]["content"] == question
    assert answer["prompt"] == Vocab(model_path).render(answer["messages"])  # what the server was sent
    stored = FeedbackStore(home / "nightjar.db").get(answer["interaction_id"])
    assert stored.prompt == answer["prompt"] and stored.response == answer["text"]


@pytest.fixture(scope="module")
def indexed(server: str, tmp_path_factory) -> tuple[Path, Path]:
    """A home whose index holds a small folder of notes, and that folder."""
    from retrieval.index import Index
    from retrieval.indexer import update

    home = tmp_path_factory.mktemp("home")
    docs = tmp_path_factory.mktemp("docs")
    (docs / "falcon.md").write_text(
        "# Project Falcon\n\nProject Falcon is led by Dr. Mira Okafor. The project builds weather drones.\n"
    )
    (docs / "bread.md").write_text(
        "# Bread\n\nKnead the dough for ten minutes, then bake it at 230 degrees.\n"
    )
    config = remote_config(home, server)
    update(Index(config.index_dir, config.retrieval), [docs])
    return home, docs


def test_cot_answers_from_the_documents_through_the_server(server: str, indexed):
    home, docs = indexed
    config = remote_config(home, server)
    config.reasoning.step_tokens = 48
    assistant = Assistant(config)
    assert isinstance(assistant.engine, RemoteEngine)
    answer = assistant.answer("Who leads Project Falcon?", strategy="cot", params=GenParams(max_tokens=32))
    assert answer.text.strip() and answer.strategy == "cot" and answer.reasoning.strip()
    assert answer.prompt_tokens > 0 and answer.completion_tokens > 0
    assert answer.sources and {Path(s.source).parent for s in answer.sources} == {docs}
    stored = assistant.feedback_store.get(answer.interaction_id)
    assert stored.prompt == answer.prompt and stored.prompt.startswith("<|im_start|>")


def test_react_searches_and_cites_real_sources_through_the_server(server: str, indexed):
    home, docs = indexed
    config = remote_config(home, server)
    config.reasoning.max_steps = 2  # the search of the question, then the final answer
    assistant = Assistant(config)
    answer = assistant.answer("Who leads Project Falcon?", strategy="react", params=GenParams(max_tokens=24))
    acts = [e for e in answer.trace if e["step"] == "act"]
    assert acts and all(a["valid"] for a in acts), [a for a in acts if not a["valid"]]  # schema-constrained
    assert acts[0]["by"] == "plan" and acts[0]["tool"] == "search_documents"
    assert acts[-1]["tool"] == "final_answer" and answer.finish_reason == "stop"
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer.text)}
    assert cited and cited == {s.n for s in answer.sources}
    assert {Path(s.source).parent for s in answer.sources} == {docs}
    stored = assistant.feedback_store.get(answer.interaction_id)
    assert stored.prompt == answer.prompt == assistant.engine.render(answer.messages)
    assert stored.strategy == "react"


def test_without_constrained_decoding_the_answer_says_so(server: str, indexed):
    home, _ = indexed
    config = remote_config(home, server)
    config.model.constraints = "none"  # as a server that offers neither schemas nor grammars
    config.reasoning.max_steps = 2
    assistant = Assistant(config, record=False)
    answer = assistant.answer("Who leads Project Falcon?", strategy="react", params=GenParams(max_tokens=24))
    assert answer.text.strip()
    assert len([n for n in answer.notices if "constrain" in n.lower() or "schema" in n.lower()]) == 1, (
        answer.notices
    )
    again = assistant.answer("Who leads Project Falcon?", strategy="react", params=GenParams(max_tokens=24))
    assert not [n for n in again.notices if "schema" in n.lower()]  # said once, not on every answer


# ---- errors, doctor, config ----
def test_an_unreachable_server_or_a_wrong_key_is_one_line_and_exit_2(server: str, home: Path):
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    for env, said in [
        (remote_env(nowhere), f"error: cannot reach the model server at {nowhere}"),
        (remote_env(server, key="wrong"), "refused Nightjar's API key (401"),
    ]:
        result = run_nightjar("ask", "--no-retrieval", "--max-tokens", "8", "Hi?", home=home, env=env)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and said in lines[0] and "Traceback" not in result.stderr


def test_doctor_shows_the_server_and_whether_it_answers(server: str, home: Path):
    result = run_nightjar("doctor", home=home, env=remote_env(server))
    assert result.returncode == 0, result.stderr
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines())
    assert rows["backend"].startswith("openai") and rows["url"] == server
    assert rows["server"].startswith("answers: llama-cpp-python") and rows["API key"].startswith("set")
    assert rows["constraints"].startswith("llamacpp")
    assert KEY not in result.stdout


def test_model_config_is_validated_at_load(home: Path):
    def load(**env: str) -> config_mod.Config:
        return config_mod.load(home, environ={f"NIGHTJAR_MODEL_{k.upper()}": v for k, v in env.items()})

    assert load().model.backend == "llamacpp"
    with pytest.raises(ConfigError, match="model.url is empty"):
        load(backend="openai")
    with pytest.raises(ConfigError, match="not an http"):
        load(backend="openai", url="127.0.0.1:8080")
    with pytest.raises(ConfigError, match='model.backend is "llamacpp"'):
        load(url="http://127.0.0.1:8080/v1")  # a URL alone never sends anything anywhere
    with pytest.raises(ConfigError, match="model.backend 'remote'"):
        load(backend="remote")
    with pytest.raises(ConfigError, match="model.constraints 'xgrammar'"):
        load(backend="openai", url="http://127.0.0.1:8080/v1", constraints="xgrammar")
    cfg = load(backend="openai", url="http://127.0.0.1:8080/v1", api_key="s3cret")
    assert cfg.model.api_key == "s3cret" and "s3cret" not in config_mod.to_toml(cfg)


def test_train_says_how_the_server_loads_a_new_version(home: Path):
    from assistant.cli.train import model_server_hint

    version = home / "models" / "v1"
    version.mkdir(parents=True)
    (version / "model.gguf").write_bytes(b"GGUF")
    (version / "version.json").write_text("{}")
    cfg = config_mod.load(home, environ={})
    assert model_server_hint(cfg, "v1") == []
    cfg = config_mod.load(home, environ=remote_env("http://127.0.0.1:8080/v1"))
    hint = model_server_hint(cfg, "v1")
    assert any(str(version / "model.gguf") in line and "restart" in line for line in hint)
