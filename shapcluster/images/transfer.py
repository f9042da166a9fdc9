"""Ship the image from the head to the workers: ``docker save`` streamed into ``docker load``
on every worker over SSH (``remote.stream``), chunk by chunk; hosts that hold it are skipped.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from shapcluster.config import ImageConfig, SshConfig
from shapcluster.errors import RemoteError
from shapcluster.images.context import (
    CONTEXT_HASH_LABEL,
    BuiltImage,
    check_context,
    client_ray_version,
    context_hash,
    image_tag,
)
from shapcluster.inventory import Host
from shapcluster.remote.base import Runner, check_result
from shapcluster.remote.group import GroupResult, HostsFailedError, gather_results
from shapcluster.remote.stream import fan_out

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]
STREAM_STALL_SECONDS = 300.0  # a ship that moves no byte for this long has failed
LOAD_FINISH_SECONDS = 900.0  # after the last byte, `docker load` still unpacks the layers


def short_id(image_id: str) -> str:
    """The 12 hex digits docker shows for an image ID."""
    return image_id.removeprefix("sha256:")[:12]


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
        progress(f"shipping image {short_id(image_id)} from {source.host} to {', '.join(missing)}")
        started = time.monotonic()
        failures.update(transfer(source.host, missing, image_id, size, progress))
        logger.info("streamed %s to %s; failed on %s", image_id, missing, sorted(failures) or "none")
        progress(f"shipped in {time.monotonic() - started:.0f} s")
    else:
        progress(f"every host already has image {short_id(image_id)}, nothing to ship")

    def finish(runner: Runner) -> None:
        found = image_id_on(runner, image_id)
        if found != image_id:
            raise RemoteError(
                f"{runner.host}: `docker load` finished, but image {short_id(image_id)} is absent"
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
    """Streams an image between hosts: one ``docker save``, its bytes fanned out to one
    ``docker load`` per target. Memory use is one chunk, whatever the image."""

    def __init__(self, hosts: Iterable[Host], ssh: SshConfig) -> None:
        self._hosts = {host.name: host for host in hosts}
        self._ssh = ssh

    def __call__(
        self, source: str, targets: Sequence[str], image_id: str, size: int | None, progress: Progress
    ) -> dict[str, Exception]:
        return fan_out(
            self._hosts[source], save_command(image_id), {name: self._hosts[name] for name in targets},
            load_command(), self._ssh, size=size, progress=progress,
            stall_seconds=STREAM_STALL_SECONDS, finish_seconds=LOAD_FINISH_SECONDS,
        )  # fmt: skip


def built_image_command(hash_: str, tag: str) -> str:
    """The ID of the image labelled with this context hash AND tagged ``tag`` (empty if none)."""
    return shlex.join(
        ["docker", "images", "--quiet", "--no-trunc", "--filter", f"label={CONTEXT_HASH_LABEL}={hash_}",
         "--filter", f"reference={tag}"]
    )  # fmt: skip


def built_image_id(runner: Runner, tag: str, hash_: str) -> str | None:
    """The ID of the image labelled with ``hash_`` under ``tag`` on the runner's host, if there
    is exactly one: one command over an open SSH connection instead of docker-py's own (a warm `up`)."""
    ids = sorted(set(runner.run(built_image_command(hash_, tag)).stdout.split()))
    return ids[0] if len(ids) == 1 else None


def find_built_image(
    runner: Runner, image: ImageConfig, context_dir: Path, wheelhouse: Path | None
) -> BuiltImage | None:
    """The image ``ensure_image`` would build, if the runner's host has it under its tag already."""
    ray_version = client_ray_version()
    wheels = check_context(context_dir, wheelhouse, ray_version)
    hash_ = context_hash(context_dir, image.base, ray_version, wheels)
    tag = image_tag(image.name, hash_)
    image_id = built_image_id(runner, tag, hash_)
    return BuiltImage(tag, image_id, hash_, built=False) if image_id is not None else None
