"""`nightjar models pull`: a GGUF from the Hugging Face Hub into the home. The only command that goes online.

The file lands in `<home>/models/downloads/<owner>--<name>/`, not in the Hugging Face cache:
`huggingface_hub.hf_hub_download` fetches it (`local_dir=`) into a staging folder there
(`.cache/nightjar-staging/`). It writes a temporary `.incomplete` file, resumes with a `Range` request when
the connection drops, and checks the size; it does not hash what it downloaded, so this module does: the
file moves (a rename) to its place only when its sha256 is the one the hub lists for it (the ETag of an LFS
file, as every GGUF on the hub is) and it starts like a GGUF. A corrupt or short download is deleted and
reported; a pull killed outright leaves only staging files, which the next pull deletes. Nothing unverified
is ever where the model goes. Errors are one line each (NightjarError).

Nightjar is offline by default: its embedder and trainer set HF_HUB_OFFLINE=1, and users (and the tests)
export it. huggingface_hub reads that variable once, at import, into
`huggingface_hub.constants.HF_HUB_OFFLINE`, so the pull turns that off for its own duration and restores it
after. The hub is `HF_ENDPOINT` (a mirror), else https://huggingface.co.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Config
from assistant.errors import NightjarError
from assistant.http_errors import client_errors
from assistant.modelfile import GGUF_MAGIC, check_gguf

DOWNLOADS = "downloads"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Source:
    repo: str  # owner/name
    filename: str  # the path in the repository
    revision: str = "main"


@dataclass(frozen=True)
class Remote:
    """What the hub says about the file (its HEAD answer)."""

    commit: str
    etag: str
    size: int | None


def parse_source(first: str, second: str | None = None, revision: str | None = None) -> Source:
    """`REPO FILE` or `hf://REPO[@REVISION]/FILE` as a Source, or one clear line saying what is wrong."""
    if first.startswith("hf://"):
        if second is not None:
            raise NightjarError("give either REPO FILE or hf://REPO/FILE, not both")
        parts = first.removeprefix("hf://").strip("/").split("/")
        if len(parts) < 3:
            raise NightjarError(f"'{first}' is not hf://OWNER/NAME/FILE.gguf")
        name, _, at = parts[1].partition("@")
        if at and revision and at != revision:
            raise NightjarError(f"'{first}' names revision {at} but --revision says {revision}")
        repo, filename, revision = f"{parts[0]}/{name}", "/".join(parts[2:]), revision or at or None
    else:
        if second is None:
            raise NightjarError(
                f"which file of {first}? give REPO FILE.gguf or hf://REPO/FILE.gguf "
                "(the repository's page on the hub lists its files)"
            )
        repo, filename = first.strip("/"), second.strip("/")
    if not _REPO.match(repo) or ".." in repo:
        raise NightjarError(
            f"'{repo}' is not a repository id: use OWNER/NAME, e.g. Qwen/Qwen2.5-1.5B-Instruct-GGUF"
        )
    if not filename or filename.startswith("/") or any(p in ("", ".", "..") for p in filename.split("/")):
        raise NightjarError(f"'{filename}' is not a file path inside a repository")
    if not filename.lower().endswith(".gguf"):
        raise NightjarError(
            f"{filename} is not a .gguf file: Nightjar serves GGUF models "
            "(repositories named ...-GGUF hold them)"
        )
    return Source(repo, filename, revision or "main")


def downloads_dir(config: Config, repo: str) -> Path:
    return config.models_dir / DOWNLOADS / repo.replace("/", "--")


def endpoint() -> str:
    """The hub: HF_ENDPOINT as it is now (huggingface_hub read it at import), else huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT", "").strip() or constants.ENDPOINT).rstrip("/")


@contextmanager
def online() -> Iterator[None]:
    """huggingface_hub allowed on the network for the duration, whatever HF_HUB_OFFLINE said at its import;
    its log warnings (retries, disk space) kept off the terminal: failures come back as exceptions."""
    from huggingface_hub import constants
    from huggingface_hub.utils import logging as hub_logging  # sets up its logger: do it before changing it

    offline = constants.HF_HUB_OFFLINE
    verbosity = hub_logging.get_verbosity()
    constants.HF_HUB_OFFLINE = False
    hub_logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        hub_logging.set_verbosity(verbosity)


def pull(config: Config, source: Source, echo: Callable[[str], None] = print) -> Path:
    """Download `source` into the home's models folder (or find it there, verified) and return its path."""
    hub = endpoint()
    folder = downloads_dir(config, source.repo)
    target = folder.joinpath(*source.filename.split("/"))
    with online():
        remote = _remote(source, hub)  # before anything is written: a wrong name leaves no trace
        with _locked(folder, source):
            path = _fetch(source, remote, folder, target, hub, echo)
    return check_gguf(path)


def _fetch(
    source: Source, remote: Remote, folder: Path, target: Path, hub: str, echo: Callable[[str], None]
) -> Path:
    """The file at `target`, verified against `remote`: found there, or downloaded (holding the lock).

    huggingface_hub downloads into a staging folder beside it; the file moves to `target` (a rename) only
    once its size, checksum and GGUF header are right, so nothing unverified is ever at `target`."""
    staging = folder / ".cache" / "nightjar-staging"
    _remove_partials(staging, echo)
    if target.is_file():
        if _problem(target, remote) is None:
            echo(f"already downloaded: {target} ({_verified(remote)})")
            return target
        target.unlink()  # another revision's, or damaged: downloaded again
    _check_space(folder, remote.size)
    echo(f"downloading {source.filename} ({_size(remote.size)}) from {hub}/{source.repo}")
    try:
        _download(source, remote, staging, hub)
        staged = staging.joinpath(*source.filename.split("/"))
        if not staged.is_file():
            raise NightjarError(f"the download of {source.filename} left no file in {staging}")
        problem = _problem(staged, remote)
        if problem is not None:
            raise NightjarError(
                f"the download of {source.filename} is corrupt ({problem}); it was deleted: "
                "run the command again"
            )
        with staged.open("rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise NightjarError(
                    f"{source.filename} from {source.repo} is not a GGUF model file; it was deleted"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # what is left there is of no use
    echo(f"saved {target} ({_verified(remote)})")
    return target


@contextmanager
def _locked(folder: Path, source: Source) -> Iterator[None]:
    """One pull at a time into a repository's folder (so a partial file found there is a dead pull's)."""
    lock_dir = folder / ".cache"
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fh = (lock_dir / "nightjar-pull.lock").open("a")
    except OSError as exc:
        raise NightjarError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NightjarError(
                f"another `nightjar models pull` is downloading from {source.repo}: wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_partials(staging: Path, echo: Callable[[str], None]) -> None:
    """Delete what a killed pull left in the staging folder: huggingface_hub's temporary `.incomplete`
    files (unique to one process, never resumed by the next), or a file killed before its check."""
    if not staging.exists():
        return
    left = [p for p in staging.rglob("*") if p.is_file() and p.suffix not in (".metadata", ".lock")]
    size = sum(p.stat().st_size for p in left)
    shutil.rmtree(staging, ignore_errors=True)
    if size:
        echo(f"deleted a partial download left by an interrupted pull ({_size(size)})")


def _remote(source: Source, hub: str) -> Remote:
    """The file's commit, ETag and size from the hub (a HEAD request), or one line saying why not."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(source.repo, source.filename, revision=source.revision, endpoint=hub)
    try:
        meta = get_hf_file_metadata(url, library_name="nightjar", endpoint=hub)
    except Exception as exc:
        raise NightjarError(explain(exc, source, hub)) from exc
    if not meta.commit_hash or not meta.etag:
        missing = "X-Repo-Commit" if not meta.commit_hash else "ETag"
        raise NightjarError(
            f"{hub} does not answer like a Hugging Face Hub (no {missing} header for {source.filename}): "
            "check HF_ENDPOINT"
        )
    return Remote(commit=meta.commit_hash, etag=meta.etag.removeprefix("W/").strip('"'), size=meta.size)


def _download(source: Source, remote: Remote, folder: Path, hub: str) -> None:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(
            source.repo,
            source.filename,
            revision=remote.commit,  # exactly the file the HEAD described, even if the branch moves meanwhile
            local_dir=folder,
            endpoint=hub,
            library_name="nightjar",
        )
    except Exception as exc:
        raise NightjarError(explain(exc, source, hub, downloading=True)) from exc


def explain(exc: BaseException, source: Source, hub: str, downloading: bool = False) -> str:
    """One line for what went wrong asking the hub about the file (or, `downloading`, fetching it)."""
    from huggingface_hub import errors

    where = f"{source.repo}/{source.filename}"
    http = _in_chain(exc, errors.HfHubHTTPError)
    if isinstance(http, errors.GatedRepoError):
        return (
            f"{source.repo} is gated: accept its terms on {hub}/{source.repo} and log in "
            "(`hf auth login`, or set HF_TOKEN)"
        )
    if isinstance(http, errors.RepositoryNotFoundError):
        return f"no model repository {source.repo} on {hub} (or it is private: log in or set HF_TOKEN)"
    if isinstance(http, errors.RevisionNotFoundError):
        return f"{source.repo} has no revision '{source.revision}' on {hub}"
    if isinstance(http, errors.RemoteEntryNotFoundError):
        return (
            f"{source.repo} has no file {source.filename} (revision {source.revision}); "
            f"its files: {hub}/{source.repo}/tree/{source.revision}"
        )
    if http is not None and http.response is not None:
        status = http.response.status_code
        if status == 404:
            return f"not found on {hub}: {where} (revision {source.revision})"
        if status in (401, 403):
            return (
                f"{hub} refused {where} (HTTP {status}): it may be private or gated; log in or set HF_TOKEN"
            )
        return f"{hub} answered HTTP {status} for {where}: try again later"
    transport = _transport_error(exc)
    if transport is not None:
        reason = _first_line(transport) or type(transport).__name__
        if downloading:
            return (
                f"the download of {source.filename} from {hub} broke off ({reason}) and could not be "
                "resumed: run the command again"
            )
        return (
            f"cannot reach {hub} ({reason}): check the connection (or HF_ENDPOINT) and run the command again"
        )
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return f"the download of {source.filename} stopped short ({_first_line(exc)}); run the command again"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot write the download of {source.filename}: {exc.strerror}" + (
            f" ({exc.filename})" if exc.filename else ""
        )
    return f"downloading {where} failed: {type(exc).__name__}: {_first_line(exc)} (--debug shows more)"


def _in_chain(exc: BaseException, kind: type | tuple[type, ...]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _transport_error(exc: BaseException) -> BaseException | None:
    """A connection, timeout or protocol error of the HTTP client, anywhere along the cause chain."""
    return _in_chain(exc, (*client_errors("TransportError"), ConnectionError, TimeoutError))


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _checksum(etag: str) -> tuple[str, str] | None:
    """(kind, hex digest) the ETag promises: sha256 for an LFS file (every GGUF on the hub), the git blob
    sha1 for a small file kept in git; None when a server's ETag is neither."""
    etag = etag.lower()
    if _SHA256.match(etag):
        return "sha256", etag
    if _GIT_SHA1.match(etag):
        return "git-sha1", etag
    return None


def _problem(path: Path, remote: Remote) -> str | None:
    """None when the file is the one the hub lists (size and checksum), else what is wrong with it."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"{size} bytes, the hub lists {remote.size}"
    expected = _checksum(remote.etag)
    if expected is None:
        return None
    kind, want = expected
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    got = digest.hexdigest()
    return None if got == want else f"its {kind} is {got[:12]}..., the hub lists {want[:12]}..."


def _verified(remote: Remote) -> str:
    expected = _checksum(remote.etag)
    return f"{expected[0]} verified" if expected else "size checked; the server gives no checksum"


def _check_space(folder: Path, size: int | None) -> None:
    if size is None:
        return
    free = shutil.disk_usage(folder).free
    if free < size:
        raise NightjarError(
            f"not enough disk space: the file is {_size(size)}, {folder} has {_size(free)} free"
        )


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
