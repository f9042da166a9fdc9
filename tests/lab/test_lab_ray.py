"""The cluster image from docker/ builds air-gapped over SSH, ships identically, and runs Ray
across the lab's three hosts with token authentication."""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.lab.lab import Host, Lab, LabError, log_tail

pytestmark = pytest.mark.lab
log = logging.getLogger(__name__)

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
IMAGE = "shapcluster/lab-cluster:test"
TOKEN_IN_CONTAINER = "/run/secrets/ray-token"
RAY_PORT = 6379
NODES_TIMEOUT = 120.0

# Runs inside the head container: wait (with a deadline) for the nodes, then pin one task to
# each node and report where it ran, as Ray sees it and as the kernel does.
PROBE = """
import json, socket, sys, threading, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

want, timeout, bridge_ip, head = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + timeout
while True:  # the head's GCS may not listen yet
    try:
        ray.init(address=head, logging_level="ERROR")
        break
    except ConnectionError:
        if time.monotonic() > deadline:
            raise
        threading.Event().wait(0.5)  # poll interval
while True:
    alive = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    if len(alive) >= want or time.monotonic() > deadline:
        break
    threading.Event().wait(0.5)  # poll interval; the loop ends on the node count or the deadline
if len(alive) < want:
    print(json.dumps({"alive": alive, "ran_on": {}}))
    sys.exit(0)

@ray.remote(num_cpus=0)
def where():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((bridge_ip, 9))  # UDP connect sends nothing; it picks the source address
    return ray.util.get_node_ip_address(), probe.getsockname()[0]

refs = {
    node: where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    for node in alive
}
print(json.dumps({"alive": alive, "ran_on": {node: ray.get(ref, timeout=120) for node, ref in refs.items()}}))
"""


def write_context(target: Path, wheelhouse: Path) -> Path:
    """The build context as a tar: docker/ (without its README) plus the wheelhouse as wheels/."""
    with tarfile.open(target, "w") as tar:
        for name in ("Dockerfile", "requirements.txt"):
            tar.add(DOCKER_DIR / name, arcname=name)
        tar.add(wheelhouse, arcname="wheels")
    return target


def put_secret(lab: Lab, host: Host, path: Path, text: str) -> None:
    """Write a 0600 file on ``host`` over SSH (the token never appears on a command line)."""
    remote = f"umask 077 && mkdir -p {shlex.quote(str(path.parent))} && cat > {shlex.quote(str(path))}"
    subprocess.run(
        lab.ssh_argv(host, [remote]), input=text.encode(), check=True, capture_output=True, timeout=60
    )


def ray_container_args(host: Host, ray_args: list[str]) -> list[str]:
    temp_dir = host.remote_dir / "ray"  # on the shared disk, so each host needs its own
    return [
        "run", "-d", "--name", "ray-node", "--network", "host", "--shm-size", "512m",
        "-e", "RAY_AUTH_MODE=token",
        "-e", f"RAY_AUTH_TOKEN_PATH={TOKEN_IN_CONTAINER}",
        "-v", f"{host.remote_dir / 'ray-token'}:{TOKEN_IN_CONTAINER}:ro",
        "-v", f"{temp_dir}:{temp_dir}",
        IMAGE,
        "ray", "start", "--block", "--disable-usage-stats", f"--node-ip-address={host.ip}",
        f"--temp-dir={temp_dir}", "--num-cpus=1", "--object-store-memory=100000000",
        *ray_args,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cluster_image(
    lab: Lab, lab_base_image: str, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Build the image from docker/ on the head over SSH with docker-py, ship it to the workers."""
    context = write_context(tmp_path_factory.mktemp("context") / "context.tar", wheelhouse)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(lab.client_home))  # docker-py reads the lab's ~/.ssh
        client = docker.DockerClient(base_url=lab.head.ssh_url, timeout=1800)
        started = time.monotonic()
        try:
            with context.open("rb") as stream:
                client.images.build(
                    fileobj=stream,
                    custom_context=True,
                    tag=IMAGE,
                    buildargs={"BASE_IMAGE": lab_base_image},
                    rm=True,
                    forcerm=True,
                )
        finally:
            client.close()
            context.unlink()
    built = time.monotonic()
    lab.ship_image(IMAGE, lab.head, lab.workers)
    log.info("cluster image built in %.0f s, shipped in %.0f s", built - started, time.monotonic() - built)
    # The image stays until the lab's teardown wipes each host's data-root (no rm: 10+ s wasted).
    return IMAGE


@pytest.fixture
def ray_cluster(lab: Lab, cluster_image: str) -> Iterator[Lab]:
    token = secrets.token_hex(32)
    for host in lab.hosts:
        put_secret(lab, host, host.remote_dir / "ray-token", token + "\n")
    try:
        lab.head.docker(
            *ray_container_args(lab.head, ["--head", f"--port={RAY_PORT}", "--include-dashboard=false"])
        )
        for worker in lab.workers:
            worker.docker(*ray_container_args(worker, [f"--address={lab.head.ip}:{RAY_PORT}"]))
        yield lab
    finally:
        for host in lab.hosts:
            host.docker("rm", "-f", "ray-node", check=False)


def ray_logs(lab: Lab) -> str:
    parts = []
    for host in lab.hosts:
        parts.append(
            f"--- {host.name} container log:\n{host.docker('logs', '--tail', '20', 'ray-node', check=False)}"
        )
        raylet = host.remote_dir / "ray" / "session_latest" / "logs" / "raylet.out"
        parts.append(f"--- {host.name} raylet.out:\n{log_tail(raylet, 15)}")
    return "\n".join(parts)


def test_cluster_image_is_identical_on_every_host(lab: Lab, lab_home: Path, cluster_image: str) -> None:
    ids = {}
    for host in lab.hosts:
        client = docker.DockerClient(base_url=host.ssh_url, timeout=120)
        try:
            ids[host.name] = client.images.get(cluster_image).id
        finally:
            client.close()
    assert len(set(ids.values())) == 1, ids
    # Air-gapped install worked and the wheels stayed in the build stage.
    versions = lab.workers[0].docker(
        "run", "--rm", "--network", "host", cluster_image, "python", "-c",
        "import ray, shap, sklearn, pandas, numpy, matplotlib, boto3, rich, os; "
        "print(ray.__version__, shap.__version__, os.path.exists('/wheels'))",
    )  # fmt: skip
    assert versions.split() == ["2.60.0", versions.split()[1], "False"]
    assert versions.split()[1].startswith("0.51.")


def test_ray_cluster_runs_a_task_on_every_node(ray_cluster: Lab) -> None:
    lab = ray_cluster
    proc = lab.head.run(
        [
            *("docker", "exec", "ray-node", "python", "-c", PROBE),
            *(str(len(lab.hosts)), str(NODES_TIMEOUT), lab.bridge_ip, f"{lab.head.ip}:{RAY_PORT}"),
        ],
        check=False,
        timeout=NODES_TIMEOUT + 180,
    )
    if proc.returncode != 0:
        raise LabError(f"Ray probe failed: {proc.stderr.decode(errors='replace')[-3000:]}\n{ray_logs(lab)}")
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    alive_ips = sorted(report["alive"].values())
    assert alive_ips == sorted(host.ip for host in lab.hosts), (
        f"alive nodes {report['alive']}\n{ray_logs(lab)}"
    )
    for node, address in report["alive"].items():
        ray_ip, kernel_ip = report["ran_on"][node]
        assert ray_ip == address == kernel_ip, (node, address, ray_ip, kernel_ip)
