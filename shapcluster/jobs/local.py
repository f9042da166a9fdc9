"""Run the job on this machine (`submit --local`): the job's exceptions as ShapclusterErrors."""

from __future__ import annotations

import logging
from typing import Any

from app.config import JobConfig
from shapcluster.errors import (
    InputError,
    JobFailedError,
    ResultsDisagreeError,
)

log = logging.getLogger(__name__)


def build_job_config(**options: Any) -> JobConfig:
    """One validated JobConfig from CLI options; a bad combination is an InputError."""
    try:
        return JobConfig(**options)
    except ValueError as err:
        raise InputError(str(err)) from None


def run_local(config: JobConfig) -> dict[str, Any]:
    """Run the job on a Ray instance on this machine; return its summary."""
    from app.errors import DataError, ExplanationsDisagreeError, JobError
    from app.precheck import check_job

    log.debug("running the job locally with %s", config)
    try:
        check_job(config)  # data, groups, plan size: before Ray and scikit-learn are imported
        from app.dag import run_job

        return run_job(config)
    except DataError as err:
        raise InputError(str(err)) from None
    except ExplanationsDisagreeError as err:
        raise ResultsDisagreeError(
            str(err),
            hint="Compare shap_values.csv with reference_shap_values.csv; rerun with --debug and report it.",
        ) from None
    except JobError as err:
        raise JobFailedError(str(err)) from None
