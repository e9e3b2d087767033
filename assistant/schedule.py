"""`nightjar schedule`: run `nightjar train --scheduled` every night at a set time.

With a systemd user session, a per-user timer (`~/.config/systemd/user/nightjar-train-<id>.timer` and its
service); otherwise a crontab entry. One schedule per Nightjar home (the id is a hash of the home). Output of
the scheduled runs goes to `<home>/logs/schedule.log`; each run's outcome to the run log (`assistant.runs`).

For tests and unusual set-ups the places can be given: NIGHTJAR_SCHEDULE_UNIT_DIR (write the systemd units
there and do not call systemctl) or NIGHTJAR_SCHEDULE_CRONTAB (a file standing in for the user's crontab).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from assistant import runs
from assistant.config import Config
from assistant.errors import NightjarError

UNIT_DIR_ENV = "NIGHTJAR_SCHEDULE_UNIT_DIR"
CRONTAB_ENV = "NIGHTJAR_SCHEDULE_CRONTAB"
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass
class Status:
    backend: str
    installed: bool
    at: str | None = None
    where: str = ""
    next_run: dt.datetime | None = None
    last_run: dict | None = None


def parse_time(at: str) -> tuple[int, int]:
    match = _TIME.match(at.strip())
    if not match:
        raise NightjarError(f"'{at}' is not a time of day; use HH:MM, e.g. 03:00")
    return int(match.group(1)), int(match.group(2))


def next_run(at: str, now: dt.datetime | None = None) -> dt.datetime:
    hour, minute = parse_time(at)
    now = now or dt.datetime.now()
    run = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return run if run > now else run + dt.timedelta(days=1)


def _id(config: Config) -> str:
    return hashlib.sha256(str(config.home).encode()).hexdigest()[:8]


def _command(config: Config) -> list[str]:
    """The scheduled command line. It names the home only when the user gave one (`--home` or
    NIGHTJAR_HOME): with the default home, the user's own config file (~/.config/nightjar/config.toml) is
    the one the run must read, and `--home <data dir>` would read `<data dir>/config.toml` instead."""
    home = ["--home", str(config.home)] if config.config_file == config.home / "config.toml" else []
    return [sys.executable, "-m", "assistant", *home, "train", "--scheduled"]


def _log_file(config: Config) -> Path:
    return config.logs_dir / "schedule.log"


class Systemd:
    """A per-user systemd timer and its oneshot service."""

    name = "systemd"

    def __init__(self, config: Config, unit_dir: Path, manage: bool) -> None:
        self.config, self.unit_dir, self.manage = config, unit_dir, manage
        self.unit = f"nightjar-train-{_id(config)}"

    @property
    def where(self) -> str:
        return str(self.unit_dir / f"{self.unit}.timer")

    def _systemctl(self, *args: str) -> None:
        if self.manage:
            done = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True)
            if done.returncode != 0:
                raise NightjarError(f"systemctl --user {' '.join(args)} failed: {done.stderr.strip()}")

    def install(self, at: str) -> None:
        hour, minute = parse_time(at)
        quoted = " ".join(
            '"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in _command(self.config)
        )
        log = _log_file(self.config)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        (self.unit_dir / f"{self.unit}.service").write_text(
            f"[Unit]\nDescription=Nightjar nightly training ({self.config.home})\n\n"
            f"[Service]\nType=oneshot\nNice=10\nExecStart={quoted}\n"
            f"StandardOutput=append:{log}\nStandardError=append:{log}\n",
            encoding="utf-8",
        )
        (self.unit_dir / f"{self.unit}.timer").write_text(
            f"[Unit]\nDescription=Nightjar nightly training at {hour:02d}:{minute:02d}\n\n"
            f"[Timer]\nOnCalendar=*-*-* {hour:02d}:{minute:02d}:00\nPersistent=true\n\n"
            "[Install]\nWantedBy=timers.target\n",
            encoding="utf-8",
        )
        self._systemctl("daemon-reload")
        self._systemctl("enable", "--now", f"{self.unit}.timer")

    def remove(self) -> bool:
        timer = self.unit_dir / f"{self.unit}.timer"
        if not timer.exists():
            return False
        self._systemctl("disable", "--now", f"{self.unit}.timer")
        timer.unlink()
        (self.unit_dir / f"{self.unit}.service").unlink(missing_ok=True)
        self._systemctl("daemon-reload")
        return True

    def installed_at(self) -> str | None:
        try:
            text = (self.unit_dir / f"{self.unit}.timer").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        match = re.search(r"^OnCalendar=\*-\*-\* (\d\d:\d\d):00$", text, re.MULTILINE)
        return match.group(1) if match else None


class Cron:
    """A line in the user's crontab (or in a file standing in for it), marked with the home it trains."""

    name = "cron"

    def __init__(self, config: Config, file: Path | None) -> None:
        self.config, self.file = config, file
        self.mark = f"# nightjar-train-{_id(config)}"

    @property
    def where(self) -> str:
        return str(self.file) if self.file else "crontab -l"

    def _read(self) -> str:
        if self.file:
            return self.file.read_text(encoding="utf-8") if self.file.exists() else ""
        done = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""  # exit 1: no crontab yet

    def _write(self, text: str) -> None:
        if self.file:
            self.file.write_text(text, encoding="utf-8")
            return
        done = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True)
        if done.returncode != 0:
            raise NightjarError(f"crontab refused the new schedule: {done.stderr.strip()}")

    def _others(self) -> list[str]:
        return [line for line in self._read().splitlines() if not line.endswith(self.mark)]

    def install(self, at: str) -> None:
        hour, minute = parse_time(at)
        log = _log_file(self.config)
        log.parent.mkdir(parents=True, exist_ok=True)
        command = f"{shlex.join(_command(self.config))} >> {shlex.quote(str(log))} 2>&1"
        line = f"{minute} {hour} * * * {command} {self.mark}"
        self._write("\n".join([*self._others(), line]) + "\n")

    def remove(self) -> bool:
        lines = self._read().splitlines()
        others = self._others()
        if len(others) == len(lines):
            return False
        self._write("\n".join(others) + "\n" if others else "")
        return True

    def installed_at(self) -> str | None:
        for line in self._read().splitlines():
            if line.endswith(self.mark):
                minute, hour = line.split()[:2]
                return f"{int(hour):02d}:{int(minute):02d}"
        return None


def backend(config: Config, environ: Mapping[str, str] | None = None) -> Systemd | Cron:
    """The systemd user timer where a user session answers, else cron; or the places the environment names."""
    environ = os.environ if environ is None else environ
    if environ.get(UNIT_DIR_ENV):
        return Systemd(config, Path(environ[UNIT_DIR_ENV]), manage=False)
    if environ.get(CRONTAB_ENV):
        return Cron(config, Path(environ[CRONTAB_ENV]))
    if shutil.which("systemctl"):
        probe = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True)
        if probe.returncode == 0:
            home = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            return Systemd(config, home / "systemd" / "user", manage=True)
    if shutil.which("crontab"):
        return Cron(config, None)
    raise NightjarError(
        "cannot schedule: no systemd user session and no crontab command here; run `nightjar train "
        "--scheduled` from your own scheduler instead"
    )


def install(config: Config, at: str, environ: Mapping[str, str] | None = None) -> Status:
    parse_time(at)
    chosen = backend(config, environ)
    chosen.install(at)
    return status(config, environ, chosen)


def remove(config: Config, environ: Mapping[str, str] | None = None) -> bool:
    return backend(config, environ).remove()


def status(config: Config, environ: Mapping[str, str] | None = None, chosen=None) -> Status:
    try:
        chosen = chosen or backend(config, environ)
    except NightjarError as exc:  # nothing to schedule with: still tell the last run
        return Status(backend="none", installed=False, where=str(exc), last_run=runs.last_run(config))
    at = chosen.installed_at()
    return Status(
        backend=chosen.name,
        installed=at is not None,
        at=at,
        where=chosen.where,
        next_run=next_run(at) if at else None,
        last_run=runs.last_run(config),
    )


def describe(status: Status) -> list[str]:
    """The schedule and the last run in a few lines, as every face shows them."""
    if status.installed:
        when = status.next_run.strftime("%Y-%m-%d %H:%M") if status.next_run else "?"
        lines = [f"nightly training at {status.at} ({status.backend}: {status.where}); next run {when}"]
    elif status.backend == "none":
        lines = [f"no nightly training scheduled: {status.where}"]
    else:
        lines = [f"no nightly training scheduled ({status.backend}); `nightjar schedule --at 03:00` adds one"]
    last = status.last_run
    if last:
        reasons = "; ".join(last.get("reasons") or [])
        version = f" {last['version']}" if last.get("version") else ""
        lines.append(
            f"last run {last.get('started') or last.get('ended') or '?'}: {last['outcome']}{version}"
            + (f" ({reasons})" if reasons else "")
        )
    else:
        lines.append("no training run yet")
    return lines


def summary(status: Status) -> str:
    """One line for a status bar: the last run's outcome and the next scheduled run."""
    last = status.last_run
    when = (last.get("started") or last.get("ended") or "")[5:16].replace("T", " ") if last else ""
    shown = f"training {last['outcome']} {when}" if last else "training never run"
    return shown + (f", next {status.at}" if status.installed else ", not scheduled")
