"""Mirror a local folder (the app code, the data) into a directory on every host, sending only
what changed.

Hosts need nothing but a POSIX shell, coreutils, ``find`` and ``tar`` (no rsync, no python3).
Each synced remote directory keeps its state in ``.shapcluster-sync/``:

- ``manifest.json``: ``{path: sha256, size, mtime, mode}`` of every file the last sync left.
  An entry is trusted only while the file's size, mtime and mode still match it (one ``stat``
  per file, no reading); any other remote file is hashed with ``sha256sum`` before comparing.
- ``staging/``: changed files arrive there first (tar batches uploaded with ``Runner.put`` and
  unpacked with ``tar -x``), then each is renamed into place, so a reader never sees half a file.

Before anything in place changes, the manifest is rewritten without the entries about to
change (when it lists any) and it is written in full at the end, so an interrupted sync is
redone next time, never half-trusted. The remote directory is a mirror: regular files there
that the local folder lacks are deleted.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shlex
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from shapcluster.commands import RemoteLayout
from shapcluster.config import SyncConfig
from shapcluster.errors import InputError, RemoteError
from shapcluster.remote.base import Runner, tail
from shapcluster.remote.group import run_in_parallel

logger = logging.getLogger(__name__)

STATE_DIR = ".shapcluster-sync"
MANIFEST_NAME = "manifest.json"
STAGING_NAME = "staging"
INCOMING_NAME = "incoming.tar"
MANIFEST_VERSION = 1
BATCH_BYTES = 16 << 20  # one tar upload; progress is reported after each
MAX_COMMAND_CHARS = 60_000  # path lists are split well below any ARG_MAX
_CHUNK = 1 << 20

# Never worth shipping to a cluster; STATE_DIR would collide with the remote state.
SKIP_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache",
     ".ipynb_checkpoints", STATE_DIR}
)  # fmt: skip
SKIP_FILES = ("*.pyc", "*.pyo", ".*.swp", ".*.swo", "*~", ".#*", ".DS_Store")


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    source: Path  # what to read: the file itself, or the target of a symlink inside the tree
    sha256: str
    size: int
    mode: int  # normalised: 0o755 when any execute bit is set, else 0o644
    mtime: int


@dataclass(frozen=True)
class LocalTree:
    """A scanned local folder, shared by every host it is synced to."""

    root: Path
    files: Mapping[str, LocalFile]  # relative POSIX path -> file
    skipped: tuple[str, ...] = ()  # relative paths left out by SKIP_DIRS / SKIP_FILES

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files.values())


@dataclass(frozen=True)
class RemoteStat:
    size: int
    mtime: int
    mode: int


@dataclass(frozen=True)
class ManifestEntry:
    sha256: str
    size: int
    mtime: int
    mode: int

    @property
    def stat(self) -> RemoteStat:
        return RemoteStat(self.size, self.mtime, self.mode)


@dataclass(frozen=True)
class RemoteState:
    """What the probe command found in a remote directory."""

    tracked: bool  # the state dir exists: shapcluster synced here before
    manifest: dict[str, ManifestEntry] | None  # None: missing or unreadable
    files: dict[str, RemoteStat]  # every regular file outside the state dir


@dataclass(frozen=True)
class SyncProgress:
    """One progress event; ``bytes_*`` count file contents sent to ``remote_dir`` on ``host``."""

    host: str
    remote_dir: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


ProgressCallback = Callable[[SyncProgress], None]  # called from worker threads


@dataclass(frozen=True)
class SyncReport:
    host: str
    remote_dir: str
    uploaded: tuple[str, ...]
    deleted: tuple[str, ...]
    unchanged: int
    bytes_sent: int  # size of the tar batches put on the host
    seconds: float
    rehashed: int = 0  # remote files the manifest could not vouch for, so they were hashed there

    @property
    def changed(self) -> bool:
        return bool(self.uploaded or self.deleted)


@dataclass(frozen=True)
class SyncPlan:
    upload: tuple[str, ...]
    delete: tuple[str, ...]
    unchanged: int
    manifest: dict[str, ManifestEntry]  # the state after the sync, with predicted stats
    interim: dict[str, ManifestEntry] = field(default_factory=dict)  # entries nothing touches


# --- local side -------------------------------------------------------------------------------


def scan_local_tree(root: Path) -> LocalTree:
    """Hash every file below ``root``; symlinks may only point at files inside it."""
    if not root.is_dir():
        raise InputError(
            f"{root}: the folder to sync does not exist or is not a folder",
            hint="Set sync.app_dir / sync.data_dir in the config file to an existing folder.",
        )
    real_root = root.resolve()
    files: dict[str, LocalFile] = {}
    skipped: list[str] = []
    problems: list[str] = []

    def walk_error(error: OSError) -> None:
        problems.append(f"{error.filename}: cannot list: {error.strerror}")

    for folder, dirs, names in os.walk(root, onerror=walk_error):
        here = Path(folder)
        relative_folder = here.relative_to(root)
        for name in sorted(dirs):
            relative = (relative_folder / name).as_posix()
            if name in SKIP_DIRS:
                skipped.append(relative + "/")
                dirs.remove(name)
            elif (here / name).is_symlink():  # os.walk lists but never enters these
                problems.append(f"{relative}: a symlink to a folder (copy the folder there instead)")
        dirs.sort()
        for name in sorted(names):
            relative = (relative_folder / name).as_posix()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in SKIP_FILES):
                skipped.append(relative)
                continue
            try:
                relative.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(f"{relative!r}: the name is not valid UTF-8 (rename the file)")
                continue
            file, problem = _scan_file(here / name, relative, real_root)
            if problem:
                problems.append(problem)
            elif file is not None:
                files[relative] = file
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  …" if len(problems) > 20 else "")
        raise InputError(
            f"{root}: cannot sync {len(problems)} entries:\n  {shown}",
            hint="Fix or remove them; symlinks may only point at files inside the synced folder.",
        )
    return LocalTree(root=root, files=dict(sorted(files.items())), skipped=tuple(skipped))


def _scan_file(path: Path, relative: str, real_root: Path) -> tuple[LocalFile | None, str | None]:
    source = path
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(real_root):
            return None, f"{relative}: a symlink out of the synced folder (to {target})"
        if not target.is_file():
            return None, f"{relative}: a symlink to {target}, which is not a file"
        source = target
    try:
        info = source.stat()
        if not stat.S_ISREG(info.st_mode):
            return None, f"{relative}: not a regular file"
        digest = hashlib.sha256()
        with source.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as err:
        return None, f"{relative}: cannot read: {err.strerror}"
    mode = 0o755 if info.st_mode & 0o111 else 0o644
    return LocalFile(source, digest.hexdigest(), info.st_size, mode, int(info.st_mtime)), None


class _HashingReader:
    """Reads a file for tarfile and hashes what it read, to catch a file edited mid-sync."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        return data


def write_batch(tree: LocalTree, paths: Iterable[str], target: Path) -> int:
    """Write the files ``paths`` of ``tree`` as a tar archive to ``target``; return its size.

    Entries carry the planned mode and mtime and no owner, so the host's copy matches the plan."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in paths:
            file = tree.files[path]
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = file.size, file.mode, file.mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            try:
                with file.source.open("rb") as handle:
                    reader = _HashingReader(handle)
                    archive.addfile(info, reader)
                    unchanged = reader.read(1) == b"" and reader.digest.hexdigest() == file.sha256
            except OSError as err:
                unchanged = False
                logger.debug("reading %s failed: %s", file.source, err)
            if not unchanged:
                raise InputError(
                    f"{tree.root / path}: the file changed or vanished while it was being synced",
                    hint="Run sync again once nothing writes to the folder.",
                )
    return target.stat().st_size


# --- remote commands (pure) -------------------------------------------------------------------


def state_dir(remote_dir: str) -> str:
    return f"{remote_dir}/{STATE_DIR}"


def manifest_path(remote_dir: str) -> str:
    return f"{state_dir(remote_dir)}/{MANIFEST_NAME}"


def incoming_path(remote_dir: str) -> str:
    return f"{state_dir(remote_dir)}/{INCOMING_NAME}"


def probe_command(remote_dir: str) -> str:
    """NUL-separated: ``tracked`` or ``new``, the manifest text (maybe empty), then one
    ``size mtime mode ./path`` record per regular file outside the state dir."""
    root, state = shlex.quote(remote_dir), shlex.quote(STATE_DIR)
    manifest = shlex.quote(f"{STATE_DIR}/{MANIFEST_NAME}")
    return (
        f"mkdir -p -- {root} && cd -- {root} && "
        f"{{ if [ -d {state} ]; then printf 'tracked\\000'; else printf 'new\\000'; fi; "
        f"cat -- {manifest} 2>/dev/null; printf '\\000'; "
        f"find . -path {shlex.quote('./' + STATE_DIR)} -prune -o -type f "
        f"-exec stat --printf '%s %Y %a %n\\0' -- {{}} +; }}"
    )


def hash_files_command(remote_dir: str, paths: Sequence[str]) -> str:
    """``sha256sum -z`` (NUL-terminated, unescaped names) of ``paths`` relative to ``remote_dir``."""
    return f"cd -- {shlex.quote(remote_dir)} && {shlex.join(['sha256sum', '-z', '--', *paths])}"


def prepare_staging_command(remote_dir: str) -> str:
    state = shlex.quote(state_dir(remote_dir))
    return (
        f"mkdir -p -- {state} && cd -- {state} && "
        f"rm -rf -- {STAGING_NAME} {INCOMING_NAME} && mkdir -- {STAGING_NAME}"
    )


def unpack_batch_command(remote_dir: str) -> str:
    """Unpack the uploaded batch into staging with the archive's modes, owned by the SSH user."""
    state = shlex.quote(state_dir(remote_dir))
    return (
        f"cd -- {state} && tar -x -p --no-same-owner -f {INCOMING_NAME} -C {STAGING_NAME} && "
        f"rm -f -- {INCOMING_NAME}"
    )


def delete_files_command(remote_dir: str, paths: Sequence[str]) -> str:
    return f"cd -- {shlex.quote(remote_dir)} && {shlex.join(['rm', '-f', '--', *paths])}"


def remove_empty_dirs_command(remote_dir: str, dirs: Sequence[str]) -> str:
    """Remove each folder and its parents (up to ``remote_dir``) while they are empty."""
    args = ["rmdir", "-p", "--ignore-fail-on-non-empty", "--", *dirs]
    return f"cd -- {shlex.quote(remote_dir)} && {shlex.join(args)}"


def install_staged_command(remote_dir: str) -> str:
    """Rename every staged file into place (atomic per file), then drop the staging dir."""
    staging = shlex.quote(f"{state_dir(remote_dir)}/{STAGING_NAME}")
    move = 'for f in "$@"; do mkdir -p -- "$0/${f%/*}" && mv -f -- "$f" "$0/$f" || exit 1; done'
    return (
        f"cd -- {staging} && find . -type f -exec sh -c {shlex.quote(move)} "
        f"{shlex.quote(remote_dir)} {{}} + && cd .. && rm -rf -- {STAGING_NAME}"
    )


def split_paths(paths: Sequence[str], build: Callable[[Sequence[str]], str]) -> list[str]:
    """Commands ``build(chunk)`` covering ``paths``, each at most MAX_COMMAND_CHARS long when it can be."""
    commands: list[str] = []
    chunk: list[str] = []
    size = 0
    for path in paths:
        cost = len(shlex.quote(path)) + 1
        if chunk and size + cost > MAX_COMMAND_CHARS:
            commands.append(build(chunk))
            chunk, size = [], 0
        chunk.append(path)
        size += cost
    if chunk:
        commands.append(build(chunk))
    return commands


# --- parsing ----------------------------------------------------------------------------------


def parse_probe(output: str, remote_dir: str) -> RemoteState:
    parts = output.split("\0")
    if len(parts) < 3 or parts[0] not in ("tracked", "new") or parts[-1] != "":
        raise RemoteError(f"unexpected output while listing {remote_dir}: {output[:200]!r}")
    files: dict[str, RemoteStat] = {}
    for record in parts[2:-1]:
        fields = record.split(" ", 3)
        if len(fields) != 4 or not fields[3].startswith("./") or not all(f.isdigit() for f in fields[:3]):
            raise RemoteError(f"unexpected `stat` output in {remote_dir}: {record[:200]!r}")
        files[fields[3][2:]] = RemoteStat(int(fields[0]), int(fields[1]), int(fields[2], 8))
    return RemoteState(parts[0] == "tracked", parse_manifest(parts[1], remote_dir), files)


def parse_manifest(text: str, remote_dir: str) -> dict[str, ManifestEntry] | None:
    """The manifest's entries, or None when it is missing or not one we wrote (then: rehash)."""
    if not text.strip():
        return None
    try:
        data = json.loads(text)
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        entries = {}
        for path, entry in data["files"].items():
            values = (entry["sha256"], entry["size"], entry["mtime"], entry["mode"])
            if not (isinstance(values[0], str) and all(type(v) is int for v in values[1:])):
                raise ValueError(f"bad entry for {path!r}")
            entries[str(path)] = ManifestEntry(*values)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        logger.warning("%s: ignoring an unreadable sync manifest (%s); every file is hashed", remote_dir, err)
        return None
    return entries


def parse_hashes(output: str) -> dict[str, str]:
    """Parse ``sha256sum -z``: ``<64 hex><space><space or *><name>\\0`` per file."""
    hashes = {}
    for record in output.split("\0"):
        if not record:
            continue
        digest, name = record[:64], record[66:]
        if len(record) < 67 or record[64] != " " or any(c not in "0123456789abcdef" for c in digest):
            raise RemoteError(f"unexpected `sha256sum` output: {record[:200]!r}")
        hashes[name] = digest
    return hashes


def render_manifest(entries: Mapping[str, ManifestEntry]) -> str:
    files = {
        path: {"sha256": e.sha256, "size": e.size, "mtime": e.mtime, "mode": e.mode}
        for path, e in sorted(entries.items())
    }
    return json.dumps({"version": MANIFEST_VERSION, "files": files}, separators=(",", ":")) + "\n"


# --- planning (pure) --------------------------------------------------------------------------


def untrusted_files(state: RemoteState) -> list[str]:
    """Remote files whose content the manifest cannot vouch for: they must be hashed there."""
    manifest = state.manifest or {}
    return sorted(
        path for path, found in state.files.items() if path not in manifest or manifest[path].stat != found
    )


def plan_sync(tree: LocalTree, state: RemoteState, fresh_hashes: Mapping[str, str]) -> SyncPlan:
    """Decide what to send and delete. ``fresh_hashes`` covers every ``untrusted_files(state)``."""
    manifest = state.manifest or {}
    remote: dict[str, ManifestEntry] = {}
    for path, found in state.files.items():
        digest = fresh_hashes[path] if path in fresh_hashes else manifest[path].sha256
        remote[path] = ManifestEntry(digest, found.size, found.mtime, found.mode)
    upload = tuple(
        path
        for path, file in tree.files.items()
        if path not in remote or (remote[path].sha256, remote[path].mode) != (file.sha256, file.mode)
    )
    delete = tuple(sorted(set(remote) - set(tree.files)))
    touched = set(upload) | set(delete)
    interim = {path: entry for path, entry in remote.items() if path not in touched}
    final = dict(interim)
    for path in upload:
        file = tree.files[path]
        final[path] = ManifestEntry(file.sha256, file.size, file.mtime, file.mode)
    return SyncPlan(upload, delete, len(tree.files) - len(upload), dict(sorted(final.items())), interim)


def leaf_dirs(paths: Iterable[str]) -> list[str]:
    """Parent folders of ``paths`` that are not themselves parents of another one of them."""
    parents = {str(PurePosixPath(path).parent) for path in paths} - {"."}
    ancestors = {str(p) for d in parents for p in PurePosixPath(d).parents} - {"."}
    return sorted(parents - ancestors)


def batches(tree: LocalTree, paths: Sequence[str], limit: int = BATCH_BYTES) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for path in paths:
        if batch and size + tree.files[path].size > limit:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += tree.files[path].size
    if batch:
        yield batch


# --- doing it ---------------------------------------------------------------------------------


def check_remote_dir(remote_dir: str) -> None:
    """Sync deletes what the local folder lacks, so the target must be a dedicated, clear path."""
    path = PurePosixPath(remote_dir)
    if not path.is_absolute() or len(path.parts) < 3 or ".." in path.parts or str(path) != remote_dir:
        raise InputError(
            f"refusing to sync into {remote_dir!r}: it must be a normalised absolute path at least "
            "two levels below / (sync deletes files there that the local folder lacks)",
            hint="Set cluster.remote_dir in the config file to a folder of its own, e.g. /opt/shapcluster.",
        )


def sync_tree(
    runner: Runner,
    tree: LocalTree,
    remote_dir: str,
    *,
    progress: ProgressCallback | None = None,
    clock: Callable[[], float] = time.monotonic,
    batch_bytes: int = BATCH_BYTES,
) -> SyncReport:
    """Make ``remote_dir`` on the runner's host a copy of ``tree``; raises RemoteError/InputError."""
    check_remote_dir(remote_dir)
    started = clock()
    host = runner.host
    state = parse_probe(_run(runner, probe_command(remote_dir), f"listing {remote_dir}"), remote_dir)
    hashes: dict[str, str] = {}
    untrusted = untrusted_files(state)
    for command in split_paths(untrusted, lambda chunk: hash_files_command(remote_dir, chunk)):
        hashes.update(parse_hashes(_run(runner, command, f"hashing files in {remote_dir}")))
    missing = set(untrusted) - set(hashes)
    if missing:
        raise RemoteError(f"{host}: sha256sum did not report {sorted(missing)[:3]} in {remote_dir}")
    plan = plan_sync(tree, state, hashes)
    if plan.delete and not state.tracked:
        shown = ", ".join(plan.delete[:5]) + (", …" if len(plan.delete) > 5 else "")
        raise RemoteError(
            f"{host}: {remote_dir} already holds {len(plan.delete)} files that shapcluster did not put "
            f"there and sync would delete them: {shown}",
            hint=f"Empty that folder on {host} or choose another cluster.remote_dir.",
        )
    logger.info(
        "%s: %s: %d to send, %d to delete, %d unchanged (%d hashed remotely)",
        host, remote_dir, len(plan.upload), len(plan.delete), plan.unchanged, len(untrusted),
    )  # fmt: skip
    sent = 0
    with tempfile.TemporaryDirectory(prefix="shapcluster-sync-") as scratch:
        if plan.upload:
            sent = _send(runner, tree, remote_dir, plan, progress, batch_bytes, Path(scratch))
        elif progress is not None:
            progress(SyncProgress(host, remote_dir, 0, 0, 0, 0))
        if plan.upload or plan.delete:
            if state.manifest and not state.manifest.keys().isdisjoint((*plan.upload, *plan.delete)):
                # Files in place change next: forget exactly those, so a crash leaves none trusted.
                _write_manifest(runner, remote_dir, plan.interim, Path(scratch))
            _apply(runner, remote_dir, plan)
        if plan.upload or plan.delete or plan.manifest != state.manifest:
            _write_manifest(runner, remote_dir, plan.manifest, Path(scratch))
    return SyncReport(
        host=host,
        remote_dir=remote_dir,
        uploaded=plan.upload,
        deleted=plan.delete,
        unchanged=plan.unchanged,
        bytes_sent=sent,
        seconds=clock() - started,
        rehashed=len(untrusted),
    )


def _send(
    runner: Runner,
    tree: LocalTree,
    remote_dir: str,
    plan: SyncPlan,
    progress: ProgressCallback | None,
    batch_bytes: int,
    scratch: Path,
) -> int:
    """Upload the changed files into the staging dir; nothing in place changes yet."""
    files_total = len(plan.upload)
    bytes_total = sum(tree.files[path].size for path in plan.upload)
    files_done = bytes_done = sent = 0

    def report() -> None:
        if progress is not None:
            event = SyncProgress(runner.host, remote_dir, files_done, files_total, bytes_done, bytes_total)
            progress(event)

    report()
    _run(runner, prepare_staging_command(remote_dir), f"preparing {state_dir(remote_dir)}")
    archive = scratch / INCOMING_NAME
    for batch in batches(tree, plan.upload, batch_bytes):
        sent += write_batch(tree, batch, archive)
        runner.put(archive, incoming_path(remote_dir), 0o600)
        _run(runner, unpack_batch_command(remote_dir), f"unpacking files into {remote_dir}")
        files_done += len(batch)
        bytes_done += sum(tree.files[path].size for path in batch)
        report()
    return sent


def _write_manifest(
    runner: Runner, remote_dir: str, entries: Mapping[str, ManifestEntry], scratch: Path
) -> None:
    # put (sftp), not put_text: fabric feeds stdin to a command about a hundred bytes per second.
    local = scratch / MANIFEST_NAME
    local.write_text(render_manifest(entries), encoding="utf-8")
    runner.put(local, manifest_path(remote_dir), 0o644)


def _apply(runner: Runner, remote_dir: str, plan: SyncPlan) -> None:
    """Delete first (a folder may become a file of the same name), then move staged files in."""
    for command in split_paths(plan.delete, lambda chunk: delete_files_command(remote_dir, chunk)):
        _run(runner, command, f"deleting files in {remote_dir}")
    dirs = leaf_dirs(plan.delete)
    for command in split_paths(dirs, lambda chunk: remove_empty_dirs_command(remote_dir, chunk)):
        _run(runner, command, f"removing empty folders in {remote_dir}")
    if plan.upload:
        _run(runner, install_staged_command(remote_dir), f"moving new files into {remote_dir}")


def _run(runner: Runner, command: str, what: str) -> str:
    """Run ``command``; a failure says what was being done (path lists make poor messages)."""
    result = runner.run(command, check=False)
    if not result.ok:
        detail = tail(result.stderr) or tail(result.stdout)
        message = f"{runner.host}: {what} failed (exit status {result.exit_code})"
        raise RemoteError(f"{message}:\n{detail}" if detail else message)
    return result.stdout


def sync_trees(
    runners: Sequence[Runner],
    tree: LocalTree,
    remote_dirs: Mapping[str, str],
    *,
    progress: ProgressCallback | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, SyncReport]:
    """``sync_tree`` on every host in parallel, into ``remote_dirs[runner.host]``.

    Raises HostsFailedError naming every failed host with the tail of its stderr."""
    for runner in runners:
        check_remote_dir(remote_dirs[runner.host])

    def one(runner: Runner) -> SyncReport:
        return sync_tree(runner, tree, remote_dirs[runner.host], progress=progress, clock=clock)

    return run_in_parallel(runners, one, what=f"syncing {tree.root}")


def sync_project(
    runners: Sequence[Runner],
    layouts: Mapping[str, RemoteLayout],
    config: SyncConfig,
    *,
    progress: ProgressCallback | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, tuple[SyncReport, ...]]:
    """Sync the app folder (and the data folder, if configured) to every host's layout.

    Local folders are scanned once; per host the app goes first, then the data."""
    pairs: list[tuple[LocalTree, Callable[[RemoteLayout], str]]] = [
        (scan_local_tree(config.app_dir), lambda layout: layout.app_dir)
    ]
    if config.data_dir is not None:
        pairs.append((scan_local_tree(config.data_dir), lambda layout: layout.data_dir))
    for runner in runners:
        for _, where in pairs:
            check_remote_dir(where(layouts[runner.host]))

    def one(runner: Runner) -> tuple[SyncReport, ...]:
        layout = layouts[runner.host]
        return tuple(
            sync_tree(runner, tree, where(layout), progress=progress, clock=clock) for tree, where in pairs
        )

    return run_in_parallel(runners, one, what="syncing " + " and ".join(str(tree.root) for tree, _ in pairs))
