"""`shapcluster serve` on the three-host lab: the service deployed through the SSH tunnel with
the cluster's token answers POST /explain with the local batch job's values, refuses a request
without the token, reports its replicas, recovers its replica count after a worker container is
killed, and `serve down` leaves no Serve actor.

One cluster (head and two workers, one CPU each) and one `serve up` (kept open) for the module.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shapcluster import commands as cmd
from shapcluster.images import BuiltImage
from tests.conftest import WINE_CSV
from tests.lab.conftest import write_cluster_config
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab
CLUSTER = "serving"
ROWS = 4  # rows explained, from the top of the wine file
EXPLAINER = ["--background", "20", "--seed", "3", "--algorithm", "kernel"]


@dataclass(frozen=True)
class ServeCluster:
    lab: Lab
    config: Path
    data_dir: Path
    folder: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shapcluster", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    @property
    def token(self) -> str:
        return (self.lab.dir / CLUSTER / self.lab.head.ip / "secrets" / "ray-auth-token").read_text().strip()

    def head_container(self) -> str:
        return cmd.container_name(CLUSTER, cmd.Role.HEAD, self.lab.head.ip)

    def worker_container(self, ip: str) -> str:
        return cmd.container_name(CLUSTER, cmd.Role.WORKER, ip)


def write_model(path: Path) -> None:
    """A small wine forest saved with skops (made here, never committed)."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    frame = pd.read_csv(WINE_CSV, sep=";")
    model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    model.fit(frame.drop(columns=["quality"]), frame["quality"])
    sio.dump(model, path)


@pytest.fixture(scope="module")
def serve_cluster(
    lab: Lab, lab_base_image: str, shipped_image: BuiltImage, wheelhouse: Path, tmp_path_factory
) -> Iterator[ServeCluster]:
    folder = tmp_path_factory.mktemp("serve-cluster")
    data_dir = folder / "data"
    data_dir.mkdir()
    shutil.copy(WINE_CSV, data_dir / "winequality-red.csv")  # a temp copy, never into git
    write_model(data_dir / "wine.skops")
    config = write_cluster_config(
        folder, lab, name=CLUSTER, base_image=lab_base_image, remote_dir=f"{lab.dir}/{CLUSTER}/{{host}}",
        data_dir=data_dir,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHAPCLUSTER_", "RAY_"))}
    env.update(COLUMNS="100000", HOME=str(folder / "home"))
    cluster = ServeCluster(lab, config, data_dir, folder, env)
    try:
        up = cluster.cli("up", "-c", str(config), "--wheelhouse", str(wheelhouse))
        assert up.returncode == 0, up.stdout + up.stderr
        yield cluster
    finally:
        lab.ensure_running()
        down = cluster.cli("down", "-c", str(config), timeout=300)
        assert down.returncode == 0, down.stderr


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    token_file: Path
    lines: list[str]


def _pump(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.fixture(scope="module")
def served(serve_cluster: ServeCluster) -> Iterator[Served]:
    """`serve up` kept open (the tunnel lives as long as the process); Ctrl-C at the end."""
    token_file = serve_cluster.folder / "serve.token"
    data = serve_cluster.data_dir
    args = ["serve", "up", "-c", str(serve_cluster.config), "--model", str(data / "wine.skops"),
            "--trust-model", "--data", str(data / "winequality-red.csv"), *EXPLAINER, "--replicas", "2",
            "--token-file", str(token_file), "--timeout", "420"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "shapcluster", *args],
        env=serve_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = _pump(process)
    seen: list[str] = []
    url = None
    try:
        deadline = time.monotonic() + 480
        while url is None:
            try:
                line = lines.get(timeout=1.0)  # a poll interval: the process may have ended
            except queue.Empty:
                assert process.poll() is None, "\n".join(seen)  # `serve up` ended without a URL
                assert time.monotonic() < deadline, "\n".join(seen)
                continue
            seen.append(line)
            match = re.match(r"URL: (http://127\.0\.0\.1:\d+)$", line)
            url = match[1] if match else None
        yield Served(process, url, token_file, seen)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            process.kill()
        while not lines.empty():
            seen.append(lines.get())


def request(url: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        asked = urllib.request.Request(url, data=data, headers=headers)
        with urllib.request.urlopen(asked, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture(scope="module")
def batch_values(serve_cluster: ServeCluster, tmp_path_factory) -> pd.DataFrame:
    """The same rows explained by the batch job on this machine (`submit --local`)."""
    out = tmp_path_factory.mktemp("batch")
    rows = out / "rows.csv"
    pd.read_csv(WINE_CSV, sep=";").head(ROWS).to_csv(rows, index=False)
    done = serve_cluster.cli(
        "submit", "--local", "--cpus", "2", "--model", str(serve_cluster.data_dir / "wine.skops"),
        "--trust-model", "--data", str(WINE_CSV), "--explain", str(rows), "--rows", "all", *EXPLAINER,
        "--no-reference", "--run-id", "batch", "--output-dir", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return pd.read_csv(out / "batch" / "shap_values.csv")


def test_explain_through_the_tunnel_equals_the_batch_job(
    serve_cluster: ServeCluster, served: Served, batch_values: pd.DataFrame
) -> None:
    token = served.token_file.read_text().strip()
    assert token == serve_cluster.token
    assert oct(served.token_file.stat().st_mode & 0o777) == "0o600"
    assert all(token not in line for line in served.lines)

    status, info = request(served.url + "/info", token)
    assert status == 200, info
    features = info["features"]
    rows = pd.read_csv(WINE_CSV, sep=";").head(ROWS)[features]
    status, answer = request(served.url + "/explain", token, {"rows": rows.to_dict(orient="records")})
    assert status == 200, answer
    assert len(answer["explanations"]) == ROWS
    worst = 0.0
    for r, explained in enumerate(answer["explanations"]):
        for cls, entry in explained.items():
            line = batch_values[(batch_values["row"] == r) & (batch_values["class"].astype(str) == cls)]
            assert len(line) == 1, (r, cls)
            ours = np.array([entry["values"][f] for f in features])
            theirs = line[features].to_numpy(dtype=float)[0]
            worst = max(worst, float(np.max(np.abs(ours - theirs))))
            assert abs(entry["expected_value"] - float(line["expected_value"].iloc[0])) <= 1e-9
            assert abs(entry["model_output"] - float(line["model_output"].iloc[0])) <= 1e-9
    assert worst <= 1e-9, worst


def test_a_request_without_the_token_is_refused(served: Served) -> None:
    status, answer = request(served.url + "/explain", None, {"rows": []})
    assert status == 401, answer
    status, answer = request(served.url + "/info", "not-the-token")
    assert status == 401, answer
    status, answer = request(served.url + "/healthz", None)
    assert status == 200, answer


def _status(serve_cluster: ServeCluster) -> dict[str, Any]:
    done = serve_cluster.cli("serve", "status", "-c", str(serve_cluster.config), "--json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def _running(found: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in found["replicas"] if r["state"] == "RUNNING"]


def test_status_shows_the_replicas_and_what_they_served(serve_cluster: ServeCluster, served: Served) -> None:
    shown = serve_cluster.cli("serve", "status", "-c", str(serve_cluster.config))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert re.search(r"RUNNING: (\d+)/\1 replicas running", shown.stdout), shown.stdout
    assert serve_cluster.token not in shown.stdout + shown.stderr
    found = _status(serve_cluster)
    assert found["status"] == "RUNNING" and found["target_replicas"] >= 2
    assert sum(r["count"] for r in _running(found)) == found["target_replicas"]
    assert found["stats"]["requests"] >= 1, found  # the explain request of the test before


def test_a_killed_worker_container_gets_its_replica_back(serve_cluster: ServeCluster, served: Served) -> None:
    lab = serve_cluster.lab
    found = _status(serve_cluster)
    target = found["target_replicas"]
    workers = {w.ip for w in lab.workers}
    hosting = [r["node"] for r in _running(found) if r["node"] in workers]
    assert hosting, found  # with one CPU per host, two replicas cannot both be on the head
    victim = next(w for w in lab.workers if w.ip == hosting[0])
    victim.docker("kill", serve_cluster.worker_container(victim.ip))

    deadline = time.monotonic() + 240
    while True:
        found = _status(serve_cluster)
        running = _running(found)
        if sum(r["count"] for r in running) == target and all(r["node"] != victim.ip for r in running):
            break
        assert time.monotonic() < deadline, found
        time.sleep(2)  # a poll interval; the deadline decides
    token = served.token_file.read_text().strip()
    rows = pd.read_csv(WINE_CSV, sep=";").head(1).drop(columns=["quality"])
    status, answer = request(served.url + "/explain", token, {"rows": rows.to_dict(orient="records")})
    assert status == 200, answer


def test_down_leaves_no_serve_actor(serve_cluster: ServeCluster, served: Served) -> None:
    down = serve_cluster.cli("serve", "down", "-c", str(serve_cluster.config), timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "shapcluster removed" in down.stdout and "no Serve actor is left" in down.stdout
    probe = (
        "import json, os, urllib.request; token = open(os.environ['RAY_AUTH_TOKEN_PATH']).read().strip(); "
        "r = urllib.request.Request('http://127.0.0.1:8265/api/v0/actors?limit=10000', "
        "headers={'Authorization': 'Bearer ' + token}); "
        "rows = json.load(urllib.request.urlopen(r))['data']['result']['result']; "
        "print(json.dumps([a['class_name'] for a in rows if a['state'] == 'ALIVE']))"
    )
    head = serve_cluster.lab.head
    alive = json.loads(head.docker("exec", serve_cluster.head_container(), "python", "-c", probe).strip())
    assert not [name for name in alive if name.startswith(("ServeController", "ProxyActor", "ServeReplica"))]
    nothing = serve_cluster.cli("serve", "status", "-c", str(serve_cluster.config))
    assert nothing.returncode == 9, nothing.stdout + nothing.stderr
    assert "nothing is served" in nothing.stderr
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=60) == 0
