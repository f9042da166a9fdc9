"""Ways to run commands on a host: one ``Runner`` protocol, several implementations.

``ssh`` (the only fabric importer) for real hosts, ``local`` for this machine, ``fake`` for
``--dry-run`` and tests; ``group`` fans one action out over many runners.
"""

from shapcluster.remote.base import Result, Runner

__all__ = ["Result", "Runner"]
