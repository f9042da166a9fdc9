"""Run the job on this machine (`submit --local`): ``python -m app`` in a child process, its exit
status and one-line error translated into ShapclusterErrors.

The toolkit ships ``app/`` as files and imports nothing of it but ``app.contract``, so the local
run starts the job the way the cluster does, with the same arguments (``JobConfig.to_argv``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.contract import ERROR_FILE_ENV, ExitCode, JobConfig, new_run_id
from shapcluster.errors import (
    InputError,
    JobFailedError,
    JobStoppedError,
    ResultsDisagreeError,
)

log = logging.getLogger(__name__)


def build_job_config(**options: Any) -> JobConfig:
    """One validated JobConfig from options; a bad value or combination is an InputError."""
    try:
        return JobConfig(**options)
    except ValueError as err:
        raise InputError(str(err)) from None


def local_command(config: JobConfig) -> list[str]:
    """The child process's command line: this interpreter running the job package."""
    return [sys.executable, "-m", "app", *config.to_argv()]


def run_local(config: JobConfig) -> dict[str, Any]:
    """Run the job on a Ray instance on this machine; return its summary (empty if it wrote none).

    Raises InputError (exit 3 of the job), ResultsDisagreeError (4), JobStoppedError (Ctrl-C) or
    JobFailedError (anything else), each with the job's own one-line message.
    """
    if config.run_id is None:  # named here, so that the summary can be read back
        config = dataclasses.replace(config, run_id=new_run_id())
    command = local_command(config)
    log.debug("running the job locally: %s", command)
    with tempfile.TemporaryDirectory(prefix="shapcluster-") as folder:
        error_file = Path(folder) / "error.txt"
        try:
            status = _run_child(command, {**os.environ, ERROR_FILE_ENV: str(error_file)})
        except KeyboardInterrupt:
            raise JobStoppedError("the local job was stopped (Ctrl-C)") from None
        message = error_file.read_text(encoding="utf-8").strip() if error_file.exists() else ""
    if status == ExitCode.OK:
        return _read_summary(config)
    if status == ExitCode.INPUT:
        raise InputError(message or "the job refused its input (see its output above)")
    if status == ExitCode.MISMATCH:
        raise ResultsDisagreeError(
            message or "the explainers disagree",
            hint="Compare shap_values.csv with reference_shap_values.csv; rerun with --debug and report it.",
        )
    raise JobFailedError(message or f"the job failed with exit status {status} (see its output above)")


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """The child's exit status. On a terminal it writes there itself (live progress bars);
    otherwise (a pipe, a test's captured stdout) its output is copied line by line to ours."""
    if sys.stdout.isatty():
        return subprocess.run(command, env=env, check=False).returncode
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        return child.wait()


def _read_summary(config: JobConfig) -> dict[str, Any]:
    path = Path(config.output_dir) / str(config.run_id) / "summary.json"
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary
