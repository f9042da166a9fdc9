"""Prove every host holds the same image: the same ID and the same Python, Ray, shap and
scikit-learn inside it (read once per host and image ID)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from shapcluster.errors import RemoteError
from shapcluster.images.transfer import image_id_on, short_id
from shapcluster.remote.base import Runner, host_error_text
from shapcluster.remote.group import GroupResult, HostsFailedError, gather_results

VERSIONED_PACKAGES = ("ray", "shap", "scikit-learn")
VERSIONS_TIMEOUT_SECONDS = 180.0

# Runs inside the image: package metadata instead of imports, so it takes a second, not ten.
_VERSIONS_SCRIPT = (
    "import json, platform; from importlib.metadata import version; "
    "print(json.dumps({'python': platform.python_version(), "
    + ", ".join(f"{name!r}: version({name!r})" for name in VERSIONED_PACKAGES)
    + "}))"
)


@dataclass(frozen=True)
class ImageInfo:
    """What one host holds under the cluster's tag; ``image_id`` None: no such image there."""

    image_id: str | None
    versions: Mapping[str, str] = field(default_factory=dict)


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
            f"{head}: {tag} is image {short_id(head_id)}, not the {short_id(image_id)} built for this run",
            hint="Another build replaced the tag meanwhile; run the command again.",
        )
    problems = {host: host_error_text(host, error) for host, error in ids.failures.items()}
    for host, found_id in ids.successes.items():
        if found_id is None:
            problems[host] = f"{host}: image {tag} is missing"
        elif found_id != head_id:
            problems[host] = f"{host}: {tag} is image {short_id(found_id)}, the head's is {short_id(head_id)}"
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
