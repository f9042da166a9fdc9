"""Build the image on the head with docker-py over SSH: the only importer of docker-py.

The client never needs a local Docker daemon. SSH obeys the same rules as ``remote.ssh``
(which makes the connections): the configured key and known_hosts file only, unknown host keys
refused (unless ``accept_new_host_keys``), the ssh config honoured as there. docker-py's own
SSH adapter would read ~/.ssh/known_hosts instead, so it gets a paramiko client made by us.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.transport import SSHHTTPAdapter

from shapcluster.commands import BUILT_FOR_BUILDARG
from shapcluster.config import ImageConfig, SshConfig
from shapcluster.errors import RemoteError, ShapclusterError
from shapcluster.images.context import (
    CONTEXT_HASH_LABEL,
    RAY_VERSION_LABEL,
    BuiltImage,
    check_context,
    client_ray_version,
    context_hash,
    image_tag,
    write_context_tar,
)
from shapcluster.images.transfer import short_id
from shapcluster.inventory import Host
from shapcluster.remote.ssh import SSH_ERRORS, make_client, open_jump, ssh_connect_params, translate_ssh_error

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]
_T = TypeVar("_T")
BUILD_TIMEOUT_SECONDS = 1800  # one docker API call: the whole build, wheel upload included
_LOG_TAIL_LINES = 15
_CONNECTION_ERRORS: tuple[type[Exception], ...] = (requests.exceptions.RequestException, *SSH_ERRORS)


class StrictSshAdapter(SSHHTTPAdapter):
    """docker-py's SSH adapter with our paramiko client and connect arguments.

    The stock adapter loads ~/.ssh/known_hosts and ~/.ssh/config; ours uses only the configured
    known_hosts and key (``remote.ssh.make_client``), so an unknown host is refused."""

    def __init__(
        self,
        base_url: str,
        client: Any,
        params: dict[str, Any],
        timeout: int,  # a paramiko SSHClient
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
            progress(f"{head.name}: image {tag} is up to date ({short_id(image_id)}), no build needed")
            return BuiltImage(tag, image_id, hash_, built=False)
        progress(f"{head.name}: building image {tag} from {context_dir} (a few minutes)")
        started = time.monotonic()
        image_id = _build(head, docker_api, context_dir, wheels, image, tag, hash_, ray_version, progress)
        logger.info("%s: built %s as %s", head.name, tag, image_id)
        seconds = time.monotonic() - started
        progress(f"{head.name}: built image {tag} ({short_id(image_id)}) in {seconds:.0f} s")
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
    except _CONNECTION_ERRORS as err:
        raise RemoteError(
            f"{host.name}: cannot {what}: the connection to Docker over SSH failed: {err}"
        ) from err
