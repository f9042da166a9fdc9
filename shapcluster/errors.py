"""The error tree of shapcluster and the exit status each kind of failure maps to.

The core raises these; only ``shapcluster.cli`` turns them into a red line and an exit code.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Distinct exit codes, documented in the README, so scripts can tell failures apart."""

    OK = 0
    ERROR = 1  # unexpected failure (a bug): run again with --debug and report it
    USAGE = 2  # bad command-line usage (typer/click use 2 too)
    INPUT = 3  # invalid input data, inventory or configuration
    MISMATCH = 4  # the job ran but our explanations disagree with the reference
    NOT_IMPLEMENTED = 5  # reserved: was "not built yet"; every command is built now
    REMOTE = 6  # a host could not be reached or a remote command failed
    JOB_FAILED = 7  # the job failed inside the app
    JOB_STOPPED = 8  # the job was stopped by the user
    NO_CLUSTER = 9  # the head answers over SSH, but no cluster runs there (no container or dashboard)
    DEGRADED = 10  # `status`: the cluster is up, but some host or Ray node is not


class ShapclusterError(Exception):
    """Base of every error the CLI knows how to explain.

    ``hint`` tells the user what to do next; it is printed on its own line.
    """

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(ShapclusterError):
    """Invalid data, inventory or configuration: the message names the file (and line)."""

    exit_status = ExitStatus.INPUT


class ResultsDisagreeError(ShapclusterError):
    """Our KernelSHAP and the reference disagree beyond the tolerance."""

    exit_status = ExitStatus.MISMATCH


class RemoteError(ShapclusterError):
    """One or more hosts failed; the message names each host."""

    exit_status = ExitStatus.REMOTE


class JobFailedError(ShapclusterError):
    exit_status = ExitStatus.JOB_FAILED


class JobStoppedError(ShapclusterError):
    exit_status = ExitStatus.JOB_STOPPED


class NoClusterError(ShapclusterError):
    """The head is reachable, but no cluster is up on it: start one with `shapcluster up`."""

    exit_status = ExitStatus.NO_CLUSTER

    def __init__(self, message: str, *, hint: str | None = "Start the cluster: shapcluster up") -> None:
        super().__init__(message, hint=hint)


class DegradedError(ShapclusterError):
    """The cluster is up but not whole: a host is unreachable or a Ray node is not alive."""

    exit_status = ExitStatus.DEGRADED
