"""A non-root SSH user in the docker group runs the whole life-cycle (issue 12, fault 1).

The lab's sshd accepts the lab key for any user (one authorized_keys file), so a user made
here for the test logs in like root does; each host's Docker socket belongs to the docker group.
A job's results are written as root inside the head container; `down --purge` must still leave
the user's remote directory gone. The user and its directories are removed afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shapcluster import commands as cmd
from shapcluster.errors import ExitStatus
from shapcluster.images import BuiltImage
from tests.lab.conftest import IMAGE_NAME, write_cluster_config
from tests.lab.lab import Lab
from tests.lab.test_up_down import shapcluster

pytestmark = pytest.mark.lab
USER = "scrayop"
# Another name for the session's image: `up` tags it (no build), and the purge removes only this
# tag, so the lab tests after this one keep the image.
CLUSTER = "nonroot"


@pytest.fixture
def ssh_user() -> Iterator[str]:
    """A local user in the docker group, unlocked for key login (sshd runs without PAM)."""
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/bin/sh", "--groups", "docker", USER], check=True
    )
    try:
        subprocess.run(["usermod", "--password", "*", USER], check=True)  # not locked, no password
        yield USER
    finally:
        subprocess.run(["userdel", USER], check=False)


@pytest.fixture
def user_dirs(ssh_user: str) -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="sclab-nonroot-", dir="/var/tmp"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def write_config(folder: Path, lab: Lab, base_image: str, remote_root: Path) -> Path:
    return write_cluster_config(
        folder, lab, name=CLUSTER, base_image=base_image, remote_dir=f"{remote_root}/{{host}}",
        image=f"{IMAGE_NAME}-nonroot", user=USER,
    )  # fmt: skip


def test_a_non_root_ssh_user_can_purge_what_a_job_wrote_as_root(
    lab: Lab, lab_base_image: str, shipped_image: BuiltImage, wheelhouse: Path, ssh_user: str,
    user_dirs: Path, tmp_path: Path,
) -> None:  # fmt: skip
    remote_root = user_dirs / "remote"
    remote_root.mkdir(mode=0o755)
    config = write_config(tmp_path, lab, lab_base_image, remote_root)

    # Preflight refuses a remote_dir the user may not write, before any build.
    refused = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
    assert refused.returncode == ExitStatus.INPUT, refused.stdout + refused.stderr
    assert f"is not writable by the SSH user ({remote_root} is not)" in refused.stderr.replace("\n", "")

    shutil.chown(remote_root, ssh_user)
    try:
        up = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
        assert up.returncode == 0, up.stdout + up.stderr
        head_dir = remote_root / lab.head.ip
        assert head_dir.stat().st_uid != 0  # made by the SSH user
        head = cmd.container_name(CLUSTER, cmd.Role.HEAD, lab.head.ip)
        # What a job does: results written by root inside the head container.
        lab.head.docker(
            "exec", head, "sh", "-c", "mkdir -p /shapcluster/results/j && echo 1 > /shapcluster/results/j/v"
        )
        assert (head_dir / "results" / "j" / "v").stat().st_uid == 0

        down = shapcluster("down", "--config", str(config))  # not purged: results handed back
        assert down.returncode == 0, down.stdout + down.stderr
        assert (head_dir / "results" / "j" / "v").stat().st_uid == pwd_uid(ssh_user)

        # Root-owned leftovers without a running head (a crashed container): purge still works.
        up = shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
        assert up.returncode == 0, up.stdout + up.stderr
        lab.head.docker(
            "exec", head, "sh", "-c", "mkdir -p /shapcluster/results/k && echo 1 > /shapcluster/results/k/v"
        )
        lab.head.docker("rm", "--force", head)
        purged = shapcluster("down", "--config", str(config), "--purge", "-y")
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert not any(remote_root.iterdir()), list(remote_root.rglob("*"))
    finally:
        subprocess.run(["chown", "-R", "root:root", str(user_dirs)], check=False)
        shapcluster("down", "--config", str(config), "--purge", "-y", timeout=300)


def pwd_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid
