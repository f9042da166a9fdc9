"""`shapcluster up / status / down` through the real CLI on the three-host lab: real sshd,
real dockerd per host, the image built over SSH from a wheelhouse, real multi-node Ray."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shapcluster import commands as cmd
from shapcluster.errors import ExitStatus
from shapcluster.images import BuiltImage
from tests.lab.conftest import IMAGE_NAME, write_cluster_config
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
CLUSTER = "e2e"

# Inside the head container: one task pinned to every alive node; where did each run?
EVERY_NODE = """
import json, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Pin
ray.init(address="{address}", logging_level="ERROR")
nodes = {{n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}}
where = ray.remote(num_cpus=1)(lambda: ray.util.get_node_ip_address())
refs = {{ip: where.options(scheduling_strategy=Pin(node, soft=False)).remote() for node, ip in nodes.items()}}
print(json.dumps({{ip: ray.get(ref, timeout=120) for ip, ref in refs.items()}}))
"""


def shapcluster(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shapcluster", *args],
        env={**os.environ, "COLUMNS": "200"},  # a terminal-wide table, not 80 columns of wrapped cells
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(folder: Path, lab: Lab, base_image: str, workers: str | None = None) -> Path:
    remote_dir = f"{lab.dir}/e2e/{{host}}"
    return write_cluster_config(
        folder, lab, name=CLUSTER, base_image=base_image, remote_dir=remote_dir, workers=workers
    )


def containers(lab: Lab) -> dict[str, str]:
    """host name -> IDs of this cluster's containers on it (running or not)."""
    return {
        h.name: h.docker("ps", "--all", "--quiet", "--filter", f"label={cmd.CLUSTER_LABEL}={CLUSTER}").strip()
        for h in lab.hosts
    }


@pytest.fixture
def config(lab: Lab, lab_base_image: str, shipped_image: BuiltImage, tmp_path: Path) -> Iterator[Path]:
    """The lab as a cluster config. The image the session built and shipped already is the one
    `up` would build (same context), so `up` finds it and ships nothing: CI builds once."""
    path = write_config(tmp_path / "cfg", lab, lab_base_image)
    try:
        yield path
    finally:
        lab.ensure_running()  # a failure test may have stopped a daemon
        shapcluster("down", "--config", str(path), "--purge", "-y", timeout=300)
        assert all(ids == "" for ids in containers(lab).values()), containers(lab)


def test_malformed_inventory_names_the_line(lab: Lab, lab_base_image: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, lab, lab_base_image, workers=f"root@{lab.workers[0].ip}\nroot@:22 cpus=x\n")
    result = shapcluster("up", "--config", str(path))
    assert result.returncode == ExitStatus.INPUT, result.stderr
    assert f"{tmp_path / 'workers.txt'}:2" in result.stderr


def test_unreachable_worker_fails_fast_and_leaves_hosts_untouched(
    lab: Lab, config: Path, wheelhouse: Path
) -> None:
    worker = lab.workers[1]
    lab.stop_sshd(worker)
    result = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse), timeout=300)
    assert result.returncode == ExitStatus.REMOTE, result.stderr
    assert worker.ip in result.stderr and "preflight failed on 1 of 3 hosts" in result.stderr
    assert all(ids == "" for ids in containers(lab).values())


def test_host_without_docker_is_named(lab: Lab, config: Path, wheelhouse: Path) -> None:
    worker = lab.workers[0]
    lab.stop_dockerd(worker)
    result = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse), timeout=300)
    assert result.returncode == ExitStatus.REMOTE, result.stderr
    assert f"{worker.ip}: the Docker daemon is not usable" in result.stderr
    lab.ensure_running()
    assert all(ids == "" for ids in containers(lab).values())


def test_up_again_and_down(lab: Lab, config: Path, wheelhouse: Path) -> None:
    result = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 Ray nodes alive, 3 CPUs" in result.stdout

    # One identical image everywhere, and a Ray task runs on every node.
    image_ids = {h.name: h.docker("images", "--quiet", "--no-trunc", IMAGE_NAME).split() for h in lab.hosts}
    assert len({tuple(ids) for ids in image_ids.values()}) == 1, image_ids
    head = cmd.container_name(CLUSTER, cmd.Role.HEAD, lab.head.ip)
    script = EVERY_NODE.format(address=f"{lab.head.ip}:6379")
    ran = json.loads(lab.head.docker("exec", head, "python", "-c", script).strip().splitlines()[-1])
    assert ran == {h.ip: h.ip for h in lab.hosts}

    # Nothing changed: nothing restarts (how quick it is, is benchmarks/cluster_up.py's business).
    before = containers(lab)
    again = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
    assert again.returncode == 0, again.stdout + again.stderr
    assert containers(lab) == before
    assert "kept 3, restarted 0" in again.stdout

    status = shapcluster("status", "--config", str(config))
    assert status.returncode == 0 and status.stdout.count("running") == 3, status.stdout
    assert "3 of 3 Ray nodes alive, 3 CPUs" in status.stdout

    # Issue 12, fault 5: right after a worker's container dies Ray still counts it; status not.
    worker = lab.workers[0]
    worker.docker("kill", cmd.container_name(CLUSTER, cmd.Role.WORKER, worker.ip))
    degraded = shapcluster("status", "--config", str(config))
    assert degraded.returncode == ExitStatus.DEGRADED, degraded.stdout + degraded.stderr
    assert "2 of 3 Ray nodes alive, 2 CPUs" in degraded.stdout
    assert f"not alive: {worker.ip} (container exited)" in degraded.stderr
    healed = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
    assert healed.returncode == 0 and "kept 2, restarted 1" in healed.stdout, healed.stdout + healed.stderr

    # A job's results, written as root inside the head container, go with the purge too.
    head_dir = next(p for p in (lab.dir / "e2e").glob("*") if p.name == lab.head.ip)
    lab.head.docker(
        "exec", head, "sh", "-c", "mkdir -p /shapcluster/results/j && touch /shapcluster/results/j/x"
    )
    assert (head_dir / "results" / "j" / "x").exists()

    down = shapcluster("down", "--config", str(config), "--purge", "-y")
    assert down.returncode == 0, down.stderr
    assert all(ids == "" for ids in containers(lab).values())
    assert all(h.docker("images", "-q", IMAGE_NAME).strip() == "" for h in lab.hosts)
    # Issue 12, fault 4: the untagged build stage goes too, and down says how much was freed.
    label = f"label={cmd.BUILT_FOR_LABEL}={IMAGE_NAME}"
    assert lab.head.docker("images", "--all", "--quiet", "--filter", label).strip() == ""
    assert re.search(rf"{re.escape(lab.head.ip)}: .*images purged \([0-9.]+[kMG]?B freed\)", down.stdout), (
        down.stdout
    )
    assert not any((lab.dir / "e2e").glob("*/app"))
    assert not head_dir.exists()

    gone = shapcluster("status", "--config", str(config))
    assert gone.returncode == ExitStatus.NO_CLUSTER, gone.stdout + gone.stderr
