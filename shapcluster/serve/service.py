"""Deploy, watch and remove the explanation service through Ray Serve's REST API.

Everything here talks to an ``Endpoint`` (the head's dashboard through a tunnel, or the local
head's) and to the served application's own routes (app/contract.py's SERVE_* constants): the
cluster and ``--local`` share this code and differ only in how the endpoints are reached.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app import contract
from shapcluster.errors import InputError, NoClusterError, RemoteError, ShapclusterError
from shapcluster.serve.dashboard import ACTORS_API, SERVE_API, Endpoint, HttpStatusError, query

Progress = Callable[[str], None]

SERVE_PORT = 8000  # Serve's HTTP proxy, on the head's 127.0.0.1 only
DEPLOY_TIMEOUT_SECONDS = 600.0
DOWN_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 1.0
# Actor classes of a Serve instance (controller, HTTP proxies, replicas of any deployment).
SERVE_ACTOR_CLASSES = ("ServeController", "ProxyActor", "ServeReplica")
# Errors of the app that mean the user's input (model, data, options) is wrong: exit 3.
INPUT_ERRORS = (
    "DataError",
    "BudgetError",
    "UnsupportedModelError",
    "OptionError",
    "ConfigError",
    "FileNotFoundError",
    "IsADirectoryError",
)
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception))(?:\([^)]*\))?: ")


def deploy_config(
    args: Mapping[str, Any], *, env_vars: Mapping[str, str], port: int = SERVE_PORT
) -> dict[str, Any]:
    """The body of ``PUT /api/serve/applications/``: our one application built by
    ``app.serve:build_app`` from ``args`` (ServeOptions.to_args()), one HTTP proxy on the head
    bound to its 127.0.0.1 (reached through the SSH tunnel only), ``env_vars`` for every replica."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": contract.SERVE_APP_NAME,
                "route_prefix": contract.SERVE_ROUTE_PREFIX,
                "import_path": contract.SERVE_IMPORT_PATH,
                "args": dict(args),
                "runtime_env": {"env_vars": dict(env_vars)} if env_vars else {},
            }
        ],
    }


@dataclass(frozen=True)
class AppState:
    """The application as Serve reports it. ``replicas``: (deployment, state, node IP) -> count."""

    status: str  # NOT_STARTED, DEPLOYING, DEPLOY_FAILED, RUNNING, UNHEALTHY, DELETING
    message: str
    target: int  # replicas wanted, over all deployments
    replicas: Mapping[tuple[str, str, str], int]
    deployment_messages: tuple[str, ...] = ()
    args: Mapping[str, Any] | None = None  # the args of the config Serve is applying

    @property
    def running(self) -> int:
        return sum(n for (_, state, _), n in self.replicas.items() if state == "RUNNING")

    def describe(self) -> str:
        if self.target == 0 and not self.replicas:
            return f"{self.status}: building the application (importing {contract.SERVE_IMPORT_PATH})"
        states = Counter[str]()
        for (_, state, _), count in self.replicas.items():
            states[state] += count
        parts = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
        return f"{self.status}: {self.running}/{self.target} replicas running" + (
            f" ({parts})" if parts else ""
        )


def app_state(details: Mapping[str, Any]) -> AppState | None:
    """Our application's state from ServeInstanceDetails (GET /api/serve/applications/);
    None when it is not deployed."""
    app = (details.get("applications") or {}).get(contract.SERVE_APP_NAME)
    if not app:
        return None
    replicas: Counter[tuple[str, str, str]] = Counter()
    target = 0
    messages = []
    for name, deployment in (app.get("deployments") or {}).items():
        target += int(deployment.get("target_num_replicas") or 0)
        if deployment.get("message"):
            messages.append(str(deployment["message"]))
        for replica in deployment.get("replicas") or []:
            replicas[(str(name), str(replica.get("state")), str(replica.get("node_ip") or "-"))] += 1
    return AppState(
        status=str(app.get("status")),
        message=str(app.get("message") or ""),
        target=target,
        replicas=dict(replicas),
        deployment_messages=tuple(messages),
        args=(app.get("deployed_app_config") or {}).get("args"),
    )


def failure_line(message: str) -> tuple[str, str | None]:
    """The line of a Serve status message that says what went wrong (the last ``XError: ...``
    of its traceback, else its last line), and the error's class name if there is one."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            return line, match[1]
    return (lines[-1] if lines else "(Serve gave no message)"), None


def deploy_failure(where: str, state: AppState) -> ShapclusterError:
    """A failed deployment as one line, literally from Serve's message, plus a hint:
    bad input (the app's own input errors) exits 3, anything else 6."""
    message = "\n".join([state.message, *state.deployment_messages])
    line, kind = failure_line(message)
    text = f"{where}: the service failed to deploy: {line}"
    if kind in INPUT_ERRORS:
        return InputError(
            text, hint="Fix the model, data or option it names and run `shapcluster serve up` again."
        )
    if kind in {"ModuleNotFoundError", "ImportError"}:
        return RemoteError(
            text,
            hint="The replicas could not import the app: run `shapcluster sync` (and `shapcluster up` "
            "if the image lacks ray[serve]), then `shapcluster serve up` again.",
        )
    return RemoteError(text, hint="`shapcluster serve status` shows the replicas; --debug shows more.")


def read_details(dashboard: Endpoint) -> dict[str, Any]:
    try:
        details = dashboard.get_json(SERVE_API)
    except HttpStatusError as err:
        if err.status == 501:  # the dashboard's Serve module without ray[serve]
            raise RemoteError(
                f"{dashboard.where}: Ray Serve is not installed where the dashboard runs.",
                hint="A cluster's image needs ray[serve] (docker/requirements.txt; then `shapcluster up`); "
                "with --local, install it here: pip install 'ray[serve]==2.60.0'.",
            ) from None
        raise
    return details if isinstance(details, dict) else {}


def deploy(
    dashboard: Endpoint,
    config: Mapping[str, Any],
    *,
    progress: Progress = lambda _: None,
    timeout: float = DEPLOY_TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> AppState:
    """PUT the config, then poll until the application is RUNNING with all its replicas; every
    change of state is handed to ``progress``. Raises the deploy failure (InputError or
    RemoteError) when Serve gives up, RemoteError when ``timeout`` seconds pass first."""
    read_details(dashboard)  # a missing Serve says so before anything is deployed
    try:
        dashboard.request("PUT", SERVE_API, dict(config))
    except HttpStatusError as err:
        if err.status != 400:
            raise
        line, _ = failure_line(err.body)
        raise InputError(f"{dashboard.where}: Serve refused the application: {line}") from None
    wanted = [app.get("args") for app in config.get("applications", [])]
    deadline = clock() + timeout
    last = ""
    while True:
        state = app_state(read_details(dashboard))
        if state is not None and state.args is not None and state.args not in wanted:
            state = None  # still the application deployed before this one
        seen = state.describe() if state else "waiting for Serve to take the application"
        if seen != last:
            progress(seen)
            last = seen
        if state is not None:
            if state.status == "DEPLOY_FAILED" or (
                state.status == "UNHEALTHY" and "failed" in " ".join(state.deployment_messages).lower()
            ):
                raise deploy_failure(dashboard.where, state)
            if state.status == "RUNNING" and state.running >= state.target:
                return state
        if clock() >= deadline:
            raise RemoteError(
                f"{dashboard.where}: the service is not running after {timeout:.0f} s ({seen}).",
                hint="`shapcluster serve status` shows the replicas; `shapcluster serve down` removes it.",
            )
        sleep(POLL_SECONDS)  # a poll interval; the deadline decides


def serve_actors(dashboard: Endpoint) -> list[str]:
    """Class names of the alive Serve actors (controller, proxies, replicas), from the state API."""
    answer = dashboard.get_json(
        ACTORS_API + query(limit="10000", filter_keys="state", filter_predicates="=", filter_values="ALIVE")
    )
    actors = (answer.get("data") or {}).get("result") or {}
    rows = actors.get("result", []) if isinstance(actors, dict) else actors
    return sorted(
        str(row.get("class_name"))
        for row in rows
        if str(row.get("class_name", "")).startswith(SERVE_ACTOR_CLASSES)
        and row.get("state", "ALIVE") == "ALIVE"
    )


def remove(
    dashboard: Endpoint,
    *,
    progress: Progress = lambda _: None,
    timeout: float = DOWN_TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """DELETE every Serve application (Serve shuts down) and poll until no Serve actor is alive.
    Returns whether anything was served. RemoteError when actors remain after ``timeout`` s."""
    served = app_state(read_details(dashboard)) is not None
    dashboard.request("DELETE", SERVE_API)
    deadline = clock() + timeout
    while True:
        left = serve_actors(dashboard)
        if not left:
            return served
        progress(f"waiting for {len(left)} Serve actor(s) to stop: {', '.join(sorted(set(left)))}")
        if clock() >= deadline:
            raise RemoteError(
                f"{dashboard.where}: Serve actors still alive {timeout:.0f} s after the service was "
                f"deleted: {', '.join(left)}",
                hint="Run `shapcluster serve down` again; `shapcluster down` stops everything.",
            )
        sleep(POLL_SECONDS)


@dataclass(frozen=True)
class ServiceStatus:
    """What `serve status` shows: Serve's view and the application's own counters (its /stats
    route: requests, rows, explainer calls, retries, refusals, latency percentiles and each
    explaining replica's counters); None with ``stats_error`` saying why when unreadable."""

    state: AppState
    stats: Mapping[str, Any] | None
    stats_error: str | None = None

    @property
    def replica_stats(self) -> list[Mapping[str, Any]]:
        replicas = (self.stats or {}).get("replicas") or []
        return [r for r in replicas if isinstance(r, Mapping)]


def status(dashboard: Endpoint, service: Endpoint) -> ServiceStatus:
    """The service's state (from ``dashboard``) and counters (the app's /stats route on
    ``service``, Serve's HTTP proxy). NoClusterError (exit 9) when nothing is served."""
    state = app_state(read_details(dashboard))
    if state is None:
        raise NoClusterError(
            f"{dashboard.where}: nothing is served (no Serve application {contract.SERVE_APP_NAME!r}).",
            hint="Deploy it: shapcluster serve up --model PATH --data PATH",
        )
    try:
        stats = service.get_json(contract.SERVE_STATS_ROUTE)
    except ShapclusterError as err:
        return ServiceStatus(state, None, err.message)
    return ServiceStatus(
        state,
        stats if isinstance(stats, dict) else None,
        None if isinstance(stats, dict) else "not a JSON object",
    )
