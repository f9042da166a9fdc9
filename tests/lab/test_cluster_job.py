"""A cluster with an IAM role on the three-host lab: `up` hands STS credentials to every
container, `creds refresh` reaches running processes without a restart, and the SHAP job runs
through `submit` (Ray Jobs API over an SSH tunnel) on data read from S3 or the synced folder.

S3, STS and IAM are a real HTTP server (moto, IAM checks on) listening on the lab bridge, so
containers inside the host namespaces reach it exactly as they would reach AWS.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shapcluster import commands as cmd
from shapcluster.images import BuiltImage
from tests import aws_server
from tests.aws_server import ROLE_ARN, AwsWorld
from tests.conftest import WINE_CSV
from tests.lab.conftest import write_cluster_config
from tests.lab.lab import Host, Lab

pytestmark = pytest.mark.lab
CLUSTER = "jobs"
S3_URI = f"s3://{aws_server.BUCKET}/{aws_server.KEY}"


@dataclass(frozen=True)
class RoleCluster:
    lab: Lab
    world: AwsWorld
    config: Path
    data_dir: Path
    env: dict[str, str]  # the user's shell: alice's own keys, nothing else of AWS

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shapcluster", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def remote_dir(self, host: Host) -> Path:
        return self.lab.dir / CLUSTER / host.ip

    def env_list(self, host: Host) -> dict[str, str]:
        text = (self.remote_dir(host) / "secrets" / "env.list").read_text()
        return dict(line.split("=", 1) for line in text.splitlines())

    def keys(self, host: Host) -> dict[str, str]:
        """The keys the host's credential_process hands out (aws/process.json)."""
        process = json.loads((self.remote_dir(host) / "secrets" / "aws" / "process.json").read_text())
        return {
            "AWS_ACCESS_KEY_ID": process["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": process["SecretAccessKey"],
            "AWS_SESSION_TOKEN": process["SessionToken"],
        }

    def container(self, host: Host) -> str:
        role = cmd.Role.HEAD if host == self.lab.head else cmd.Role.WORKER
        return cmd.container_name(CLUSTER, role, host.ip)

    def secrets_in(self, text: str) -> list[str]:
        """Every secret the cluster knows of that appears in ``text``."""
        known = [self.world.alice.secret_access_key, self.world.bob.secret_access_key]
        for host in self.lab.hosts:
            values = self.keys(host)
            known += [values["AWS_SECRET_ACCESS_KEY"], values["AWS_SESSION_TOKEN"]]
        token = (self.remote_dir(self.lab.head) / "secrets" / "ray-auth-token").read_text().strip()
        return [secret for secret in [*known, token] if secret in text]


def user_env(keys: aws_server.Keys, home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "SHAPCLUSTER_"))}
    home.mkdir(parents=True, exist_ok=True)
    return {
        **env, **keys.env(), "COLUMNS": "100000",  # no line wraps inside a secret it might print
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip


def write_config(folder: Path, lab: Lab, base_image: str, world: AwsWorld, data_dir: Path) -> Path:
    aws = f'[aws]\nrole_arn = "{ROLE_ARN}"\nregion = "{aws_server.REGION}"\nendpoint_url = "{world.url}"\n'
    return write_cluster_config(
        folder, lab, name=CLUSTER, base_image=base_image, remote_dir=f"{lab.dir}/{CLUSTER}/{{host}}",
        data_dir=data_dir, extra=aws,
    )  # fmt: skip


@pytest.fixture(scope="module")
def role_cluster(
    lab: Lab, lab_base_image: str, shipped_image: BuiltImage, wheelhouse: Path, tmp_path_factory
) -> Iterator[RoleCluster]:
    """`shapcluster up` with a role configured; down (not purged: later tests reuse the image)."""
    folder = tmp_path_factory.mktemp("role-cluster")
    data_dir = folder / "data"
    data_dir.mkdir()
    shutil.copy(WINE_CSV, data_dir / "winequality-red.csv")  # a temp copy, never into git
    with aws_server.aws_world(lab.bridge_ip, WINE_CSV) as world:
        config = write_config(folder, lab, lab_base_image, world, data_dir)
        cluster = RoleCluster(lab, world, config, data_dir, user_env(world.alice, folder / "home"))
        try:
            up = cluster.cli("up", "-c", str(config), "--wheelhouse", str(wheelhouse))
            assert up.returncode == 0, up.stdout + up.stderr
            assert "AWS credentials missing or expiring" in up.stdout
            assert cluster.secrets_in(up.stdout + up.stderr) == []
            yield cluster
        finally:
            lab.ensure_running()
            down = cluster.cli("down", "-c", str(config), timeout=300)
            assert down.returncode == 0, down.stderr


def test_up_gives_every_host_working_credentials_0600(role_cluster: RoleCluster) -> None:
    lab = role_cluster.lab
    keys = set()
    for host in lab.hosts:
        secrets_dir = role_cluster.remote_dir(host) / "secrets"
        for name in ("env.list", "aws/credentials", "aws/config", "aws/process.json"):
            assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600, name
        values = role_cluster.keys(host)
        assert not any(k in role_cluster.env_list(host) for k in values)  # no key in the environment
        keys.add(values["AWS_ACCESS_KEY_ID"])
        s3 = role_cluster.world.client(
            "s3",
            aws_server.Keys(values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]),
            values["AWS_SESSION_TOKEN"],
        )
        assert s3.head_object(Bucket=aws_server.BUCKET, Key=aws_server.KEY)["ContentLength"] > 0
        # The container was started with them (and with the refreshable profile).
        env = host.docker("exec", role_cluster.container(host), "env")
        assert "AWS_ACCESS_KEY_ID" not in env
        assert "AWS_PROFILE=shapcluster" in env
    assert len(keys) == 1  # one assume-role, the same keys everywhere

    status = role_cluster.cli("status", "-c", str(role_cluster.config))
    assert status.returncode == 0, status.stderr
    assert f"AWS credentials for {ROLE_ARN} expire" in status.stdout
    assert re.search(r"\(in (59|60) min\)", status.stdout), status.stdout


# A process in a running container that keeps reading S3 with a plain default-chain session
# (what any library does: no profile named, nothing shapcluster-specific) and reports when the
# keys it gets change. Keys in the container's environment would win forever (issue 12).
WATCHER = f"""
import sys, time, boto3
first, deadline = None, time.monotonic() + 240
while time.monotonic() < deadline:
    session = boto3.session.Session()
    key = session.get_credentials().get_frozen_credentials().access_key
    if first is None:
        first = key
        print("READY", key, flush=True)
    elif key != first:
        s3 = session.client("s3")
        body = s3.get_object(Bucket="{aws_server.BUCKET}", Key="{aws_server.KEY}")["Body"].read()
        print("NEW", key, len(body), flush=True)
        sys.exit(0)
    time.sleep(0.2)  # the watcher's poll interval; its deadline ends it
sys.exit(1)
"""


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_refresh_reaches_a_running_process_without_a_restart(role_cluster: RoleCluster) -> None:
    lab, worker = role_cluster.lab, role_cluster.lab.workers[0]
    container = role_cluster.container(worker)
    started = {
        h.name: h.docker("inspect", "-f", "{{.State.StartedAt}}", role_cluster.container(h))
        for h in lab.hosts
    }
    old_key = role_cluster.keys(worker)["AWS_ACCESS_KEY_ID"]

    watcher = subprocess.Popen(
        worker.nsenter(["docker", "exec", container, "python", "-c", WATCHER]),
        env={**os.environ, "DOCKER_HOST": worker.docker_host}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = _lines(watcher)
        assert lines.get(timeout=120) == f"READY {old_key}"

        # --debug: every log line too must be free of secrets.
        refresh = role_cluster.cli("--debug", "creds", "refresh", "-c", str(role_cluster.config))
        output = refresh.stdout + refresh.stderr
        assert refresh.returncode == 0, output
        assert f"credentials for {ROLE_ARN} on 3 host(s)" in refresh.stdout
        assert role_cluster.secrets_in(output) == []

        new_keys = {h.name: role_cluster.keys(h)["AWS_ACCESS_KEY_ID"] for h in lab.hosts}
        assert len(set(new_keys.values())) == 1 and old_key not in new_keys.values()
        new_key = new_keys[worker.name]
        seen = lines.get(timeout=60)
        assert seen.startswith(f"NEW {new_key} "), seen  # read S3 with the new keys
        assert watcher.wait(timeout=30) == 0
    finally:
        watcher.kill()
        watcher.wait()
    after = {
        h.name: h.docker("inspect", "-f", "{{.State.StartedAt}}", role_cluster.container(h))
        for h in lab.hosts
    }
    assert after == started  # nothing restarted


# --- the SHAP job through `submit` (Ray Jobs API over an SSH tunnel) --------------------------

# Small enough to be quick, big enough that a worker can be killed while the explainers run.
JOB = ["--rows", "12", "--background", "50", "--trees", "50", "--seed", "3"]


def shap_values(results: Path) -> np.ndarray:
    frame = pd.read_csv(results / "shap_values.csv")
    return frame.select_dtypes("number").to_numpy(dtype=float)


@pytest.fixture(scope="module")
def local_run(role_cluster: RoleCluster, tmp_path_factory) -> Path:
    """The same job on a local Ray instance: what every cluster run must reproduce."""
    out = tmp_path_factory.mktemp("local-results")
    done = role_cluster.cli("submit", "--local", "--cpus", "2", "--data", str(WINE_CSV), *JOB,
                            "--run-id", "local", "--output-dir", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "local"


def submit(role_cluster: RoleCluster, out: Path, run_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    return role_cluster.cli(
        "submit", "-c", str(role_cluster.config), *JOB, *args, "--run-id", run_id, "--output-dir", str(out)
    )


def test_submit_reads_s3_and_the_synced_folder_and_matches_a_local_run(
    role_cluster: RoleCluster, local_run: Path, tmp_path: Path
) -> None:
    lab = role_cluster.lab
    from_s3 = submit(role_cluster, tmp_path, "from-s3", "--data", S3_URI)
    output = from_s3.stdout + from_s3.stderr
    assert from_s3.returncode == 0, output
    assert role_cluster.secrets_in(output) == []
    assert "Explaining on 3 Ray nodes with 3 CPUs." in from_s3.stdout  # the job's own log, relayed
    assert f"job from-s3 succeeded; results: {tmp_path / 'from-s3'}" in from_s3.stdout

    from_path = submit(
        role_cluster, tmp_path, "from-path", "--data", str(role_cluster.data_dir / "winequality-red.csv")
    )
    assert from_path.returncode == 0, from_path.stdout + from_path.stderr

    expected = shap_values(local_run)
    for run in ("from-s3", "from-path"):
        assert np.max(np.abs(shap_values(tmp_path / run) - expected)) <= 1e-9, run
    summary = json.loads((tmp_path / "from-s3" / "summary.json").read_text())
    assert summary["data"] == S3_URI and summary["comparison"]["match"] is True
    assert sorted(n["ip"] for n in summary["nodes"]) == sorted(h.ip for h in lab.hosts)
    assert summary["nodes_lost"] == []
    block = summary["cluster"]
    head_image = lab.head.docker("inspect", "-f", "{{.Image}}", role_cluster.container(lab.head))
    assert block["job_id"] == "from-s3" and block["image_id"] == head_image
    assert block["head"] == lab.head.ip and block["app_version"]
    assert "credentials_expire" in block

    listed = role_cluster.cli("jobs", "-c", str(role_cluster.config))
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"from-s3\s+.*SUCCEEDED", listed.stdout) and re.search(
        r"from-path\s+.*SUCCEEDED", listed.stdout
    )
    logs = role_cluster.cli("logs", "from-s3", "-c", str(role_cluster.config))
    assert logs.returncode == 0 and "Explaining on 3 Ray nodes" in logs.stdout


def test_a_failing_job_and_an_unreachable_head_exit_distinctly(
    role_cluster: RoleCluster, tmp_path: Path
) -> None:
    missing = submit(role_cluster, tmp_path, "missing", "--data", f"s3://{aws_server.BUCKET}/nope.csv")
    assert missing.returncode == 3, missing.stdout + missing.stderr
    assert f"s3://{aws_server.BUCKET}/nope.csv: the object does not exist" in missing.stderr

    lab = role_cluster.lab
    lab.stop_sshd(lab.head)
    try:
        unreachable = submit(role_cluster, tmp_path, "unreachable")
    finally:
        lab.ensure_running()
    assert unreachable.returncode == 6, unreachable.stdout + unreachable.stderr
    assert lab.head.ip in unreachable.stderr


def test_the_job_survives_a_lost_worker(role_cluster: RoleCluster, local_run: Path, tmp_path: Path) -> None:
    victim = role_cluster.lab.workers[1]
    args = [
        "submit",
        "-c",
        str(role_cluster.config),
        *JOB,
        "--data",
        S3_URI,
        "--run-id",
        "lost",
        "--output-dir",
        str(tmp_path),
    ]
    job = subprocess.Popen(
        [sys.executable, "-m", "shapcluster", *args],
        env=role_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        lines = _lines(job)
        while not any("Explaining on 3 Ray nodes" in line for line in seen):
            seen.append(lines.get(timeout=300))  # the live log says the explainers started
        victim.docker("kill", role_cluster.container(victim))
        assert job.wait(timeout=600) == 0, "\n".join(seen)
    finally:
        job.kill()
        job.wait()
    summary = json.loads((tmp_path / "lost" / "summary.json").read_text())
    assert [n["ip"] for n in summary["nodes_lost"]] == [victim.ip]
    assert np.max(np.abs(shap_values(tmp_path / "lost") - shap_values(local_run))) <= 1e-9


def test_submit_without_a_cluster_says_so(role_cluster: RoleCluster, tmp_path: Path) -> None:
    down = role_cluster.cli("down", "-c", str(role_cluster.config), timeout=300)
    assert down.returncode == 0, down.stderr
    nothing = submit(role_cluster, tmp_path, "nothing")
    assert nothing.returncode == 9, nothing.stdout + nothing.stderr
    assert "No cluster is up" in nothing.stderr and "shapcluster up" in nothing.stderr
