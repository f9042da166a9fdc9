"""Entrypoint on the cluster and locally: ``python -m app --rows 16 ...``."""

from __future__ import annotations

import sys

from app.config import parse_args
from app.errors import JobError
from app.precheck import check_job


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        check_job(config)  # the data, groups and plan size, before Ray and scikit-learn load
        from app.dag import run_job  # Ray loads only once the arguments are known to be good

        run_job(config)
    except JobError as err:
        print(f"Error: {err}", file=sys.stderr)
        return err.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
