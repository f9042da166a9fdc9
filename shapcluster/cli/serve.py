"""`shapcluster serve up|status|down`: the explanation service on Ray Serve.

``serve up``'s explainer and serving options are generated from app/contract.py's ServeOptions
(the job's own option definitions for the explainer), like ``submit``'s from JobConfig."""

from __future__ import annotations

import dataclasses
import inspect
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app import contract
from shapcluster import console
from shapcluster.cli._errors import translate_errors
from shapcluster.cli.cluster import DEFAULT_CONFIG, ConfigOption, JsonOption
from shapcluster.config import load_cluster_config

if TYPE_CHECKING:
    from shapcluster.serve.lifecycle import Deployed
    from shapcluster.serve.service import ServiceStatus
# shapcluster.serve (SSH, HTTP) is imported inside the commands: `--help` stays fast.

app = typer.Typer(
    help="Explanations as a service: a Ray Serve application on the cluster (or on this machine).",
    no_args_is_help=True,
)

_EXPLAINER = "Explainer options"
_SERVING = "Serving options"
_RUN = "Where it runs"
_SET_BY_THE_TOOL = ("token_file",)  # the cluster's (or local head's) token file, never typed
_NUMBERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float}

LocalOption = Annotated[
    bool,
    typer.Option(
        "--local", help="The local Ray head (started if none runs).", rich_help_panel=_RUN, metavar=""
    ),
]


def _parser(name: str) -> Callable[[str], Any]:
    """The contract's conversion of one option's text (the job's for the job's options; int or
    float for serving's own), or a usage error (exit 2)."""
    f = {f.name: f for f in contract.serve_options()}[name]

    def convert(text: str) -> Any:
        if not isinstance(text, str):
            return text
        try:
            if name in contract.SERVE_JOB_OPTIONS:
                return contract.parse_option(name, text)
            kind = _NUMBERS.get(str(f.type).split(" ")[0], str)
            return kind(text)
        except contract.OptionError as err:
            raise typer.BadParameter(str(err)) from None
        except ValueError:
            raise typer.BadParameter(f"must be a {f.type}, got {text!r}") from None

    return convert


def _option_parameter(f: dataclasses.Field[Any]) -> inspect.Parameter:
    meta, default = f.metadata, contract.default_of(f)
    panel = _EXPLAINER if f.name in contract.SERVE_JOB_OPTIONS else _SERVING
    spelling = contract.flag(f.name)
    if isinstance(default, bool):
        decls = f"{spelling}/--no-{f.name.replace('_', '-')}" if default else spelling
        info: Any = typer.Option(decls, help=meta["help"], rich_help_panel=panel, metavar="")
        return inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[bool, info]
        )
    names = contract.choices(f.name) if f.name in contract.SERVE_JOB_OPTIONS else ()
    info = typer.Option(
        spelling,
        parser=_parser(f.name),
        metavar=meta["metavar"] or ("[" + "|".join(names) + "]" if names else "TEXT"),
        help=meta["help"],
        show_default=str(default) if default not in (None, ()) else False,
        rich_help_panel=panel,
    )
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, info]
    )


def build_options(values: dict[str, Any]) -> contract.ServeOptions:
    """ServeOptions of the parsed options; a bad value or combination is a usage error (exit 2)."""
    try:
        return contract.ServeOptions(**{k: v for k, v in values.items() if v is not None})
    except contract.ConfigError as err:
        raise typer.BadParameter(str(err), param_hint=err.option) from None
    except contract.OptionError as err:
        raise typer.BadParameter(str(err)) from None


def _wait_for_ctrl_c(deployed_url: str, token_file: Path) -> None:
    _print_reach(deployed_url, token_file)
    console.say("The tunnel stays open until Ctrl-C; the service keeps running after it.")
    try:
        while True:
            signal.pause()  # the user ends it with Ctrl-C
    except KeyboardInterrupt:
        console.say("")


def _print_reach(url: str, token_file: Path) -> None:
    console.say(f"URL: {url}")
    console.say(
        f'Routes: POST {contract.SERVE_EXPLAIN_ROUTE} {{"rows": [{{column: value, ...}}]}}, '
        f"GET {contract.SERVE_INFO_ROUTE}, GET {contract.SERVE_STATS_ROUTE}, "
        f"GET {contract.SERVE_HEALTH_ROUTE}"
    )
    console.say(f"Token: in {token_file} (send it as the header `Authorization: Bearer <token>`)")
    console.say(f'Try: curl -H "Authorization: Bearer $(cat {token_file})" {url}{contract.SERVE_INFO_ROUTE}')


def up(
    local: bool,
    config: Path,
    keep_open: bool = True,
    token_file: Path | None = None,
    cpus: int | None = None,
    timeout: float = 600.0,
    **options: Any,
) -> None:
    """Deploy the explanation service (app/serve.py) and wait until every replica runs.

    On the cluster of --config (reached through an SSH tunnel with the cluster's token; the URL
    printed is this machine's end of the tunnel, open until Ctrl-C), or with --local on a Ray
    head on this machine. The service keeps running until `shapcluster serve down`.

    Exit status: 0 running, 2 a bad option value, 3 bad input (a file outside the synced data
    folder, a model or data the replicas refuse), 6 a host is unreachable, Ray rejected the token
    or the replicas failed to start, 9 no cluster is up."""
    from shapcluster.serve import lifecycle, service

    serve_options = build_options(options)
    if local:
        if cpus is not None and cpus < 1:
            raise typer.BadParameter("must be at least 1", param_hint="--cpus")
        deployed = lifecycle.up_local(serve_options, cpus=cpus, progress=console.progress, timeout=timeout)
        _say_running(deployed)
        assert deployed.url is not None
        _print_reach(deployed.url, deployed.token_file)
        return
    if cpus is not None:
        raise typer.BadParameter(
            "only applies with --local (a cluster's CPUs are set in its config)", param_hint="--cpus"
        )
    settings = load_cluster_config(config)

    def ready(url: str) -> None:
        console.ok(f"serving {contract.SERVE_APP_NAME} on cluster {settings.name}")
        _wait_for_ctrl_c(url, chosen)

    chosen = token_file or lifecycle.default_token_file(settings.name)
    deployed = lifecycle.up_cluster(
        settings,
        serve_options,
        token_file=chosen,
        on_ready=ready if keep_open else None,
        progress=console.progress,
        warn=console.warn,
        timeout=timeout,
    )
    if keep_open:
        console.say(f"Tunnel closed. The service keeps running; reach it again: {deployed.reach}")
        console.say("Remove it: shapcluster serve down")
        return
    _say_running(deployed)
    console.say(f"Reach it through an SSH tunnel: {deployed.reach}")
    _print_reach(f"http://127.0.0.1:{service.SERVE_PORT}", deployed.token_file)


def _say_running(deployed: Deployed) -> None:
    console.ok(f"{contract.SERVE_APP_NAME} {deployed.state.describe()}")


def _up_parameters() -> list[inspect.Parameter]:
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("local", keyword, default=False, annotation=LocalOption),
        inspect.Parameter("config", keyword, default=DEFAULT_CONFIG, annotation=ConfigOption),
    ]
    params += [_option_parameter(f) for f in contract.serve_options() if f.name not in _SET_BY_THE_TOOL]
    run_options: list[tuple[str, Any, Any]] = [
        (
            "keep_open",
            True,
            Annotated[
                bool,
                typer.Option(
                    "--keep-open/--no-keep-open",
                    help="Keep a tunnel to the service open until Ctrl-C (--no-keep-open: deploy, print "
                    "how to reach it, exit).",
                    rich_help_panel=_RUN,
                    metavar="",
                ),
            ],
        ),
        (
            "token_file",
            None,
            Annotated[
                Path | None,
                typer.Option(
                    help="Where to write the cluster's token for the service's clients (0600; default "
                    "~/.cache/shapcluster/serve/<cluster>.token).",
                    rich_help_panel=_RUN,
                ),
            ],
        ),
        (
            "cpus",
            None,
            Annotated[
                int | None,
                typer.Option(help="With --local: CPUs of the local Ray head.", rich_help_panel=_RUN),
            ],
        ),
        (
            "timeout",
            600.0,
            Annotated[
                float,
                typer.Option(min=1, help="Seconds to wait until every replica runs.", rich_help_panel=_RUN),
            ],
        ),
    ]
    params += [inspect.Parameter(name, keyword, default=d, annotation=a) for name, d, a in run_options]
    return params


up = translate_errors(up)
_PARAMETERS = _up_parameters()
up.__signature__ = inspect.Signature(_PARAMETERS)  # type: ignore[attr-defined]
up.__annotations__ = {p.name: p.annotation for p in _PARAMETERS}
app.command("up")(up)


def _seconds_ms(stats: Any, key: str) -> str:
    value = (stats.get("latency_seconds") or {}).get(key)
    return "-" if value is None else f"{value * 1000:.1f}"


def _print_status(found: ServiceStatus, where: str) -> None:
    state = found.state
    console.say(f"{contract.SERVE_APP_NAME} on {where}: {state.describe()}")
    if state.message:
        console.say(f"  {state.message.splitlines()[0]}")
    console.print_table(
        "Replicas per state and node",
        ("deployment", "state", "node", "replicas"),
        ((d, s, node, n) for (d, s, node), n in sorted(state.replicas.items())),
    )
    if found.stats is None:
        console.warn(f"the service's counters could not be read: {found.stats_error}")
        return
    stats = found.stats
    console.print_table(
        "Explaining replicas (their own counters, as last reported to the gateway)",
        ("replica", "requests", "rows", "explainer calls", "refused"),
        (
            (r.get("replica"), r.get("requests"), r.get("rows"), r.get("batches"),
             sum((r.get("refused") or {}).values()))
            for r in found.replica_stats
        ),
    )  # fmt: skip
    refused = ", ".join(f"{n} x HTTP {code}" for code, n in (stats.get("refused") or {}).items()) or "none"
    console.say(
        f"Served: {stats.get('requests', 0)} requests, {stats.get('rows', 0)} rows in "
        f"{stats.get('batches', 0)} explainer calls; retried {stats.get('retried', 0)}, lost (503) "
        f"{stats.get('lost', 0)}; refused: {refused}; in flight now (queued or being explained): "
        f"{stats.get('in_flight', 0)}"
    )
    console.say(
        f"Latency over the last requests: p50 {_seconds_ms(stats, 'p50')} ms, "
        f"p99 {_seconds_ms(stats, 'p99')} ms"
    )


@app.command()
@translate_errors
def status(
    local: LocalOption = False, config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False
) -> None:
    """The service: application state, replicas per state and node, requests served, queue,
    latency percentiles (the replicas' own counters).

    Exit status: 0 served, 6 a host is unreachable, 9 nothing is served (or no cluster is up)."""
    from shapcluster.serve import lifecycle

    if local:
        found, where = lifecycle.status_local(), "the local Ray head"
    else:
        settings = load_cluster_config(config)
        found, where = lifecycle.status_cluster(settings), f"cluster {settings.name}"
    if as_json:
        console.print_json(
            {
                "application": contract.SERVE_APP_NAME,
                "status": found.state.status,
                "message": found.state.message,
                "target_replicas": found.state.target,
                "replicas": [
                    {"deployment": d, "state": s, "node": node, "count": n}
                    for (d, s, node), n in sorted(found.state.replicas.items())
                ],
                "stats": found.stats,
                "stats_error": found.stats_error,
            }
        )
        return
    _print_status(found, where)


@app.command()
@translate_errors
def down(local: LocalOption = False, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Delete the service and wait until no Serve actor is left (--local: then stop the local Ray
    head too). Nothing served is not an error.

    Exit status: 0 removed (or nothing was served), 6 a host is unreachable or Serve actors
    remain, 9 no cluster (or no local head) is up."""
    from shapcluster.serve import lifecycle

    if local:
        served = lifecycle.down_local(progress=console.progress)
        where = "the local Ray head (stopped)"
    else:
        settings = load_cluster_config(config)
        served = lifecycle.down_cluster(settings, progress=console.progress)
        where = f"cluster {settings.name}"
    what = f"{contract.SERVE_APP_NAME} removed" if served else "nothing was served"
    console.ok(f"{what} on {where}; no Serve actor is left")
