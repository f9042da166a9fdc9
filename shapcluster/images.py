"""One image everywhere: build it on the head, ship it to the workers, prove it is identical.

The only module that imports docker-py. The build runs on the head through docker-py over SSH
(the client never needs a local Docker daemon); the ship streams ``docker save`` on the head into
``docker load`` on every worker over SSH, chunk by chunk; the proof compares image IDs and the
Python, Ray, shap and scikit-learn versions read inside the image on every host.

SSH here obeys the same rules as ``remote.ssh`` (which makes the connections): the configured
key and known_hosts file only, unknown host keys refused (unless ``accept_new_host_keys``), the
ssh config honoured as there. docker-py's own SSH adapter would read ~/.ssh/known_hosts
instead, so it gets a paramiko client made by us.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import re
import shlex
import socket
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol, TypeVar

import docker
import docker.errors
import paramiko
import requests.exceptions
from docker.transport import SSHHTTPAdapter

from shapcluster.commands import BUILT_FOR_BUILDARG
from shapcluster.config import ImageConfig, SshConfig
from shapcluster.errors import InputError, RemoteError, ShapclusterError
from shapcluster.inventory import Host
from shapcluster.remote.base import Runner, check_result, host_error_text, tail
from shapcluster.remote.group import GroupResult, HostsFailedError, gather_results
from shapcluster.remote.ssh import (
    connect_ssh,
    make_client,
    open_jump,
    ssh_connect_params,
    translate_ssh_error,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
_T = TypeVar("_T")

CONTEXT_HASH_LABEL = "shapcluster.context-hash"
RAY_VERSION_LABEL = "shapcluster.ray-version"
WHEELS_DIR = "wheels"  # where the Dockerfile expects the wheelhouse inside the build context
HASH_FORMAT = "shapcluster-image-context-v1"  # bump when what the hash covers changes
VERSIONED_PACKAGES = ("ray", "shap", "scikit-learn")
BUILD_TIMEOUT_SECONDS = 1800  # one docker API call: the whole build, wheel upload included
STREAM_STALL_SECONDS = 300.0  # a ship that moves no byte for this long has failed
LOAD_FINISH_SECONDS = 900.0  # after the last byte, `docker load` still unpacks the layers
VERSIONS_TIMEOUT_SECONDS = 180.0
CHUNK_BYTES = 1 << 20
_LOG_TAIL_LINES = 15
_RAY_PIN_RE = re.compile(r"^\s*ray\s*(?:\[[^\]]*\])?\s*==\s*([^\s;#,]+)\s*(?:[;#].*)?$", re.IGNORECASE)

# Runs inside the image: package metadata instead of imports, so it takes a second, not ten.
_VERSIONS_SCRIPT = (
    "import json, platform; from importlib.metadata import version; "
    "print(json.dumps({'python': platform.python_version(), "
    + ", ".join(f"{name!r}: version({name!r})" for name in VERSIONED_PACKAGES)
    + "}))"
)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    context_hash: str
    built: bool  # False: an image with this context hash already existed on the head


@dataclass(frozen=True)
class ImageInfo:
    """What one host holds under the cluster's tag; ``image_id`` None: no such image there."""

    image_id: str | None
    versions: Mapping[str, str] = field(default_factory=dict)


# --- the build context -----------------------------------------------------------------------


def client_ray_version() -> str:
    """Ray of this client, read from package metadata (importing ray takes seconds)."""
    return importlib.metadata.version("ray")


def pinned_ray_version(requirements: str) -> str | None:
    """The ``ray==X`` (or ``ray[extra]==X``) pin of a requirements text; None if Ray is not pinned."""
    for line in requirements.splitlines():
        match = _RAY_PIN_RE.match(line)
        if match:
            return match[1]
    return None


def context_files(context_dir: Path) -> list[tuple[str, Path]]:
    """(name in the context, local path) of every file of ``context_dir``, sorted; a ``wheels/``
    folder there is left out (the wheelhouse is added on its own)."""
    files = []
    for path in sorted(context_dir.rglob("*")):
        relative = path.relative_to(context_dir)
        if relative.parts[0] == WHEELS_DIR or not path.is_file():
            continue
        files.append((relative.as_posix(), path))
    return files


def wheel_files(wheelhouse: Path) -> list[Path]:
    return sorted(path for path in wheelhouse.iterdir() if path.is_file())


def context_hash(context_dir: Path, base_image: str, ray_version: str, wheelhouse: Path | None) -> str:
    """sha256 over everything that decides the image: the context's file names and contents, the
    base image name, the Ray version and the wheelhouse's file names and sizes (wheel names carry
    their versions; reading 250 MB of wheels on every `up` would cost seconds)."""
    digest = hashlib.sha256()

    def add(*parts: str | bytes) -> None:
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            digest.update(f"{len(data)}:".encode())
            digest.update(data)

    add(HASH_FORMAT, "base", base_image, "ray", ray_version)
    for name, path in context_files(context_dir):
        add("file", name, path.read_bytes())
    if wheelhouse is not None:
        for path in wheel_files(wheelhouse):
            add("wheel", path.name, str(path.stat().st_size))
    return digest.hexdigest()


def image_tag(name: str, hash_: str) -> str:
    """``name`` as it is if it carries a tag, else ``name:<first 12 hex digits of the hash>``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:{hash_[:12]}"


def wheelhouse_command(requirements: Path, target: Path) -> str:
    """The command that makes a wheelhouse for the image (cp311 manylinux x86_64 wheels)."""
    return shlex.join(
        ["pip", "download", "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
         "--abi", "cp311", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
         "-d", str(target), "-r", str(requirements)]
    )  # fmt: skip


def check_context(context_dir: Path, wheelhouse: Path | None, ray_version: str) -> Path:
    """Refuse a context that cannot build the image this client needs; returns the wheelhouse.

    The Dockerfile installs offline from ``wheels/`` only (hosts may have no registry), so a
    wheelhouse is required: the given one, else ``<context>/wheels``."""
    dockerfile, requirements = context_dir / "Dockerfile", context_dir / "requirements.txt"
    for path in (dockerfile, requirements):
        if not path.is_file():
            raise InputError(
                f"{path}: not found; the image's build context needs a Dockerfile and requirements.txt",
                hint="Point the build at the project's docker/ folder.",
            )
    pinned = pinned_ray_version(requirements.read_text(encoding="utf-8"))
    if pinned != ray_version:
        found = f"pins ray=={pinned}" if pinned else "does not pin ray with =="
        raise InputError(
            f"{requirements}: {found}, but this client runs Ray {ray_version}; "
            "the cluster and its client must run the same Ray",
            hint=f"Pin ray[default]=={ray_version} there (and make the wheelhouse again), "
            f"or install ray=={pinned} here."
            if pinned
            else f"Pin ray[default]=={ray_version} there.",
        )
    chosen = wheelhouse if wheelhouse is not None else context_dir / WHEELS_DIR
    make = wheelhouse_command(requirements, chosen)
    if not chosen.is_dir() or not any(path.suffix == ".whl" for path in chosen.iterdir()):
        raise InputError(
            f"{chosen}: no wheelhouse; the image is built offline from wheels, since the hosts may "
            "not reach a package registry",
            hint=f"Make one on a machine that reaches PyPI: {make}",
        )
    if not list(chosen.glob(f"ray-{ray_version}-*.whl")):
        raise InputError(
            f"{chosen}: has no wheel of ray {ray_version}; the wheelhouse is older than {requirements}",
            hint=f"Make it again: {make}",
        )
    return chosen


def write_context_tar(context_dir: Path, wheelhouse: Path, target: IO[bytes]) -> None:
    """The build context as an uncompressed tar: the context files plus the wheels in wheels/."""
    with tarfile.open(fileobj=target, mode="w", dereference=True) as tar:
        for name, path in context_files(context_dir):
            tar.add(path, arcname=name, recursive=False)
        for path in wheel_files(wheelhouse):
            tar.add(path, arcname=f"{WHEELS_DIR}/{path.name}", recursive=False)


# --- docker-py over strict SSH ---------------------------------------------------------------


class StrictSshAdapter(SSHHTTPAdapter):
    """docker-py's SSH adapter with our paramiko client and connect arguments.

    The stock adapter loads ~/.ssh/known_hosts and ~/.ssh/config; ours uses only the configured
    known_hosts and key (``remote.ssh.make_client``), so an unknown host is refused."""

    def __init__(
        self, base_url: str, client: paramiko.SSHClient, params: dict[str, Any], timeout: int
    ) -> None:
        self._preset = (client, params)
        self.gateway: object | None = None
        super().__init__(base_url, timeout=timeout, max_pool_size=2)

    # docker-py calls this from __init__ (and _connect right after), instead of its own set-up.
    def _create_paramiko_client(self, base_url: str) -> None:
        self.ssh_client, self.ssh_params = self._preset


class DockerApi(Protocol):
    """The few Docker calls the build needs; ``HeadDocker`` is the real one, tests fake it."""

    def images_with_label(self, label: str) -> list[str]: ...
    def image_id(self, ref: str) -> str | None: ...
    def image_labels(self, ref: str) -> dict[str, str]: ...
    def build(
        self, context: IO[bytes], *, tag: str, buildargs: dict[str, str], labels: dict[str, str]
    ) -> Iterator[dict[str, Any]]: ...
    def tag(self, image_id: str, tag: str) -> None: ...
    def close(self) -> None: ...


class HeadDocker:
    """docker-py's low-level client on one host, over strict SSH."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api

    def images_with_label(self, label: str) -> list[str]:
        return [str(image["Id"]) for image in self._api.images(filters={"label": label})]

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self._inspect(ref)["Id"])
        except docker.errors.ImageNotFound:
            return None

    def image_labels(self, ref: str) -> dict[str, str]:
        return dict(self._inspect(ref)["Config"].get("Labels") or {})

    def _inspect(self, ref: str) -> dict[str, Any]:
        return dict(self._api.inspect_image(ref))  # type: ignore[no-untyped-call]  # untyped in types-docker

    def build(
        self, context: IO[bytes], *, tag: str, buildargs: dict[str, str], labels: dict[str, str]
    ) -> Iterator[dict[str, Any]]:
        return self._api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            buildargs=buildargs,
            labels=labels,
            rm=True,
            forcerm=True,  # no stopped intermediate containers left behind, even on failure
            pull=False,  # air-gapped hosts: the base image must already be there
            decode=True,
        )

    def tag(self, image_id: str, tag: str) -> None:
        repository, _, version = tag.rpartition(":")
        self._api.tag(image_id, repository, version)

    def close(self) -> None:
        self._api.close()


def connect_docker(host: Host, ssh: SshConfig, *, timeout: int = BUILD_TIMEOUT_SECONDS) -> HeadDocker:
    """docker-py on ``host`` over SSH with the configured key and known_hosts (never ~/.ssh)."""
    address = f"[{host.address}]" if ":" in host.address else host.address  # IPv6
    base_url = f"ssh://{host.user + '@' if host.user else ''}{address}:{host.port}"
    params = ssh_connect_params(host, ssh)
    try:
        gateway = open_jump(host, ssh, params)  # kept referenced by the adapter below
    except ShapclusterError:
        raise
    except Exception as err:
        raise translate_ssh_error(err, host, ssh) from err
    # use_ssh_client=True only keeps docker-py from connecting on its own; the pinned minimum
    # API version only keeps it from asking the daemon before our adapter is mounted.
    api = docker.APIClient(base_url=base_url, version="1.24", timeout=timeout, use_ssh_client=True)
    try:
        adapter = StrictSshAdapter(base_url, make_client(ssh), params, timeout)
        adapter.gateway = gateway  # a ProxyJump hop lives as long as the adapter's connection
    except Exception as err:
        api.close()
        raise translate_ssh_error(err, host, ssh) from err
    api.mount("http+docker://ssh", adapter)
    try:
        # What docker-py's version="auto" does, after the adapter is in place; not in the stubs.
        api._version = str(api.version(api_version=False)["ApiVersion"])  # type: ignore[attr-defined]
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
        api.close()
        raise RemoteError(
            f"{host.name}: the Docker daemon does not answer over SSH: {err}",
            hint=f"`docker version` must work for the SSH user on {host.name} (docker group).",
        ) from err
    return HeadDocker(api)


# --- build -----------------------------------------------------------------------------------


def ensure_image(
    head: Host,
    ssh: SshConfig,
    image: ImageConfig,
    context_dir: Path,
    wheelhouse: Path | None,
    progress: Progress,
    *,
    connect: Callable[[Host, SshConfig], DockerApi] = connect_docker,
    ray_version: str | None = None,
) -> BuiltImage:
    """Build the image on the head, unless an image with the same context hash is there already.

    ``wheelhouse`` None: ``<context_dir>/wheels``. The tag is ``image.name`` (plus the hash's
    first 12 digits when the name has no tag); a failed build tags nothing."""
    ray_version = ray_version or client_ray_version()
    wheels = check_context(context_dir, wheelhouse, ray_version)
    hash_ = context_hash(context_dir, image.base, ray_version, wheels)
    tag = image_tag(image.name, hash_)
    label = f"{CONTEXT_HASH_LABEL}={hash_}"
    docker_api = connect(head, ssh)
    try:
        existing = _call(head, "look for the image", lambda: docker_api.images_with_label(label))
        if existing:
            image_id = existing[0]
            logger.info("%s: image with %s exists: %s", head.name, label, image_id)
            if _call(head, "inspect the image", lambda: docker_api.image_id(tag)) != image_id:
                _call(head, "tag the image", lambda: docker_api.tag(image_id, tag))
            progress(f"{head.name}: image {tag} is up to date ({_short(image_id)}), no build needed")
            return BuiltImage(tag, image_id, hash_, built=False)
        progress(f"{head.name}: building image {tag} from {context_dir} (a few minutes)")
        started = time.monotonic()
        image_id = _build(head, docker_api, context_dir, wheels, image, tag, hash_, ray_version, progress)
        logger.info("%s: built %s as %s", head.name, tag, image_id)
        progress(f"{head.name}: built image {tag} ({_short(image_id)}) in {time.monotonic() - started:.0f} s")
        return BuiltImage(tag, image_id, hash_, built=True)
    finally:
        docker_api.close()


def _build(
    head: Host,
    docker_api: DockerApi,
    context_dir: Path,
    wheels: Path,
    image: ImageConfig,
    tag: str,
    hash_: str,
    ray_version: str,
    progress: Progress,
) -> str:
    labels = {CONTEXT_HASH_LABEL: hash_, RAY_VERSION_LABEL: ray_version}
    recent: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
    with tempfile.TemporaryFile(prefix="shapcluster-context-") as context:  # on disk: 250+ MB
        write_context_tar(context_dir, wheels, context)
        context.seek(0)

        def run_build() -> str | None:
            for entry in docker_api.build(
                context,
                tag=tag,
                buildargs={"BASE_IMAGE": image.base, BUILT_FOR_BUILDARG: image.name},
                labels=labels,
            ):
                if "error" in entry:
                    return str(entry.get("errorDetail", {}).get("message") or entry["error"])
                for line in str(entry.get("stream", "")).splitlines():
                    if line.strip():
                        recent.append(line.rstrip())
                        progress(f"{head.name}: {line.rstrip()}")
            return None

        error = _call(head, "build the image", run_build)
    if error is not None:
        raise RemoteError(
            f"{head.name}: docker build of {tag} failed: {error}\n" + "\n".join(recent),
            hint=f"The lines above show the failing step. Is the base image {image.base} on "
            f"{head.name} (`docker image inspect {image.base}`)? Without a registry it must be "
            "loaded there first.",
        )
    image_id = _call(head, "inspect the new image", lambda: docker_api.image_id(tag))
    if image_id is None:
        raise RemoteError(f"{head.name}: docker build reported success but {tag} does not exist")
    found = _call(head, "inspect the new image", lambda: docker_api.image_labels(image_id))
    if found.get(CONTEXT_HASH_LABEL) != hash_:  # without it, the next run would build again
        raise RemoteError(
            f"{head.name}: the new image {tag} lacks the label {CONTEXT_HASH_LABEL}={hash_}",
            hint="Does the Dockerfile reset LABELs? The daemon must keep build labels.",
        )
    return image_id


def _call(host: Host, what: str, action: Callable[[], _T]) -> _T:
    """Run one docker-py call; transport and API failures become a RemoteError naming the host."""
    try:
        return action()
    except ShapclusterError:
        raise
    except docker.errors.APIError as err:
        raise RemoteError(f"{host.name}: cannot {what}: {err.explanation or err}") from err
    except (requests.exceptions.RequestException, paramiko.SSHException, OSError) as err:
        raise RemoteError(
            f"{host.name}: cannot {what}: the connection to Docker over SSH failed: {err}"
        ) from err


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def built_image_command(hash_: str) -> str:
    """The IDs of images labelled with this context hash (one per line; none: empty)."""
    return shlex.join(
        ["docker", "images", "--quiet", "--no-trunc", "--filter", f"label={CONTEXT_HASH_LABEL}={hash_}"]
    )


def find_built_image(
    runner: Runner, image: ImageConfig, context_dir: Path, wheelhouse: Path | None
) -> BuiltImage | None:
    """The image ``ensure_image`` would build, if the runner's host has it under its tag already:
    two commands over an open SSH connection instead of docker-py's own (a warm `up`)."""
    ray_version = client_ray_version()
    wheels = check_context(context_dir, wheelhouse, ray_version)
    hash_ = context_hash(context_dir, image.base, ray_version, wheels)
    tag = image_tag(image.name, hash_)
    ids = runner.run(built_image_command(hash_)).stdout.split()
    tagged = image_id_on(runner, tag) if ids else None
    return BuiltImage(tag, tagged, hash_, built=False) if tagged in ids and tagged else None


# --- ship ------------------------------------------------------------------------------------


def image_id_command(ref: str) -> str:
    return shlex.join(["docker", "image", "inspect", "--format", "{{.Id}}", ref])


def image_size_command(ref: str) -> str:
    return shlex.join(["docker", "image", "inspect", "--format", "{{.Size}}", ref])


def save_command(image_id: str) -> str:
    return shlex.join(["docker", "save", image_id])


def load_command() -> str:
    return "docker load"


def tag_command(image_id: str, tag: str) -> str:
    return shlex.join(["docker", "tag", image_id, tag])


def image_id_on(runner: Runner, ref: str) -> str | None:
    """The image ID ``ref`` names on the runner's host; None if there is no such image."""
    result = runner.run(image_id_command(ref), check=False)
    if not result.ok and "no such image" in (result.stderr + result.stdout).lower():
        return None
    return check_result(runner.host, result).stdout.strip() or None


class ImageTransfer(Protocol):
    def __call__(
        self, source: str, targets: Sequence[str], image_id: str, size: int | None, progress: Progress
    ) -> dict[str, Exception]:
        """Stream ``docker save`` on ``source`` into ``docker load`` on every target; return the
        failures by target; raise RemoteError naming the source if the save fails."""
        ...


def ship_image(
    source: Runner,
    targets: Sequence[Runner],
    tag: str,
    image_id: str,
    progress: Progress,
    *,
    transfer: ImageTransfer,
) -> list[str]:
    """Give every target the source's image under ``tag``; targets already holding the image ID
    get only the tag. Returns the hosts the image was streamed to. Raises one HostsFailedError
    naming every target that did not end up with the image (the others keep theirs)."""
    if not targets:
        return []

    def state(runner: Runner) -> str:
        if image_id_on(runner, tag) == image_id:
            return "ready"  # the usual case of a warm `up`: one command, nothing to do
        return "untagged" if image_id_on(runner, image_id) == image_id else "missing"

    present = gather_results(targets, state)
    failures: dict[str, Exception] = dict(present.failures)
    missing = [runner.host for runner in targets if present.successes.get(runner.host) == "missing"]
    if missing:
        size_text = source.run(image_size_command(image_id), check=False).stdout.strip()
        size = int(size_text) if size_text.isdigit() else None
        progress(f"shipping image {_short(image_id)} from {source.host} to {', '.join(missing)}")
        started = time.monotonic()
        failures.update(transfer(source.host, missing, image_id, size, progress))
        logger.info("streamed %s to %s; failed on %s", image_id, missing, sorted(failures) or "none")
        progress(f"shipped in {time.monotonic() - started:.0f} s")
    else:
        progress(f"every host already has image {_short(image_id)}, nothing to ship")

    def finish(runner: Runner) -> None:
        found = image_id_on(runner, image_id)
        if found != image_id:
            raise RemoteError(
                f"{runner.host}: `docker load` finished, but image {_short(image_id)} is absent"
            )
        runner.run(tag_command(image_id, tag))

    ready = [r for r in targets if r.host not in failures and present.successes.get(r.host) != "ready"]
    tagged = gather_results(ready, finish)
    failures.update(tagged.failures)
    if failures:
        ordered = {runner.host: failures[runner.host] for runner in targets if runner.host in failures}
        done = [r.host for r in targets if r.host not in failures]
        result = GroupResult({h: None for h in done}, ordered)
        error = HostsFailedError(f"shipping image {tag}", result)
        error.hint = (error.hint + "\n" if error.hint else "") + (
            "Check that the failed hosts are reachable and have disk space for the image "
            "(`df -h /var/lib/docker`), then run the command again: hosts that have the image are skipped."
        )
        raise error
    return missing


class SshImageTransfer:
    """Streams an image between hosts over paramiko channels: one ``docker save``, its bytes
    fanned out to one ``docker load`` per target. Memory use is one chunk, whatever the image."""

    def __init__(self, hosts: Iterable[Host], ssh: SshConfig) -> None:
        self._hosts = {host.name: host for host in hosts}
        self._ssh = ssh

    def __call__(
        self, source: str, targets: Sequence[str], image_id: str, size: int | None, progress: Progress
    ) -> dict[str, Exception]:
        failures: dict[str, Exception] = {}
        with contextlib.ExitStack() as stack:
            source_host = self._hosts[source]
            source_client = stack.enter_context(connect_ssh(source_host, self._ssh))
            loads: dict[str, paramiko.Channel] = {}
            for name in targets:
                try:
                    client = stack.enter_context(connect_ssh(self._hosts[name], self._ssh))
                    loads[name] = _start(client, load_command())
                except (ShapclusterError, paramiko.SSHException, OSError) as err:
                    failures[name] = err
            if not loads:
                return failures
            save = _start(source_client, save_command(image_id))
            _pump(save, loads, failures, size, progress)
            if not loads:  # every target failed: the save was cut off by us, not by its host
                save.close()
                return failures
            status, err_text = _finish(save, STREAM_STALL_SECONDS)
            if status != 0:
                raise RemoteError(
                    f"{source}: `{save_command(image_id)}` failed (exit {status}): {tail(err_text)}"
                )
            for name, channel in loads.items():
                status, err_text = _finish(channel, LOAD_FINISH_SECONDS)
                if status != 0:
                    failures[name] = RemoteError(
                        f"{name}: `docker load` failed (exit {status}): {tail(err_text) or 'no output'}"
                    )
        return failures


def _start(client: paramiko.SSHClient, command: str) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None:
        raise RemoteError("the SSH connection closed")
    channel = transport.open_session(timeout=STREAM_STALL_SECONDS)
    channel.settimeout(STREAM_STALL_SECONDS)  # a stalled send or receive raises instead of hanging
    channel.exec_command(command)
    return channel


def _pump(
    save: paramiko.Channel,
    loads: dict[str, paramiko.Channel],
    failures: dict[str, Exception],
    size: int | None,
    progress: Progress,
) -> None:
    """Copy the save's stdout into every load's stdin; a target that fails drops out alone."""
    sent, step = 0, max((size or 0) // 10, 256 * CHUNK_BYTES)
    next_report = step
    while loads:
        try:
            chunk = save.recv(CHUNK_BYTES)
        except TimeoutError:
            save.close()
            break  # _finish reports the source
        if not chunk:
            break
        for name, channel in list(loads.items()):
            try:
                channel.sendall(chunk)
            except (OSError, paramiko.SSHException) as err:
                _, err_text = _finish(channel, 5.0)
                failures[name] = RemoteError(
                    f"{name}: `docker load` stopped reading after {sent // 2**20} MB: "
                    f"{tail(err_text) or err or 'connection closed'}"
                )
                channel.close()
                del loads[name]
        sent += len(chunk)
        if sent >= next_report:
            total = f" of about {size // 2**20}" if size else ""
            progress(f"shipped {sent // 2**20}{total} MB to {', '.join(loads) or 'no host'}")
            next_report += step
    for channel in loads.values():
        with contextlib.suppress(OSError, paramiko.SSHException):
            channel.shutdown_write()  # EOF: docker load finishes the image


def _finish(channel: paramiko.Channel, timeout: float) -> tuple[int, str]:
    """Exit status (-1 if it did not end in time) and stderr plus stdout of a channel's command."""
    ended = channel.status_event.wait(timeout)
    output = b""
    with contextlib.suppress(OSError, paramiko.SSHException, socket.timeout):
        while channel.recv_stderr_ready():
            output += channel.recv_stderr(CHUNK_BYTES)
        while channel.recv_ready():
            output += channel.recv(CHUNK_BYTES)
    status = channel.recv_exit_status() if ended else -1
    if not ended:
        channel.close()
        output += f"\n(no exit status within {timeout:.0f} s)".encode()
    return status, output.decode(errors="replace")


# --- verify ----------------------------------------------------------------------------------


def versions_command(image_id: str, cache_file: str | None = None) -> str:
    """Python and package versions inside the image, as one JSON line; no network needed.

    With ``cache_file`` the line is kept there after the first run and read back afterwards:
    an image ID names its content, so the versions inside it cannot change, and a warm `up`
    saves one container start per host."""
    run = _versions_run(image_id)
    if cache_file is None:
        return run
    folder = str(PurePosixPath(cache_file).parent)
    file = shlex.quote(cache_file)
    return (
        f"cat -- {file} 2>/dev/null || {{ out=$({run}) && mkdir -p -- {shlex.quote(folder)} && "
        f"printf '%s\\n' \"$out\" | tee -- {file}; }}"
    )


def versions_cache_file(root: str, image_id: str) -> str:
    """Where a host keeps the versions read inside ``image_id`` (below its remote directory)."""
    return f"{root}/images/{image_id.removeprefix('sha256:')}.versions.json"


def _versions_run(image_id: str) -> str:
    return shlex.join(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python",
            image_id,
            "-c",
            _VERSIONS_SCRIPT,
        ]
    )


def parse_versions(host: str, output: str) -> dict[str, str]:
    lines = [line for line in output.splitlines() if line.strip()]
    try:
        data = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RemoteError(
            f"{host}: unexpected output of the version check: {output.strip()[:200]!r}"
        ) from None
    wanted = ("python", *VERSIONED_PACKAGES)
    if not isinstance(data, dict) or set(data) != set(wanted):
        raise RemoteError(f"{host}: unexpected output of the version check: {lines[-1][:200]!r}")
    return {name: str(data[name]) for name in wanted}


def read_versions(runner: Runner, image_id: str, cache_file: str | None = None) -> dict[str, str]:
    result = runner.run(versions_command(image_id, cache_file), timeout=VERSIONS_TIMEOUT_SECONDS)
    return parse_versions(runner.host, result.stdout)


def verify_identical(
    runners: Sequence[Runner],
    tag: str,
    image_id: str | None = None,
    cache_roots: Mapping[str, str] | None = None,
) -> dict[str, ImageInfo]:
    """Prove every host holds the same image under ``tag`` as the first (the head): the same
    image ID (``image_id``, when given), and the same Python, Ray, shap and scikit-learn inside
    it. Raises one RemoteError naming every host that differs, lacks the image or cannot be asked."""
    if not runners:
        return {}
    head = runners[0].host
    ids = gather_results(runners, lambda runner: image_id_on(runner, tag))
    if head in ids.failures:
        raise HostsFailedError(f"checking image {tag}", GroupResult({}, {head: ids.failures[head]}))
    head_id = ids.successes[head]
    if head_id is None:
        raise RemoteError(f"{head}: image {tag} does not exist there", hint="Build it on the head first.")
    if image_id is not None and head_id != image_id:
        raise RemoteError(
            f"{head}: {tag} is image {_short(head_id)}, not the {_short(image_id)} built for this run",
            hint="Another build replaced the tag meanwhile; run the command again.",
        )
    problems = {host: host_error_text(host, error) for host, error in ids.failures.items()}
    for host, found_id in ids.successes.items():
        if found_id is None:
            problems[host] = f"{host}: image {tag} is missing"
        elif found_id != head_id:
            problems[host] = f"{host}: {tag} is image {_short(found_id)}, the head's is {_short(head_id)}"
    # Same ID means same content; reading the versions inside still proves the image runs there.
    same = [runner for runner in runners if runner.host not in problems]
    roots = cache_roots or {}

    def versions_on(runner: Runner) -> dict[str, str]:
        root = roots.get(runner.host)
        return read_versions(runner, head_id, versions_cache_file(root, head_id) if root else None)

    versions = gather_results(same, versions_on)
    problems.update({host: host_error_text(host, error) for host, error in versions.failures.items()})
    head_versions = versions.successes.get(head)
    for host, found in versions.successes.items():
        if head_versions is not None and found != head_versions:
            differ = ", ".join(
                f"{name} {found.get(name)} (head {version})"
                for name, version in head_versions.items()
                if found.get(name) != version
            )
            problems[host] = f"{host}: the same image ID reports other versions: {differ}"
    if problems:
        ordered = [problems[runner.host] for runner in runners if runner.host in problems]
        raise RemoteError(
            f"refusing to start: image {tag} is not identical on every host:\n"
            + "\n".join("  - " + text.replace("\n", "\n    ") for text in ordered),
            hint="Every host must run the head's image. Ship it again (hosts that have it are skipped); "
            f"if a host keeps another image under {tag}, remove it there first: docker rmi {tag}",
        )
    return {host: ImageInfo(head_id, versions.successes[host]) for host in ids.successes}
