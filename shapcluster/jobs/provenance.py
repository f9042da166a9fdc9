"""Where a cluster run came from: the head, its image, the app's version, and whether the head's
synced app is the one here (the summary's "cluster" block, the sync warning)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from shapcluster import cluster
from shapcluster import commands as cmd
from shapcluster.errors import (
    InputError,
)

log = logging.getLogger(__name__)


def cluster_block(
    *,
    job_id: str,
    head: str,
    image_id: str,
    app_version: str,
    entrypoint: str,
    credentials_expiry: datetime | None = None,
) -> dict[str, str]:
    """What summary.json records of where and how a cluster job ran."""
    block = {
        "job_id": job_id,
        "head": head,
        "image_id": image_id,
        "app_version": app_version,
        "entrypoint": entrypoint,
    }
    if credentials_expiry is not None:
        block["credentials_expire"] = credentials_expiry.isoformat()
    return block


def add_cluster_block(summary_path: Path, block: Mapping[str, str]) -> bool:
    """Add ``"cluster": block`` to a summary.json (rewritten atomically); False if it is absent."""
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as err:
        raise InputError(f"{summary_path}: cannot read the job's summary: {err}") from None
    summary["cluster"] = dict(block)
    from app.results import write_summary  # pandas: imported only when needed

    write_summary(summary_path, summary)  # atomically, 0644 like the job's own files
    return True


def app_version(app_dir: Path) -> str:
    """The commit of the app folder's repository (``-dirty`` if anything under the folder
    differs from it); outside a repository a sha256 over the files `sync` would ship."""
    try:
        commit = _git(app_dir, "rev-parse", "HEAD")
        changes = _git(app_dir, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return "sha256:" + content_hash(app_dir)
    return commit + ("-dirty" if changes else "")


def content_hash(folder: Path) -> str:
    from shapcluster.sync import scan_local_tree

    digest = hashlib.sha256()
    for relative, file in scan_local_tree(folder).files.items():
        digest.update(f"{relative}\0{file.sha256}\n".encode())
    return digest.hexdigest()


def unsynced_files(head: cluster.Node, app_dir: Path) -> list[str] | None:
    """Files of the local app folder that differ from (or are missing in) the head's synced copy,
    and files only the head has; None when the head's app folder was never synced."""
    from shapcluster import sync

    found = head.runner.run(cmd.read_file_command(sync.manifest_path(head.layout.app_dir)), check=False)
    remote = sync.parse_manifest(found.stdout, head.layout.app_dir) if found.ok else None
    if remote is None:
        return None
    local = {path: file.sha256 for path, file in sync.scan_local_tree(app_dir).files.items()}
    synced = {path: entry.sha256 for path, entry in remote.items()}
    return sorted(path for path in local.keys() | synced.keys() if local.get(path) != synced.get(path))


def sync_warning(differs: list[str] | None, app_dir: Path, head: str) -> str | None:
    if differs == []:
        return None
    what = (
        "was never synced"
        if differs is None
        else f"differs from {app_dir} in {len(differs)} file(s): {', '.join(differs[:5])}"
        + (" …" if len(differs) > 5 else "")
    )
    return f"The app on {head} {what}; the job runs the synced copy. Run `shapcluster sync` first."


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()
