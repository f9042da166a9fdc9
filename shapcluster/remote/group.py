"""Run one action on many hosts in parallel and report every failure at once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from shapcluster.errors import ExitStatus, RemoteError, ShapclusterError
from shapcluster.remote.base import Runner, host_error_text

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PARALLEL = 16


class HasRunner(Protocol):
    """Anything that reaches one host through a runner (``cluster.Node``)."""

    @property
    def runner(self) -> Runner: ...


N = TypeVar("N", bound=HasRunner)


@dataclass(frozen=True)
class GroupResult(Generic[T]):
    """Per-host outcomes, both keyed by ``Runner.host`` in the order the runners were given."""

    successes: dict[str, T] = field(default_factory=dict)
    failures: dict[str, Exception] = field(default_factory=dict)

    def raise_for_failures(self, what: str) -> dict[str, T]:
        """Return the successes, or raise one error naming every failed host."""
        if self.failures:
            raise HostsFailedError(what, self)
        return self.successes


class HostsFailedError(RemoteError):
    """Some hosts failed; ``result`` keeps the successes of the others (e.g. to clean them up).

    Its exit status is the failures' own when they all share one (``cpus=64`` on a 2-core host
    is a configuration error, 3, not an unreachable host); otherwise that of a remote failure."""

    def __init__(self, what: str, result: GroupResult[Any]) -> None:
        total = len(result.successes) + len(result.failures)
        lines = [f"{what} failed on {len(result.failures)} of {total} hosts:"]
        hints: list[str] = []
        for host, error in result.failures.items():
            lines.append(_describe(host, error))
            hint = getattr(error, "hint", None)
            if hint and hint not in hints:
                hints.append(hint)
        super().__init__("\n".join(lines), hint="\n".join(hints) or None)
        self.result = result
        statuses = {
            e.exit_status if isinstance(e, ShapclusterError) else ExitStatus.ERROR
            for e in result.failures.values()
        }
        if len(statuses) == 1 and ExitStatus.ERROR not in statuses:
            self.exit_status = statuses.pop()


def gather_results(
    runners: Sequence[Runner], action: Callable[[Runner], T], *, max_parallel: int = MAX_PARALLEL
) -> GroupResult[T]:
    """Run ``action(runner)`` for every runner in a thread pool; never raises for a host's failure."""
    names = [runner.host for runner in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"runners must have distinct host names, got {names}")
    if not runners:
        return GroupResult()
    with ThreadPoolExecutor(max_workers=min(max_parallel, len(runners)), thread_name_prefix="host") as pool:
        futures = {runner.host: pool.submit(action, runner) for runner in runners}
    successes: dict[str, T] = {}
    failures: dict[str, Exception] = {}
    for host, future in futures.items():
        error = future.exception()
        if error is None:
            successes[host] = future.result()
        elif isinstance(error, Exception):
            if not isinstance(error, ShapclusterError):
                logger.debug("%s: unexpected error", host, exc_info=error)
            failures[host] = error
        else:  # KeyboardInterrupt, SystemExit: not a host's failure
            raise error
    return GroupResult(successes, failures)


def run_in_parallel(
    runners: Sequence[Runner], action: Callable[[Runner], T], *, what: str, max_parallel: int = MAX_PARALLEL
) -> dict[str, T]:
    """``gather_results`` that raises ``HostsFailedError`` (a RemoteError) if any host failed."""
    result = gather_results(runners, action, max_parallel=max_parallel)
    if result.failures:
        # Keep a bug's traceback reachable with --debug instead of flattening it into text.
        unexpected = [e for e in result.failures.values() if not isinstance(e, ShapclusterError)]
        raise HostsFailedError(what, result) from (unexpected[0] if unexpected else None)
    return result.successes


def gather_on_nodes(nodes: Sequence[N], action: Callable[[N], T]) -> GroupResult[T]:
    """``action(node)`` on every node in parallel, outcomes keyed by host name (``runner.host``)."""
    by_host = {node.runner.host: node for node in nodes}
    return gather_results([n.runner for n in nodes], lambda runner: action(by_host[runner.host]))


def run_on_nodes(nodes: Sequence[N], action: Callable[[N], T], *, what: str) -> dict[str, T]:
    """``action(node)`` on every node in parallel; one error naming every host that failed."""
    by_host = {node.runner.host: node for node in nodes}
    return run_in_parallel([n.runner for n in nodes], lambda runner: action(by_host[runner.host]), what=what)


def _describe(host: str, error: Exception) -> str:
    return "  - " + host_error_text(host, error).replace("\n", "\n    ")
