"""`nightjar serve`: a real server process on 127.0.0.1 with the real embedded model, driven by the official
`openai` client (and plain HTTP for what the SDK hides)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import openai
import pytest

from assistant.feedback import FeedbackStore
from assistant.server.queue import ModelQueue, Relay
from assistant.server.schema import RequestError, parse_chat, parse_feedback, strip_sources_footer
from tests.conftest import ROOT, run_nightjar

TOKEN = "loopback-s3cret"
FACT_QUESTION = "What is the launch code of Project Falcon?"
PLAIN = {"retrieval": False}  # Nightjar's own request field: ask the model alone


class Reply(NamedTuple):
    status_code: int
    body: Any
    text: str

    def json(self) -> Any:
        return self.body


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy


def http(
    method: str, url: str, *, json_body: Any = None, content: bytes | None = None, headers=None
) -> Reply:
    """One plain HTTP request (for what the SDK hides: status codes and raw error bodies)."""
    data = json.dumps(json_body).encode() if json_body is not None else content
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with _DIRECT.open(request, timeout=120) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return Reply(status, body, text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A `nightjar serve` subprocess, reachable at 127.0.0.1:port."""

    def __init__(self, home: Path, *args: str, token: str | None = None, env: dict[str, str] | None = None):
        self.home, self.port, self.token = home, free_port(), token
        self.log = home.parent / f"serve-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
        full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
        cmd = [
            sys.executable,
            "-m",
            "assistant",
            "--home",
            str(home),
            "serve",
            "--port",
            str(self.port),
            *args,
        ]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._wait()

    def _wait(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nightjar serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.get("/health").status_code == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"nightjar serve did not answer within {timeout}s:\n{self.log.read_text()}")

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.token or "unused")
        direct = openai.DefaultHttpxClient(trust_env=False)  # 127.0.0.1 only, never a proxy
        return openai.OpenAI(
            base_url=f"{self.base}/v1", max_retries=0, timeout=120, http_client=direct, **kwargs
        )

    def post(self, path: str, json: Any = None, content: bytes | None = None, headers=None) -> Reply:
        return http(
            "POST",
            self.base + path,
            json_body=json,
            content=content,
            headers=self.headers if headers is None else headers,
        )

    def get(self, path: str, headers=None) -> Reply:
        return http("GET", self.base + path, headers=self.headers if headers is None else headers)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with two small documents indexed, one holding a distinctive fact."""
    root = tmp_path_factory.mktemp("serve")
    docs = root / "docs"
    docs.mkdir()
    (docs / "falcon.md").write_text(
        "# Project Falcon\n\nProject Falcon is led by Dr. Imani Okafor. The launch code of Project Falcon is "
        "ZEBRA-4471. The Falcon team meets every Thursday in room 3B.\n"
    )
    (docs / "heron.txt").write_text(
        "Project Heron builds a rainwater sensor for gardens. Its budget for 2025 is 8300 euros.\n"
    )
    home = root / "home"
    done = run_nightjar("index", str(docs), home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    return home


@pytest.fixture(scope="module")
def server(home: Path):
    """One server for the module, on loopback with a token (from the environment, so it is enforced)."""
    served = Served(home, token=TOKEN, env={"NIGHTJAR_SERVER_TOKEN": TOKEN})
    yield served
    served.stop()


@pytest.fixture(scope="module")
def store(home: Path):
    with FeedbackStore(home / "nightjar.db") as db:
        yield db


def ask(client: openai.OpenAI, question: str, **kwargs):
    kwargs.setdefault("max_tokens", 16)
    return client.chat.completions.create(
        model=kwargs.pop("model", "nightjar"), messages=[{"role": "user", "content": question}], **kwargs
    )


# ---- without the model: parsing and the queue ----
def test_requests_are_parsed_into_typed_fields():
    chat = parse_chat(
        {
            "model": "nightjar-cot",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "Who leads Falcon?"}]},
                {
                    "role": "assistant",
                    "content": "Dr. Okafor [1].\n\nSources:\n- [1] /d/falcon.md, lines 1-3",
                },
                {"role": "user", "content": "Since when?"},
            ],
            "temperature": 0.3,
            "max_completion_tokens": 20,
            "seed": 4,
            "stop": "\n\n",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert (chat.model, chat.question, chat.stream, chat.include_usage) == (
        "nightjar-cot",
        "Since when?",
        True,
        True,
    )
    assert chat.history == [
        {"role": "user", "content": "Who leads Falcon?"},
        {"role": "assistant", "content": "Dr. Okafor [1]."},  # the server's own footer is not history
    ]
    assert chat.system == ["Be terse."]
    assert (chat.temperature, chat.max_tokens, chat.seed, chat.stop) == (0.3, 20, 4, ["\n\n"])
    first_turn = parse_chat({"messages": [{"role": "user", "content": "Who leads Falcon?"}]})
    assert first_turn.model == "nightjar" and first_turn.conversation() == chat.conversation()
    assert strip_sources_footer("No sources here.") == "No sources here."


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "seed": -1}, "seed"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", 1]}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ],
)
def test_bad_chat_requests_say_what_is_wrong(body, param):
    with pytest.raises(RequestError) as caught:
        parse_chat(body)
    assert caught.value.status == 400 and caught.value.param == param and caught.value.message


def test_feedback_requests_need_an_id_and_a_rating_or_correction():
    assert parse_feedback({"id": "ab12", "rating": "up"}).rating == "up"
    assert parse_feedback({"id": "ab12", "correction": "Paris."}).correction == "Paris."
    for body in (
        {"rating": "up"},
        {"id": "ab12"},
        {"id": "ab12", "rating": "meh"},
        {"id": 3, "rating": "up"},
    ):
        with pytest.raises(RequestError):
            parse_feedback(body)


def test_the_queue_runs_jobs_one_at_a_time_in_order_and_skips_cancelled_ones():
    q = ModelQueue()
    order: list[int] = []
    running = threading.Lock()
    release = threading.Event()

    def job(n: int):
        def run() -> int:
            assert running.acquire(blocking=False), "two jobs ran at once"
            try:
                if n == 0:
                    release.wait(10)
                order.append(n)
                return n
            finally:
                running.release()

        return run

    jobs = [q.submit(job(n)) for n in range(5)]
    q.start()
    jobs[3].cancel.set()  # its client left while it waited
    assert q.waiting() >= 3
    release.set()
    assert [j.future.result(10) for j in jobs if j is not jobs[3]] == [0, 1, 2, 4]
    assert jobs[3].future.cancelled() and order == [0, 1, 2, 4]
    q.close()


def test_the_relay_hands_a_threads_pieces_to_the_loop_in_order():
    async def main() -> tuple[list, list]:
        relay = Relay(asyncio.get_running_loop(), idle_s=0.05)
        idle = await relay.take()  # nothing put: an empty batch after idle_s
        worker = threading.Thread(target=lambda: [relay.put(n) for n in range(200)])
        worker.start()
        got: list[int] = []
        while len(got) < 200:
            got += await relay.take()
        worker.join()
        return idle, got

    idle, got = asyncio.run(main())
    assert idle == [] and got == list(range(200))


def test_a_holding_relay_gathers_pieces_and_wakes_for_the_last():
    async def main() -> tuple[list, float]:
        relay = Relay(asyncio.get_running_loop(), idle_s=5)
        timer = threading.Timer(0.2, lambda: [relay.put("a"), relay.put("b"), relay.put("end", last=True)])
        timer.start()
        start = time.monotonic()
        await relay.hold(10)  # the pieces do not wake it; the last one does
        return await relay.take(), time.monotonic() - start

    items, seconds = asyncio.run(main())
    assert items == ["a", "b", "end"] and seconds < 5


# ---- a real server ----
def test_models_are_the_strategies(server: Served):
    client = server.client()
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "nightjar"
    assert {
        "nightjar-direct",
        "nightjar-cot",
        "nightjar-self-consistency",
        "nightjar-tot",
        "nightjar-react",
    } <= set(ids)
    assert client.models.retrieve("nightjar-cot").model_extra["strategy"] == "cot"
    with pytest.raises(openai.NotFoundError):
        ask(client, "Hello?", model="gpt-4o")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nightjar-guess")


def test_a_plain_completion_is_a_recorded_interaction(server: Served, store: FeedbackStore, home: Path):
    reply = ask(server.client(), "What is the capital of France?", seed=7, extra_body=PLAIN)
    text = reply.choices[0].message.content
    assert reply.object == "chat.completion" and reply.model == "nightjar" and text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 16 and reply.usage.prompt_tokens > 0
    recorded = store.get(reply.id)  # the completion's id is the interaction's
    assert recorded.response == text and recorded.question == "What is the capital of France?"
    assert recorded.data["params"]["max_tokens"] == 16 and recorded.data["params"]["seed"] == 7
    assert reply.model_extra["sources"] == [] and reply.model_extra["nightjar"]["interaction_id"] == reply.id
    assert reply.model_extra["nightjar"]["strategy"] == "direct"
    listed = run_nightjar("history", "--json", "-n", "50", home=home)
    assert reply.id in [json.loads(line)["id"] for line in listed.stdout.splitlines()]


def test_a_client_system_message_is_left_out_and_said_so(server: Served, store: FeedbackStore):
    reply = server.client().chat.completions.create(
        model="nightjar-direct",
        messages=[
            {"role": "system", "content": "Always answer in French."},
            {"role": "user", "content": "Name a planet."},
        ],
        max_tokens=8,
        extra_body=PLAIN,
    )
    assert any("system message was not used" in n for n in reply.model_extra["nightjar"]["notices"])
    prompt = store.get(reply.id).prompt
    assert "Always answer in French." not in prompt and "Name a planet." in prompt


def test_stop_sequences_are_honoured(server: Served, store: FeedbackStore):
    reply = ask(
        server.client(),
        "List the numbers from 1 to 30, separated by commas.",
        stop=[","],
        max_tokens=32,
        extra_body=PLAIN,
    )
    assert "," not in reply.choices[0].message.content
    assert store.get(reply.id).data["params"]["stop"] == [","]


def test_a_streamed_completion_is_the_recorded_answer_in_pieces(server: Served, store: FeedbackStore):
    stream = ask(
        server.client(),
        "Tell me about owls.",
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=PLAIN,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason in ("stop", "length")
    usage = chunks[-1]
    assert usage.choices == [] and 0 < usage.usage.completion_tokens <= 24
    assert len({c.id for c in chunks}) == 1  # every chunk, the first included, carries one id...
    recorded = store.get(chunks[0].id)  # ...the recorded interaction's, named before the answer existed
    assert "".join(pieces) == recorded.response


def test_a_grounded_answer_cites_its_sources(server: Served, store: FeedbackStore, home: Path):
    reply = ask(server.client(), FACT_QUESTION, max_tokens=40)
    sources = reply.model_extra["sources"]
    assert sources and Path(sources[0]["source"]).name == "falcon.md" and sources[0]["n"] == 1
    content = reply.choices[0].message.content
    answer, footer = content.split("\n\nSources:\n")
    assert footer.splitlines() == [f"- [{s['n']}] {s['source']}, {s['location']}" for s in sources]
    cited = {
        int(n) for group in re.findall(r"\[([\d,\s]+)\]", answer) for n in re.split(r"[,\s]+", group) if n
    }
    assert cited <= set(range(1, len(sources) + 1))  # no citation points to no source
    recorded = store.get(reply.id)
    assert recorded.response == answer and len(recorded.sources) == len(sources)

    # the next turn: the client sends the whole chat back; the footer is not history, the conversation is one
    follow = server.client().chat.completions.create(
        model="nightjar",
        messages=[
            {"role": "user", "content": FACT_QUESTION},
            {"role": "assistant", "content": content},
            {"role": "user", "content": "Who leads Project Falcon?"},
        ],
        max_tokens=16,
    )
    again = store.get(follow.id)
    assert again.history == [
        {"role": "user", "content": FACT_QUESTION},
        {"role": "assistant", "content": answer},
    ]
    assert again.conversation_id == recorded.conversation_id


def test_feedback_over_http_reaches_the_store(server: Served, home: Path):
    def stats() -> dict:
        done = run_nightjar("feedback", "stats", "--json", home=home)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["feedback"]

    before = stats()
    first = ask(server.client(), "Name a colour.", max_tokens=8, extra_body=PLAIN)
    second = ask(server.client(), "Name a fruit.", max_tokens=8, extra_body=PLAIN)
    up = server.post("/v1/feedback", json={"id": first.id, "rating": "up", "comment": "good"})
    assert up.status_code == 200 and up.json() == {
        "object": "feedback",
        "id": first.id,
        "rating": "up",
        "corrected": False,
    }
    down = server.post(
        "/v1/feedback", json={"id": second.id[:10], "rating": "down", "correction": "A mango."}
    )
    assert down.status_code == 200 and down.json()["id"] == second.id and down.json()["corrected"] is True
    missing = server.post("/v1/feedback", json={"id": "0123456789abcdef", "rating": "up"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "interaction_not_found"
    same = {"id": first.id, "rating": "down", "correction": first.choices[0].message.content}
    refused = server.post("/v1/feedback", json=same)  # a correction equal to the answer: nothing is stored
    assert refused.status_code == 400 and "same as the answer" in refused.json()["error"]["message"]
    bad = server.post("/v1/feedback", json={"id": first.id, "rating": "meh"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
    after = stats()
    assert (after["up"], after["down"], after["correct"]) == (
        before["up"] + 1,
        before["down"] + 1,
        before["correct"] + 1,
    )


def test_concurrent_requests_take_turns_and_are_all_answered(server: Served, store: FeedbackStore):
    questions = ["What is two plus two?", "Name a bird.", "What colour is the sky?"]
    replies: dict[str, object] = {}

    def one(question: str) -> None:
        replies[question] = ask(server.client(), question, extra_body=PLAIN)

    threads = [threading.Thread(target=one, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(replies) == set(questions)
    ids = {reply.id for reply in replies.values()}
    assert len(ids) == 3
    recorded = sorted((store.get(reply.id) for reply in replies.values()), key=lambda i: i.created_at)
    for one in recorded:
        assert one.response == replies[one.question].choices[0].message.content
    for before, after in zip(recorded, recorded[1:], strict=False):  # one at a time: no two answers overlap
        assert before.created_at <= after.created_at - after.data["latency_s"] + 0.01


def test_a_client_that_leaves_mid_stream_cancels_its_generation(server: Served, store: FeedbackStore):
    question = "Write a long story about a fox who travels around the world."
    stream = ask(server.client(), question, max_tokens=1500, stream=True, extra_body=PLAIN)
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen >= 3:
            break
    stream.close()

    deadline = time.monotonic() + 60
    recorded = None
    while recorded is None and time.monotonic() < deadline:
        recorded = next((i for i in store.recent(5) if i.question == question), None)
        time.sleep(0.2)
    assert recorded is not None, "the cancelled answer was not recorded"
    assert recorded.data["finish_reason"] == "cancelled"
    assert recorded.data["completion_tokens"] < 1500
    reply = ask(server.client(), "Say hello.", max_tokens=8, extra_body=PLAIN)  # the next one is served
    assert reply.choices[0].message.content and store.get(reply.id).question == "Say hello."


def test_bad_requests_are_clear_json_errors_and_the_server_goes_on(server: Served):
    def error(response: Reply, status: int) -> dict:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert body["message"] and body["type"]
        return body

    assert "JSON" in error(server.post("/v1/chat/completions", content=b"{not json"), 400)["message"]
    assert error(server.post("/v1/chat/completions", json={"model": "nightjar"}), 400)["param"] == "messages"
    last = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert "last message" in error(server.post("/v1/chat/completions", json=last), 400)["message"]
    wrong = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": "many"}
    assert error(server.post("/v1/chat/completions", json=wrong), 400)["param"] == "max_tokens"
    unknown = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
    assert error(server.post("/v1/chat/completions", json=unknown), 404)["code"] == "model_not_found"
    error(server.get("/v1/nothing"), 404)
    error(server.get("/v1/chat/completions"), 405)
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(
            model="nightjar", messages=[{"role": "system", "content": "Hi"}]
        )
    assert ask(server.client(), "Say yes.", max_tokens=4, extra_body=PLAIN).choices[0].message.content


def test_a_token_given_on_loopback_is_enforced(server: Served):
    assert error_status(server.get("/v1/models", headers={})) == 401
    assert error_status(server.get("/v1/models", headers={"Authorization": "Bearer nope"})) == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="nope").models.list()


def error_status(response: Reply) -> int:
    assert response.json()["error"]["code"] == "invalid_api_key"
    return response.status_code


# ---- binding off loopback ----
def test_listening_off_loopback_without_a_token_is_refused(tmp_path: Path):
    port = free_port()
    done = run_nightjar("serve", "--host", "0.0.0.0", "--port", str(port), home=tmp_path / "home", timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "without a token" in done.stderr
    with socket.socket() as probe:  # nothing listens
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_port_in_use_is_one_clear_line(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_nightjar("serve", "--port", str(port), home=tmp_path / "home", timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_listening_off_loopback_with_a_token_requires_it(tmp_path: Path):
    home = tmp_path / "home"
    served = Served(home, "--host", "0.0.0.0", "--token", "wide-s3cret", token="wide-s3cret")
    try:
        refused = served.get("/v1/models", headers={})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            served.client(api_key="wrong").models.list()
        reply = ask(served.client(), "Say hi.", max_tokens=4)
        assert reply.choices[0].message.content and reply.model_extra["sources"] == []
    finally:
        served.stop()


def test_the_server_settings_are_in_the_config(tmp_path: Path):
    home = tmp_path / "home"
    shown = run_nightjar("config", home=home, env={"NIGHTJAR_SERVER_PORT": "9001"})
    section = shown.stdout.split("[server]\n", 1)[1]
    assert section.startswith('host = "127.0.0.1"\nport = 9001\ntoken = ""')
    home.mkdir()
    (home / "config.toml").write_text("[server]\nport = 70000\n")
    bad = run_nightjar("config", home=home)
    assert bad.returncode == 2 and "server.port must be between 0" in bad.stderr
