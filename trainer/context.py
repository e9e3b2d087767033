"""What the stages of one run share: `RunContext`, filled in stage by stage, and the run's `RunPlan`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant import registry
from assistant.config import Config
from trainer.data import Batch, Row
from trainer.processes import Processes
from trainer.progress import Stages

if TYPE_CHECKING:
    from trainer.evaluate import ModelScores
    from trainer.objectives import Plan as DevicePlan
    from trainer.verdict import Verdict


@dataclass
class RunPlan:
    """What a run trains on, from what, and the type it serves: what `--dry-run` shows, in the report."""

    objectives: list[str]
    rows: dict[str, dict[str, int]]  # per kind: fresh (all new), new (this run), replay and holdout rows
    new_rows: int  # new feedback rows of every kind
    base: str  # the base GGUF
    parent: str  # the served version, trained further
    quant_type: str
    left_out: list[str] = field(default_factory=list)  # new rows this run does not train on, and why
    notes: list[str] = field(default_factory=list)  # what the read stage changed (raft without a scorer)
    update_kept: float | None = None  # share of the update the served type keeps (the quantize stage)
    scale: float | None = None  # share of the trained update the candidate merges (the eval stage)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RunContext:
    """One run, as its stages pass it on: each stage reads what the ones before filled in and adds its own
    (None or empty until then)."""

    config: Config
    run_id: str
    staging: Path  # the run's work folder, which a publish moves in
    stages: Stages
    procs: Processes = field(default_factory=Processes)
    started: str = ""  # local time, for the report
    # read
    batch: Batch = field(default_factory=Batch)
    objectives: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # the kinds of rows the objectives consume
    base_gguf: Path | None = None
    parent: str | None = None  # the served version
    plan: RunPlan | None = None
    # master
    master: Path | None = None  # the base's float master
    chain: list[Path] = field(default_factory=list)  # the served version's adapters
    device: DevicePlan | None = None
    tok: Any = None
    general: list[Row] = field(default_factory=list)  # replayed everyday answers, trained with SFT
    # train (and the notes of any stage, for the report)
    notes: list[str] = field(default_factory=list)
    new_adapters: list[Path] = field(default_factory=list)
    training: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # log history per objective
    raft_stats: dict[str, Any] = field(default_factory=dict)
    # eval
    before: ModelScores | None = None  # the served model's scores
    after: ModelScores | None = None  # the candidate's
    verdict: Verdict | None = None
    # publish
    record: dict[str, Any] = field(default_factory=dict)  # the report
    version: str | None = None  # the published version

    @property
    def adapters(self) -> list[Path]:
        """The served version's adapters, then those this run has trained so far."""
        return self.chain + self.new_adapters

    @property
    def float_gguf(self) -> Path:
        return self.staging / f"model-{self.config.train.export_type.upper()}.gguf"

    @property
    def candidate(self) -> Path:
        """The candidate model file, quantized to the served type."""
        return self.staging / registry.MODEL_FILE
