"""A multi-host test lab on one machine: a bridge plus N hosts in network namespaces.

Every host has its own address on a private bridge, its own sshd (key-only root login) and its
own dockerd (own data-root, exec-root, pidfile and socket), so tests can treat the hosts as
separate SSH-reachable Linux machines. The filesystem is shared, so each host also gets its own
remote directory (``Host.remote_dir``).

Labs take a *slot* ``k`` (0..7). Everything a lab creates is named after it, so it can be found
and removed again by name alone -- by ``Lab.destroy`` and by ``sweep`` after a crashed run:

- network namespaces ``sclab<k>-<host>``, bridge ``sclab<k>``, root-side veths ``sclab<k>v<i>``
- state (keys, configs, logs, docker data) in ``/var/tmp/sclab/lab<k>/``
- docker sockets in ``/run/sclab<k>-<host>/``, remote dirs in ``/srv/sclab/sclab<k>-<host>/``
- container cgroups under ``/sys/fs/cgroup/<controller>/sclab<k>-<host>/``

Each slot owns the /27 ``10.77.0.<32k>``: the bridge is ``.32k+1``, host i is ``.32k+10+i``.
Namespaces get no default route, so a lab host can reach nothing but the bridge subnet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.base_image import mounts_under, remove_tree

log = logging.getLogger(__name__)

PREFIX = "sclab"
SUBNET = "10.77.0"
SLOT_BITS = 27  # one /27 per lab slot inside 10.77.0.0/24
SLOTS = 8
LABS_DIR = Path("/var/tmp/sclab")
REMOTE_ROOT = Path("/srv/sclab")
RUN_ROOT = Path("/run")
NETNS_DIR = Path("/var/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_HOSTS = ("head", "worker1", "worker2")
SSH_PORT = 22
# Machine-wide paths the daemons create outside any lab dir. Those absent before the first lab
# are recorded in GLOBALS_FILE and removed (files unlinked, dirs only when empty, mounts
# unmounted) when the last lab is gone. Order: contents before their parents.
SHARED_PATHS = (
    Path("/etc/docker/key.json"),  # dockerd's trust key; its place is not configurable
    Path("/run/docker/plugins"),
    Path("/run/docker"),
    Path("/run/containerd/s"),  # containerd-shim sockets
    Path("/run/containerd"),
    Path("/run/sshd"),  # sshd's privilege separation dir
    NETNS_DIR,  # `ip netns add` bind-mounts it onto itself
)
CLAIM_GRACE = 30.0  # seconds a freshly claimed slot counts as alive before its owner file exists
GLOBALS_FILE = LABS_DIR / "created-shared-paths.json"
REQUIRED_TOOLS = ("ip", "nsenter", "sshd", "ssh", "ssh-keygen", "ssh-keyscan", "dockerd", "docker")


class LabError(RuntimeError):
    """The lab could not be set up or torn down; the message says what and shows the log tail."""


def missing_tools() -> list[str]:
    """Tools the lab needs that are not on this machine (``.ci/lab-deps.sh`` installs them)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool, path=path) is None]


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise LabError(f"{name} is missing: run .ci/lab-deps.sh (or apt-get install it)")
    return found


# --- polling -----------------------------------------------------------------------------------


def log_tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def poll_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log_file: Path | None = None,
    interval: float = 0.05,
) -> None:
    """Call ``check`` until it returns True; after ``timeout`` seconds raise a LabError naming
    ``what`` with the tail of ``log_file``. The short waits between calls are the poll interval,
    not synchronisation: readiness is always decided by ``check``."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise LabError(
                f"{what} did not happen within {timeout:.0f} s\n--- {log_file}:\n{log_tail(log_file)}"
            )
        # Event().wait is an interruptible pause of one poll interval.
        threading.Event().wait(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, 0.5)


def tcp_port_open(ip: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_socket_open(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def wait_for_port(ip: str, port: int, timeout: float = 30.0, log_file: Path | None = None) -> None:
    poll_until(lambda: tcp_port_open(ip, port), timeout, f"TCP port {ip}:{port} opening", log_file)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _run(argv: Sequence[str], check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


# --- hosts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One lab host. ``name`` is its short name ("head"); ``netns`` the namespace it lives in."""

    name: str
    netns: str
    ip: str
    index: int
    state_dir: Path
    remote_dir: Path
    ssh_port: int = SSH_PORT
    ssh_user: str = "root"

    @property
    def docker_socket(self) -> Path:
        return RUN_ROOT / self.netns / "docker.sock"

    @property
    def docker_host(self) -> str:
        """DOCKER_HOST for this host's daemon; sshd puts it in every SSH session's environment."""
        return f"unix://{self.docker_socket}"

    @property
    def ssh_url(self) -> str:
        """The docker-py base URL for this host (``DockerClient(base_url=host.ssh_url)``)."""
        return f"ssh://{self.ssh_user}@{self.ip}"

    @property
    def docker_data_root(self) -> Path:
        return self.state_dir / "docker" / "data"

    @property
    def docker_exec_root(self) -> Path:
        return self.state_dir / "docker" / "exec"

    @property
    def dockerd_pidfile(self) -> Path:
        return self.state_dir / "docker" / "dockerd.pid"

    @property
    def dockerd_log(self) -> Path:
        return self.state_dir / "dockerd.log"

    @property
    def sshd_config(self) -> Path:
        return self.state_dir / "sshd_config"

    @property
    def sshd_pidfile(self) -> Path:
        return self.state_dir / "sshd.pid"

    @property
    def sshd_log(self) -> Path:
        return self.state_dir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.netns}"

    def nsenter(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's network namespace (nsenter keeps /sys intact)."""
        return [_tool("nsenter"), f"--net={NETNS_DIR / self.netns}", *argv]

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 120.0,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in this host's namespace, talking to this host's dockerd."""
        env = {**os.environ, "DOCKER_HOST": self.docker_host}
        proc = subprocess.run(
            self.nsenter(argv), input=input, capture_output=True, env=env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"on {self.name}: {' '.join(argv)} failed (exit {proc.returncode}):\n"
                f"{proc.stderr.decode(errors='replace')[-3000:]}"
            )
        return proc

    def docker(self, *args: str, check: bool = True, timeout: float = 300.0) -> str:
        """The docker CLI against this host's daemon; returns stdout."""
        return self.run(["docker", *args], check=check, timeout=timeout).stdout.decode().strip()


# --- the lab -----------------------------------------------------------------------------------


def _slot_net(slot: int) -> tuple[str, str]:
    """(bridge address, network prefix) of a slot."""
    return f"{SUBNET}.{32 * slot + 1}", f"{SUBNET}.{32 * slot}/{SLOT_BITS}"


def _lab_dir(slot: int) -> Path:
    return LABS_DIR / f"lab{slot}"


def _bridge(slot: int) -> str:
    return f"{PREFIX}{slot}"


@dataclass
class Lab:
    """A running lab. Create it with ``Lab.create``; always ``destroy`` it (idempotent)."""

    slot: int
    hosts: list[Host] = field(default_factory=list)
    _procs: dict[tuple[str, str], subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    # -- paths
    @property
    def dir(self) -> Path:
        return _lab_dir(self.slot)

    @property
    def bridge(self) -> str:
        return _bridge(self.slot)

    @property
    def bridge_ip(self) -> str:
        return _slot_net(self.slot)[0]

    @property
    def ssh_key(self) -> Path:
        """Private key that logs in as root on every host."""
        return self.dir / "client" / ".ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "client" / ".ssh" / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        """OpenSSH client config: ``ssh -F lab.ssh_config <host ip>`` logs in with the lab key and
        strict host key checking against ``known_hosts``."""
        return self.dir / "client" / ".ssh" / "config"

    @property
    def client_home(self) -> Path:
        """A HOME whose ~/.ssh holds key, config and known_hosts. docker-py and paramiko read
        ~/.ssh, so set HOME to this for them."""
        return self.dir / "client"

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if name in (host.name, host.netns, host.ip):
                return host
        raise KeyError(name)

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def workers(self) -> list[Host]:
        return self.hosts[1:]

    def ssh_argv(self, host: Host, command: Sequence[str]) -> list[str]:
        """The OpenSSH command line that runs ``command`` on ``host`` (a remote shell parses it)."""
        return [_tool("ssh"), "-F", str(self.ssh_config), "-p", str(host.ssh_port), host.ip, "--", *command]

    # -- life cycle
    @classmethod
    def create(cls, names: Sequence[str] = DEFAULT_HOSTS, timeout: float = 60.0) -> Lab:
        """Sweep stale labs, take a free slot and bring up one host per name (first = head)."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, sshd and dockerd)")
        if missing := missing_tools():
            raise LabError(f"missing tools {missing}: run .ci/lab-deps.sh")
        if not 1 <= len(names) <= 20:
            raise LabError(f"a lab has 1..20 hosts, not {len(names)}")
        sweep()
        lab = cls(slot=_claim_slot())
        try:
            lab._set_up(names, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                lab.destroy()
            raise
        return lab

    def _set_up(self, names: Sequence[str], timeout: float) -> None:
        started = time.monotonic()
        bridge_ip, _ = _slot_net(self.slot)
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{bridge_ip}/{SLOT_BITS}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        self._make_client_key()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for index, name in enumerate(names, start=1):
            netns = f"{PREFIX}{self.slot}-{name}"
            host = Host(
                name=name,
                netns=netns,
                ip=f"{SUBNET}.{32 * self.slot + 10 + index}",
                index=index,
                state_dir=self.dir / "hosts" / name,
                remote_dir=REMOTE_ROOT / netns,
            )
            self.hosts.append(host)
            self._make_host(host)
            self.start_sshd(host, wait=False)
            self.start_dockerd(host, wait=False)
        for host in self.hosts:
            self.wait_sshd(host, timeout)
            self.wait_dockerd(host, timeout)
        self._scan_host_keys()
        log.info("lab %d up with %d hosts in %.1f s", self.slot, len(self.hosts), time.monotonic() - started)

    def _make_client_key(self) -> None:
        ssh_dir = self.ssh_key.parent
        ssh_dir.mkdir(parents=True, mode=0o700)
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"sclab{self.slot}",
                "-f",
                str(self.ssh_key),
            ]
        )
        shutil.copy(self.ssh_key.with_suffix(".pub"), self.dir / "authorized_keys")
        _, prefix = _slot_net(self.slot)
        pattern = prefix.rsplit(".", 1)[0] + ".*"
        self.ssh_config.write_text(
            f"Host {pattern}\n"
            "  User root\n"
            f"  IdentityFile {self.ssh_key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 10\n"
        )

    def _make_host(self, host: Host) -> None:
        _run(["ip", "netns", "add", host.netns])
        root_veth, peer = f"{PREFIX}{self.slot}v{host.index}", f"{PREFIX}{self.slot}p{host.index}"
        _run(["ip", "link", "add", root_veth, "type", "veth", "peer", "name", peer])
        _run(["ip", "link", "set", root_veth, "master", self.bridge, "up"])
        _run(["ip", "link", "set", peer, "netns", host.netns])
        in_ns = ["ip", "-n", host.netns]
        _run([*in_ns, "link", "set", peer, "name", "eth0"])
        _run([*in_ns, "addr", "add", f"{host.ip}/{SLOT_BITS}", "dev", "eth0"])
        _run([*in_ns, "link", "set", "eth0", "up"])
        _run([*in_ns, "link", "set", "lo", "up"])

        host.state_dir.mkdir(parents=True)
        host.remote_dir.mkdir(parents=True)
        host.docker_socket.parent.mkdir(parents=True)
        host.docker_data_root.mkdir(parents=True)
        host.docker_exec_root.mkdir(parents=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.netns, "-f", str(host.host_key)])
        host.sshd_config.write_text(
            f"ListenAddress {host.ip}\n"
            f"Port {host.ssh_port}\n"
            f"HostKey {host.host_key}\n"
            f"PidFile {host.sshd_pidfile}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # /var/tmp is world-writable; the lab's own files are root's.
            "StrictModes no\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "MaxStartups 100\n"
            "MaxSessions 100\n"
            "LogLevel VERBOSE\n"
            f"SetEnv DOCKER_HOST={host.docker_host} SCLAB_HOST={host.name}"
            f" SCLAB_REMOTE_DIR={host.remote_dir}\n"
            "Subsystem sftp internal-sftp\n"
        )
        _run([_tool("sshd"), "-t", "-f", str(host.sshd_config)])

    def _spawn(self, host: Host, what: str, argv: Sequence[str], log_file: Path) -> None:
        old = self._procs.pop((host.name, what), None)
        if old is not None and old.poll() is None:
            raise LabError(f"{what} already runs on {host.name} (pid {old.pid})")
        with log_file.open("ab") as out:
            # Own session: a Ctrl-C in pytest must not kill the daemons before teardown does.
            self._procs[(host.name, what)] = subprocess.Popen(
                host.nsenter(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start_sshd(self, host: Host, wait: bool = True, timeout: float = 30.0) -> None:
        # sshd re-executes itself, so it needs its absolute path.
        self._spawn(host, "sshd", [_tool("sshd"), "-D", "-e", "-f", str(host.sshd_config)], host.sshd_log)
        if wait:
            self.wait_sshd(host, timeout)

    def start_dockerd(self, host: Host, wait: bool = True, timeout: float = 60.0) -> None:
        argv = [
            _tool("dockerd"),
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            f"--data-root={host.docker_data_root}",
            f"--exec-root={host.docker_exec_root}",
            f"--pidfile={host.dockerd_pidfile}",
            f"--host={host.docker_host}",
            f"--cgroup-parent={host.cgroup_parent}",
            "--shutdown-timeout=5",
        ]
        self._spawn(host, "dockerd", argv, host.dockerd_log)
        if wait:
            self.wait_dockerd(host, timeout)

    def _check_alive(self, host: Host, what: str, log_file: Path) -> None:
        proc = self._procs.get((host.name, what))
        if proc is not None and proc.poll() is not None:
            raise LabError(
                f"{what} on {host.name} exited with {proc.returncode}\n--- {log_file}:\n{log_tail(log_file)}"
            )

    def wait_sshd(self, host: Host, timeout: float = 30.0) -> None:
        def ready() -> bool:
            self._check_alive(host, "sshd", host.sshd_log)
            return tcp_port_open(host.ip, host.ssh_port)

        poll_until(ready, timeout, f"sshd on {host.name} ({host.ip}:{host.ssh_port})", host.sshd_log)

    def wait_dockerd(self, host: Host, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self._check_alive(host, "dockerd", host.dockerd_log)
            return unix_socket_open(host.docker_socket) and (
                host.run(["docker", "version", "--format", "{{.Server.Version}}"], check=False).returncode
                == 0
            )

        poll_until(ready, timeout, f"dockerd on {host.name} ({host.docker_socket})", host.dockerd_log)

    def stop_sshd(self, host: Host, timeout: float = 15.0) -> None:
        """Stop the host's sshd: the host becomes unreachable over SSH (its address still answers
        nothing on port 22)."""
        self._stop(host, "sshd", host.sshd_pidfile, timeout)
        poll_until(lambda: not tcp_port_open(host.ip, host.ssh_port), timeout, f"sshd on {host.name} closing")

    def stop_dockerd(self, host: Host, timeout: float = 30.0) -> None:
        """Stop the host's dockerd (its containers stop too): a host without docker."""
        self._stop(host, "dockerd", host.dockerd_pidfile, timeout)
        poll_until(
            lambda: not unix_socket_open(host.docker_socket), timeout, f"dockerd on {host.name} closing"
        )

    def _stop(self, host: Host, what: str, pidfile: Path, timeout: float) -> None:
        proc = self._procs.pop((host.name, what), None)
        pid = proc.pid if proc is not None else _read_pid(pidfile)
        if pid is not None:
            _terminate([pid], timeout)
        if proc is not None:
            proc.wait(timeout=timeout)

    def destroy(self) -> None:
        """Stop everything, remove everything; idempotent. Raises LabError listing anything that
        could not be removed."""
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        destroy_slot(self.slot)
        for proc in self._procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self._procs.clear()
        if left := leftovers(self.slot):
            raise LabError(f"lab {self.slot} teardown left: {left}")

    def _scan_host_keys(self) -> None:
        lines: list[str] = []
        for host in self.hosts:
            proc = _run(["ssh-keyscan", "-T", "10", "-t", "ed25519", "-p", str(host.ssh_port), host.ip])
            if not proc.stdout.strip():
                raise LabError(
                    f"ssh-keyscan got no key from {host.name} ({host.ip})\n{log_tail(host.sshd_log)}"
                )
            lines += [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
        self.known_hosts.write_text("\n".join(lines) + "\n")

    # -- helpers for tests
    def import_image(self, host: Host, tarball: Path, tag: str, timeout: float = 600.0) -> str:
        """``docker import`` of a rootfs tarball on ``host``, streamed over SSH; returns the image ID."""
        with tarball.open("rb") as stdin:
            proc = subprocess.run(
                self.ssh_argv(host, ["docker", "import", "-", tag]),
                stdin=stdin,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        if proc.returncode != 0:
            raise LabError(f"docker import on {host.name} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode().strip()

    def ensure_running(self) -> None:
        """Restart any sshd or dockerd that a test stopped (failure tests on a shared lab)."""
        for host in self.hosts:
            for what, start in (("sshd", self.start_sshd), ("dockerd", self.start_dockerd)):
                proc = self._procs.get((host.name, what))
                if proc is None or proc.poll() is not None:
                    self._procs.pop((host.name, what), None)
                    start(host)

    def ship_image(self, image: str, source: Host, targets: Iterable[Host], timeout: float = 900.0) -> None:
        """``docker save`` on ``source`` streamed over SSH into ``docker load`` on every target in
        parallel (one save, fanned out to all loads)."""
        targets = list(targets)
        with contextlib.ExitStack() as stack:
            # Logs go to files: a full stderr pipe must never stall the stream.
            logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(len(targets) + 1)]
            save = subprocess.Popen(
                self.ssh_argv(source, ["docker", "save", image]), stdout=subprocess.PIPE, stderr=logs[0]
            )
            loads = [
                subprocess.Popen(
                    self.ssh_argv(target, ["docker", "load"]), stdin=subprocess.PIPE, stdout=log, stderr=log
                )
                for target, log in zip(targets, logs[1:], strict=True)
            ]
            try:
                _pump(save, loads)
                codes = [proc.wait(timeout=timeout) for proc in (save, *loads)]
            finally:
                for proc in (save, *loads):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            errors = []
            for where, proc, code, log in zip([source, *targets], (save, *loads), codes, logs, strict=True):
                if code != 0:
                    log.seek(0)
                    verb = "save" if proc is save else "load"
                    errors.append(
                        f"docker {verb} on {where.name} (exit {code}): {log.read().decode(errors='replace')}"
                    )
        if errors:
            raise LabError(f"shipping {image} failed:\n" + "\n".join(errors))


def _pump(save: subprocess.Popen[bytes], loads: Sequence[subprocess.Popen[bytes]]) -> None:
    """Copy ``save``'s stdout into every load's stdin; a load that dies stops getting data."""
    assert save.stdout is not None
    alive = list(loads)
    while alive and (chunk := save.stdout.read(1 << 20)):
        for load in list(alive):
            assert load.stdin is not None
            try:
                load.stdin.write(chunk)
            except BrokenPipeError:
                alive.remove(load)
    save.stdout.close()
    for load in loads:
        assert load.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            load.stdin.close()


# --- slots, sweep, teardown --------------------------------------------------------------------


def _owner_file(slot: int) -> Path:
    return _lab_dir(slot) / "owner.json"


def _claim_slot() -> int:
    LABS_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError), GLOBALS_FILE.open("x") as out:
        # First lab on this machine (or since the last one went): remember what it will create.
        json.dump([str(path) for path in SHARED_PATHS if not path.exists()], out)
    for slot in range(SLOTS):
        if _bridge(slot) in _links() or any(ns.startswith(f"{PREFIX}{slot}-") for ns in _netns_names()):
            continue
        try:
            _lab_dir(slot).mkdir()
        except FileExistsError:
            continue
        _owner_file(slot).write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))
        return slot
    raise LabError(f"all {SLOTS} lab slots are taken; see `ip netns list` and {LABS_DIR}")


def _owner_alive(slot: int) -> bool:
    try:
        owner = json.loads(_owner_file(slot).read_text())
    except (OSError, ValueError):
        # Another process may have just made the dir and not yet written its owner file.
        with contextlib.suppress(OSError):
            return time.time() - _lab_dir(slot).stat().st_mtime < CLAIM_GRACE
        return False
    return isinstance(owner, dict) and _pid_alive(int(owner.get("pid", 0)))


def _netns_names() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    proc = _run(["ip", "-o", "link", "show"], check=False)
    # "12: sclab0v1@if11: <...>" -> "sclab0v1"
    return [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if ":" in line]


def _used_slots() -> set[int]:
    names = [*_netns_names(), *_links()]
    if LABS_DIR.is_dir():
        names += [path.name.replace("lab", PREFIX, 1) for path in LABS_DIR.glob("lab[0-9]*")]
    if RUN_ROOT.is_dir():
        names += [path.name for path in RUN_ROOT.glob(f"{PREFIX}*")]
    if REMOTE_ROOT.is_dir():
        names += [path.name for path in REMOTE_ROOT.glob(f"{PREFIX}*")]
    slots = set()
    for name in names:
        if name.startswith(PREFIX) and name[len(PREFIX) : len(PREFIX) + 1].isdigit():
            slots.add(int(name[len(PREFIX)]))
    return slots


def sweep() -> list[int]:
    """Remove what earlier lab runs left behind (their owner process is gone). Returns the slots."""
    stale = [slot for slot in sorted(_used_slots()) if not _owner_alive(slot)]
    for slot in stale:
        log.warning("sweeping leftovers of lab slot %d", slot)
        destroy_slot(slot)
    if LABS_DIR.is_dir() and not any(LABS_DIR.glob("lab[0-9]*")):
        _remove_shared_paths()
    return stale


def _slot_marker(slot: int) -> list[str]:
    """Strings that occur in the command line of every process a lab slot starts."""
    return [str(_lab_dir(slot)) + "/", f"/run/{PREFIX}{slot}-"]


def _slot_netns(slot: int) -> list[str]:
    return [ns for ns in _netns_names() if ns.startswith(f"{PREFIX}{slot}-")]


def _netns_inode(netns: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / netns).st_ino
    except OSError:
        return None


def slot_pids(slot: int) -> list[int]:
    """Processes of a lab slot: inside one of its network namespaces, naming its paths, or in
    its container cgroups (a container without ``--network host`` has a namespace of its own)."""
    inodes = {ino for ns in _slot_netns(slot) if (ino := _netns_inode(ns)) is not None}
    markers = _slot_marker(slot)
    cgroup_marker = f":/{PREFIX}{slot}-"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (entry / "cgroup").read_text()
            netns_ino = os.stat(entry / "ns" / "net").st_ino
        except OSError:
            continue
        if netns_ino in inodes or cgroup_marker in cgroups or any(marker in cmdline for marker in markers):
            pids.append(int(entry.name))
    return [pid for pid in pids if _pid_alive(pid)]


def _terminate(pids: Sequence[int], timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        poll_until(
            lambda: not any(_pid_alive(pid) for pid in pids), timeout, f"processes {list(pids)} exiting"
        )
    except LabError:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        poll_until(lambda: not any(_pid_alive(pid) for pid in pids), timeout, f"processes {list(pids)} dying")


def _slot_dirs(slot: int) -> list[Path]:
    dirs = [_lab_dir(slot)]
    dirs += sorted(RUN_ROOT.glob(f"{PREFIX}{slot}-*"))
    if REMOTE_ROOT.is_dir():
        dirs += sorted(REMOTE_ROOT.glob(f"{PREFIX}{slot}-*"))
    return dirs


def _slot_cgroups(slot: int) -> list[Path]:
    found = [path for path in CGROUP_ROOT.glob(f"*/{PREFIX}{slot}-*") if path.is_dir()]
    return found


def _remove_cgroups(slot: int) -> None:
    for top in _slot_cgroups(slot):
        # Deepest first: a cgroup directory can only be removed once it has no children.
        for path in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _stop_docker_gracefully(slot: int) -> None:
    """Remove the containers, then stop dockerd (which stops its containerd and the shims)."""
    for netns in _slot_netns(slot):
        sock = RUN_ROOT / netns / "docker.sock"
        if not unix_socket_open(sock):
            continue
        env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            ids = subprocess.run(
                ["docker", "ps", "-aq"], capture_output=True, text=True, env=env, timeout=30, check=False
            ).stdout.split()
            if ids:
                subprocess.run(
                    ["docker", "rm", "-f", *ids], capture_output=True, env=env, timeout=60, check=False
                )
    for pidfile in _lab_dir(slot).glob("hosts/*/docker/dockerd.pid"):
        if (pid := _read_pid(pidfile)) is not None and _pid_alive(pid):
            with contextlib.suppress(LabError):
                _terminate([pid], 20)


def destroy_slot(slot: int) -> None:
    """Tear down everything of one lab slot, by name. Best effort and idempotent."""
    _stop_docker_gracefully(slot)
    # Whatever still runs in the namespaces or on the lab's paths (sshd, sessions, stuck shims).
    for _ in range(3):
        pids = slot_pids(slot)
        if not pids:
            break
        with contextlib.suppress(LabError):
            _terminate(pids, 3)
    # Mounts (overlays, shm) under the lab's dirs first, then namespaces, links, cgroups, dirs.
    for directory in _slot_dirs(slot):
        for point in mounts_under(directory):
            _run(["umount", "--lazy", str(point)], check=False)
    for netns in _slot_netns(slot):
        _run(["ip", "netns", "delete", netns], check=False)
    for link in _slot_links(slot):
        _run(["ip", "link", "delete", link], check=False)
    _remove_cgroups(slot)
    for directory in _slot_dirs(slot):
        remove_tree(directory)
    with contextlib.suppress(OSError):
        REMOTE_ROOT.rmdir()  # only once no other lab uses it
    if not any(LABS_DIR.glob("lab[0-9]*")):
        _remove_shared_paths()


def _remove_shared_paths() -> None:
    """The last lab is gone: remove the machine-wide paths the labs created."""
    try:
        created = {Path(path) for path in json.loads(GLOBALS_FILE.read_text())}
    except (OSError, ValueError):
        created = set()
    for path in SHARED_PATHS:
        # A dir that still has entries is in use by someone else (or another netns): leave it.
        if path not in created or (path.is_dir() and any(path.iterdir())):
            continue
        for point in mounts_under(path):
            _run(["umount", str(point)], check=False)
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
    GLOBALS_FILE.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        LABS_DIR.rmdir()


def _slot_links(slot: int) -> list[str]:
    return [
        link
        for link in _links()
        if link == _bridge(slot) or link.startswith((f"{PREFIX}{slot}v", f"{PREFIX}{slot}p"))
    ]


def leftovers(slot: int) -> list[str]:
    """Everything of a lab slot that still exists (empty after a clean teardown)."""
    found = [f"netns {ns}" for ns in _slot_netns(slot)]
    found += [f"link {link}" for link in _slot_links(slot)]
    found += [f"process {pid}" for pid in slot_pids(slot)]
    found += [f"mount {point}" for directory in _slot_dirs(slot) for point in mounts_under(directory)]
    found += [f"dir {path}" for path in _slot_dirs(slot) if path.exists()]
    found += [f"cgroup {path}" for path in _slot_cgroups(slot)]
    return found
