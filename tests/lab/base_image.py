"""Artefacts the lab hands to its hosts, which cannot reach any registry themselves.

- ``make_base_image``: a Debian bookworm root filesystem with Python (debootstrap), as a tarball
  for ``docker import``.
- ``make_wheelhouse``: cp311 manylinux wheels for a requirements file (``pip download``).

Both are built in the root namespace (which reaches the package registries), cached outside the
clone under a key derived from their recipe, and written atomically (temp + rename), so a second
run reuses them and a machine without the cache builds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Outside the clone: CI clones afresh, the cache survives on the same machine.
CACHE_DIR = Path(os.environ.get("SCLAB_CACHE_DIR", "/var/cache/shapcluster-lab"))

SUITE = "bookworm"
VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
# Bump when the build steps below change in a way the other fields do not show.
BASE_RECIPE_VERSION = 1

# Bookworm's python3 is 3.11 with glibc 2.36: cp311 wheels for any manylinux up to 2.36 fit.
PYTHON_VERSION = "3.11"
ABI = "cp311"
GLIBC_MINORS = range(17, 37)
WHEEL_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in GLIBC_MINORS),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
WHEELHOUSE_RECIPE_VERSION = 1

APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class ArtefactError(RuntimeError):
    """A lab artefact could not be built; the message says which step and what it printed."""


def _digest(recipe: object) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def base_recipe() -> dict[str, object]:
    return {
        "suite": SUITE,
        "variant": VARIANT,
        "packages": sorted(BASE_PACKAGES),
        "arch": "amd64",
        "version": BASE_RECIPE_VERSION,
    }


def base_image_path(cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"base-{_digest(base_recipe())}.tar"


# --- apt sources -------------------------------------------------------------------------------


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return


def _mirrors_in_sources(text: str, suite: str) -> Iterator[str]:
    for fields in _deb822_paragraphs(text):
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            yield from fields.get("uris", "").split()


def _mirrors_in_list(text: str, suite: str) -> Iterator[str]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        # deb [arch=amd64 signed-by=...] URI SUITE COMPONENT...
        line = re.sub(r"\[[^\]]*\]", " ", line)
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            yield words[1]


def find_apt_mirror(suite: str = SUITE, sources: Sequence[Path] = APT_SOURCES) -> str:
    """The first Debian mirror the machine's own apt sources use for ``suite``."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(source.glob("*.list")) + sorted(source.glob("*.sources"))
        elif source.is_file():
            files.append(source)
    for path in files:
        text = path.read_text(errors="replace")
        finder = _mirrors_in_sources if path.suffix == ".sources" else _mirrors_in_list
        for uri in finder(text, suite):
            return uri.rstrip("/")
    raise ArtefactError(
        f"no apt source for suite {suite!r} in {', '.join(map(str, sources))}; "
        f"add a 'deb <mirror> {suite} main' line (or a deb822 .sources entry) and retry"
    )


# --- helpers -----------------------------------------------------------------------------------


def _run(argv: Sequence[str], what: str, **kwargs: object) -> None:
    log.info("%s: %s", what, " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ArtefactError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (the order to unmount them in)."""
    root = os.path.realpath(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with spaces etc. octal-escaped.
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted below ``path`` (debootstrap binds /dev, /proc...), then delete.

    ``--one-file-system`` keeps rm from ever descending into a mount that survived the unmount.
    """
    if not path.exists() and not path.is_symlink():
        return
    for point in mounts_under(path):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, check=False)


# --- base image --------------------------------------------------------------------------------


def make_base_image(cache_dir: Path = CACHE_DIR, mirror: str | None = None) -> Path:
    """Path of the base rootfs tarball, building it (about 80 s) when it is not cached yet."""
    target = base_image_path(cache_dir)
    if target.is_file():
        log.info("base image cached at %s", target)
        return target
    if shutil.which("debootstrap") is None:
        raise ArtefactError("debootstrap is missing: run `apt-get install debootstrap` (.ci/lab-deps.sh)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    mirror = mirror or find_apt_mirror()
    work = Path(tempfile.mkdtemp(prefix=".base-build-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        _run(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            "debootstrap",
        )
        for leftover in [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]:
            leftover.unlink()
        partial = work / "base.tar"
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], "tar rootfs")
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        remove_tree(work)
    log.info("base image built at %s", target)
    return target


# --- wheelhouse --------------------------------------------------------------------------------


def wheelhouse_recipe(requirements: Path) -> dict[str, object]:
    return {
        "requirements": hashlib.sha256(requirements.read_bytes()).hexdigest(),
        "python": PYTHON_VERSION,
        "abi": ABI,
        "platforms": list(WHEEL_PLATFORMS),
        "version": WHEELHOUSE_RECIPE_VERSION,
    }


def wheelhouse_path(requirements: Path, cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"wheels-{_digest(wheelhouse_recipe(requirements))}"


def make_wheelhouse(requirements: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """Directory of cp311 manylinux x86_64 wheels for ``requirements``, downloaded when not cached."""
    target = wheelhouse_path(requirements, cache_dir)
    if target.is_dir():
        log.info("wheelhouse cached at %s", target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".wheels-build-", dir=cache_dir))
    try:
        platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--no-input",
                "--only-binary=:all:",
                *platforms,
                "--python-version",
                PYTHON_VERSION,
                "--implementation",
                "cp",
                "--abi",
                ABI,
                "--dest",
                str(work / "wheels"),
                "-r",
                str(requirements),
            ],
            "pip download",
        )
        shutil.copy2(requirements, work / "wheels" / "requirements.txt")
        os.replace(work / "wheels", target)
    finally:
        remove_tree(work)
    log.info("wheelhouse built at %s", target)
    return target
