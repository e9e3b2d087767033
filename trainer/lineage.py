"""Lineage: the LoRA adapters that make up a model version, merged into the base's master in order.

A version holds its own adapter (`adapter/<n>-<objective>`, one per objective of its run) and a copy of its
parent's (`lineage/`), so that it stands alone when its parent is deleted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from assistant import registry
from assistant.config import Config
from assistant.errors import NightjarError

LINEAGE, ADAPTER = "lineage", "adapter"


def adapters_of(config: Config, version: str) -> list[Path]:
    """The adapters that, merged into the base's master in order, give `version`'s float model."""
    if version == registry.BASE:
        return []
    root = config.models_dir / version
    chain = [p for sub in (LINEAGE, ADAPTER) if (root / sub).is_dir() for p in sorted((root / sub).iterdir())]
    damaged = [
        p
        for p in chain
        if not (p / "adapter_config.json").is_file() or not (p / "adapter_model.safetensors").is_file()
    ]
    if not chain or damaged:
        raise NightjarError(
            f"model version {version} cannot be trained further: its adapters are missing or damaged "
            f"({root}); serve another version with `nightjar models use VERSION` and train again"
        )
    return chain


def check_base(config: Config, version: str, master: Path) -> None:
    """Refuse to train `version` further from a master of another base model than the one it came from."""
    if version == registry.BASE:
        return
    base = registry.get(config, version).meta.get("base_sha256")
    mine = json.loads((master / "master.json").read_text(encoding="utf-8"))["source_sha256"]
    if base and base != mine:
        raise NightjarError(
            f"the served version {version} was trained from another base model than the configured one; "
            "serve the base (`nightjar models use base`) to train from it"
        )


def keep_lineage(chain: list[Path], staging: Path, parent: str) -> None:
    """Copy the parent's adapters into the new version, so that it stands alone (gc may delete the parent)."""
    lineage = staging / LINEAGE
    lineage.mkdir()
    for n, adapter in enumerate(chain):
        name = adapter.name if adapter.parent.name == LINEAGE else f"{n:03d}-{parent}-{adapter.name}"
        shutil.copytree(adapter, lineage / name, ignore=shutil.ignore_patterns("trainer", "README.md"))
