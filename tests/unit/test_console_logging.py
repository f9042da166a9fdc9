"""An unreachable host is one line with a hint, not paramiko's traceback (unless --debug)."""

from __future__ import annotations

import logging

import pytest

from shapcluster import console


@pytest.mark.parametrize("debug", [False, True])
def test_paramiko_tracebacks_show_only_with_debug(debug: bool) -> None:
    console.setup_logging(debug=debug)
    try:
        assert logging.getLogger("paramiko.transport").isEnabledFor(logging.ERROR) is debug
    finally:
        console.setup_logging(debug=False)
