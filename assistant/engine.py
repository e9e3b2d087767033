"""The model engine: one small interface, served in-process by llama.cpp or by a model server.

`Engine` is what the rest of Nightjar talks to; `LlamaCppEngine` serves a local GGUF, and
`assistant.remote_engine.RemoteEngine` an OpenAI-compatible server with the same few methods. `create_engine`
builds the one `[model] backend` names.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from assistant import llamacpp
from assistant.errors import ModelFileError
from assistant.modelfile import check_gguf

if TYPE_CHECKING:
    from assistant.config import ModelConfig

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclass
class GenParams:
    temperature: float = 0.0
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    stop: list[str] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"
    seconds: float


class Generation:
    """A streamed generation: iterate for text pieces; `.completion` is set once the stream ends.

    `cancel()` (from any thread) stops it after the current token; the partial text is kept.
    """

    def __init__(self, pieces: Iterator[dict[str, Any]], prompt_tokens: int, count_tokens) -> None:
        self._pieces = pieces
        self._prompt_tokens = prompt_tokens
        self._count_tokens = count_tokens
        self._cancel = threading.Event()
        self.completion: Completion | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        start = time.perf_counter()
        parts: list[str] = []
        finish = "stop"
        for chunk in self._pieces:
            choice = chunk["choices"][0]
            text = choice.get("text") or ""
            if text:
                parts.append(text)
                yield text
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
            if self._cancel.is_set():
                finish = "cancelled"
                break
        if hasattr(self._pieces, "close"):
            self._pieces.close()
        text = "".join(parts)
        self.completion = Completion(
            text=text,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._count_tokens(text) if text else 0,
            finish_reason=finish,
            seconds=time.perf_counter() - start,
        )

    def result(self) -> Completion:
        """Run the generation to its end (if not iterated yet) and return the completion."""
        if self.completion is None:
            for _ in self:
                pass
        assert self.completion is not None
        return self.completion


class Engine(Protocol):
    """What Nightjar needs from a model server."""

    name: str
    n_ctx: int

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The exact prompt text the model sees for a conversation (its own chat template)."""

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self,
        prompt: str,
        params: GenParams,
        *,
        grammar: str | None = None,
        json_schema: dict[str, Any] | None = None,
    ) -> Generation:
        """Stream a completion of `prompt`, optionally constrained by a GBNF grammar or a JSON schema."""


class LlamaCppEngine:
    """A GGUF served in-process by llama-cpp-python; the chat template comes from the GGUF's metadata."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        n_ctx: int = 4096,
        n_threads: int = 0,
        n_gpu_layers: int = 0,
        name: str | None = None,
    ) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = check_gguf(model_path)
        self.llm = llamacpp.load(path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        self.path = path
        self.name = name or path.stem
        self.n_ctx = self.llm.n_ctx()
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelFileError(f"{path} has no chat template in its metadata (tokenizer.chat_template)")
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        self._eos = self.llm._model.token_get_text(eos_id) if eos_id >= 0 else ""
        bos = self.llm._model.token_get_text(bos_id) if bos_id >= 0 else ""
        self._formatters = {
            flag: Jinja2ChatFormatter(template, self._eos, bos, add_generation_prompt=flag)
            for flag in (True, False)
        }
        self._grammars: dict[str, Any] = {}

    # -- tokens --
    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # -- prompts --
    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self._formatters[add_generation_prompt](messages=messages).prompt

    # -- generation --
    def _grammar(self, grammar: str | None, json_schema: dict[str, Any] | None):
        from llama_cpp import LlamaGrammar

        if grammar is None and json_schema is None:
            return None
        key = grammar if grammar is not None else "schema:" + json.dumps(json_schema, sort_keys=True)
        if key not in self._grammars:
            if grammar is not None:
                self._grammars[key] = LlamaGrammar.from_string(grammar, verbose=False)
            else:
                self._grammars[key] = LlamaGrammar.from_json_schema(json.dumps(json_schema), verbose=False)
        return self._grammars[key]

    def generate(
        self,
        prompt: str,
        params: GenParams,
        *,
        grammar: str | None = None,
        json_schema: dict[str, Any] | None = None,
    ) -> Generation:
        tokens = self.tokenize(prompt)
        max_tokens = max(1, min(params.max_tokens, self.n_ctx - len(tokens)))
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the {self.n_ctx}-token context")
        stop = list(params.stop)
        if self._eos and self._eos not in stop:
            stop.append(self._eos)
        pieces = self.llm.create_completion(
            prompt=tokens,
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=stop,
            stream=True,
            grammar=self._grammar(grammar, json_schema),
        )
        return Generation(pieces, len(tokens), self.count_tokens)


def create_engine(model: ModelConfig, model_path: Path | str, *, name: str | None = None) -> Engine:
    """The engine `[model] backend` asks for, serving the GGUF `model_path`.

    llamacpp: in-process. openai: the OpenAI-compatible server at `model.url`, with prompts rendered and
    counted by `model_path`'s chat template and tokenizer (the server must serve that model).
    """
    if model.backend == "openai":
        from assistant.remote_engine import RemoteEngine

        return RemoteEngine(
            model.url,
            model_path,
            model=model.model,
            api_key=model.api_key,
            constraints=model.constraints,
            n_ctx=model.n_ctx,
            name=name,
        )
    return LlamaCppEngine(
        model_path, n_ctx=model.n_ctx, n_threads=model.n_threads, n_gpu_layers=model.n_gpu_layers, name=name
    )


def chat(engine: Engine, messages: list[Message], params: GenParams, **constraints: Any) -> Generation:
    """Generate the assistant's next message for a conversation."""
    return engine.generate(engine.render(messages), params, **constraints)
