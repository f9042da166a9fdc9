"""`shapcluster serve` without a cluster: a FakeRunner head whose tunnels reach a fake Ray
dashboard (a real HTTP server on 127.0.0.1 playing Serve's REST API and the app's /stats and
/info routes), the CLI run through typer's runner. The REST calls, their token header, error
translation and exit codes, and that the token never reaches the output."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app import contract
from shapcluster import commands as cmd
from shapcluster.cli.root import app as cli_app
from shapcluster.config import ClusterConfig, load_cluster_config
from shapcluster.errors import ExitStatus, InputError, NoClusterError, RemoteError
from shapcluster.remote.fake import FakeRunner
from shapcluster.serve import lifecycle, local_head, service
from shapcluster.serve.dashboard import Endpoint
from tests.http_util import serve

TOKEN = "5e7fe11e" * 8
HEAD_PS = "c1|shapcluster-lab-head-10-9-0-1|head|sha256:0123|abcd|running|Up 5 minutes\n"
TRACEBACK = (
    "Deploying app 'shapcluster' failed with exception:\nTraceback (most recent call last):\n"
    '  File "/shapcluster/app/serve.py", line 130, in __init__\n'
    "    self.explainer = service.load_explainer(self.options)\n"
)


def replica(state: str, node: str) -> dict[str, Any]:
    return {"replica_id": f"r-{node}-{state}", "state": state, "node_ip": node}


def application(
    status: str, replicas: list[dict[str, Any]], message: str = "", args: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "applications": {
            contract.SERVE_APP_NAME: {
                "status": status,
                "message": message,
                "deployed_app_config": None if args is None else {"args": args},
                "deployments": {
                    "Explainer": {
                        "status": "HEALTHY",
                        "message": "",
                        "target_num_replicas": 2,
                        "replicas": replicas,
                    }
                },
            }
        }
    }


@dataclass
class FakeDashboard:
    """Serve's REST API and the app's routes as the head answers them. ``states`` are the
    successive answers of GET /api/serve/applications/ after a PUT (the last one repeats)."""

    states: list[dict[str, Any]] = field(default_factory=lambda: [{"applications": {}}])
    actors_after_delete: list[list[str]] = field(default_factory=lambda: [["ServeController"], []])
    status_code: int | None = None  # answer every request with this status instead
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)  # method, path, auth, body
    stats: list[dict[str, Any]] = field(default_factory=list)
    _gets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str, auth: str | None, body: Any) -> tuple[int, Any]:  # noqa: PLR0911 (one return per route)
        with self._lock:
            self.requests.append((method, path, auth, body))
            if self.status_code is not None:
                return self.status_code, {"error": "as scripted"}
            if auth != f"Bearer {TOKEN}":
                return 401, {"error": "Missing authentication token"}
            if path == "/api/serve/applications/" and method == "GET":
                deployed = any(m == "PUT" for m, *_ in self.requests)
                if not deployed:
                    return 200, self.states[0] if len(self.states) == 1 else {"applications": {}}
                self._gets += 1
                return 200, self.states[min(self._gets - 1, len(self.states) - 1)]
            if path == "/api/serve/applications/" and method in {"PUT", "DELETE"}:
                if method == "DELETE":
                    self.states = [{"applications": {}}]
                return 200, None
            if path.startswith("/api/v0/actors"):
                left = self.actors_after_delete.pop(0) if len(self.actors_after_delete) > 1 else []
                rows = [{"class_name": name, "state": "ALIVE"} for name in left]
                return 200, {"result": True, "data": {"result": {"total": len(rows), "result": rows}}}
            if path == contract.SERVE_STATS_ROUTE and self.stats:
                first = self.stats.pop(0)
                self.stats.append(first)
                return 200, first
            return 404, {"error": f"no route {path}"}


@pytest.fixture
def dashboard() -> Iterator[tuple[FakeDashboard, int]]:
    fake = FakeDashboard()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = fake.answer(self.command, self.path, self.headers.get("Authorization"), body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_DELETE = _reply  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    with serve(Handler) as url:
        yield fake, int(url.rsplit(":", 1)[1])


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    (tmp_path / "workers.txt").write_text("")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text("print('hi')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wine.csv").write_text("a;quality\n1;5\n")
    (tmp_path / "data" / "wine.skops").write_bytes(b"model")
    (tmp_path / "shapcluster.toml").write_text(
        '[cluster]\nname = "lab"\nremote_dir = "/srv/sc"\n[head]\nhost = "root@10.9.0.1"\n'
        '[workers]\nfile = "workers.txt"\n[sync]\napp_dir = "app"\ndata_dir = "data"\n'
    )
    return load_cluster_config(tmp_path / "shapcluster.toml")


def head(port: int) -> FakeRunner:
    runner = FakeRunner("10.9.0.1", tunnel_port=port)
    runner.respond(r"^docker ps --all --no-trunc", stdout=HEAD_PS)
    runner.respond(r"^cat -- /srv/sc/secrets/ray-auth-token$", stdout=TOKEN + "\n")
    return runner


def options(config: ClusterConfig, **more: Any) -> contract.ServeOptions:
    folder = config.path.parent / "data"
    return contract.ServeOptions(model=str(folder / "wine.skops"), data=str(folder / "wine.csv"), **more)


def endpoint(port: int, token: str | None = TOKEN) -> Endpoint:
    return Endpoint(f"http://127.0.0.1:{port}", token, "10.9.0.1", "the Ray dashboard")


def no_sleep(_: float) -> None:
    pass


# ---------------------------------------------------------------- the deploy body


def test_the_deploy_body_binds_one_proxy_to_the_heads_loopback() -> None:
    body = service.deploy_config({"model": "m"}, env_vars={"PYTHONPATH": "/shapcluster"})
    assert body == {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [
            {
                "name": "shapcluster",
                "route_prefix": "/",
                "import_path": "app.serve:build_app",
                "args": {"model": "m"},
                "runtime_env": {"env_vars": {"PYTHONPATH": "/shapcluster"}},
            }
        ],
    }


def test_cluster_paths_map_to_the_synced_folder_and_the_token_file_to_the_mount(
    config: ClusterConfig,
) -> None:
    mapped = lifecycle.cluster_options(options(config), config)
    assert mapped.model == f"{cmd.CONTAINER_DATA_DIR}/wine.skops"
    assert mapped.data == f"{cmd.CONTAINER_DATA_DIR}/wine.csv"
    assert mapped.token_file == cmd.CONTAINER_TOKEN_PATH
    assert TOKEN not in json.dumps(mapped.to_args())
    outside = contract.ServeOptions(model=str(config.path), data="s3://bucket/wine.csv")
    with pytest.raises(InputError, match="not in the synced data folder"):
        lifecycle.cluster_options(outside, config)


# ---------------------------------------------------------------- deploy, status, remove


def test_deploy_puts_the_config_with_the_token_and_waits_until_running(
    dashboard: tuple[FakeDashboard, int],
) -> None:
    fake, port = dashboard
    fake.states = [
        {"applications": {contract.SERVE_APP_NAME: {"status": "DEPLOYING", "deployments": {}}}},
        application("DEPLOYING", [replica("STARTING", "10.9.0.2"), replica("STARTING", "10.9.0.3")]),
        application("DEPLOYING", [replica("RUNNING", "10.9.0.2"), replica("STARTING", "10.9.0.3")]),
        application("RUNNING", [replica("RUNNING", "10.9.0.2"), replica("RUNNING", "10.9.0.3")]),
    ]
    seen: list[str] = []
    body = service.deploy_config({"model": "m"}, env_vars={})
    state = service.deploy(endpoint(port), body, progress=seen.append, sleep=no_sleep)
    assert state.status == "RUNNING" and state.running == 2
    puts = [r for r in fake.requests if r[0] == "PUT"]
    assert puts == [("PUT", "/api/serve/applications/", f"Bearer {TOKEN}", body)]
    assert seen == [
        "DEPLOYING: building the application (importing app.serve:build_app)",
        "DEPLOYING: 0/2 replicas running (STARTING 2)",
        "DEPLOYING: 1/2 replicas running (RUNNING 1, STARTING 1)",
        "RUNNING: 2/2 replicas running (RUNNING 2)",
    ]


def test_deploy_waits_for_its_own_config_not_the_one_running_before(
    dashboard: tuple[FakeDashboard, int],
) -> None:
    fake, port = dashboard
    both = [replica("RUNNING", "10.9.0.2"), replica("RUNNING", "10.9.0.3")]
    fake.states = [
        application("RUNNING", both, args={"replicas": 2, "seed": 1}),  # the service deployed before
        application("DEPLOYING", [replica("STARTING", "10.9.0.2")], args={"replicas": 2, "seed": 2}),
        application("RUNNING", both, args={"replicas": 2, "seed": 2}),
    ]
    seen: list[str] = []
    body = service.deploy_config({"replicas": 2, "seed": 2}, env_vars={})
    service.deploy(endpoint(port), body, progress=seen.append, sleep=no_sleep)
    assert seen == [
        "waiting for Serve to take the application",
        "DEPLOYING: 0/2 replicas running (STARTING 1)",
        "RUNNING: 2/2 replicas running (RUNNING 2)",
    ]


@pytest.mark.parametrize(
    ("last_line", "error", "status"),
    [
        ("app.errors.DataError: /shapcluster/data/m.skops: refused: types outside skops' trusted set",
         InputError, ExitStatus.INPUT),
        ("ModuleNotFoundError: No module named 'app'", RemoteError, ExitStatus.REMOTE),
        ("RuntimeError: the replica died", RemoteError, ExitStatus.REMOTE),
    ],
)  # fmt: skip
def test_a_failed_deploy_says_serves_own_line(
    dashboard: tuple[FakeDashboard, int], last_line: str, error: type[Exception], status: ExitStatus
) -> None:
    fake, port = dashboard
    fake.states = [application("DEPLOY_FAILED", [], message=TRACEBACK + last_line + "\n")]
    with pytest.raises(error) as caught:
        service.deploy(endpoint(port), service.deploy_config({}, env_vars={}), sleep=no_sleep)
    assert caught.value.exit_status == status  # type: ignore[attr-defined]
    assert str(caught.value) == f"10.9.0.1: the service failed to deploy: {last_line}"


def test_a_deploy_that_never_runs_stops_at_its_deadline(dashboard: tuple[FakeDashboard, int]) -> None:
    fake, port = dashboard
    fake.states = [application("DEPLOYING", [replica("STARTING", "10.9.0.2")])]
    ticks = iter(range(100))
    with pytest.raises(RemoteError, match=r"not running after 5 s \(DEPLOYING: 0/2"):
        service.deploy(endpoint(port), {}, timeout=5, clock=lambda: float(next(ticks)), sleep=no_sleep)


def test_a_wrong_token_and_no_dashboard_exit_distinctly(dashboard: tuple[FakeDashboard, int]) -> None:
    fake, port = dashboard
    with pytest.raises(RemoteError, match="rejected the token") as caught:
        service.deploy(endpoint(port, token="wrong" * 8), {}, sleep=no_sleep)
    assert caught.value.exit_status == ExitStatus.REMOTE
    assert "wrong" not in str(caught.value)
    fake.status_code = 501
    with pytest.raises(RemoteError, match="Ray Serve is not installed"):
        service.deploy(endpoint(port), {}, sleep=no_sleep)
    with serve(http.server.BaseHTTPRequestHandler) as url:
        closed = int(url.rsplit(":", 1)[1])
    with pytest.raises(NoClusterError, match="nothing answers as the Ray dashboard") as nothing:
        service.deploy(endpoint(closed), {}, sleep=no_sleep)
    assert nothing.value.exit_status == ExitStatus.NO_CLUSTER


def test_remove_deletes_and_polls_until_no_serve_actor_is_left(dashboard: tuple[FakeDashboard, int]) -> None:
    fake, port = dashboard
    fake.states = [application("RUNNING", [replica("RUNNING", "10.9.0.2")])]
    fake.actors_after_delete = [["ServeController", "ProxyActor"], ["ServeReplica:shapcluster:Explainer"], []]
    seen: list[str] = []
    assert service.remove(endpoint(port), progress=seen.append, sleep=no_sleep) is True
    assert [r[0] for r in fake.requests if r[1] == "/api/serve/applications/"] == ["GET", "DELETE"]
    assert len(seen) == 2 and "ProxyActor" in seen[0]
    assert service.remove(endpoint(port), sleep=no_sleep) is False  # nothing left: not an error


def test_status_reads_the_services_counters(dashboard: tuple[FakeDashboard, int]) -> None:
    fake, port = dashboard
    fake.states = [application("RUNNING", [replica("RUNNING", "10.9.0.2"), replica("RUNNING", "10.9.0.3")])]
    fake.requests.append(("PUT", "/api/serve/applications/", None, None))
    one = {"replica": "a", "requests": 3, "rows": 7, "batches": 2}
    fake.stats = [{"requests": 3, "rows": 7, "batches": 2, "replicas": [one, "not a replica"]}]
    found = service.status(endpoint(port), endpoint(port))
    assert found.stats is not None and found.stats["requests"] == 3
    assert found.replica_stats == [one]
    fake.stats = []  # the route answers 404
    broken = service.status(endpoint(port), endpoint(port))
    assert broken.stats is None and broken.stats_error is not None and "HTTP 404" in broken.stats_error


# ---------------------------------------------------------------- the CLI on a fake cluster


def run_cli(config: ClusterConfig, *args: str) -> Any:
    return CliRunner().invoke(cli_app, [*args, "-c", str(config.path)], env={"COLUMNS": "200"})


@pytest.fixture
def fake_cluster(
    dashboard: tuple[FakeDashboard, int], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeDashboard, FakeRunner]:
    fake, port = dashboard
    runner = head(port)
    real_open = lifecycle.cluster.open_nodes

    def open_nodes(config: ClusterConfig, connect: Any = None) -> Any:
        return real_open(config, lambda host: runner)

    monkeypatch.setattr(lifecycle.cluster, "open_nodes", open_nodes)
    monkeypatch.setattr(service, "POLL_SECONDS", 0.0)
    return fake, runner


def test_serve_up_no_keep_open_deploys_through_the_tunnel_and_never_prints_the_token(
    config: ClusterConfig, fake_cluster: tuple[FakeDashboard, FakeRunner], tmp_path: Path
) -> None:
    fake, runner = fake_cluster
    fake.states = [application("RUNNING", [replica("RUNNING", "10.9.0.2"), replica("RUNNING", "10.9.0.3")])]
    token_file = tmp_path / "tokens" / "lab.token"
    folder = config.path.parent / "data"
    done = run_cli(
        config, "serve", "up", "--model", str(folder / "wine.skops"), "--data", str(folder / "wine.csv"),
        "--replicas", "2", "--no-keep-open", "--token-file", str(token_file),
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert TOKEN not in done.output
    assert token_file.read_text().strip() == TOKEN and token_file.stat().st_mode & 0o777 == 0o600
    assert "ssh -N -L 8000:127.0.0.1:8000 root@10.9.0.1" in done.output
    assert runner.tunnels == [("127.0.0.1", 8265)]
    (put,) = [r for r in fake.requests if r[0] == "PUT"]
    args = put[3]["applications"][0]["args"]
    assert args["model"] == f"{cmd.CONTAINER_DATA_DIR}/wine.skops" and args["replicas"] == 2
    assert args["token_file"] == cmd.CONTAINER_TOKEN_PATH
    env = put[3]["applications"][0]["runtime_env"]["env_vars"]
    assert env == {"PYTHONPATH": "/shapcluster", contract.IMAGE_ID_ENV: "sha256:0123"}


def test_serve_up_option_errors_exit_2_before_any_host(config: ClusterConfig) -> None:
    folder = config.path.parent / "data"
    zero = run_cli(
        config, "serve", "up", "--model", str(folder / "wine.skops"), "--data", "x.csv", "--replicas", "0"
    )
    assert zero.exit_code == 2 and "--replicas must be at least 1" in zero.output
    no_model = run_cli(config, "serve", "up", "--data", "x.csv")
    assert no_model.exit_code == 2 and "--model" in no_model.output
    outside = run_cli(config, "serve", "up", "--model", "/etc/hostname", "--data", "s3://b/k.csv")
    assert outside.exit_code == 3 and "not in the synced data folder" in outside.output


def test_serve_status_exits_9_when_nothing_is_served(
    config: ClusterConfig, fake_cluster: tuple[FakeDashboard, FakeRunner]
) -> None:
    done = run_cli(config, "serve", "status")
    assert done.exit_code == ExitStatus.NO_CLUSTER, done.output
    assert "nothing is served" in done.output


def test_serve_status_and_down_on_a_running_service(
    config: ClusterConfig, fake_cluster: tuple[FakeDashboard, FakeRunner]
) -> None:
    fake, _ = fake_cluster
    fake.states = [application("RUNNING", [replica("RUNNING", "10.9.0.2"), replica("RUNNING", "10.9.0.3")])]
    fake.requests.append(("PUT", "/api/serve/applications/", None, None))
    fake.stats = [
        {
            "requests": 5, "rows": 9, "batches": 4, "retried": 1, "lost": 0, "refused": {"401": 2},
            "in_flight": 3, "latency_seconds": {"p50": 0.02, "p99": 0.5},
            "replicas": [{"replica": "r1", "requests": 5, "rows": 9, "batches": 4, "refused": {}}],
        }
    ]  # fmt: skip
    shown = run_cli(config, "serve", "status")
    assert shown.exit_code == 0, shown.output
    assert "RUNNING: 2/2 replicas running" in shown.output and "10.9.0.3" in shown.output
    assert (
        "Served: 5 requests, 9 rows in 4 explainer calls; retried 1, lost (503) 0; refused: 2 x HTTP 401"
        in (shown.output)
    )
    assert "in flight now (queued or being explained): 3" in " ".join(shown.output.split())
    assert "p50 20.0 ms, p99 500.0 ms" in shown.output and "r1" in shown.output
    as_json = json.loads(run_cli(config, "serve", "status", "--json").stdout)
    assert as_json["stats"]["requests"] == 5 and as_json["replicas"][0]["deployment"] == "Explainer"
    down = run_cli(config, "serve", "down")
    assert down.exit_code == 0, down.output
    assert "shapcluster removed on cluster lab; no Serve actor is left" in down.output
    assert TOKEN not in shown.output + down.output


# ---------------------------------------------------------------- a real local Ray head


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shapcluster", *args],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _call(url: str, token: str | None, body: Any = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=120
        ) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.ray
def test_serve_up_status_down_on_a_local_ray_head(wine_csv: Path, tmp_path: Path) -> None:
    import pandas as pd
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    frame = pd.read_csv(wine_csv, sep=";")
    features = frame.drop(columns=["quality"])
    model = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0)
    sio.dump(model.fit(features, frame["quality"]), tmp_path / "wine.skops")
    state = Path(tempfile.mkdtemp(prefix="sc-serve-test-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHAPCLUSTER_", "RAY_"))}
    env.update(SHAPCLUSTER_LOCAL_RAY_DIR=str(state), COLUMNS="200")
    try:
        up = _cli(env, "serve", "up", "--local", "--cpus", "1", "--model", str(tmp_path / "wine.skops"),
                  "--trust-model", "--data", str(wine_csv), "--background", "10",
                  "--algorithm", "tree")  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Starting a local Ray head" in up.stdout
        assert "RUNNING: 2/2 replicas running" in up.stdout  # the gateway and one explaining replica
        token = (state / "token").read_text().strip()
        assert token not in up.stdout + up.stderr
        url = re.search(r"^URL: (http://127\.0\.0\.1:\d+)$", up.stdout, re.MULTILINE)
        assert url, up.stdout
        rows = {"rows": features.head(2).to_dict(orient="records")}
        assert _call(url[1] + contract.SERVE_EXPLAIN_ROUTE, token, rows) == 200
        assert _call(url[1] + contract.SERVE_EXPLAIN_ROUTE, None, rows) == 401

        shown = _cli(env, "serve", "status", "--local")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "RUNNING: 2/2 replicas running" in shown.stdout
        assert "Served: 1 requests, 2 rows" in shown.stdout

        head = local_head.running_head(state)
        assert head is not None
        down = _cli(env, "serve", "down", "--local")
        assert down.returncode == 0, down.stdout + down.stderr
        assert local_head.running_head(state) is None and not local_head._alive(head.pid)
        gone = _cli(env, "serve", "status", "--local")
        assert gone.returncode == ExitStatus.NO_CLUSTER, gone.stdout + gone.stderr
    finally:
        left = local_head.running_head(state)
        if left is not None:
            local_head.stop_head(left)
        shutil.rmtree(state, ignore_errors=True)
