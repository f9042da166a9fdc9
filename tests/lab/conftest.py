"""Fixtures for tests that need the multi-host lab (see lab.py).

- ``lab``: session-scoped, 3 hosts (head, worker1, worker2), torn down at session end.
- ``lab_factory``: function-scoped; ``lab_factory(["a", "b"])`` makes a separate small lab that
  is destroyed after the test (for tests that break hosts or check teardown).
- ``lab_home``: HOME set to the lab's client home, so docker-py and paramiko find the lab key,
  ssh config and known_hosts in ~/.ssh.
- ``base_image_tar``: path of the cached debootstrap rootfs tarball.
- ``lab_base_image``: that tarball imported once on the head and shipped to every worker; the tag.
- ``wheelhouse`` (for docker/requirements.txt) and ``wheelhouse_for(requirements)``.

Without root or the tools the lab needs, these fixtures skip the test. When ``CI=true`` (or
``SCLAB_REQUIRED=1``) they fail instead: CI installs the tools with .ci/lab-deps.sh and must run
the lab tests rather than skip them quietly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from shapcluster.config import ImageConfig, SshConfig
from shapcluster.images import BuiltImage, SshImageTransfer, ensure_image, ship_image
from shapcluster.inventory import Host
from shapcluster.remote.ssh import SshRunner
from tests.lab import base_image
from tests.lab.lab import DEFAULT_HOSTS, Lab, missing_tools

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
log = logging.getLogger(__name__)
CLUSTER_REQUIREMENTS = DOCKER_DIR / "requirements.txt"


def _lab_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("SCLAB_REQUIRED") == "1"


def require_lab(extra_tools: Sequence[str] = ()) -> None:
    """Skip (or, in CI, fail) unless this machine can run the lab."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("the lab needs root")
    missing = missing_tools() + [
        tool for tool in extra_tools if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/usr/bin"))
    ]
    if missing:
        reasons.append(f"missing {', '.join(missing)} (run .ci/lab-deps.sh)")
    if reasons:
        message = "multi-host lab unavailable: " + "; ".join(reasons)
        if _lab_required():
            pytest.fail(message + " -- CI must run the lab tests", pytrace=False)
        pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The quick lab smoke tests first, so they fail first when the lab itself is broken."""
    items.sort(key=lambda item: item.path.parent.name == "lab" and item.path.name != "test_lab_smoke.py")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    require_lab()
    the_lab = Lab.create(DEFAULT_HOSTS)
    try:
        yield the_lab
    finally:
        the_lab.destroy()


@pytest.fixture
def lab_factory() -> Iterator[Callable[[Sequence[str]], Lab]]:
    require_lab()
    made: list[Lab] = []

    def make(names: Sequence[str]) -> Lab:
        new_lab = Lab.create(names)
        made.append(new_lab)
        return new_lab

    yield make
    errors = []
    for each in made:
        try:
            each.destroy()
        except Exception as exc:  # destroy every lab, then report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def lab_home(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(lab.client_home))
    return lab.client_home


@pytest.fixture(scope="session")
def base_image_tar() -> Path:
    require_lab(extra_tools=["debootstrap"])
    return base_image.make_base_image()


@pytest.fixture(scope="session")
def wheelhouse_for() -> Callable[[Path], Path]:
    """``wheelhouse_for(requirements)``: cached cp311 wheel directory for that file."""
    require_lab()
    return base_image.make_wheelhouse


@pytest.fixture(scope="session")
def wheelhouse(wheelhouse_for: Callable[[Path], Path]) -> Path:
    """Wheels for the cluster image (docker/requirements.txt)."""
    return wheelhouse_for(CLUSTER_REQUIREMENTS)


@pytest.fixture(scope="session")
def lab_base_image(lab: Lab, base_image_tar: Path) -> str:
    """The base tarball imported ONCE on the head and shipped to every worker (save | load over
    SSH), so all hosts hold the same image ID. Returns the image tag."""
    tag = f"sclab/base:{base_image_tar.stem.removeprefix('base-')[:12]}"
    lab.import_image(lab.head, base_image_tar, tag)
    lab.ship_image(tag, lab.head, lab.workers)
    return tag


IMAGE_NAME = "shapcluster/images-test"


def write_cluster_config(
    folder: Path,
    lab: Lab,
    *,
    name: str,
    base_image: str,
    remote_dir: str,
    image: str = IMAGE_NAME,
    user: str | None = None,
    data_dir: Path | None = None,
    workers: str | None = None,
    extra: str = "",
) -> Path:
    """The lab as a cluster: ``folder``/shapcluster.toml and its workers.txt (one CPU per host).

    ``remote_dir`` may hold ``{host}``; ``user``: the SSH user, else root in each host string;
    ``workers``: the workers file's text instead of the lab's workers; ``extra``: TOML tables
    appended as given (e.g. ``[aws]``). Returns the config's path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    login = "" if user else "root@"
    lines = "".join(f"{login}{w.ip} cpus=1\n" for w in lab.workers)
    (folder / "workers.txt").write_text(lines if workers is None else workers)
    ssh_user = f'user = "{user}"\n' if user else ""
    sync_data = f'data_dir = "{data_dir}"\n' if data_dir is not None else ""
    config = folder / "shapcluster.toml"
    config.write_text(
        f'[cluster]\nname = "{name}"\nremote_dir = "{remote_dir}"\nshm_size = "512m"\n'
        f'[head]\nhost = "{login}{lab.head.ip}"\ncpus = 1\n'
        f'[workers]\nfile = "workers.txt"\n'
        f'[ssh]\n{ssh_user}key = "{lab.ssh_key}"\nknown_hosts = "{lab.known_hosts}"\n'
        f'[image]\nname = "{image}"\nbase = "{base_image}"\n'
        f'[sync]\napp_dir = "{REPO / "app"}"\n{sync_data}' + extra
    )
    return config


def ssh_options(lab: Lab, known_hosts: Path | None = None) -> SshConfig:
    return SshConfig(
        user="root",
        key=lab.ssh_key,
        known_hosts=known_hosts or lab.known_hosts,
        accept_new_host_keys=False,
        connect_timeout=10,
    )


def hosts(lab: Lab) -> list[Host]:
    return [Host(address=h.ip, user="root", port=h.ssh_port, source="lab") for h in lab.hosts]


def ensure_lab_image(lab: Lab, base: str, wheelhouse: Path, lines: list[str]) -> BuiltImage:
    """shapcluster.images.ensure_image for the lab's head, progress lines collected in ``lines``."""
    config = ImageConfig(IMAGE_NAME, base)
    return ensure_image(hosts(lab)[0], ssh_options(lab), config, DOCKER_DIR, wheelhouse, lines.append)


@pytest.fixture(scope="session")
def built_image(lab: Lab, lab_base_image: str, wheelhouse: Path) -> BuiltImage:
    """The cluster image built ONCE per session on the head with shapcluster.images; every lab
    test that needs the image (and `shapcluster up`, which then finds it) reuses it."""
    lines: list[str] = []
    started = time.monotonic()
    built = ensure_lab_image(lab, lab_base_image, wheelhouse, lines)
    log.info("image built in %.0f s; %d progress lines", time.monotonic() - started, len(lines))
    assert any("Step" in line for line in lines), lines[-20:]  # the build log reached progress
    return built


@pytest.fixture(scope="session")
def shipped_image(lab: Lab, built_image: BuiltImage) -> Iterator[BuiltImage]:
    ssh = ssh_options(lab)
    runners = [SshRunner(host, ssh) for host in hosts(lab)]
    try:
        lines: list[str] = []
        shipped = ship_image(
            runners[0], runners[1:], built_image.tag, built_image.image_id, lines.append,
            transfer=SshImageTransfer(hosts(lab), ssh),
        )  # fmt: skip
        assert shipped == [h.name for h in hosts(lab)[1:]], lines
        yield built_image
    finally:
        for runner in runners:
            runner.close()
