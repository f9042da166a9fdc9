"""`shapcluster up` against the same work done by hand, on a fresh three-host lab, in one run.

The by-hand sequence (the issue's reference): `docker build` over SSH from a wheelhouse on the
head, `docker save | docker load` over SSH to both workers, then `docker run` of the Ray head
and the two workers with token auth until all three nodes are alive. Then `shapcluster up`
from the same clean state (no image, no build cache), `up` again with nothing changed, and
`down`. Prints one JSON object. Needs root and the lab's tools (.ci/lab-deps.sh); run it
alone on the machine: the hosts share its cores.

Run: `.venv/bin/python benchmarks/cluster_up.py` (`--warm-runs N` times `up` again N times and
reports each with the seconds between its progress lines; `--skip-by-hand` leaves out the
by-hand reference, e.g. to measure a warm `up` alone).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from tests.lab import base_image  # noqa: E402  (the lab library lives with the tests)
from tests.lab.lab import Host, Lab, poll_until  # noqa: E402

MANUAL_TAG = "manual/ray:bench"
NODES_SCRIPT = (
    "import ray; ray.init(address='{addr}', logging_level='ERROR'); "
    "print(sum(1 for n in ray.nodes() if n['Alive']))"
)


def shapcluster(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    seconds, result, _ = timed_lines(*args)
    return seconds, result


def timed_lines(*args: str) -> tuple[float, subprocess.CompletedProcess[str], list[tuple[float, str]]]:
    """Run the CLI; also return each stdout line with the seconds since the start it arrived at."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "shapcluster", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    lines = [(time.monotonic() - started, line.rstrip("\n")) for line in process.stdout]
    stderr = process.stderr.read()
    code = process.wait()
    seconds = time.monotonic() - started
    stdout = "\n".join(line for _, line in lines)
    if code != 0:
        raise SystemExit(f"shapcluster {' '.join(args)} failed:\n{stdout}\n{stderr}")
    return seconds, subprocess.CompletedProcess(args, code, stdout, stderr), lines


def write_config(folder: Path, lab: Lab, base: str) -> Path:
    (folder / "workers.txt").write_text("".join(f"root@{w.ip} cpus=1\n" for w in lab.workers))
    path = folder / "shapcluster.toml"
    path.write_text(
        f'[cluster]\nname = "bench"\nremote_dir = "{lab.dir}/bench/{{host}}"\nshm_size = "512m"\n'
        f'[head]\nhost = "root@{lab.head.ip}"\ncpus = 1\n[workers]\nfile = "workers.txt"\n'
        f'[ssh]\nkey = "{lab.ssh_key}"\nknown_hosts = "{lab.known_hosts}"\n'
        f'[image]\nname = "bench/ray"\nbase = "{base}"\n[sync]\napp_dir = "{REPO / "app"}"\n'
    )
    return path


def by_hand(lab: Lab, base: str, wheelhouse: Path, work: Path) -> dict[str, float]:
    context = work / "context.tar"
    with tarfile.open(context, "w") as tar:
        for name in ("Dockerfile", "requirements.txt"):
            tar.add(REPO / "docker" / name, arcname=name)
        tar.add(wheelhouse, arcname="wheels")
    times: dict[str, float] = {}

    # docker-py over SSH, as a person scripting it would; it reads the lab's key from $HOME/.ssh.
    os.environ["HOME"] = str(lab.client_home)
    client = docker.DockerClient(base_url=lab.head.ssh_url, timeout=1800)
    started = time.monotonic()
    try:
        with context.open("rb") as stream:
            client.images.build(
                fileobj=stream, custom_context=True, tag=MANUAL_TAG, buildargs={"BASE_IMAGE": base}, rm=True
            )
    finally:
        client.close()
    times["build"] = time.monotonic() - started

    started = time.monotonic()
    lab.ship_image(MANUAL_TAG, lab.head, lab.workers)
    times["ship"] = time.monotonic() - started

    started = time.monotonic()
    token = secrets.token_hex(32)
    for host in lab.hosts:
        (host.remote_dir / "token").write_text(token)
        (host.remote_dir / "token").chmod(0o600)

    def start(host: Host) -> None:
        head = ["--head", "--port=6379", "--include-dashboard=false"]
        role = head if host is lab.head else [f"--address={lab.head.ip}:6379"]
        host.docker(
            "run", "-d", "--name", f"manual-{host.name}", "--network", "host", "--shm-size", "512m",
            "-e", "RAY_AUTH_MODE=token", "-e", "RAY_AUTH_TOKEN_PATH=/token",
            "-v", f"{host.remote_dir / 'token'}:/token:ro", MANUAL_TAG,
            "ray", "start", *role, f"--node-ip-address={host.ip}", "--num-cpus=1",
            f"--temp-dir=/tmp/ray-manual-{host.name}", "--block",
        )  # fmt: skip

    start(lab.head)
    with ThreadPoolExecutor(len(lab.workers)) as pool:
        list(pool.map(start, lab.workers))
    probe = NODES_SCRIPT.format(addr=f"{lab.head.ip}:6379")

    def all_alive() -> bool:
        out = lab.head.docker("exec", "manual-head", "python", "-c", probe, check=False)
        return out.strip().splitlines()[-1:] == [str(len(lab.hosts))]

    try:
        poll_until(all_alive, timeout=180, what="all three manual Ray nodes alive")
    except Exception:
        for host in lab.hosts:
            logs = host.docker("logs", "--tail", "15", f"manual-{host.name}", check=False)
            print(f"--- {host.name}:\n{logs}", file=sys.stderr)
        raise
    times["start_ray"] = time.monotonic() - started
    times["total"] = times["build"] + times["ship"] + times["start_ray"]
    for host in lab.hosts:
        host.docker("rm", "-f", f"manual-{host.name}", check=False)
        host.docker("rmi", "-f", MANUAL_TAG, check=False)
    return times


BASE_TAG = "bench/base:1"


@contextmanager
def bench_lab() -> Iterator[tuple[Lab, Path]]:
    """A fresh three-host lab whose hosts all hold the base image BASE_TAG, and the wheelhouse;
    the lab is destroyed afterwards, even on failure."""
    wheelhouse = base_image.make_wheelhouse(REPO / "docker" / "requirements.txt")
    tarball = base_image.make_base_image()
    home = os.environ.get("HOME", "")
    lab = Lab.create()
    try:
        lab.import_image(lab.head, tarball, BASE_TAG)
        lab.ship_image(BASE_TAG, lab.head, lab.workers)
        yield lab, wheelhouse
    finally:
        os.environ["HOME"] = home
        lab.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=1, help="how many times to time `up` again")
    parser.add_argument("--skip-by-hand", action="store_true", help="leave out the by-hand reference")
    options = parser.parse_args()
    with bench_lab() as (lab, wheelhouse), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = write_config(work, lab, BASE_TAG)
        up = ("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
        cold, _ = shapcluster(*up)
        warm_runs, restarted, steps = [], False, []
        for _ in range(options.warm_runs):
            warm, result, lines = timed_lines(*up)
            warm_runs.append(warm)
            restarted = restarted or "restarted 0" not in result.stdout
            steps = [f"{at:5.1f} s {line}" for at, line in lines]
        warm = statistics.median(warm_runs)
        down, _ = shapcluster("down", "--config", str(config))
        shapcluster("down", "--config", str(config), "--purge", "-y")
        print(f"shapcluster: cold up {cold:.1f} s, warm up {warm_runs} s, down {down:.1f} s", file=sys.stderr)
        manual = None if options.skip_by_hand else by_hand(lab, BASE_TAG, wheelhouse, work)
    report: dict[str, object] = {
        "lab": "3 hosts in network namespaces sharing this machine's cores",
        "shapcluster_seconds": {
            "cold_up": round(cold, 1), "warm_up_median": round(warm, 1),
            "warm_up_runs": [round(w, 1) for w in warm_runs], "down": round(down, 1),
        },
        "last_warm_up_progress": steps,
        "warm_up_restarted_containers": restarted,
        "targets": {
            "cold_up_vs_by_hand_at_most": 1.2, "warm_up_seconds_at_most": 10, "down_seconds_at_most": 15,
        },
    }  # fmt: skip
    met = warm <= 10 and not restarted and down <= 15
    if manual is not None:
        report["by_hand_seconds"] = {k: round(v, 1) for k, v in manual.items()}
        report["cold_up_vs_by_hand"] = round(cold / manual["total"], 3)
        met = met and cold / manual["total"] <= 1.2
    report["targets_met"] = met
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
