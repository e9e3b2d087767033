"""Model versions: publish, use, rollback, gc, their atomicity, and the `nightjar models` commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assistant import registry
from assistant.errors import NightjarError
from assistant.service import Assistant
from tests.conftest import ROOT, run_nightjar


@pytest.fixture(scope="module")
def gguf_copy(tmp_path_factory, model_path: Path) -> Path:
    """The embedded GGUF, copied once onto the test file system so versions can hard-link it."""
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    path.write_bytes(model_path.read_bytes())
    return path


def stage(config, gguf_copy: Path, name: str = "stage", report: str | None = None) -> Path:
    staging = config.home / name
    (staging / "adapter").mkdir(parents=True)
    os.link(gguf_copy, staging / registry.MODEL_FILE)
    (staging / "adapter" / "adapter_config.json").write_text("{}")
    if report is not None:
        (staging / registry.REPORT_FILE).write_text(report)
    return staging


def publish(config, gguf_copy: Path, n: int, **meta) -> str:
    meta = {"objective": "dpo", "data_size": 10 * n, "metrics": {"pref_acc": 0.5 + n / 100}, **meta}
    return registry.publish(config, stage(config, gguf_copy, f"stage{n}", report=f"# report {n}\n"), meta)


def test_publish_serves_the_new_version_and_keeps_its_files(config, gguf_copy):
    assert registry.served_model(config)[0] == registry.BASE
    assistant = Assistant(config)
    name = publish(config, gguf_copy, 1)
    assert name == "v1"
    assert not (config.home / "stage1").exists()  # moved, not copied
    version, path = registry.served_model(config)
    assert (version, path) == ("v1", config.models_dir / "v1" / "model.gguf")
    assert (config.models_dir / "v1" / "adapter" / "adapter_config.json").is_file()
    meta = json.loads((config.models_dir / "v1" / "version.json").read_text())
    assert meta["parent"] == "base" and meta["objective"] == "dpo" and meta["version"] == "v1"
    assert assistant.reload() is True and assistant.model_version == "v1"

    second = publish(config, gguf_copy, 2)
    listed = registry.versions(config)
    assert [v.name for v in listed] == ["base", "v1", "v2"]
    assert [v.served for v in listed] == [False, False, True]
    assert listed[2].parent == "v1" and listed[2].data_size == 20 and listed[2].metrics == {"pref_acc": 0.52}
    assert second == "v2"


def test_publish_without_serving_and_bad_staging(config, gguf_copy):
    name = registry.publish(config, stage(config, gguf_copy), {"objective": "kto"}, serve=False)
    assert registry.current_version(config) == registry.BASE
    assert [v.name for v in registry.versions(config)] == ["base", name]
    empty = config.home / "empty"
    empty.mkdir()
    with pytest.raises(NightjarError, match="model file not found"):
        registry.publish(config, empty, {})


def test_use_rollback_and_unknown_versions(config, gguf_copy):
    for n in (1, 2, 3):
        publish(config, gguf_copy, n)
    registry.use(config, "v1")
    assert registry.current_version(config) == "v1"
    assert registry.rollback(config) == "v3"  # the version served before v1
    assert registry.rollback(config) == "v2"
    assert registry.rollback(config) == "v1"
    assert registry.rollback(config) == "base"
    with pytest.raises(NightjarError, match="nothing to roll back to"):
        registry.rollback(config)
    for bad in ("v9", "masters", "../v1"):
        with pytest.raises(NightjarError, match="no model version"):
            registry.use(config, bad)
    registry.use(config, "v2")
    registry.use(config, "base")
    assert registry.served_model(config)[0] == "base"
    # a version deleted since it was served is skipped
    for name in ("v3", "v2", "v1"):
        registry.use(config, name)
    shutil.rmtree(config.models_dir / "v2")
    assert registry.rollback(config) == "v3"


def test_gc_never_deletes_what_a_rollback_would_serve(config, gguf_copy):
    publish(config, gguf_copy, 1)
    publish(config, gguf_copy, 2)
    assert registry.current_version(config) == "v2"
    assert registry.gc(config, keep=3) == []  # more to keep than there are versions: nothing goes
    assert registry.gc(config, keep=1) == []  # v2 is the newest and served, v1 its rollback target
    assert registry.rollback(config) == "v1"


def test_gc_keeps_the_newest_and_the_served(config, gguf_copy):
    for n in (1, 2, 3, 4):
        publish(config, gguf_copy, n)
    registry.use(config, "v2")
    assert registry.gc(config, keep=1) == ["v1", "v3"]
    assert [v.name for v in registry.versions(config)] == ["base", "v2", "v4"]
    assert registry.current_version(config) == "v2"
    assert registry.gc(config, keep=0) == []  # v4 is what a rollback from v2 serves
    assert [v.name for v in registry.versions(config)] == ["base", "v2", "v4"]
    # names are never reused, so a report always refers to one model
    assert publish(config, gguf_copy, 5) == "v5"
    registry.use(config, "base")
    assert registry.gc(config, keep=0) == ["v2", "v4"]  # base is served, v5 its rollback target
    assert registry.served_model(config)[0] == "base"
    assert publish(config, gguf_copy, 6) == "v6"


KILLED_PUBLISH = """
import sys, time, shutil
from pathlib import Path
from assistant import config as config_mod, registry
config = config_mod.load(sys.argv[1], environ={})
mode = sys.argv[2]

def hang(*args, **kwargs):
    Path(sys.argv[3]).write_text("ready")
    time.sleep(600)

if mode == "copy":  # staging on another file system: killed while copying it in
    registry._same_file_system = lambda a, b: False
    def half_copy(src, dst):
        Path(dst).mkdir()
        with open(Path(src) / "model.gguf", "rb") as fin, open(Path(dst) / "model.gguf", "wb") as fout:
            fout.write(fin.read(1 << 20))
        hang()
    registry.shutil.copytree = half_copy
else:  # killed while flushing the staging directory, before the rename
    registry.atomic.fsync_tree = hang
registry.publish(config, Path(sys.argv[4]), {"objective": "dpo"})
"""


@pytest.mark.parametrize("mode", ["copy", "flush"])
def test_a_publish_killed_midway_is_never_served(config, gguf_copy, tmp_path, mode):
    publish(config, gguf_copy, 1)
    staging = stage(config, gguf_copy, "killed")
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PUBLISH, str(config.home), mode, str(ready), str(staging)], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the publish did not reach its kill point"
            )
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert registry.served_model(config)[0] == "v1"
    assert [v.name for v in registry.versions(config)] == ["base", "v1"]
    leftovers = [p.name for p in config.models_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == ([f".incoming.{proc.pid}.tmp"] if mode == "copy" else [])
    # the next publish starts cleanly and removes what the killed one left; a name once given is not reused
    new = publish(config, gguf_copy, 2)
    assert new == ("v2" if mode == "copy" else "v3") and registry.served_model(config)[0] == new
    assert not [p for p in config.models_dir.iterdir() if p.name.startswith(".")]


def test_current_is_replaced_atomically(config, gguf_copy):
    publish(config, gguf_copy, 1)
    publish(config, gguf_copy, 2)
    seen: set[str] = set()
    stop = threading.Event()

    def switch():
        for i in range(300):
            registry.use(config, "v1" if i % 2 else "v2")
        stop.set()

    thread = threading.Thread(target=switch)
    thread.start()
    while not stop.is_set():
        seen.add(registry.current_version(config))
    thread.join()
    assert seen <= {"v1", "v2"}  # never a torn or empty CURRENT (which would read as "base")


def test_models_cli(config, gguf_copy):
    home = config.home
    publish(config, gguf_copy, 1)
    publish(config, gguf_copy, 2, metrics={"pref_acc": 0.75, "margin": 1.5, "steps": 40})

    listing = run_nightjar("models", home=home)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "DATE", "OBJECTIVE", "ROWS", "METRICS"]
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"base", "v1", "v2"}
    assert rows["v2"].startswith("*") and not rows["v1"].startswith("*")
    assert "pref_acc 0.75, margin 1.5, steps 40" in rows["v2"] and " 20 " in rows["v2"]

    used = run_nightjar("models", "use", "v1", home=home)
    assert used.returncode == 0 and registry.current_version(config) == "v1"
    back = run_nightjar("models", "rollback", home=home)
    assert back.stdout.strip() == "serving v2" and registry.current_version(config) == "v2"

    shown = run_nightjar("models", "show", "v1", home=home)
    assert shown.returncode == 0 and shown.stdout.strip() == "# report 1"
    (config.models_dir / "v1" / "report.md").unlink()
    details = json.loads(run_nightjar("models", "show", "v1", home=home).stdout)
    assert details["version"] == "v1" and details["objective"] == "dpo" and details["served"] is False

    gc = run_nightjar("models", "gc", "--keep", "0", home=home)
    assert gc.returncode == 0 and gc.stdout.strip() == "nothing to delete"  # v1: what rollback serves
    publish(config, gguf_copy, 3)
    gc = run_nightjar("models", "gc", "--keep", "0", home=home)
    assert gc.returncode == 0 and gc.stdout.strip() == "deleted v1"  # v3 served, v2 its rollback target
    assert [v.name for v in registry.versions(config)] == ["base", "v2", "v3"]

    for args in (("use", "v9"), ("show", "v9")):
        bad = run_nightjar("models", *args, home=home)
        assert bad.returncode == 2
        assert bad.stderr.strip() == "error: no model version 'v9'; `nightjar models` lists them"
    negative = run_nightjar("models", "gc", "--keep", "-1", home=home)
    assert negative.returncode == 2 and "Traceback" not in negative.stderr
