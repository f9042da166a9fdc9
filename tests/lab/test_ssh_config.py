"""The user's ssh config on the lab (issue 12, fault 9): a Host alias with HostName, User and
IdentityFile, and a ProxyJump through a worker, reach the head as OpenSSH would; with
use_ssh_config = false the same alias is not known."""

from __future__ import annotations

from pathlib import Path

import pytest

from shapcluster.errors import ExitStatus
from tests.lab.lab import Lab
from tests.lab.test_up_down import REPO, shapcluster

pytestmark = pytest.mark.lab


def write(folder: Path, lab: Lab, head: str, *, use: bool = True) -> Path:
    worker = lab.workers[0]
    (folder / "ssh_config").write_text(
        f"Host labhead\n  HostName {lab.head.ip}\n  User root\n  IdentityFile {lab.ssh_key}\n"
        f"Host viaworker\n  HostName {lab.head.ip}\n  User root\n  IdentityFile {lab.ssh_key}\n"
        f"  ProxyJump root@{worker.ip}\n"
        # The jump host is looked up on its own, as OpenSSH does.
        f"Host {worker.ip}\n  IdentityFile {lab.ssh_key}\n"
    )
    (folder / "workers.txt").write_text("")
    path = folder / "shapcluster.toml"
    path.write_text(
        f'[cluster]\nname = "sshcfg"\nremote_dir = "{lab.dir}/sshcfg/{{host}}"\n'
        f'[head]\nhost = "{head}"\nray_address = "{lab.head.ip}"\n'
        f'[ssh]\nknown_hosts = "{lab.known_hosts}"\nconfig_file = "{folder / "ssh_config"}"\n'
        f"use_ssh_config = {'true' if use else 'false'}\n"
        f'[sync]\napp_dir = "{REPO / "app"}"\n'
    )
    return path


@pytest.mark.parametrize("alias", ["labhead", "viaworker"])
def test_an_ssh_config_alias_reaches_the_head(lab: Lab, tmp_path: Path, alias: str) -> None:
    status = shapcluster("status", "--config", str(write(tmp_path, lab, alias)), timeout=120)
    # No cluster runs there: 9 says SSH and Docker answered (an SSH failure would be 6).
    assert status.returncode == ExitStatus.NO_CLUSTER, status.stdout + status.stderr
    assert "no Ray head container runs there" in status.stderr


def test_without_the_ssh_config_the_alias_is_unknown(lab: Lab, tmp_path: Path) -> None:
    status = shapcluster("status", "--config", str(write(tmp_path, lab, "labhead", use=False)), timeout=120)
    assert status.returncode == ExitStatus.REMOTE, status.stdout + status.stderr
    assert "labhead: cannot resolve labhead" in status.stderr.replace("\n", " ")
