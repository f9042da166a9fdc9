"""End-to-end proof that the lab gives tests separate, SSH-reachable Docker hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import docker
import paramiko
import pytest

from tests.lab import lab as lab_module
from tests.lab.base_image import mounts_under
from tests.lab.lab import Host, Lab, leftovers, slot_pids, tcp_port_open

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def strict_client(lab: Lab, host: Host, known_hosts: Path | None = None) -> paramiko.SSHClient:
    """A paramiko client with host key checking ON: only keys in ``known_hosts`` are accepted."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.ip,
        port=host.ssh_port,
        username="root",
        key_filename=str(lab.ssh_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def ssh_run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=60)
    status = stdout.channel.recv_exit_status()
    return status, stdout.read().decode() + stderr.read().decode()


def test_three_hosts_answer_ssh_with_checked_host_keys(lab: Lab) -> None:
    assert [host.name for host in lab.hosts] == ["head", "worker1", "worker2"]
    assert len({host.ip for host in lab.hosts}) == 3
    for host in lab.hosts:
        with strict_client(lab, host) as client:
            status, out = ssh_run(client, "cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0")
            assert status == 0, out
            # The session runs in this host's namespace: eth0 carries this host's address only.
            assert f"inet {host.ip}/" in out
            assert all(f"inet {other.ip}/" not in out for other in lab.hosts if other != host)
            status, out = ssh_run(client, "echo $DOCKER_HOST")
            assert out.strip() == host.docker_host


def test_unknown_or_wrong_host_key_is_rejected(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        strict_client(lab, lab.head, known_hosts=empty)
    # The head's key listed under worker1's address: worker1 must not pass as the head.
    head_line = next(
        line for line in lab.known_hosts.read_text().splitlines() if line.startswith(lab.head.ip)
    )
    swapped = tmp_path / "swapped"
    swapped.write_text(head_line.replace(lab.head.ip, lab.workers[0].ip, 1) + "\n")
    with pytest.raises(paramiko.BadHostKeyException):
        strict_client(lab, lab.workers[0], known_hosts=swapped)


def test_docker_py_over_ssh_reaches_each_hosts_own_daemon(lab: Lab, lab_home: Path) -> None:
    roots = {}
    for host in lab.hosts:
        client = docker.DockerClient(base_url=host.ssh_url, timeout=60)
        try:
            roots[host.name] = client.info()["DockerRootDir"]
        finally:
            client.close()
        assert roots[host.name] == str(host.docker_data_root)
    assert len(set(roots.values())) == 3, roots


def image_ids(lab: Lab, image: str) -> dict[str, str]:
    return {host.name: host.docker("image", "inspect", "--format", "{{.Id}}", image) for host in lab.hosts}


def test_base_image_imported_once_and_shipped_keeps_its_id(lab: Lab, lab_base_image: str) -> None:
    ids = image_ids(lab, lab_base_image)
    assert len(set(ids.values())) == 1, ids
    assert next(iter(ids.values())).startswith("sha256:")
    # Imported once: a second import on a worker would have produced another ID (and the
    # history of a shipped image is the head's, down to the creation time).
    created = {
        host.name: host.docker("image", "inspect", "--format", "{{.Created}}", lab_base_image)
        for host in lab.hosts
    }
    assert len(set(created.values())) == 1, created


def test_host_network_container_sees_its_workers_address(
    lab: Lab, lab_home: Path, lab_base_image: str
) -> None:
    worker = lab.workers[0]
    # A UDP "connect" sends nothing; it only picks the source address the kernel would use.
    probe = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.connect(('{lab.bridge_ip}', 9)); print(s.getsockname()[0])"
    )
    client = docker.DockerClient(base_url=worker.ssh_url, timeout=120)
    try:
        out = client.containers.run(
            lab_base_image,
            ["python3", "-c", probe],
            network_mode="host",
            remove=True,
            stdout=True,
            stderr=True,
        )
    finally:
        client.close()
    assert out.decode().strip() == worker.ip


def test_remote_dirs_are_separate_per_host(lab: Lab) -> None:
    head, worker = lab.head, lab.workers[0]
    assert len({host.remote_dir for host in lab.hosts}) == 3
    marker = "synced-to-head.txt"
    with strict_client(lab, head) as client:
        with client.open_sftp() as sftp, sftp.open(str(head.remote_dir / marker), "w") as remote:
            remote.write("only on head\n")
        status, out = ssh_run(client, f'cat "$SCLAB_REMOTE_DIR/{marker}"')
        assert (status, out) == (0, "only on head\n")
    try:
        with strict_client(lab, worker) as client:
            status, out = ssh_run(
                client, f'test -e "$SCLAB_REMOTE_DIR/{marker}"; echo $?; echo $SCLAB_REMOTE_DIR'
            )
            assert out.split() == ["1", str(worker.remote_dir)]
    finally:
        (head.remote_dir / marker).unlink()


def test_stopping_daemons_makes_docker_missing_and_host_unreachable(
    lab_factory: Callable[[Sequence[str]], Lab],
) -> None:
    small = lab_factory(["solo"])
    host = small.hosts[0]
    small.stop_dockerd(host)
    assert host.run(["docker", "info"], check=False).returncode != 0
    assert tcp_port_open(host.ip, host.ssh_port)
    small.stop_sshd(host)
    assert not tcp_port_open(host.ip, host.ssh_port)
    small.ensure_running()
    assert tcp_port_open(host.ip, host.ssh_port)
    assert host.docker("info", "--format", "{{.DockerRootDir}}") == str(host.docker_data_root)


def _mounted_points() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _processes_naming(fragment: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline and entry.name != str(os.getpid()):
                found.append(f"{entry.name}: {cmdline}")
    return found


def test_teardown_leaves_nothing_behind(
    lab_factory: Callable[[Sequence[str]], Lab], base_image_tar: Path
) -> None:
    small = lab_factory(["solo", "duo"])
    host = small.hosts[0]
    small.import_image(host, base_image_tar, "sclab/teardown:probe")
    # A running container: overlay and shm mounts, a containerd shim, a process in the namespace.
    host.docker("run", "-d", "--network", "host", "sclab/teardown:probe", "sleep", "600")
    # A container with a network namespace of its own is found by its cgroup, not its netns.
    host.docker("run", "-d", "--network", "none", "sclab/teardown:probe", "sleep", "601")
    netns = [h.netns for h in small.hosts]
    dirs = [small.dir, *(h.remote_dir for h in small.hosts), *(h.docker_socket.parent for h in small.hosts)]
    pids = slot_pids(small.slot)
    commands = " ".join(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") for pid in pids)
    for daemon in ("sshd", "dockerd", "containerd", "containerd-shim", "sleep 600", "sleep 601"):
        assert daemon in commands, f"{daemon} not running before teardown"
    assert mounts_under(small.dir), "a running container should have mounts under the lab dir"

    small.destroy()

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [ns for ns in netns if ns in listed]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f"{small.bridge}:" not in links and f"{small.bridge}v" not in links
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert _processes_naming(str(small.dir)) == []
    assert str(small.dir) not in _mounted_points()
    assert [d for d in dirs if d.exists()] == []
    assert leftovers(small.slot) == []
    small.destroy()  # idempotent


def test_sweep_removes_a_crashed_labs_leftovers() -> None:
    script = (
        "from tests.lab.lab import Lab; lab = Lab.create(['orphan']); "
        "print(lab.slot, lab.hosts[0].netns, flush=True); import os; os._exit(0)"
    )
    # The creating process dies without teardown; its daemons live on, as after a crash.
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert proc.returncode == 0, proc.stderr
    slot_text, netns = proc.stdout.split()
    slot = int(slot_text)
    try:
        assert any(f"sclab{slot}" in item for item in leftovers(slot))
        assert slot in lab_module.sweep()
        assert leftovers(slot) == []
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert netns not in listed
    finally:
        lab_module.destroy_slot(slot)
