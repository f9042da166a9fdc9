"""The image's build context: its files, the wheelhouse, the hash that names the image.

Pure local work; nothing here contacts a host.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shlex
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shapcluster.errors import InputError

Progress = Callable[[str], None]

CONTEXT_HASH_LABEL = "shapcluster.context-hash"
RAY_VERSION_LABEL = "shapcluster.ray-version"
WHEELS_DIR = "wheels"  # where the Dockerfile expects the wheelhouse inside the build context
HASH_FORMAT = "shapcluster-image-context-v1"  # bump when what the hash covers changes
_RAY_PIN_RE = re.compile(r"^\s*ray\s*(?:\[[^\]]*\])?\s*==\s*([^\s;#,]+)\s*(?:[;#].*)?$", re.IGNORECASE)


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
                f"{path.absolute()}: not found; the image's build context needs a Dockerfile and "
                "requirements.txt",
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


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    context_hash: str
    built: bool  # False: an image with this context hash already existed on the head
