"""Entrypoint on the cluster and locally: ``python -m app --rows 16 ...``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from app.config import parse_args
from app.contract import ERROR_FILE_ENV
from app.errors import JobError
from app.precheck import check_job


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        check_job(config)  # the data, groups and plan size, before Ray and scikit-learn load
        from app.dag import run_job  # Ray loads only once the arguments are known to be good

        run_job(config)
    except JobError as err:
        report_error(str(err))
        return err.exit_status
    return 0


def report_error(message: str) -> None:
    """The job's one-line error: to the file shapcluster named (it prints it), else to stderr."""
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        Path(error_file).write_text(message + "\n", encoding="utf-8")
    else:
        print(f"Error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
