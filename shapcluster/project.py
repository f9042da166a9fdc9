"""Where a user's project keeps its files, found from the folder the CLI runs in.

The README's layout, in the user's own folder: ``shapcluster.toml`` (or
``inventory/shapcluster.toml``), ``docker/`` (Dockerfile, requirements.txt, wheels/). Every
refusal names each place that was looked at. A missing wheelhouse is made once with ``pip
download`` when this machine reaches the package index (kept in a cache keyed by a hash of
requirements.txt); on a closed network ``--wheelhouse`` stays the way.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from shapcluster.errors import InputError

CONFIG_NAME = "shapcluster.toml"
CONFIG_PLACES = (Path(CONFIG_NAME), Path("inventory") / CONFIG_NAME)  # relative to the working dir
CONTEXT_NAME = "docker"
# A checkout of shapcluster itself has docker/ beside the package; an installed wheel has not.
CHECKOUT_CONTEXT = Path(__file__).resolve().parent.parent / CONTEXT_NAME
WHEELS_DIR = "wheels"
# The platforms of the image's Python (cp311 on glibc 2.17 or later, x86_64).
WHEEL_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
Progress = Callable[[str], None]
Download = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def find_config(path: Path, *, default: Path, cwd: Path | None = None) -> Path:
    """``path`` itself unless it is the untouched ``default``: then the first of CONFIG_PLACES
    below ``cwd`` that exists (the default again if none does, so the error names it)."""
    if path != default:
        return path
    here = cwd or Path.cwd()
    for place in CONFIG_PLACES:
        if (here / place).is_file():
            return here / place if cwd else place
    return path


def config_places(cwd: Path | None = None) -> str:
    here = cwd or Path.cwd()
    return " and ".join(str(here / place) for place in CONFIG_PLACES)  # file paths, not folders


def find_context(explicit: Path | None, cwd: Path | None = None) -> Path:
    """The image's build context: ``explicit``, else ``./docker`` where the CLI runs, else the
    docker/ of a shapcluster checkout; the error lists where it looked."""
    if explicit is not None:
        return explicit
    candidates = [(cwd or Path.cwd()) / CONTEXT_NAME, CHECKOUT_CONTEXT]
    for candidate in candidates:
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise InputError(
        "no build context for the image: no Dockerfile in " + " or ".join(str(c) for c in candidates),
        hint="Run from your project folder (the one holding docker/), or pass --context DIR.",
    )


def requirements_hash(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]


def wheel_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shapcluster" / "wheelhouses"


def download_args(requirements: Path, target: Path) -> list[str]:
    """``pip download`` of cp311 manylinux x86_64 wheels for ``requirements`` into ``target``."""
    platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
    return [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
        *platforms, "-d", str(target), "-r", str(requirements),
    ]  # fmt: skip


def _pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=1800)


def _has_wheels(folder: Path) -> bool:
    return folder.is_dir() and any(path.suffix == ".whl" for path in folder.iterdir())


def planned_wheelhouse(
    context: Path, explicit: Path | None, *, cache_dir: Path | None = None
) -> tuple[Path | None, str | None]:
    """For `up --dry-run`: the wheelhouse `up` would build from, and a note when there is none
    yet (then the path is None and `up` would download one or stop). Downloads nothing."""
    local = explicit if explicit is not None else context / WHEELS_DIR
    if _has_wheels(local):
        return local, None
    requirements = context / "requirements.txt"
    if explicit is not None or not requirements.is_file():
        return None, f"wheelhouse missing: {local.absolute()} holds no wheels; `up` would stop there"
    cached = (cache_dir or wheel_cache_dir()) / requirements_hash(requirements)
    if _has_wheels(cached):
        return cached, f"no wheelhouse in {local.absolute()}; `up` would use the one made earlier: {cached}"
    command = " ".join(download_args(requirements, local))
    return None, (
        f"wheelhouse missing: no wheels in {local.absolute()} or {cached}; `up` would first download "
        f"them with pip (this machine must reach PyPI), or make them elsewhere: {command}"
    )


def ensure_wheelhouse(
    context: Path,
    explicit: Path | None,
    progress: Progress,
    *,
    download: Download = _pip,
    cache_dir: Path | None = None,
) -> Path | None:
    """The wheelhouse the image is built from: ``explicit`` as given (checked later), else
    ``<context>/wheels`` if it holds wheels, else the cached download for this requirements.txt,
    made now with ``pip download`` if this machine reaches the package index. ``None`` only
    when ``context`` has no requirements.txt (the context check reports that)."""
    if explicit is not None:
        return explicit
    local = context / WHEELS_DIR
    requirements = context / "requirements.txt"
    if _has_wheels(local) or not requirements.is_file():
        return local
    cached = (cache_dir or wheel_cache_dir()) / requirements_hash(requirements)
    if _has_wheels(cached):
        progress(f"no wheelhouse in {local}; using the one made earlier for this requirements.txt: {cached}")
        return cached
    progress(f"no wheelhouse in {local}; downloading the wheels of {requirements} into {cached} (once)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".download-", dir=cached.parent))
    try:
        done = download(download_args(requirements, temp))
        if done.returncode != 0 or not _has_wheels(temp):
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputError(
                f"{local}: no wheelhouse, and pip could not download one here ({last[0][:200]})",
                hint="On a closed network, make it on a machine that reaches PyPI and pass it with "
                f"--wheelhouse DIR: {shlex.join(download_args(requirements, local)[2:])}",
            )
        temp.rename(cached)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    progress(f"wheelhouse ready: {cached}")
    return cached
