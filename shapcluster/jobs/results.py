"""A finished job on the cluster: its exit status as a ShapclusterError, its results fetched."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from shapcluster import cluster
from shapcluster.errors import (
    InputError,
    JobFailedError,
    JobStoppedError,
    RemoteError,
    ResultsDisagreeError,
)
from shapcluster.remote.base import tail

log = logging.getLogger(__name__)
RESULTS_MODE = 0o644  # results are for sharing, as `submit --local` writes them
LOG_TAIL_LINES = 12
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def list_files_command(folder: str) -> str:
    """The regular files directly in ``folder``, one path a line; nothing if it does not exist."""
    quoted = shlex.quote(folder)
    return f"if [ -d {quoted} ]; then find {quoted} -mindepth 1 -maxdepth 1 -type f; fi"


def app_error(log_lines: Sequence[str]) -> str | None:
    """The app's own one-line reason (``Error: ...`` on stderr), if it printed one."""
    for line in reversed(log_lines):
        if line.startswith("Error: "):
            return line[len("Error: ") :]
    return None


def raise_for_status(info: JobInfo, log_lines: Sequence[str], head: str, results: Path | None) -> None:
    """Nothing for a job that succeeded; otherwise the error whose exit status matches the
    driver's (3 bad input, 4 disagreement, 7 any other failure, 8 stopped)."""
    job = info.job_id
    saved = f" Its results are in {results}." if results else ""
    if info.status == "SUCCEEDED":
        return
    if info.status == "STOPPED":
        raise JobStoppedError(f"Job {job} was stopped.{saved}")
    if info.status != "FAILED":
        raise RemoteError(
            f"{head}: job {job} is still {info.status}, but its log stream ended.",
            hint=f"Follow it again: shapcluster logs {job} --follow",
        )
    reason = app_error(log_lines)
    if info.exit_code == 3:
        raise InputError(
            f"Job {job}: {reason or 'the input data cannot be used'}",
            hint="Fix the file in the synced data folder and run `shapcluster sync`, or pass another --data.",
        )
    if info.exit_code == 4:
        raise ResultsDisagreeError(
            f"Job {job}: {reason or 'our KernelSHAP and the reference disagree'}.{saved}",
            hint="Compare shap_values.csv with reference_shap_values.csv there; report it with the summary.",
        )
    status = f"exit status {info.exit_code}" if info.exit_code is not None else "no exit status"
    last = tail("\n".join(log_lines), lines=LOG_TAIL_LINES, chars=2000) or tail(info.message)
    raise JobFailedError(
        f"Job {job} failed on {head} ({status})" + (f":\n{last}" if last else "."),
        hint=f"The whole log: shapcluster logs {job}",
    )


def fetch_results(head: cluster.Node, job_id: str, output_dir: Path) -> Path | None:
    """Copy the head's results/<job-id>/ files to ``output_dir/<job-id>/``; None if it has none."""
    remote = f"{head.layout.results_dir}/{job_id}"
    listing = head.runner.run(list_files_command(remote)).stdout
    names = sorted(PurePosixPath(line).name for line in listing.splitlines() if line.strip())
    if not names:
        return None
    local = output_dir / job_id
    for name in names:
        head.runner.get(f"{remote}/{name}", local / name, RESULTS_MODE)
    return local


@dataclass(frozen=True)
class JobInfo:
    """Ray's JobDetails reduced to what we report; times are aware datetimes (UTC)."""

    job_id: str
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    exit_code: int | None = None  # the driver's, once it has ended
    message: str = ""
    start: datetime | None = None
    end: datetime | None = None
    entrypoint: str = ""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def job_info(details: Any) -> JobInfo:
    status = getattr(details.status, "value", details.status)  # JobStatus is a str Enum
    return JobInfo(
        job_id=details.submission_id or details.job_id or "?",
        status=str(status),
        exit_code=details.driver_exit_code,
        message=details.message or "",
        start=_from_ms(details.start_time),
        end=_from_ms(details.end_time),
        entrypoint=details.entrypoint or "",
    )


def _from_ms(stamp: int | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp / 1000, UTC)
