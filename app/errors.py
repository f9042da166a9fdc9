"""Errors the job reports to its user, each with the exit status the entrypoint returns.

The numbers match shapcluster's ExitStatus (INPUT=3, MISMATCH=4) so scripts see the same codes
whether the job ran locally or on a cluster.
"""

from __future__ import annotations


class JobError(Exception):
    exit_status = 1


class DataError(JobError):
    """The input data cannot be used; the message names the file and the problem."""

    exit_status = 3


class ExplanationsDisagreeError(JobError):
    """Our KernelSHAP and the reference disagree beyond the tolerance (or break additivity)."""

    exit_status = 4


class BudgetError(DataError):
    """The explanation's plan would not fit the memory budget; refused before any work starts.
    The message names the coalitions, the memory needed, the budget and what to pass instead."""

    exit_status = 3


class UnsupportedModelError(DataError):
    """--algorithm tree was asked for a model (or a split kind) the tree path does not cover:
    a configuration error, exit status 3 like bad input."""
