"""The cluster config file (TOML), parsed and validated once into frozen values.

Unknown keys are errors so that a typo never silently falls back to a default. Every problem
names the file, the key and, where it can be found, the line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from shapcluster.errors import InputError
from shapcluster.inventory import (
    USER_RE,
    Host,
    Inventory,
    build_inventory,
    parse_host_spec,
    parse_inventory,
    parse_ip,
)
from shapcluster.project import config_places, find_config

DEFAULT_CONFIG_NAME = "shapcluster.toml"
HOST_PLACEHOLDER = "{host}"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_SHM_RE = re.compile(r"^[1-9][0-9]*[bkmg]?$")
# A docker image reference: [registry[:port]/]path[:tag]; digests are not needed here.
_IMAGE_RE = re.compile(
    r"^[a-z0-9][a-z0-9._-]*(?::[0-9]+)?(?:/[a-z0-9][a-z0-9._-]*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
)


@dataclass(frozen=True)
class SshConfig:
    user: str | None  # None: your local user name, as ssh does
    key: Path | None  # None: the ssh agent and the default keys
    known_hosts: Path
    accept_new_host_keys: bool
    connect_timeout: float
    # Read ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyJump) as OpenSSH does.
    use_ssh_config: bool = True
    ssh_config_file: Path | None = None  # None: ~/.ssh/config


@dataclass(frozen=True)
class ImageConfig:
    name: str
    base: str


@dataclass(frozen=True)
class RayPorts:
    """Fixed Ray ports, so a firewall between the hosts can be opened for exactly these."""

    gcs: int = 6379
    dashboard: int = 8265
    client: int = 10001
    object_manager: int = 8076
    node_manager: int = 8077
    min_worker: int = 10002
    max_worker: int = 19999


@dataclass(frozen=True)
class SyncConfig:
    app_dir: Path
    data_dir: Path | None  # None: the job reads its data from elsewhere (e.g. s3://)


@dataclass(frozen=True)
class AwsConfig:
    """Temporary AWS credentials for the containers (STS assume-role); see shapcluster.creds."""

    role_arn: str | None  # None: read from roles_file
    roles_file: Path
    roles_file_explicit: bool  # a roles file named in the config must exist
    session_name: str
    duration_seconds: int
    region: str | None  # None: the region of your own AWS configuration
    profile: str | None  # your AWS profile that may assume the role; None: the default chain
    endpoint_url: str | None  # an S3/STS-compatible endpoint instead of AWS's own
    refresh_margin_seconds: int  # `up` refreshes credentials that expire sooner than this


@dataclass(frozen=True)
class ClusterConfig:
    path: Path
    name: str
    remote_dir: str  # absolute; may contain {host} when hosts share one filesystem
    shm_size: str
    workers_file: Path
    worker_cpus: int | None  # for workers without cpus=N; None: all the CPUs nproc reports
    inventory: Inventory  # hosts with user and cpus defaults already applied
    ssh: SshConfig
    image: ImageConfig
    ray: RayPorts
    sync: SyncConfig
    aws: AwsConfig

    def remote_dir_for(self, host: Host) -> str:
        return self.remote_dir.replace(HOST_PLACEHOLDER, host.address)


def load_cluster_config(path: Path) -> ClusterConfig:
    """Read, validate and resolve a config file and the workers file it names.

    The default name (``shapcluster.toml``, relative) is looked for in the working directory,
    then in its ``inventory/`` folder, the README's project layout."""
    default = Path(DEFAULT_CONFIG_NAME)
    path = find_config(path, default=default)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f"looked for {config_places()}" if path == default else f"{path.absolute()}: not found"
        raise InputError(
            f"config file not found: {where}",
            hint="Copy inventory/shapcluster.toml.example (in the project's repository) to one of those "
            "places (see the README's cluster quick start), or pass --config / set SHAPCLUSTER_CONFIG.",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the config file: {err}") from None
    config = parse_cluster_config(text, path)
    inventory = build_inventory(config.inventory.head, _read_workers(config))
    return replace(config, inventory=inventory)


def parse_cluster_config(text: str, path: Path) -> ClusterConfig:
    """Validate the config text; the inventory holds only the head until the workers are read."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML: {err}") from None
    reader = _Reader(path, text)
    tables = {
        name: reader.table(data, name)
        for name in ("cluster", "head", "workers", "ssh", "image", "ray", "sync", "aws")
    }
    for unknown in sorted(set(data) - set(tables)):
        reader.problem(
            None, unknown, f"unknown table or key {unknown!r}; expected one of {', '.join(tables)}"
        )

    cluster, head_t, workers_t, ssh_t = tables["cluster"], tables["head"], tables["workers"], tables["ssh"]
    image_t, ray_t, sync_t = tables["image"], tables["ray"], tables["sync"]
    name = cluster.string(
        "name", "shapcluster", pattern=_NAME_RE, expected="lower-case letters, digits and -"
    )
    remote_dir = cluster.string("remote_dir", "/opt/shapcluster")
    shm_size = cluster.string("shm_size", "2g", pattern=_SHM_RE, expected="a size such as 512m or 2g")
    head_spec = head_t.optional_string("host")
    head_cpus = head_t.positive_int("cpus")
    head_ray_address = head_t.optional_string("ray_address", expected="an IP address")
    workers_file = workers_t.path("file", "workers.txt")
    worker_cpus = workers_t.positive_int("cpus")
    ssh_user = ssh_t.optional_string("user", pattern=USER_RE, expected="a user name")
    ssh = SshConfig(
        user=ssh_user,
        key=ssh_t.optional_path("key"),
        known_hosts=ssh_t.path("known_hosts", "~/.ssh/known_hosts"),
        accept_new_host_keys=ssh_t.boolean("accept_new_host_keys", False),
        connect_timeout=float(ssh_t.positive_int("connect_timeout") or 10),
        use_ssh_config=ssh_t.boolean("use_ssh_config", True),
        ssh_config_file=ssh_t.optional_path("config_file"),
    )
    image = ImageConfig(
        name=image_t.string("name", "shapcluster-ray", pattern=_IMAGE_RE, expected="a docker image name"),
        base=image_t.string(
            "base", "python:3.11-slim-bookworm", pattern=_IMAGE_RE, expected="a docker image"
        ),
    )
    defaults = RayPorts()
    ray = RayPorts(**{field: ray_t.port(key, getattr(defaults, field)) for key, field in _RAY_PORT_KEYS})
    sync = SyncConfig(app_dir=sync_t.path("app_dir", "app"), data_dir=sync_t.optional_path("data_dir"))
    aws = _parse_aws(tables["aws"], name, workers_file)
    for table in tables.values():
        table.reject_unknown_keys()

    _check_remote_dir(reader, remote_dir)
    _check_ports(reader, ray)
    head = _parse_head(reader, head_spec, head_cpus, ssh_user, head_ray_address)
    reader.raise_problems()
    assert head is not None  # raise_problems guarantees it
    return ClusterConfig(
        path=path,
        name=name,
        remote_dir=remote_dir,
        shm_size=shm_size,
        workers_file=workers_file,
        worker_cpus=worker_cpus,
        inventory=Inventory(head=head),
        ssh=ssh,
        image=image,
        ray=ray,
        sync=sync,
        aws=aws,
    )


_SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$")  # STS RoleSessionName
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
_URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?$")
ROLE_ARN_RE = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")
ROLE_ARN_EXAMPLE = "arn:aws:iam::123456789012:role/shap-reader"
MIN_DURATION, MAX_DURATION = 900, 43200  # what STS accepts for assume-role


def _parse_aws(table: _Table, cluster_name: str, workers_file: Path) -> AwsConfig:
    duration = table.positive_int("duration_seconds") or 3600
    if not MIN_DURATION <= duration <= MAX_DURATION:
        table.reader.problem(
            "aws", "duration_seconds", f"{duration} is invalid: expected {MIN_DURATION} to {MAX_DURATION}"
        )
    margin = table.positive_int("refresh_margin_seconds") or 900
    if margin >= duration:
        table.reader.problem(
            "aws",
            "refresh_margin_seconds",
            f"{margin} must be shorter than aws.duration_seconds ({duration})",
        )
    roles_file = table.optional_path("roles_file")
    arn_expected = f"an ARN like {ROLE_ARN_EXAMPLE}"
    region_expected = "an AWS region such as eu-west-1"
    return AwsConfig(
        role_arn=table.optional_string("role_arn", pattern=ROLE_ARN_RE, expected=arn_expected),
        roles_file=roles_file or workers_file.parent / "iamroles.txt",
        roles_file_explicit=roles_file is not None,
        session_name=table.string(
            "session_name", f"shapcluster-{cluster_name}", pattern=_SESSION_NAME_RE,
            expected="2 to 64 letters, digits or +=,.@_-",
        ),
        duration_seconds=duration,
        region=table.optional_string("region", pattern=_REGION_RE, expected=region_expected),
        profile=table.optional_string("profile"),
        endpoint_url=table.optional_string("endpoint_url", pattern=_URL_RE, expected="an http(s):// URL"),
        refresh_margin_seconds=margin,
    )  # fmt: skip


# (config key, RayPorts field); defaults come from RayPorts itself.
_RAY_PORT_KEYS = (
    ("port", "gcs"),
    ("dashboard_port", "dashboard"),
    ("client_port", "client"),
    ("object_manager_port", "object_manager"),
    ("node_manager_port", "node_manager"),
    ("min_worker_port", "min_worker"),
    ("max_worker_port", "max_worker"),
)


def find_key_line(text: str, table: str | None, key: str) -> int | None:
    """Best-effort line of ``key`` in ``[table]`` (tomllib keeps no positions); None if not found."""
    header_re = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    key_re = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
    dotted_re = re.compile(rf"^\s*{re.escape(f'{table}.{key}')}\s*=") if table else None
    current: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = header_re.match(line)
        if header:
            current = header[1]
            if table is None and current == key:
                return number
        elif (current == table and key_re.match(line)) or (
            current is None and dotted_re is not None and dotted_re.match(line)
        ):
            return number
    return None


class _Reader:
    """Collects every problem of one config file so the user can fix them in one go."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self.problems: list[str] = []

    def problem(self, table: str | None, key: str, message: str) -> None:
        line = find_key_line(self.text, table, key)
        if line is None and table is not None:
            line = find_key_line(self.text, None, table)
        where = f"{self.path}:{line}" if line else str(self.path)
        self.problems.append(f"{where}: {f'{table}.{key}' if table else key}: {message}")

    def table(self, data: dict[str, Any], name: str) -> _Table:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.problem(None, name, f"expected a table [{name}]")
            value = {}
        return _Table(self, name, value)

    def raise_problems(self) -> None:
        if self.problems:
            raise InputError(
                "\n".join(self.problems),
                hint="inventory/shapcluster.toml.example lists every key with its meaning and default.",
            )


class _Table:
    """Typed access to one TOML table; a wrong value is recorded and its default returned."""

    def __init__(self, reader: _Reader, name: str, values: dict[str, Any]) -> None:
        self.reader = reader
        self.name = name
        self.values = values
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.values.get(key)

    def _bad(self, key: str, expected: str) -> None:
        self.reader.problem(self.name, key, f"{self.values[key]!r} is invalid: expected {expected}")

    def string(
        self, key: str, default: str, *, pattern: re.Pattern[str] | None = None, expected: str = ""
    ) -> str:
        value = self.optional_string(key, pattern=pattern, expected=expected)
        return default if value is None else value

    def optional_string(
        self, key: str, *, pattern: re.Pattern[str] | None = None, expected: str = ""
    ) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.match(value)):
            self._bad(key, expected or "a non-empty string")
            return None
        return value

    def positive_int(self, key: str) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        if type(value) is not int or value < 1:
            self._bad(key, "a whole number of 1 or more")
            return None
        return value

    def port(self, key: str, default: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if type(value) is not int or not 1 <= value <= 65535:
            self._bad(key, "a port number from 1 to 65535")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._bad(key, "true or false")
            return default
        return value

    def path(self, key: str, default: str) -> Path:
        resolved = self.optional_path(key)
        return self._resolve(default) if resolved is None else resolved

    def optional_path(self, key: str) -> Path | None:
        value = self.optional_string(key, expected="a path")
        return None if value is None else self._resolve(value)

    def _resolve(self, value: str) -> Path:
        # Relative paths are relative to the config file, not to wherever the CLI was started.
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.reader.path.parent / path

    def reject_unknown_keys(self) -> None:
        for key in sorted(set(self.values) - self.used):
            known = ", ".join(sorted(self.used))
            self.reader.problem(self.name, key, f"unknown key; [{self.name}] takes {known}")


def _check_remote_dir(reader: _Reader, remote_dir: str) -> None:
    path = PurePosixPath(remote_dir)
    without_placeholder = remote_dir.replace(HOST_PLACEHOLDER, "")
    # ':' and ',' would break docker's --volume/--mount syntax; '{' anything but {host} is a typo.
    if not path.is_absolute() or ".." in path.parts or re.search(r"[\s:,{}]", without_placeholder):
        reader.problem(
            "cluster",
            "remote_dir",
            f"{remote_dir!r} is invalid: expected an absolute path without spaces, ':', ',' or '..' "
            "(it may contain {host})",
        )


def _check_ports(reader: _Reader, ports: RayPorts) -> None:
    fixed = {key: getattr(ports, field) for key, field in _RAY_PORT_KEYS if "worker" not in key}
    seen: dict[int, str] = {}
    for key, port in fixed.items():
        if port in seen:
            # Point at whichever of the two keys is actually written in the file.
            written = key if find_key_line(reader.text, "ray", key) else seen[port]
            reader.problem("ray", written, f"port {port} is used by both ray.{seen[port]} and ray.{key}")
        seen.setdefault(port, key)
        if ports.min_worker <= port <= ports.max_worker:
            reader.problem("ray", key, f"port {port} lies inside the worker port range")
    if ports.min_worker >= ports.max_worker:
        reader.problem("ray", "min_worker_port", "must be below ray.max_worker_port")


def _parse_head(
    reader: _Reader, spec: str | None, cpus: int | None, ssh_user: str | None, ray_address: str | None
) -> Host | None:
    line = find_key_line(reader.text, "head", "host")
    if spec is None:
        reader.problem("head", "host", "missing: expected the head as [user@]host[:port]")
        return None
    where = f"{reader.path}:{line}: head.host" if line else f"{reader.path}: head.host"
    try:
        user, address, port = parse_host_spec(spec, where=where)
        if ray_address is not None:
            at = find_key_line(reader.text, "head", "ray_address")
            ray_address = parse_ip(ray_address, where=f"{reader.path}:{at}: head.ray_address")
    except InputError as err:
        reader.problems.append(err.message)
        return None
    return Host(
        address=address, user=user or ssh_user, port=port, cpus=cpus, source=str(reader.path), line=line,
        ray_address=ray_address,
    )  # fmt: skip


def _read_workers(config: ClusterConfig) -> list[Host]:
    path = config.workers_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"{path.absolute()}: workers file not found (named by workers.file in {config.path.absolute()})",
            hint="Create it: one [user@]host[:port] per line; an empty file means a head-only cluster. "
            "See inventory/workers.txt.example.",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the workers file: {err}") from None
    return [
        replace(host, user=host.user or config.ssh.user, cpus=host.cpus or config.worker_cpus)
        for host in parse_inventory(text, str(path))
    ]
