"""Cluster life-cycle over runners: preflight, up, down, status.

Orchestration only: every remote command comes from ``commands``, every host is a ``Runner``
(SSH in real use, fakes in tests and ``--dry-run``), the image and the sync are steps handed
in, and every failure is raised as one error naming each host involved.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from shapcluster import commands as cmd
from shapcluster import creds, ray_token
from shapcluster.config import ClusterConfig, SshConfig
from shapcluster.errors import DegradedError, InputError, NoClusterError, RemoteError
from shapcluster.inventory import Host, check_cpus
from shapcluster.remote.base import Runner, tail
from shapcluster.remote.group import GroupResult, gather_on_nodes, run_on_nodes
from shapcluster.remote.ssh import resolve_target, ssh_config_file

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
MIN_FREE_BYTES = 4 * 1024**3  # the image alone is about 1.5 GB, unpacked more
NODES_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Node:
    host: Host
    role: cmd.Role
    runner: Runner
    layout: cmd.RemoteLayout

    @property
    def name(self) -> str:
        return self.runner.host


@dataclass(frozen=True)
class Facts:
    cpus: int  # CPUs Ray gets on this host (configured, checked against nproc)
    docker_version: str
    free_bytes: int
    architecture: str = ""  # docker info's, e.g. x86_64 or aarch64
    rootless: bool = False
    env_file: bool = False  # the host has an env.list (AWS credentials) for its containers


@dataclass(frozen=True)
class ImageRef:
    tag: str
    image_id: str


class ImageSteps(Protocol):
    """Build once on the head, ship to the workers, prove every host holds the same image."""

    def ensure(self, head: Node, progress: Progress) -> ImageRef: ...
    def ship(self, head: Node, workers: Sequence[Node], image: ImageRef, progress: Progress) -> None: ...
    def verify(self, nodes: Sequence[Node], image: ImageRef) -> None: ...


class SyncSteps(Protocol):
    def sync(self, nodes: Sequence[Node], progress: Progress) -> None: ...


class CredentialSteps(Protocol):
    """Make sure every host holds AWS credentials that do not expire soon: ``prepare`` asks STS
    (in preflight, before any build), ``ensure`` writes the result to every host."""

    def prepare(self, nodes: Sequence[Node], progress: Progress) -> None: ...
    def ensure(self, nodes: Sequence[Node], progress: Progress) -> None: ...


@dataclass
class UpReport:
    image: ImageRef | None = None
    started: list[str] = field(default_factory=list)  # hosts whose container was (re)started
    kept: list[str] = field(default_factory=list)  # hosts whose container already matched
    nodes_alive: int = 0
    cpus: int = 0


def make_nodes(config: ClusterConfig, connect: Callable[[Host], Runner]) -> list[Node]:
    """The head first, then the workers, each with its own runner and remote directory."""
    hosts = [(config.inventory.head, cmd.Role.HEAD)] + [
        (w, cmd.Role.WORKER) for w in config.inventory.workers
    ]
    return [Node(h, role, connect(h), cmd.RemoteLayout(config.remote_dir_for(h))) for h, role in hosts]


RAY_ADDRESS_WHERE = "head.ray_address in the config, ray_address=IP on a workers.txt line"


def node_ip(host: Host, ssh: SshConfig) -> str:
    """The address Ray advertises for ``host``: the one the other hosts reach it at.

    The rule: the host's ``ray_address`` if set; else the address SSH connects to after the
    user's ssh config (its ``HostName``, as ``remote.ssh.resolve_target`` finds it; the bare
    address when ``ssh.use_ssh_config`` is false), resolved on this machine as ssh resolves it.
    A host behind ``ProxyJump`` is connected to by the last hop, so its address is the one it has
    on the hop's side: a literal IP there is taken (the hosts share that network); a name is
    resolved by the hop, which this machine cannot know, so it is refused (InputError) with a
    hint to give ``ray_address``. A name that does not resolve here raises RemoteError.

    Ray must never use a loopback address on a multi-host cluster: a head on 127.0.0.1 tells
    every worker to join 127.0.0.1, where no head runs (InputError).
    """
    chosen, via = host.ray_address, ""
    if chosen is None:
        target = resolve_target(host, ssh)
        chosen = target.hostname
        if chosen != host.address:
            via = f" (HostName of {host.address} in {ssh_config_file(ssh)})"
        if target.proxy_jump and not _is_ip(chosen):
            raise InputError(
                f"{host.location}: {host.name}: reached through ProxyJump {target.proxy_jump} "
                f"({ssh_config_file(ssh)}), so {chosen}{via} is resolved on the jump host, not here; "
                "Ray needs the address the other hosts reach it at",
                hint=f"Give that address as ray_address ({RAY_ADDRESS_WHERE}), or an IP as its HostName.",
            )
    try:
        ip = ipaddress.ip_address(chosen)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.gethostbyname(chosen))
        except OSError as err:
            unread = "" if ssh.use_ssh_config else " (use_ssh_config = false: the ssh config is not read)"
            raise RemoteError(
                f"{host.location}: {host.name}: cannot resolve {chosen}{via} on this machine ({err}); "
                f"Ray needs the host's address{unread}",
                hint=f"Check the name, or give the host's address as ray_address ({RAY_ADDRESS_WHERE}).",
            ) from None
    if ip.is_loopback or ip.is_unspecified:
        shown = f"{chosen}{via}" + ("" if str(ip) == chosen else f" (it resolves to {ip})")
        raise InputError(
            f"{host.location}: {host.name}: {shown} is a loopback address; Ray nodes on other "
            "hosts cannot reach it",
            hint="Use the host's address on the network the hosts share, or give that address as "
            f"ray_address ({RAY_ADDRESS_WHERE}).",
        )
    return str(ip)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def preflight(nodes: Sequence[Node]) -> dict[str, Facts]:
    """SSH, Docker (version, architecture, rootless), CPUs, disk and a writable remote directory
    on every host in parallel, one SSH command each; nothing is changed anywhere. Every host must
    have the head's architecture: the image is built there and shipped as it is."""

    def check(node: Node) -> Facts:
        command = cmd.preflight_command(node.layout.root, node.layout.env_file)
        found = cmd.parse_preflight(node.runner.run(command).stdout)
        status, version = found["docker"]
        if status != 0:
            raise RemoteError(
                f"{node.name}: the Docker daemon is not usable: {tail(version) or 'no answer'}",
                hint=f"Install Docker on {node.name} and let its SSH user run `docker` (docker group).",
            )
        architecture, _, options = found["info"][1].partition(" ")
        if "name=rootless" in options:
            raise RemoteError(
                f"{node.name}: Docker runs rootless there; Ray containers need the host's own network "
                "(--network host), which a rootless daemon cannot give",
                hint=f"Use the system Docker daemon on {node.name} (add the SSH user to the docker group).",
            )
        cpus = check_cpus(node.host, found["nproc"][1])
        free = cmd.parse_disk_free(found["df"][1])
        if free < MIN_FREE_BYTES:
            raise RemoteError(
                f"{node.name}: only {free / 1024**3:.1f} GiB free under {node.layout.root}; "
                f"the Ray image needs {MIN_FREE_BYTES / 1024**3:.0f} GiB.",
                hint="Free some space or point cluster.remote_dir at a larger disk.",
            )
        status, parent = found["writable"]
        if status != 0:
            raise InputError(
                f"{node.name}: cluster.remote_dir {node.layout.root} is not writable by the SSH user "
                f"({parent} is not)",
                hint=f"Create it there for that user (sudo install -d -o USER {node.layout.root}) or set "
                "cluster.remote_dir to a folder the user owns.",
            )
        return Facts(cpus, version.strip(), free, architecture.strip(), False, found["envfile"][0] == 0)

    facts = run_on_nodes(nodes, check, what="preflight")
    head_arch = facts[nodes[0].name].architecture
    other = {name: f.architecture for name, f in facts.items() if f.architecture != head_arch}
    if other:
        raise InputError(
            "preflight: every host must have the head's CPU architecture "
            f"({nodes[0].name}: {head_arch}), the image is built there: "
            + ", ".join(f"{name} is {arch or 'unknown'}" for name, arch in other.items()),
            hint="Remove those hosts from the workers file (or run a separate cluster for them).",
        )
    return facts


def _ray_node(
    config: ClusterConfig, node: Node, image: ImageRef, cpus: int, *, env_file: bool, aws: bool
) -> cmd.RayNode:
    mounts = cmd.synced_mounts(node.layout, with_data=config.sync.data_dir is not None)
    if node.role is cmd.Role.HEAD:
        mounts += (cmd.Mount(node.layout.results_dir, cmd.CONTAINER_RESULTS_DIR, read_only=False),)
    if aws:
        mounts += (cmd.Mount(node.layout.aws_dir, cmd.CONTAINER_AWS_DIR),)
    return cmd.RayNode(
        cluster=config.name,
        role=node.role,
        image=image.image_id,
        image_id=image.image_id,
        node_ip=node_ip(node.host, config.ssh),
        cpus=cpus,
        shm_size=config.shm_size,
        token_file=node.layout.token_file,
        mounts=mounts,
        env_file=node.layout.env_file if env_file else None,
    )


def start_command(
    config: ClusterConfig,
    node: Node,
    image: ImageRef,
    cpus: int,
    head_ip: str,
    *,
    aws: bool = False,
    env_file: bool | None = None,
) -> str:
    """``aws``: the host holds role credentials (env.list and the aws folder, see creds);
    ``env_file``: whether it has an env.list (None: ask the host)."""
    if env_file is None:
        env_file = node.runner.run(cmd.file_exists_command(node.layout.env_file), check=False).ok
    env_file = aws or env_file
    ray_node = _ray_node(config, node, image, cpus, env_file=env_file, aws=aws)
    if node.role is cmd.Role.HEAD:
        return cmd.start_head_command(ray_node, config.ray)
    return cmd.start_worker_command(ray_node, head_ip, config.ray)


def containers_on(runner: Runner, cluster: str) -> list[cmd.ContainerInfo]:
    """This cluster's containers on one host, running or not."""
    return cmd.parse_containers(runner.run(cmd.list_containers_command(cluster)).stdout)


def ensure_container(
    node: Node,
    config: ClusterConfig,
    command: str,
    *,
    force: bool = False,
    before_start: Callable[[], object] | None = None,
) -> bool:
    """Keep a running container with the same spec; otherwise replace it. True if (re)started.
    ``before_start`` runs first when the container is to be (re)started (a check that may raise)."""
    mine = [c for c in containers_on(node.runner, config.name) if c.role == node.role]
    wanted = cmd.spec_of(command)
    if not force and len(mine) == 1 and mine[0].spec == wanted and mine[0].state == "running":
        return False
    if before_start is not None:
        before_start()
    if mine:
        node.runner.run(cmd.remove_containers_command(config.name, node.role))
    node.runner.run(command)
    return True


def up(
    config: ClusterConfig,
    nodes: Sequence[Node],
    image_steps: ImageSteps,
    sync_steps: SyncSteps,
    progress: Progress,
    *,
    timeout: float = NODES_TIMEOUT_SECONDS,
    credential_steps: CredentialSteps | None = None,
) -> UpReport:
    """Preflight, image, sync, token, head then workers, and wait until every node is alive.

    A failure before the containers start changes no container anywhere; a failure while
    starting them removes the containers this run started, so no host is left half-configured.
    """
    report = UpReport()
    head, workers = nodes[0], list(nodes[1:])
    for node in nodes:  # a loopback or unresolvable Ray address is refused before any change
        node_ip(node.host, config.ssh)
    progress(f"Preflight on {len(nodes)} host(s): SSH, Docker, CPUs, disk")
    facts = preflight(nodes)
    if credential_steps is not None:
        credential_steps.prepare(nodes, progress)
    image = image_steps.ensure(head, progress)
    report.image = image
    if workers:
        image_steps.ship(head, workers, image, progress)
    image_steps.verify(nodes, image)
    sync_steps.sync(nodes, progress)
    ray_token.ensure_token(nodes)
    aws = credential_steps is not None
    if credential_steps is not None:
        credential_steps.ensure(nodes, progress)

    head_ip = node_ip(head.host, config.ssh)
    started: list[Node] = []
    try:
        progress(f"Starting the Ray head on {head.name}")
        head_command = start_command(
            config, head, image, facts[head.name].cpus, head_ip, aws=aws, env_file=facts[head.name].env_file
        )
        head_restarted = ensure_container(
            head, config, head_command,
            # the results folder is mounted into the head: it must exist when the head starts
            before_start=lambda: head.runner.run(cmd.make_dirs_command(head.layout.results_dir)),
        )  # fmt: skip
        if head_restarted:
            started.append(head)

        def start_worker(node: Node) -> bool:
            command = start_command(
                config,
                node,
                image,
                facts[node.name].cpus,
                head_ip,
                aws=aws,
                env_file=facts[node.name].env_file,
            )
            # Workers of a restarted head hold a dead GCS connection: restart them too.
            return ensure_container(
                node, config, command, force=head_restarted,
                before_start=lambda: check_reaches_head(node, image, head_ip, config.ray.gcs),
            )  # fmt: skip

        if workers:
            progress(f"Starting {len(workers)} Ray worker(s) in parallel")
        result = gather_on_nodes(workers, start_worker)
        started += [w for w in workers if result.successes.get(w.name)]
        result.raise_for_failures("starting Ray workers")
        expected = {node_ip(n.host, config.ssh): facts[n.name].cpus for n in nodes}
        report.nodes_alive, report.cpus = wait_for_nodes(config, head, nodes, expected, progress, timeout)
    except BaseException:
        _remove_started(config, started)
        raise
    report.started = [n.name for n in started]
    report.kept = [n.name for n in nodes if n not in started]
    return report


def check_reaches_head(node: Node, image: ImageRef, head_ip: str, port: int) -> None:
    """Before a worker starts: can its host open a TCP connection to the head's GCS port? A
    firewall or a wrong address otherwise shows only as a node that never joins."""
    reached = node.runner.run(cmd.reach_port_command(image.image_id, head_ip, port), check=False, timeout=90)
    if not reached.ok:
        why = tail(reached.stdout + reached.stderr, lines=2) or f"exit status {reached.exit_code}"
        raise RemoteError(
            f"{node.name}: cannot reach the Ray head's GCS port {head_ip}:{port} ({why})",
            hint=f"Allow TCP from {node.name} to {head_ip} on the Ray ports ([ray] in the config), or, if "
            "the head has several networks, set head.ray_address to the address the workers reach.",
        )


def _remove_started(config: ClusterConfig, started: Sequence[Node]) -> None:
    for node in started:
        try:
            node.runner.run(cmd.remove_containers_command(config.name, node.role))
        except Exception:  # best effort: the original error is the one to report
            log.warning("%s: could not remove the container started by this run", node.name, exc_info=True)


def wait_for_nodes(
    config: ClusterConfig,
    head: Node,
    nodes: Sequence[Node],
    expected: dict[str, int],
    progress: Progress,
    timeout: float,
) -> tuple[int, int]:
    """Poll the head until Ray reports every expected node alive with its CPUs."""
    progress(f"Waiting for {len(expected)} Ray node(s) to join ({sum(expected.values())} CPUs)")
    deadline = time.monotonic() + timeout
    while True:
        alive = _alive_nodes(config, head)
        if all(alive.get(ip) == cpus for ip, cpus in expected.items()):
            return len(alive), int(sum(alive.values()))
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)  # a poll interval between probes, not synchronisation: the deadline decides
    missing = [n for n in nodes if alive.get(ip := node_ip(n.host, config.ssh)) != expected[ip]]
    details = []
    for node in missing:
        name = cmd.container_name(config.name, node.role, node_ip(node.host, config.ssh))
        logs = node.runner.run(cmd.container_logs_command(name), check=False)
        details.append(f"  - {node.name}: not alive; last log lines:\n{tail(logs.stdout + logs.stderr)}")
    raise RemoteError(
        f"Ray nodes did not all join within {timeout:.0f} s:\n" + "\n".join(details),
        hint="Check that the hosts reach each other on the Ray ports (see [ray] in the config), "
        "then run `shapcluster up` again.",
    )


def down(config: ClusterConfig, nodes: Sequence[Node], *, purge: bool = False) -> GroupResult[str]:
    """Remove this cluster's containers and AWS credentials on every reachable host (found by
    label, so no local state is needed); with purge also its images and synced files.

    Returns what was done on each host and the failure of each other one, so the caller can
    report the cleaned hosts before it raises for the unreachable ones."""

    def clean(node: Node) -> str:
        if node.role is cmd.Role.HEAD:  # jobs wrote results as root: give them to the SSH user
            head = cmd.container_name(config.name, cmd.Role.HEAD, node_ip(node.host, config.ssh))
            node.runner.run(cmd.hand_back_results_command(head), check=False)
        removed = node.runner.run(cmd.remove_containers_command(config.name)).stdout.split()
        # Nothing runs to use them any more; `up` writes fresh ones.
        node.runner.run(cmd.remove_paths_command(node.layout.aws_dir, node.layout.env_file))
        done = f"{len(removed)} container(s) removed"
        if not purge:
            return done
        purge_files(node, config.image.name)
        pruned = node.runner.run(cmd.remove_images_command(config.image.name))
        freed = cmd.parse_reclaimed(pruned.stdout) or "0B"
        return f"{done}; images purged ({freed} freed); {node.layout.root} removed"

    return gather_on_nodes(nodes, clean)


def purge_files(node: Node, image_name: str) -> None:
    """Remove the host's remote directory. Files the SSH user may not remove (written as root
    by a container whose results were not handed back) are removed through a throw-away
    container of the cluster image first; if no such image is left, say what to run."""
    root = node.layout.root
    if node.runner.run(cmd.remove_paths_command(root), check=False).ok:
        return
    image = node.runner.run(cmd.any_image_command(image_name), check=False).stdout.strip()
    if not image:
        raise RemoteError(
            f"{node.name}: cannot remove {root} (files written as root by a container)",
            hint=f"Remove it as root on {node.name}: sudo rm -rf {root}",
        )
    node.runner.run(cmd.remove_as_root_command(image, root))
    node.runner.run(cmd.remove_paths_command(root))


@dataclass(frozen=True)
class HostStatus:
    host: str
    role: str
    reachable: bool
    container: str  # state, or "none"
    image_id: str
    image_matches: bool | None  # the same image as the head's container; None: no container here
    ray_alive: bool  # Ray counts the node alive AND its container is running
    cpus: float
    error: str = ""
    credentials: creds.CredentialsMeta | None = None  # AWS role credentials on this host
    hint: str = ""  # what to do about ``error`` (e.g. the SSH command that must work)


def status(config: ClusterConfig, nodes: Sequence[Node]) -> list[HostStatus]:
    """Per host: reachable, this cluster's container and its image, what Ray says, and the
    expiry of its AWS credentials.

    A node counts as alive only when its container runs: Ray keeps a killed node alive until
    its health checks time out (tens of seconds), and `status` must not count it meanwhile."""

    def look(node: Node) -> tuple[list[cmd.ContainerInfo], creds.CredentialsMeta | None]:
        return containers_on(node.runner, config.name), creds.read_credentials(node)

    result = gather_on_nodes(nodes, look)
    head_containers = result.successes.get(nodes[0].name, ([], None))[0]
    head_running = any(c.role == "head" and c.state == "running" for c in head_containers)
    alive = _alive_nodes(config, nodes[0]) if head_running else {}
    head_image = next((c.image_id for c in head_containers if c.role == "head"), None)
    rows = []
    for node in nodes:
        if node.name in result.failures:
            failure = result.failures[node.name]
            hint = getattr(failure, "hint", None) or ""
            rows.append(
                HostStatus(node.name, node.role, False, "?", "?", None, False, 0, str(failure), hint=hint)
            )
            continue
        containers, meta = result.successes[node.name]
        mine = [c for c in containers if c.role == node.role]
        image = mine[0].image_id if mine else "-"
        running = any(c.state == "running" for c in mine)
        ip = node_ip(node.host, config.ssh)
        rows.append(
            HostStatus(
                node.name, node.role, True, ", ".join(c.state for c in mine) or "none", image,
                (image == head_image) if mine else None, running and ip in alive,
                alive.get(ip, 0) if running else 0, credentials=meta,
            )
        )  # fmt: skip
    return rows


def check_health(rows: Sequence[HostStatus]) -> None:
    """Raise NoClusterError when the head runs no Ray container, DegradedError when any host is
    unreachable or its Ray node is not alive; return when the cluster is whole."""
    head = rows[0]
    if not head.reachable:
        raise RemoteError(head.error or f"{head.host}: unreachable", hint=head.hint or None)
    if "running" not in head.container.split(", "):
        raise NoClusterError(f"{head.host}: no Ray head container runs there (container: {head.container}).")
    lost = [r for r in rows if not r.ray_alive]
    if lost:
        why = [f"{r.host} ({'unreachable' if not r.reachable else f'container {r.container}'})" for r in lost]
        hints = [r.hint for r in lost if r.hint]  # an unreachable host's own hint (SSH) first
        hints.append("`shapcluster up` restarts what is missing (it keeps what runs).")
        raise DegradedError(
            f"{len(rows) - len(lost)} of {len(rows)} Ray nodes alive; not alive: {', '.join(why)}",
            hint="\n".join(dict.fromkeys(hints)),
        )


def _alive_nodes(config: ClusterConfig, head: Node) -> dict[str, float]:
    """Node IP -> CPUs of the alive Ray nodes, asked of the head container; {} if it cannot say."""
    head_ip = node_ip(head.host, config.ssh)
    probe = cmd.ray_nodes_command(
        cmd.container_name(config.name, cmd.Role.HEAD, head_ip), head_ip, config.ray.gcs, config.ray.dashboard
    )
    result = head.runner.run(probe, check=False, timeout=60)
    lines = result.stdout.strip().splitlines()
    if not result.ok or not lines:
        return {}
    try:
        return {str(ip): float(cpus) for ip, cpus in json.loads(lines[-1])}
    except (ValueError, TypeError):
        return {}


@contextmanager
def open_nodes(
    config: ClusterConfig, connect: Callable[[Host], Runner] | None = None
) -> Iterator[list[Node]]:
    """Nodes with live runners (SSH unless told otherwise), closed again afterwards."""
    if connect is None:
        from shapcluster.remote.ssh import SshRunner

        def connect(host: Host) -> Runner:
            return SshRunner(host, config.ssh)

    nodes = make_nodes(config, connect)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.runner.close()
