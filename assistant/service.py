"""The assistant's API: what the CLI and the TUI both call to get an answer."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant import registry, runs, schedule
from assistant.config import Config
from assistant.context import fit_messages
from assistant.engine import Engine, GenParams, Message, create_engine
from assistant.errors import NightjarError
from assistant.feedback import ConversationSummary, FeedbackStore, Interaction
from assistant.grounding import (
    DONT_KNOW,
    DocumentAccess,
    cited_messages,
    ground,
    strip_citations,
    user_errors,
)
from assistant.reasoning import Outcome, Task, cites_own_sources, run_strategy
from assistant.registry import Version, served_model
from assistant.sources import Source

if TYPE_CHECKING:
    from retrieval.catalog import Doc
    from retrieval.indexer import Progress
    from retrieval.indexer import Report as IndexReport
    from retrieval.reranker_training import RerankerReport
    from retrieval.search import Hit
    from retrieval.trained_reranker import RerankerVersion


@dataclass
class Answer:
    """One answered turn, with everything needed to show it, cite it and learn from it."""

    question: str
    text: str
    strategy: str
    model_version: str
    prompt: str  # the exact text the model saw for the final answer
    messages: list[Message]  # what the strategy's final generation saw (reasoning instructions included)
    params: dict[str, Any]
    conversation_id: str
    # the direct grounded prompt the answer is trained on, whatever the strategy (see `_training_prompt`)
    training_messages: list[Message] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str = ""
    notices: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"
    interaction_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Assistant:
    """Serves the configured model version; answers questions (CLI and TUI alike)."""

    def __init__(self, config: Config, engine: Engine | None = None, record: bool = True) -> None:
        """`record=False` answers without recording interactions (evaluations and benchmarks, not a user)."""
        self.config = config
        self.record = record
        if engine is not None:
            self.__dict__["engine"] = engine
        self._served: tuple[str, Path] | NightjarError
        try:
            self._served = served_model(config)
        except NightjarError as exc:  # a missing model: said when one is needed (indexing needs none)
            self._served = exc

    @property
    def model_version(self) -> str:
        return self._serving()[0]

    @property
    def model_path(self) -> Path:
        return self._serving()[1]

    def _serving(self) -> tuple[str, Path]:
        if isinstance(self._served, NightjarError):
            raise self._served
        return self._served

    @cached_property
    def engine(self) -> Engine:
        """In-process llama.cpp, or the model server `[model] backend = "openai"` names."""
        return create_engine(self.config.model, self.model_path, name=self.model_version)

    @cached_property
    def documents(self) -> DocumentAccess:
        """The user's indexed documents (the embedder loads on the first search, not before)."""
        return DocumentAccess(self.config)

    def warm_up(self) -> None:
        """Load the model, and the embedder when documents are indexed, so that the first answer does not
        wait for them (the terminal app calls this in the background at start)."""
        self.engine  # noqa: B018  (a cached property: this loads the GGUF)
        if self.documents.available():
            self.documents.hits("warm-up", 1)

    def reload(self) -> bool:
        """Serve the newest published model version; True when it changed."""
        version, path = served_model(self.config)
        if (version, Path(path)) == (self.model_version, Path(self.model_path)):
            return False
        self.__dict__.pop("engine", None)
        self._served = version, path
        return True

    def params(self, **overrides: Any) -> GenParams:
        g = self.config.generation
        base = GenParams(temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=g.seed)
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        return base

    def answer(
        self,
        question: str,
        *,
        history: list[Message] | None = None,
        conversation_id: str | None = None,
        strategy: str | None = None,
        retrieval: bool | None = None,
        params: GenParams | None = None,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        alternative_of: str | None = None,
        interaction_id: str | None = None,
    ) -> Answer:
        """Answer `question` after `history`, streaming pieces of the final answer to `on_token`.

        The answered turn is recorded (`answer.interaction_id`, or the `interaction_id` given: from
        `feedback.store.new_id()`, for a face that names the answer before it exists); with `alternative_of`,
        as another response to that interaction's turn.
        """
        if not question.strip():
            raise NightjarError('the question is empty: ask something, e.g. "What do my notes say about X?"')
        start = time.perf_counter()
        params = params or self.params()
        strategy = strategy or self.config.ask.strategy
        use_retrieval = self.config.ask.retrieval if retrieval is None else retrieval
        history = list(history or [])
        notices: list[str] = []

        # 1. retrieval: numbered sources from the user's documents, in the messages the model answers from
        grounding = ground(
            self.documents,
            self.engine,
            self.config,
            history,
            question,
            reserve=params.max_tokens,
            enabled=use_retrieval,
        )
        sources, messages = grounding.sources, grounding.messages
        notices += grounding.notices
        documents = self.documents if use_retrieval and grounding.status != "no-index" else None
        own_sources = cites_own_sources(strategy, question, documents is not None)  # react searches itself
        if not own_sources:
            on_token = grounding.stream(on_token)  # citation numbers that point to no source are dropped

        # 2. fit the conversation into the context, leaving room for the answer
        fitted = fit_messages(self.engine, messages, reserve=params.max_tokens)
        if fitted.notice:
            notices.append(fitted.notice)

        # 3. reason: the chosen strategy produces the answer and its trace
        task = Task(
            self.engine,
            fitted.messages,
            params,
            sources,
            on_token=on_token,
            cancel=cancel,
            documents=documents,
            options=self.config.reasoning,
        )
        told = len(getattr(self.engine, "notices", []))  # a remote engine's notes (e.g. no JSON schemas)
        if grounding.unanswerable and not own_sources:  # nothing relevant to answer from: say so
            outcome = Outcome(DONT_KNOW, "", fitted.messages, strategy=strategy)
            if on_token is not None:
                on_token(DONT_KNOW)
        else:
            outcome = run_strategy(strategy, task)
        notices += getattr(self.engine, "notices", [])[told:]
        checked = grounding.finish(outcome.text)  # also flushes the stream
        if outcome.sources is not None:  # the strategy numbered the sources it cites: [1]..[m] of its own
            checked = strip_citations(outcome.text, len(outcome.sources)).strip()
        outcome.text = checked
        if grounding.status in ("grounded", "nothing-relevant"):
            outcome.trace.insert(0, grounding.trace())

        answer = Answer(
            question=question,
            text=outcome.text,
            strategy=outcome.strategy,  # what ran: `auto` names the strategy it picked in the trace
            model_version=self.model_version,
            prompt=outcome.prompt,
            messages=outcome.messages,
            params=asdict(params),
            conversation_id=conversation_id or uuid.uuid4().hex,
            training_messages=self._training_prompt(
                outcome, fitted.messages, history, question, params.max_tokens
            ),
            history=history,
            sources=sources if outcome.sources is None else outcome.sources,
            trace=outcome.trace,
            reasoning=outcome.reasoning,
            notices=notices,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            latency_s=time.perf_counter() - start,
            finish_reason=outcome.finish_reason,
        )
        # 4. record the interaction: what the model saw and said, for feedback and training
        if self.record:
            store = self.feedback_store
            asked = {**answer.to_dict(), "retrieval": use_retrieval}  # so a regeneration asks the same way
            answer.interaction_id = store.record(
                asked, alternative_of=alternative_of, interaction_id=interaction_id
            )
        return answer

    def _training_prompt(
        self, outcome: Outcome, fitted: list[Message], history: list[Message], question: str, reserve: int
    ) -> list[Message]:
        """The prompt the answer is trained on: the one `direct` would serve it from.

        The nightly model learns to answer from the sources directly; the reasoning strategies build on
        that, so their instructions (and react's tool protocol) stay out of training rows. Step 2's fitted
        grounded messages, or, when the strategy found and numbered its own sources (react), the same
        kind of prompt built from those, numbered as the answer cites them.
        """
        if outcome.sources is None:
            return fitted
        system_prompt = self.config.model.system_prompt
        messages = cited_messages(self.engine, system_prompt, history, question, outcome.sources, reserve)
        return fit_messages(self.engine, messages, reserve=reserve).messages

    # ---- feedback: interaction ids may be a unique prefix, or None for the latest ----
    @cached_property
    def feedback_store(self) -> FeedbackStore:
        return FeedbackStore(self.config.db_path)

    def feedback(self, interaction_id: str | None, up: bool, comment: str | None = None) -> str:
        """Thumbs up or down on an answer; returns the interaction's full id."""
        interaction_id = self.feedback_store.resolve(interaction_id)
        self.feedback_store.rate(interaction_id, up, comment)
        return interaction_id

    def correct(self, interaction_id: str | None, text: str, comment: str | None = None) -> str:
        """The user's own answer: preferred to the model's in training."""
        interaction_id = self.feedback_store.resolve(interaction_id)
        self.feedback_store.correct(interaction_id, text, comment)
        return interaction_id

    def regenerate(
        self,
        interaction_id: str | None,
        *,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        """Another response to the same turn (same question, history, strategy and parameters, but sampled
        at least `feedback.regenerate_temperature` warm with the next seed); recorded as an alternative."""
        original = self.feedback_store.get(self.feedback_store.resolve(interaction_id))
        known = GenParams.__dataclass_fields__
        params = GenParams(**{k: v for k, v in original.data["params"].items() if k in known})
        params.temperature = max(params.temperature, self.config.feedback.regenerate_temperature)
        params.seed += len(self.feedback_store.alternatives(original.id))  # the next seed, reproducibly
        return self.answer(
            original.question,
            history=original.history,
            conversation_id=original.conversation_id,
            strategy=original.strategy,
            retrieval=original.data.get("retrieval", bool(original.sources)),
            params=params,
            on_token=on_token,
            cancel=cancel,
            alternative_of=original.id,
        )

    def choose(self, interaction_id: str | None, alternative_id: str) -> str:
        """Prefer `alternative_id` to the other responses of `interaction_id`'s turn; returns its full id."""
        store = self.feedback_store
        turn = {i.id for i in store.alternatives(store.resolve(interaction_id))}
        alternative_id = store.resolve(alternative_id)
        if alternative_id not in turn:
            raise NightjarError(f"{alternative_id[:8]} is not a response to the same question")
        store.choose(alternative_id)
        return alternative_id

    def flag_source(
        self, interaction_id: str | None, source: str, reason: str = "irrelevant", comment: str | None = None
    ) -> str:
        """Flag a source of an answer (its citation number or id) as 'wrong' or 'irrelevant'."""
        interaction_id = self.feedback_store.resolve(interaction_id)
        self.feedback_store.flag(interaction_id, source, reason, comment)
        return interaction_id

    def alternatives(self, interaction_id: str | None) -> list[Interaction]:
        """Every response to the same turn (regenerations included), oldest first."""
        return self.feedback_store.alternatives(self.feedback_store.resolve(interaction_id))

    def history(self, limit: int = 20) -> list[Interaction]:
        """The latest interactions, newest first, with their feedback."""
        return self.feedback_store.recent(limit)

    def conversations(self, limit: int = 50) -> list[ConversationSummary]:
        """Recorded conversations, most recently active first."""
        return self.feedback_store.conversations(limit)

    def conversation(self, conversation_id: str) -> list[Interaction]:
        """A conversation's turns in order (the chosen or latest response of each)."""
        return self.feedback_store.conversation(conversation_id)

    # ---- documents ----
    def index(self, paths: list[Path], progress: Progress | None = None) -> IndexReport:
        """Index files and folders (new and changed files only); what was skipped is in the report."""
        from retrieval.indexer import update

        with user_errors():
            return update(self.documents.index, [Path(p) for p in paths], progress=progress)

    def forget(self, paths: list[Path]) -> list[str]:
        """Take files, or everything indexed under folders, out of the index; the paths forgotten."""
        with user_errors():
            return self.documents.index.forget([Path(p) for p in paths])

    def sources(self) -> list[Doc]:
        """The indexed documents, with their chunk counts and when each was indexed."""
        with user_errors():
            return self.documents.index.sources()

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The k best chunks for `query`, each with its scores at every stage."""
        return self.documents.hits(query, k)

    # ---- the trained reranker ----
    def train_reranker(
        self, queries: int | None = None, progress: Callable[[str, int, int], None] | None = None
    ) -> RerankerReport:
        """Train a reranker on the indexed documents: the served model writes questions for sampled
        passages, the user's approved answers add theirs; the new version serves only if it beats the
        ranking that serves now on held-out questions (see retrieval/reranker_training.py)."""
        from collections import Counter

        from assistant.reranker_queries import feedback_examples, generated_examples
        from retrieval.reranker_training import train_reranker

        if not self.documents.available():
            raise NightjarError("no documents are indexed yet: add some with `nightjar index PATH`")
        index = self.documents.index
        n = queries or self.config.retrieval.reranker_queries
        with user_errors():
            generated, left_out = generated_examples(self.engine, index, n, progress=progress)
            feedback, not_paired = feedback_examples(self.feedback_store)
            report = train_reranker(
                index, generated + feedback, dict(Counter(left_out) + Counter(not_paired)), progress
            )
        index.reload_reranker()  # the next search serves what is in use now
        return report

    def reranker_due(self) -> str | None:
        """Why the nightly run should train the reranker now (None: `reranker_nightly` is off, nothing is new
        since its last run, nothing is indexed, or a named cross-encoder or `trained_reranker = false` makes
        it moot)."""
        from assistant.reranker_queries import feedback_examples
        from retrieval.trained_reranker import RerankerVersions

        r = self.config.retrieval
        if not r.reranker_nightly or r.reranker or not r.trained_reranker or not self.documents.available():
            return None
        with user_errors():
            last = RerankerVersions(self.config.index_dir).last_run()
            generation = self.documents.index.catalog.generation()
        if last is None:
            return "no reranker was trained on these documents yet"
        if last.get("index_generation") != generation:
            return "the documents changed since the reranker's last run"
        approved = len(feedback_examples(self.feedback_store)[0])
        if approved > last.get("examples", {}).get("feedback", 0):
            return "answers you approved cite sources the reranker has not learned from"
        return None

    def rerankers(self) -> tuple[list[RerankerVersion], RerankerVersion | None]:
        """The trained reranker versions (oldest first) and the one in use."""
        from retrieval.trained_reranker import RerankerVersions

        versions = RerankerVersions(self.config.index_dir)
        with user_errors():
            return versions.list(), versions.current()

    def last_reranker_run(self) -> dict[str, Any] | None:
        """The latest reranker training run's report (kept or not), as written."""
        from retrieval.trained_reranker import RerankerVersions

        return RerankerVersions(self.config.index_dir).last_run()

    def rollback_reranker(self) -> RerankerVersion | None:
        """Serve the trained reranker used before the current one (None: no trained reranker)."""
        from retrieval.trained_reranker import RerankerVersions

        with user_errors():
            previous = RerankerVersions(self.config.index_dir).rollback()
        self.documents.index.reload_reranker()
        return previous

    # ---- model versions ----
    def versions(self) -> list[Version]:
        return registry.versions(self.config)

    def use_version(self, name: str) -> None:
        """Serve version `name` from now on (this assistant reloads it)."""
        registry.use(self.config, name)
        self.reload()

    def rollback(self) -> str:
        """Serve the version before the served one; returns its name."""
        name = registry.rollback(self.config)
        self.reload()
        return name

    # ---- nightly training ----
    def training_status(self) -> schedule.Status:
        """The nightly schedule and the last run (slow: it asks systemd or cron)."""
        return schedule.status(self.config)

    def training_runs(self) -> list[runs.RunReport]:
        """Every training run that wrote a report, newest first."""
        return runs.reports(self.config)
