"""Pure builders of the cluster life-cycle's remote shell commands, and parsers of their output.

The rule for the whole package: every remote command comes from a pure function tested as an
exact string; the life-cycle's are here, and a module owning a concern (``sync``, ``images``,
``jobs``) keeps its own beside the parser of their output. Nothing here runs anything: each
function returns the exact string a runner executes, with every value passed through
``shlex.quote``, so the unit tests can assert it byte for byte.
"""

from __future__ import annotations

import enum
import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from shapcluster.config import RayPorts
from shapcluster.errors import RemoteError

CLUSTER_LABEL = "shapcluster.cluster"
ROLE_LABEL = "shapcluster.role"
IMAGE_ID_LABEL = "shapcluster.image-id"
# Hash of the whole `docker run` command: `up` keeps a container whose spec is unchanged and
# replaces one whose image, CPUs, mounts or ports changed.
SPEC_LABEL = "shapcluster.spec"
# Set by the Dockerfile on BOTH build stages to the configured image name (build argument
# below), so purge finds the untagged build stage too.
BUILT_FOR_LABEL = "shapcluster.image"
BUILT_FOR_BUILDARG = "SHAPCLUSTER_IMAGE"

# Paths inside the Ray containers; the job finds its code and data there.
CONTAINER_TOKEN_PATH = "/run/secrets/ray-auth-token"
CONTAINER_APP_DIR = "/shapcluster/app"
CONTAINER_DATA_DIR = "/shapcluster/data"
CONTAINER_RESULTS_DIR = "/shapcluster/results"  # head only, writable: jobs write results/<job-id>/
# Mounted as a directory (read-only) so that a refresh, which renames new files into place,
# is seen by running containers; a single-file bind mount would keep the old inode.
CONTAINER_AWS_DIR = "/run/secrets/aws"
CONTAINER_AWS_CREDENTIALS = f"{CONTAINER_AWS_DIR}/credentials"
CONTAINER_AWS_CONFIG = f"{CONTAINER_AWS_DIR}/config"
CONTAINER_AWS_PROCESS = f"{CONTAINER_AWS_DIR}/process.json"  # printed by the profile's credential_process

# `ray start --block` drains its node for up to RAY_DRAIN_SECONDS on SIGTERM; `docker stop`
# must wait longer, or it SIGKILLs Ray mid-drain (issue 12, fault 10). A node without work
# stops in a few seconds, so `down` takes that long only when Ray really drains.
RAY_DRAIN_SECONDS = 30
STOP_TIMEOUT_SECONDS = RAY_DRAIN_SECONDS + 5
_PS_FIELDS = (
    "{{.ID}}",
    "{{.Names}}",
    f'{{{{.Label "{ROLE_LABEL}"}}}}',
    f'{{{{.Label "{IMAGE_ID_LABEL}"}}}}',
    f'{{{{.Label "{SPEC_LABEL}"}}}}',
)
_PS_FORMAT = "|".join((*_PS_FIELDS, "{{.State}}", "{{.Status}}"))


class Role(enum.StrEnum):
    HEAD = "head"
    WORKER = "worker"


@dataclass(frozen=True)
class RemoteLayout:
    """Where shapcluster keeps things on a host, below its remote directory."""

    root: str

    @property
    def app_dir(self) -> str:
        return f"{self.root}/app"

    @property
    def data_dir(self) -> str:
        return f"{self.root}/data"

    @property
    def secrets_dir(self) -> str:
        return f"{self.root}/secrets"

    @property
    def token_file(self) -> str:
        return f"{self.secrets_dir}/ray-auth-token"

    @property
    def env_file(self) -> str:
        return f"{self.secrets_dir}/env.list"

    @property
    def aws_dir(self) -> str:
        return f"{self.secrets_dir}/aws"

    @property
    def aws_credentials_file(self) -> str:
        return f"{self.aws_dir}/credentials"

    @property
    def aws_config_file(self) -> str:
        return f"{self.aws_dir}/config"

    @property
    def aws_process_file(self) -> str:
        return f"{self.aws_dir}/process.json"

    @property
    def aws_meta_file(self) -> str:
        """Not secret: role, session name and expiry of the credentials, for status and submit."""
        return f"{self.aws_dir}/meta.json"

    @property
    def results_dir(self) -> str:
        return f"{self.root}/results"


@dataclass(frozen=True)
class Mount:
    source: str  # path on the host
    target: str  # path in the container
    read_only: bool = True


@dataclass(frozen=True)
class RayNode:
    """Everything that differs between the Ray containers of one cluster."""

    cluster: str
    role: Role
    image: str  # what docker runs: a name:tag or the image ID itself
    image_id: str  # recorded as a label so `status` can prove every host runs the same image
    node_ip: str
    cpus: int
    shm_size: str
    token_file: str  # host path of the Ray auth token, mounted read-only
    mounts: tuple[Mount, ...] = ()
    env_file: str | None = None


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    role: str
    image_id: str
    spec: str  # see SPEC_LABEL
    state: str  # running, exited, created, ...
    status: str  # docker's human text, e.g. "Up 3 minutes"


def container_name(cluster: str, role: Role, node_ip: str) -> str:
    """Unique per host even when several test hosts share one docker daemon."""
    return f"shapcluster-{cluster}-{role}-{_slug(node_ip)}"


def ray_temp_dir(cluster: str, node_ip: str) -> str:
    """A per-host Ray temp dir, kept short because Ray puts unix sockets below it."""
    return f"/tmp/ray-{cluster}-{_slug(node_ip)}"


def synced_mounts(layout: RemoteLayout, *, with_data: bool) -> tuple[Mount, ...]:
    mounts = [Mount(layout.app_dir, CONTAINER_APP_DIR)]
    if with_data:
        mounts.append(Mount(layout.data_dir, CONTAINER_DATA_DIR))
    return tuple(mounts)


def start_head_command(node: RayNode, ports: RayPorts) -> str:
    ray = [
        "ray", "start", "--head",
        f"--node-ip-address={node.node_ip}",
        f"--port={ports.gcs}",
        "--dashboard-host=127.0.0.1",  # reached through an SSH tunnel only
        f"--dashboard-port={ports.dashboard}",
        f"--ray-client-server-port={ports.client}",
        *_node_args(node, ports),
    ]  # fmt: skip
    return _with_spec([*_docker_run_args(node), *ray])


def start_worker_command(node: RayNode, head_ip: str, ports: RayPorts) -> str:
    ray = [
        "ray", "start",
        f"--address={head_ip}:{ports.gcs}",
        f"--node-ip-address={node.node_ip}",
        *_node_args(node, ports),
    ]  # fmt: skip
    return _with_spec([*_docker_run_args(node), *ray])


def spec_of(command: str) -> str:
    """The spec label a start command gives its container."""
    match = re.search(rf"--label {re.escape(SPEC_LABEL)}=([0-9a-f]+)", command)
    if match is None:
        raise ValueError(f"not a start command: {command[:80]!r}")
    return match.group(1)


def _with_spec(args: list[str]) -> str:
    spec = hashlib.sha256(shlex.join(args).encode()).hexdigest()[:16]
    first_label = args.index("--label")
    return shlex.join([*args[:first_label], "--label", f"{SPEC_LABEL}={spec}", *args[first_label:]])


def list_containers_command(cluster: str) -> str:
    """All containers of this cluster, running or not, one ``|``-separated line each."""
    return shlex.join(
        ["docker", "ps", "--all", "--no-trunc", "--filter", f"label={CLUSTER_LABEL}={cluster}",
         "--format", _PS_FORMAT]
    )  # fmt: skip


def parse_containers(output: str) -> list[ContainerInfo]:
    containers = []
    for line in output.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 6)
        if len(parts) != 7:
            raise RemoteError(f"unexpected `docker ps` output line: {line[:200]!r}")
        containers.append(ContainerInfo(*parts))
    return containers


def remove_containers_command(cluster: str, role: Role | None = None) -> str:
    """Stop (SIGTERM first, so Ray leaves the cluster cleanly) and remove this cluster's containers.

    Prints the removed container IDs; succeeds when there is nothing to remove."""
    filters = ["--filter", f"label={CLUSTER_LABEL}={cluster}"]
    if role is not None:
        filters += ["--filter", f"label={ROLE_LABEL}={role}"]
    find = shlex.join(["docker", "ps", "--all", "--quiet", *filters])
    return (
        f'ids=$({find}) && if [ -n "$ids" ]; then '
        f"docker stop --time {STOP_TIMEOUT_SECONDS} $ids >/dev/null && docker rm $ids; fi"
    )


def remove_paths_command(*paths: str) -> str:
    return shlex.join(["rm", "-rf", "--", *paths])


def count_cpus_command() -> str:
    return "nproc"


def disk_free_command(path: str, *, nearest: bool = False) -> str:
    """POSIX ``df`` of one path, in KiB: parse with ``parse_disk_free``. ``nearest`` measures the
    closest existing parent, for a directory that is not created yet."""
    if not nearest:
        return shlex.join(["df", "-P", "-k", "--", path])
    return f'd={shlex.quote(path)}; while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done; df -P -k -- "$d"'


# One SSH round trip for the whole preflight: each check's output after a marker line
# "@@<name> <exit status>"; see parse_preflight.
_SECTION_FUNCTION = (
    'section() { n=$1; shift; o=$("$@" 2>&1); r=$?; printf \'@@%s %s\\n%s\\n\' "$n" "$r" "$o"; }'
)
PREFLIGHT_SECTIONS = ("docker", "info", "nproc", "df", "writable", "envfile")


def preflight_command(root: str, env_file: str) -> str:
    """Docker's version, architecture and security options, CPUs, free disk under ``root``,
    whether the SSH user may write there (the nearest existing parent) and whether ``env_file``
    exists (status 0), changing nothing."""
    nearest = f'd={shlex.quote(root)}; while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done'
    checks = {
        "docker": docker_server_version_command(),
        "info": "docker info --format '{{.Architecture}} {{json .SecurityOptions}}'",
        "nproc": count_cpus_command(),
        "df": shlex.join(["sh", "-c", f'{nearest}; df -P -k -- "$d"']),
        "writable": shlex.join(
            ["sh", "-c", f'{nearest}; [ -d "$d" ] && [ -w "$d" ] && echo "$d" || {{ echo "$d"; exit 1; }}']
        ),
        "envfile": file_exists_command(env_file),
    }
    return "; ".join([_SECTION_FUNCTION, *(f"section {name} {checks[name]}" for name in PREFLIGHT_SECTIONS)])


def parse_preflight(output: str) -> dict[str, tuple[int, str]]:
    """``name -> (exit status, output)`` of every section of ``preflight_command``."""
    sections: dict[str, tuple[int, list[str]]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        marker = re.fullmatch(r"@@([a-z]+) ([0-9]+)", line)
        if marker:
            current = []
            sections[marker[1]] = (int(marker[2]), current)
        elif current is not None:
            current.append(line)
    missing = [name for name in PREFLIGHT_SECTIONS if name not in sections]
    if missing:
        raise RemoteError(f"unexpected preflight output (no {', '.join(missing)}): {output.strip()[:200]!r}")
    return {name: (status, "\n".join(lines).strip()) for name, (status, lines) in sections.items()}


def docker_server_version_command() -> str:
    return "docker version --format '{{.Server.Version}}'"


def read_file_command(path: str) -> str:
    return shlex.join(["cat", "--", path])


def file_exists_command(path: str) -> str:
    return shlex.join(["test", "-f", path])


def container_logs_command(name: str, lines: int = 30) -> str:
    return shlex.join(["docker", "logs", "--tail", str(lines), name])


def remove_images_command(repository: str) -> str:
    """Remove every image shapcluster built for ``repository``: all images labelled for it,
    tagged or not (the build stage is untagged), then any tag of it left from older builds.
    Succeeds when there is none; prints docker's "Total reclaimed space: ..." line."""
    prune = shlex.join(
        ["docker", "image", "prune", "--all", "--force", "--filter", f"label={BUILT_FOR_LABEL}={repository}"]
    )
    find = shlex.join(["docker", "images", "--quiet", "--filter", f"reference={repository}"])
    return (
        f'{prune} | grep -i "reclaimed" ; ids=$({find} | sort -u) && '
        f'if [ -n "$ids" ]; then docker rmi --force $ids >/dev/null; fi'
    )


def parse_reclaimed(output: str) -> str | None:
    """docker's "Total reclaimed space: 1.67GB" as "1.67GB"; None if it printed none."""
    match = re.search(r"reclaimed space:\s*(\S+)", output, re.IGNORECASE)
    return match.group(1) if match else None


def hand_back_results_command(container: str) -> str:
    """Give the results a job wrote (as root, inside the head container) to the SSH user, so
    the user can read and remove them; run through the still running head container."""
    return (
        f'docker exec {shlex.quote(container)} chown -R "$(id -u):$(id -g)" '
        f"{shlex.quote(CONTAINER_RESULTS_DIR)}"
    )


def any_image_command(repository: str) -> str:
    """The ID of one image built for ``repository`` (labelled or tagged); prints nothing if none."""
    labelled = shlex.join(
        ["docker", "images", "--quiet", "--filter", f"label={BUILT_FOR_LABEL}={repository}"]
    )
    tagged = shlex.join(["docker", "images", "--quiet", "--filter", f"reference={repository}"])
    return f"{{ {tagged}; {labelled}; }} | head -n 1"


def remove_as_root_command(image: str, folder: str) -> str:
    """Remove what is inside ``folder`` with root's rights, through a throw-away container of
    ``image``, for files the SSH user may not remove (a job wrote them as root)."""
    mount = _mount_spec(Mount(folder, "/purge", read_only=False))
    return shlex.join(
        ["docker", "run", "--rm", "--network", "none", "--mount", mount, "--entrypoint", "find", image,
         "/purge", "-mindepth", "1", "-delete"]
    )  # fmt: skip


# Runs in a throw-away container of the cluster image on a worker (no tool beyond docker is
# assumed on the host): connect to the head's GCS port until the deadline, print why not.
_REACH_SCRIPT = (
    "import socket, sys, time\n"
    "deadline = time.monotonic() + {seconds}\n"
    "while True:\n"
    "    try:\n"
    "        socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
    "        break\n"
    "    except OSError as err:\n"
    "        if time.monotonic() > deadline:\n"
    "            print(err)\n"
    "            sys.exit(1)\n"
    "        time.sleep(0.5)\n"
)


def reach_port_command(image: str, host: str, port: int, seconds: float = 30) -> str:
    """Succeeds once ``host:port`` accepts a TCP connection from this host's network (within
    ``seconds``: the head's Ray opens its GCS port a moment after its container starts)."""
    script = _REACH_SCRIPT.format(host=host, port=port, seconds=seconds)
    return shlex.join(
        ["docker", "run", "--rm", "--network", "host", "--entrypoint", "python", image, "-c", script]
    )


# Runs inside the head container (it has the token in its environment): one JSON line with
# [node ip, CPUs] of every alive node.
_RAY_NODES_SCRIPT = (
    "import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
    "print(json.dumps([[n['NodeManagerAddress'], n['Resources'].get('CPU', 0)] "
    "for n in ray.nodes() if n['Alive']]))"
)


# The same answer from the dashboard's state API, without starting a Ray driver (a fraction of
# a second instead of two or more); when it cannot answer (the dashboard is still starting),
# the command falls back to the driver above.
_STATE_API_SCRIPT = (
    "import json, os, urllib.request\n"
    "token = open(os.environ['RAY_AUTH_TOKEN_PATH']).read().strip()\n"
    "request = urllib.request.Request({url!r}, headers={{'Authorization': 'Bearer ' + token}})\n"
    "nodes = json.load(urllib.request.urlopen(request, timeout=10))['data']['result']['result']\n"
    "print(json.dumps([[n['node_ip'], n['resources_total'].get('CPU', 0)] "
    "for n in nodes if n['state'] == 'ALIVE']))\n"
)


def ray_nodes_command(container: str, head_ip: str, port: int, dashboard_port: int | None = None) -> str:
    """One JSON line ``[[node ip, CPUs], ...]`` of the alive Ray nodes, asked in the head
    container: of the dashboard's state API first if ``dashboard_port`` is given, else (or if
    that fails) of a Ray driver."""
    script = _RAY_NODES_SCRIPT.format(address=f"{head_ip}:{port}")
    driver = shlex.join(["docker", "exec", container, "python", "-c", script])
    if dashboard_port is None:
        return driver
    url = f"http://127.0.0.1:{dashboard_port}/api/v0/nodes?limit=10000"
    fast = shlex.join(["docker", "exec", container, "python", "-c", _STATE_API_SCRIPT.format(url=url)])
    return f"{fast} 2>/dev/null || {driver}"


def parse_disk_free(output: str) -> int:
    """Available bytes from ``df -P -k`` output."""
    lines = [line for line in output.splitlines() if line.strip()]
    fields = lines[-1].split() if len(lines) >= 2 else []
    if len(fields) < 6 or not fields[3].isdigit():
        raise RemoteError(f"unexpected `df` output: {output.strip()[:200]!r}")
    return int(fields[3]) * 1024


def make_dirs_command(*paths: str, mode: int | None = None) -> str:
    """``mkdir -p``; ``mode`` applies to the last component of each path, as in mkdir."""
    mode_args = ["-m", f"{mode:04o}"] if mode is not None else []
    return shlex.join(["mkdir", "-p", *mode_args, "--", *paths])


def write_file_command(path: str, mode: int = 0o600) -> str:
    """Write stdin to ``path`` atomically: a temp file beside it, chmod BEFORE the content
    arrives (secrets are never readable by others), then rename over the target."""
    target = PurePosixPath(path)
    folder = str(target.parent)
    template = shlex.quote(f"{folder}/.{target.name}.XXXXXX")
    return (
        f"mkdir -p -- {shlex.quote(folder)} && tmp=$(mktemp {template}) && "
        f'{{ chmod {mode:04o} "$tmp" && cat > "$tmp" && mv -f "$tmp" {shlex.quote(path)} '
        f'|| {{ rm -f "$tmp"; exit 1; }}; }}'
    )


def install_file_command(temp_path: str, path: str, mode: int = 0o600) -> str:
    """Finish an upload made to ``temp_path``: set its mode, then rename it over ``path``."""
    temp, target = shlex.quote(temp_path), shlex.quote(path)
    return f"chmod {mode:04o} -- {temp} && mv -f -- {temp} {target}"


def _docker_run_args(node: RayNode) -> list[str]:
    args = [
        "docker", "run", "--detach",
        "--init",  # a real PID 1 forwards `docker stop`'s SIGTERM to Ray and reaps its children
        "--name", container_name(node.cluster, node.role, node.node_ip),
        "--network", "host",  # Ray nodes must see the host's own address
        "--shm-size", node.shm_size,
        "--label", f"{CLUSTER_LABEL}={node.cluster}",
        "--label", f"{ROLE_LABEL}={node.role}",
        "--label", f"{IMAGE_ID_LABEL}={node.image_id}",
    ]  # fmt: skip
    if node.env_file is not None:
        args += ["--env-file", node.env_file]
    args += [
        "--env", "RAY_AUTH_MODE=token",
        "--env", f"RAY_AUTH_TOKEN_PATH={CONTAINER_TOKEN_PATH}",
        "--env", "RAY_USAGE_STATS_ENABLED=0",  # never phone home from the user's machines
    ]  # fmt: skip
    for mount in (Mount(node.token_file, CONTAINER_TOKEN_PATH), *node.mounts):
        args += ["--mount", _mount_spec(mount)]
    return [*args, node.image]


def _node_args(node: RayNode, ports: RayPorts) -> list[str]:
    return [
        f"--object-manager-port={ports.object_manager}",
        f"--node-manager-port={ports.node_manager}",
        f"--min-worker-port={ports.min_worker}",
        f"--max-worker-port={ports.max_worker}",
        f"--num-cpus={node.cpus}",
        f"--temp-dir={ray_temp_dir(node.cluster, node.node_ip)}",
        "--block",  # keeps the container alive exactly as long as Ray
    ]


def _mount_spec(mount: Mount) -> str:
    # --mount, unlike --volume, fails when the source is missing instead of creating a
    # root-owned empty directory in its place.
    if re.search(r"[,\s]", mount.source + mount.target):
        raise ValueError(f"mount paths may not contain commas or spaces: {mount}")
    spec = f"type=bind,source={mount.source},target={mount.target}"
    return f"{spec},readonly" if mount.read_only else spec


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")
