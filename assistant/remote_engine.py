"""An OpenAI-compatible model server as Nightjar's engine (`[model] backend = "openai"`).

Any server with OpenAI's `/v1/completions` works: llama.cpp's llama-server, vLLM, Ollama, llama-cpp-python's
own server. `RemoteEngine` implements the same `Engine` protocol as the in-process `LlamaCppEngine`, so the
assistant and every reasoning strategy run unchanged against it.

Design: prompts are rendered and counted here, and the server only completes text. The strategies build
their prompts themselves (`engine.render`), count tokens to fit the context and the token budget, and every
answer keeps `Answer.prompt`, the exact text the model saw, for the training rows. So the chat template and
the tokenizer come from a GGUF on disk (the served version's; a vocab-only llama.cpp load reads them in
well under a second, without the weights), and the rendered text goes to `/v1/completions`. Chat completions
would let the server apply its own template: the prompt it sees would then be unknown here, react's
hand-built turns could not be sent as they are, and the counts would be guesses. The price: the server must
serve the same model as that GGUF (or one with the same chat template and tokenizer); where a server says
what it serves (llama-server's `/props`, llama-cpp-python's model list) a mismatch is noted.

Constrained steps (react's actions under a JSON schema, tot's scores under a grammar) are sent the way the
server takes them (`[model] constraints`, or `auto`: asked once at start):
- llamacpp (llama-server, llama-cpp-python's server): a GBNF `grammar` field; a JSON schema is first turned
  into GBNF by llama-cpp-python's converter, the one the in-process engine uses.
- vllm: `structured_outputs` (`json` or `grammar`); `guided_json` / `guided_grammar` before vLLM 0.11.
- none (Ollama's `/v1/completions` takes neither): the steps run unconstrained, after a one-line notice;
  the strategies check every output (an invalid react action is answered with an error observation and
  retried, a tot score that is not a number counts as 0).

Errors (the server is unreachable, refuses the key, does not know the model) are one-line `NightjarError`s
saying what to do. Nothing here opens a connection unless `[model] url` is configured.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.engine import Generation, GenParams, Message
from assistant.errors import ModelFileError, NightjarError
from assistant.http_errors import client_errors
from assistant.modelfile import check_gguf

log = logging.getLogger("nightjar.engine")

CONNECT_TIMEOUT = 5.0  # seconds to reach the server
READ_TIMEOUT = 600.0  # seconds between two pieces of an answer (a long prompt on a slow CPU server)
PROBE_TIMEOUT = 5.0  # seconds for each question about what the server is
SINGLE_MODEL = ("llama-server", "llama-cpp-python")  # these serve one model, whatever name is asked for


class ModelServerError(NightjarError):
    """The model server cannot be reached, refuses Nightjar, or fails a request."""


# ---- the chat template and tokenizer, from the GGUF on disk ----
class Vocab:
    """A GGUF's chat template and tokenizer, loaded without its weights (llama.cpp `vocab_only`)."""

    def __init__(self, model_path: Path | str) -> None:
        import llama_cpp.llama_cpp as lib
        from llama_cpp._internals import LlamaModel
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.path = check_gguf(model_path)
        params = lib.llama_model_default_params()
        params.vocab_only = True
        try:
            self._model = LlamaModel(path_model=str(self.path), params=params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"llama.cpp could not read {self.path}: corrupt or unsupported GGUF"
            ) from exc
        self.template = self._model.metadata().get("tokenizer.chat_template")
        if not self.template:
            raise ModelFileError(
                f"{self.path} has no chat template in its metadata (tokenizer.chat_template)"
            )
        eos_id, bos_id = self._model.token_eos(), self._model.token_bos()
        self.eos = self._model.token_get_text(eos_id) if eos_id >= 0 else ""
        self.bos = self._model.token_get_text(bos_id) if bos_id >= 0 else ""
        self.add_bos = bool(self._model.add_bos_token()) and bool(self.bos)  # the server's tokenizer adds it
        self._formatters = {
            flag: Jinja2ChatFormatter(self.template, self.eos, self.bos, add_generation_prompt=flag)
            for flag in (True, False)
        }

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self._formatters[add_generation_prompt](messages=messages).prompt

    def tokenize(self, text: str) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=False, special=True)


# ---- what the server is ----
@dataclass
class ServerInfo:
    """What a model server said about itself (`probe`)."""

    url: str
    kind: str = "unknown"  # llama-server, llama-cpp-python, vllm, ollama or unknown
    models: list[str] = field(default_factory=list)
    n_ctx: int | None = None  # its context per request, where it says
    version: str = ""
    chat_template: str | None = None  # llama-server: the template of the model it serves
    model_path: str | None = None  # the GGUF it serves, where it says

    def describe(self) -> str:
        what = f"{self.kind} {self.version}".strip() if self.kind != "unknown" else "a server of unknown kind"
        models = ", ".join(self.models[:5]) + (" ..." if len(self.models) > 5 else "") or "none listed"
        context = f"; context {self.n_ctx} tokens" if self.n_ctx else ""
        return f"{what}; models: {models}{context}"


def _one_line(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _detail(body: Any) -> str:
    """The message of an error body (OpenAI's {"error": {"message": ...}}, FastAPI's {"detail": ...})."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return _one_line(error.get("message") or error.get("detail") or json.dumps(error))
        return _one_line(error)
    return _one_line(body or "")


def _unreachable(url: str, reason: Any) -> ModelServerError:
    return ModelServerError(
        f"cannot reach the model server at {url} ({_one_line(reason, 120)}): start it, or set model.url to "
        "where it listens (`nightjar doctor` checks it)"
    )


def _status_error(url: str, status: int, detail: str, *, model: str = "", listing: bool = False):
    if status in (401, 403):
        return ModelServerError(
            f"the model server at {url} refused Nightjar's API key ({status}: {detail or 'unauthorized'}): "
            "set model.api_key or NIGHTJAR_MODEL_API_KEY to the server's key"
        )
    if status == 404 and listing:
        return ModelServerError(
            f"{url}/models is not found (404): model.url must be the server's OpenAI API root, usually "
            "ending in /v1 (e.g. http://127.0.0.1:8080/v1)"
        )
    if status == 404:
        return ModelServerError(
            f"the model server at {url} does not know model '{model}' or has no /completions endpoint "
            f"(404: {detail}): set model.model to a model it serves (`nightjar doctor` lists them)"
        )
    hint = ""
    if status == 400 and "context" in detail.lower():
        hint = ": set model.n_ctx to the server's context size (or less)"
    return ModelServerError(
        f"the model server at {url} failed the request ({status}: {detail or 'no detail'}){hint}"
    )


def _get_json(http, url: str) -> dict[str, Any] | None:
    """GET `url` as a JSON object, or None (a question the server may not know the answer to)."""
    import httpx

    try:
        response = http.get(url)
        data = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def probe(url: str, api_key: str = "", timeout: float = PROBE_TIMEOUT) -> ServerInfo:
    """Ask the server at `url` (the API root, e.g. http://127.0.0.1:8080/v1) its models, and what it is."""
    import httpx

    url = url.rstrip("/")
    root = url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=timeout, headers=headers) as http:
        try:
            response = http.get(f"{url}/models")
        except httpx.TimeoutException:
            raise _unreachable(url, f"no answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from exc
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise _status_error(url, response.status_code, _detail(body), listing=True)
        listed = body.get("data") if isinstance(body, dict) else None
        if not isinstance(listed, list):
            raise ModelServerError(
                f"{url}/models does not answer like an OpenAI-compatible server: model.url must be its API "
                "root, e.g. http://127.0.0.1:8080/v1"
            )
        listed = [m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
        info = ServerInfo(url, models=[m["id"] for m in listed])
        owners = {m.get("owned_by") for m in listed}
        if "vllm" in owners:
            info.kind = "vllm"
            info.n_ctx = next(
                (_number(m.get("max_model_len")) for m in listed if m.get("max_model_len")), None
            )
            info.version = str((_get_json(http, f"{root}/version") or {}).get("version", ""))
            return info
        props = _get_json(http, f"{root}/props")
        if props is not None and ("default_generation_settings" in props or "chat_template" in props):
            info.kind = "llama-server"
            settings = props.get("default_generation_settings")
            settings = settings if isinstance(settings, dict) else {}
            info.n_ctx = _number(settings.get("n_ctx")) or _number(props.get("n_ctx"))
            template = props.get("chat_template")
            info.chat_template = template if isinstance(template, str) and template else None
            path = props.get("model_path")
            info.model_path = path if isinstance(path, str) and path else None
            info.version = str(props.get("build_info", ""))
            return info
        if "llamacpp" in owners:
            info.kind = "llama-server"
            return info
        api = (_get_json(http, f"{root}/openapi.json") or {}).get("info")
        if isinstance(api, dict) and "llama.cpp" in str(api.get("title", "")):
            info.kind = "llama-cpp-python"
            info.version = str(api.get("version", ""))
            if len(info.models) == 1 and info.models[0].endswith(".gguf"):  # its model's id is the path
                info.model_path = info.models[0]
            return info
        ollama = _get_json(http, f"{root}/api/version")
        if ollama is not None and "version" in ollama:
            info.kind, info.version = "ollama", str(ollama["version"])
    return info


def _pick_model(info: ServerInfo, wanted: str) -> str:
    ids = info.models
    if wanted:
        if (
            wanted in ids
            or f"{wanted}:latest" in ids
            or not ids
            or (info.kind in SINGLE_MODEL and len(ids) == 1)
        ):
            return wanted
        served = ", ".join(ids[:10])
        raise ModelServerError(
            f"the model server at {info.url} has no model '{wanted}'; it serves: {served} (set model.model "
            "to one of them)"
        )
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise ModelServerError(
            f"the model server at {info.url} lists no models: set model.model to the name it serves"
        )
    raise ModelServerError(
        f"the model server at {info.url} serves {len(ids)} models ({', '.join(ids[:10])}): set model.model "
        "to the one to use"
    )


def constraint_mode(configured: str, info: ServerInfo) -> str:
    """How constrained steps are sent to this server: `[model] constraints`, or for auto by its kind."""
    if configured != "auto":
        return configured
    return {"llama-server": "llamacpp", "llama-cpp-python": "llamacpp", "vllm": "vllm"}.get(info.kind, "none")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.lstrip("v").split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


_FINISH = {"length": "length"}  # everything else ("stop", "eos", "abort", ...) ends the answer normally


class RemoteEngine:
    """A model on an OpenAI-compatible server; prompts rendered and counted with a local GGUF's vocab."""

    def __init__(
        self,
        url: str,
        model_path: Path | str,
        *,
        model: str = "",
        api_key: str = "",
        constraints: str = "auto",
        n_ctx: int = 4096,
        name: str | None = None,
    ) -> None:
        import openai

        self.url = url.strip().rstrip("/")
        self.vocab = Vocab(model_path)
        self.path = self.vocab.path
        self.name = name or self.path.stem
        self.server = probe(self.url, api_key)
        self.model = _pick_model(self.server, model)
        self.n_ctx = min(n_ctx, self.server.n_ctx) if self.server.n_ctx else n_ctx
        self.constraints = constraint_mode(constraints, self.server)
        self.notices: list[str] = []
        self._client = openai.OpenAI(
            base_url=self.url,
            api_key=api_key or "unused",
            max_retries=0,
            timeout=openai.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),  # its HTTP library's own class
        )
        self._grammars: dict[str, str] = {}
        self._check_served_model()

    # -- notices: one line each, once --
    def _notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            log.info("note: %s", text)  # the answer carries it (Answer.notices), which faces show

    def _check_served_model(self) -> None:
        """Note where the server says it serves another model than the GGUF prompts are rendered with."""
        info = self.server
        if info.chat_template is not None and info.chat_template.strip() != self.vocab.template.strip():
            self._notice(
                f"the model server at {self.url} has another chat template than {self.path}: prompts are "
                "rendered with the latter's; serve that GGUF, or set model.path to the one the server serves"
            )
        if info.model_path:
            served = Path(info.model_path)
            try:
                other = served.is_file() and not served.samefile(self.path)
            except OSError:
                other = False
            if other:
                self._notice(
                    f"the model server at {self.url} serves {served}, but the served model version is "
                    f"{self.path}: restart the server on that file"
                )

    # -- tokens and prompts: local --
    def tokenize(self, text: str) -> list[int]:
        return self.vocab.tokenize(text)

    def count_tokens(self, text: str) -> int:
        return len(self.vocab.tokenize(text))

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.vocab.render(messages, add_generation_prompt)

    # -- generation: on the server --
    def constraint_fields(self, grammar: str | None, json_schema: dict[str, Any] | None) -> dict[str, Any]:
        """The request fields that constrain a generation, as this server takes them."""
        if grammar is None and json_schema is None:
            return {}
        if self.constraints == "llamacpp":
            if grammar is None:
                from llama_cpp.llama_grammar import json_schema_to_gbnf

                key = json.dumps(json_schema, sort_keys=True)
                if key not in self._grammars:
                    self._grammars[key] = json_schema_to_gbnf(json.dumps(json_schema))
                grammar = self._grammars[key]
            return {"grammar": grammar}
        if self.constraints == "vllm":
            old = self.server.kind == "vllm" and (0,) < _version(self.server.version) < (0, 11)
            if json_schema is not None:
                return {"guided_json": json_schema} if old else {"structured_outputs": {"json": json_schema}}
            return {"guided_grammar": grammar} if old else {"structured_outputs": {"grammar": grammar}}
        why = (
            "model.constraints is none" if self.constraints == "none" else f"the server is {self.server.kind}"
        )
        self._notice(
            f"the model server at {self.url} takes no JSON schema or grammar ({why}): react's actions and "
            "tot's scores are generated unconstrained and checked (set model.constraints to llamacpp or vllm "
            "if the server supports one)"
        )
        return {}

    def generate(
        self,
        prompt: str,
        params: GenParams,
        *,
        grammar: str | None = None,
        json_schema: dict[str, Any] | None = None,
    ) -> Generation:
        import openai

        n_prompt = self.count_tokens(prompt)
        if n_prompt >= self.n_ctx:
            raise ValueError(f"prompt of {n_prompt} tokens does not fit the {self.n_ctx}-token context")
        max_tokens = max(1, min(params.max_tokens, self.n_ctx - n_prompt))
        stop = list(params.stop)
        if self.vocab.eos and self.vocab.eos not in stop:
            stop.append(self.vocab.eos)
        sent = prompt
        if self.vocab.add_bos and sent.startswith(self.vocab.bos):  # the server's tokenizer adds it again
            sent = sent[len(self.vocab.bos) :]
        try:
            stream = self._client.completions.create(
                model=self.model,
                prompt=sent,
                max_tokens=max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                stop=stop or None,
                stream=True,
                extra_body=self.constraint_fields(grammar, json_schema) or None,
            )
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        return Generation(self._pieces(stream), n_prompt, self.count_tokens)

    def _pieces(self, stream):
        """The server's stream as the chunks `Generation` reads; closing it (cancel) closes the connection."""
        import openai

        try:
            for chunk in stream:
                if not chunk.choices:  # e.g. a usage-only chunk
                    continue
                choice = chunk.choices[0]
                finish = choice.finish_reason
                yield {
                    "choices": [
                        {
                            "text": choice.text or "",
                            "finish_reason": _FINISH.get(finish, "stop") if finish else None,
                        }
                    ]
                }
        except (openai.OpenAIError, *client_errors("HTTPError")) as exc:
            raise self._error(exc) from exc
        finally:
            stream.close()

    def _error(self, exc: Exception) -> NightjarError:
        import openai

        if isinstance(exc, (openai.APITimeoutError, *client_errors("TimeoutException"))):
            return ModelServerError(
                f"the model server at {self.url} sent nothing for {READ_TIMEOUT:g} s: check that it is "
                "running and not overloaded"
            )
        if isinstance(exc, (openai.APIConnectionError, *client_errors("ConnectError"))):
            return _unreachable(self.url, exc.__cause__ or exc)
        if isinstance(exc, openai.APIStatusError):
            return _status_error(
                self.url, exc.status_code, _detail(exc.body) or _one_line(exc.message), model=self.model
            )
        if isinstance(exc, client_errors("HTTPError")):
            return ModelServerError(
                f"the connection to the model server at {self.url} broke during an answer "
                f"({_one_line(exc, 120)}): check the server"
            )
        return ModelServerError(f"the model server at {self.url} failed: {_one_line(exc)}")

    def close(self) -> None:
        self._client.close()


def api_key_source(configured: str) -> str:
    """Where the API key comes from, for `nightjar doctor` (never the key itself)."""
    if not configured:
        return "none"
    return "set (NIGHTJAR_MODEL_API_KEY)" if os.environ.get("NIGHTJAR_MODEL_API_KEY") else "set (config file)"
