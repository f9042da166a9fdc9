"""`serve up`, `serve status` and `serve down`, on a cluster or on the local Ray head.

On a cluster the head's Ray token is read over SSH (a registered secret), the dashboard and
Serve's HTTP proxy (both on the head's 127.0.0.1) are reached through SSH tunnels, the
application is deployed with ``app.serve:build_app`` from the synced app (every container has it
at the same path; PYTHONPATH makes it importable in every replica) and the replicas read the
token for their own Bearer check from the file every container has mounted (never from args or
the environment, which Serve shows in its status).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import contract
from shapcluster import cluster
from shapcluster import commands as cmd
from shapcluster.config import ClusterConfig
from shapcluster.errors import NoClusterError
from shapcluster.inventory import Host
from shapcluster.jobs.api import CONTAINER_ROOT, head_image, map_data_path, read_token
from shapcluster.jobs.provenance import sync_warning, unsynced_files
from shapcluster.remote.base import Runner, save_atomically
from shapcluster.serve import local_head, service
from shapcluster.serve.dashboard import Endpoint

Progress = Callable[[str], None]
OnReady = Callable[[str], None]  # called with the local URL while the tunnel is open
PATH_OPTIONS = ("model", "data", "background_data", "groups")
URL_SCHEMES = ("s3://", "https://", "http://")


@dataclass(frozen=True)
class Deployed:
    """A running service: its state, how to reach it and where its token is on this machine."""

    state: service.AppState
    url: str | None  # a local URL that reaches it now (None once the tunnel is closed)
    token_file: Path
    reach: str  # how to reach it later, e.g. the `ssh -L` command for a cluster


def default_token_file(cluster_name: str) -> Path:
    return Path.home() / ".cache" / "shapcluster" / "serve" / f"{cluster_name}.token"


def cluster_options(options: contract.ServeOptions, config: ClusterConfig) -> contract.ServeOptions:
    """The options with every local file mapped to its synced copy in the containers; InputError
    (before any host is contacted) for a file outside the synced data folder."""
    folder, where = config.sync.data_dir, config.path
    mapped: dict[str, Any] = {
        name: map_data_path(getattr(options, name), folder, where, contract.flag(name))
        for name in PATH_OPTIONS
    }
    return dataclasses.replace(options, **mapped, token_file=cmd.CONTAINER_TOKEN_PATH)


def local_options(options: contract.ServeOptions, head: local_head.LocalHead) -> contract.ServeOptions:
    """The options with every local file as an absolute path (replicas run in another folder)."""
    mapped: dict[str, Any] = {}
    for name in PATH_OPTIONS:
        value = getattr(options, name)
        if value is not None and not value.startswith(URL_SCHEMES):
            mapped[name] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(options, **mapped, token_file=str(head.token_file))


def ssh_forward_command(host: Host, config: ClusterConfig, local_port: int, remote_port: int) -> str:
    """The `ssh -L` line a user runs to reach a port on the head's 127.0.0.1 later."""
    user = host.user or config.ssh.user
    target = f"{user}@{host.address}" if user else host.address
    port = [] if host.port == 22 else ["-p", str(host.port)]
    key = ["-i", shlex.quote(str(config.ssh.key))] if config.ssh.key else []
    return " ".join(["ssh", "-N", "-L", f"{local_port}:127.0.0.1:{remote_port}", *key, *port, target])


@contextmanager
def tunnel_to(head: cluster.Node, port: int, token: str, what: str) -> Iterator[Endpoint]:
    with head.runner.tunnel(port) as local_port:
        yield Endpoint(f"http://127.0.0.1:{local_port}", token, head.name, what)


def _write_token(token: str, path: Path) -> None:
    save_atomically(path, 0o600, lambda temp: temp.write_text(token + "\n", encoding="utf-8"))


def up_cluster(
    config: ClusterConfig,
    options: contract.ServeOptions,
    *,
    token_file: Path | None = None,
    on_ready: OnReady | None = None,
    progress: Progress = lambda _: None,
    warn: Progress = lambda _: None,
    connect: Callable[[Host], Runner] | None = None,
    timeout: float = service.DEPLOY_TIMEOUT_SECONDS,
) -> Deployed:
    """Deploy the service on the cluster and wait until every replica runs; then, with
    ``on_ready``, open a tunnel to Serve's proxy and call it with the local URL (it returns when
    the user is done, e.g. on Ctrl-C), closing the tunnel afterwards. The cluster's token is
    written (0600) to ``token_file`` for the clients."""
    remote = cluster_options(options, config)
    token_file = token_file or default_token_file(config.name)
    with cluster.open_nodes(config, connect) as nodes:
        head = nodes[0]
        image_id = head_image(head, config.name)
        stale = sync_warning(unsynced_files(head, config.sync.app_dir), config.sync.app_dir, head.name)
        if stale:
            warn(stale)
        token = read_token(head)
        _write_token(token, token_file)
        env = {"PYTHONPATH": CONTAINER_ROOT, contract.IMAGE_ID_ENV: image_id}
        body = service.deploy_config(remote.to_args(), env_vars=env)
        with tunnel_to(head, config.ray.dashboard, token, "the Ray dashboard") as dashboard:
            progress(f"Deploying {contract.SERVE_APP_NAME} on {head.name} ({options.replicas} replica(s)) …")
            state = service.deploy(dashboard, body, progress=progress, timeout=timeout)
        reach = ssh_forward_command(head.host, config, service.SERVE_PORT, service.SERVE_PORT)
        if on_ready is None:
            return Deployed(state, None, token_file, reach)
        with tunnel_to(head, service.SERVE_PORT, token, "the Serve application") as app:
            app.get_json(contract.SERVE_INFO_ROUTE)  # reached, and the token is accepted
            on_ready(app.base_url)
        return Deployed(state, None, token_file, reach)


def status_cluster(
    config: ClusterConfig, *, connect: Callable[[Host], Runner] | None = None
) -> service.ServiceStatus:
    with cluster.open_nodes(config, connect) as nodes:
        head = nodes[0]
        head_image(head, config.name)
        token = read_token(head)
        with (
            tunnel_to(head, config.ray.dashboard, token, "the Ray dashboard") as dashboard,
            tunnel_to(head, service.SERVE_PORT, token, "the Serve application") as app,
        ):
            return service.status(dashboard, app)


def down_cluster(
    config: ClusterConfig,
    *,
    progress: Progress = lambda _: None,
    connect: Callable[[Host], Runner] | None = None,
) -> bool:
    """Delete the service; True if one was served. Polls until no Serve actor is left."""
    with cluster.open_nodes(config, connect) as nodes:
        head = nodes[0]
        head_image(head, config.name)
        token = read_token(head)
        with tunnel_to(head, config.ray.dashboard, token, "the Ray dashboard") as dashboard:
            return service.remove(dashboard, progress=progress)


def up_local(
    options: contract.ServeOptions,
    *,
    cpus: int | None = None,
    progress: Progress = lambda _: None,
    timeout: float = service.DEPLOY_TIMEOUT_SECONDS,
) -> Deployed:
    """Deploy the service on the local Ray head (started first if none runs, said through
    ``progress``); its proxy listens on this machine's 127.0.0.1."""
    head = local_head.ensure_head(cpus=cpus, progress=progress)
    body = service.deploy_config(local_options(options, head).to_args(), env_vars={}, port=head.serve_port)
    progress(f"Deploying {contract.SERVE_APP_NAME} on {local_head.WHERE} ({options.replicas} replica(s)) …")
    state = service.deploy(head.dashboard(), body, progress=progress, timeout=timeout)
    url = head.service().base_url
    return Deployed(state, url, head.token_file, url)


def _local() -> local_head.LocalHead:
    head = local_head.running_head()
    if head is None:
        raise NoClusterError(
            f"No local Ray head runs ({local_head.state_dir()}): nothing is served locally.",
            hint="Deploy it: shapcluster serve up --local --model PATH --data PATH",
        )
    return head


def status_local() -> service.ServiceStatus:
    head = _local()
    return service.status(head.dashboard(), head.service())


def down_local(*, progress: Progress = lambda _: None) -> bool:
    """Delete the local service (no Serve actor left), then stop the local head; True if one
    was served."""
    head = _local()
    served = service.remove(head.dashboard(), progress=progress)
    progress(f"Stopping {local_head.WHERE} (pid {head.pid}) …")
    local_head.stop_head(head)
    return served
