"""Sync over real SSH into separate lab hosts: each host gets the files in its own remote dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shapcluster.commands import RemoteLayout
from shapcluster.config import SshConfig
from shapcluster.inventory import Host
from shapcluster.remote.ssh import SshRunner
from shapcluster.sync import LocalTree, SyncReport, scan_local_tree, sync_trees
from tests.lab.lab import Host as LabHost
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
ODD_NAME = "notes with 'quotes' and spaces.txt"


def ssh_runner(lab: Lab, host: LabHost) -> SshRunner:
    options = SshConfig(
        user="root",
        key=lab.ssh_key,
        known_hosts=lab.known_hosts,
        accept_new_host_keys=False,
        connect_timeout=10,
    )
    return SshRunner(Host(host.ip, user="root", port=host.ssh_port), options)


def app_dir(host: LabHost) -> Path:
    # A folder of this test's own below the host's remote dir, so other lab tests are unaffected.
    return Path(RemoteLayout(str(host.remote_dir / "test-sync")).app_dir)


def remote_contents(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".shapcluster-sync" not in p.relative_to(root).parts
    }


def local_contents(tree: LocalTree) -> dict[str, bytes]:
    return {path: file.source.read_bytes() for path, file in tree.files.items()}


@pytest.fixture
def hosts(lab: Lab) -> Iterator[tuple[LabHost, LabHost, LabHost]]:
    head, worker1, worker2 = lab.hosts[:3]
    for host in (head, worker1, worker2):
        shutil.rmtree(app_dir(host).parent, ignore_errors=True)
    yield head, worker1, worker2
    for host in (head, worker1, worker2):
        shutil.rmtree(app_dir(host).parent, ignore_errors=True)


def test_sync_app_to_each_hosts_own_dir_then_only_changes(
    lab: Lab, hosts: tuple[LabHost, LabHost, LabHost], tmp_path: Path
) -> None:
    head, worker1, worker2 = hosts
    # A snapshot of the repo's app/ (others may edit the original while this test runs).
    source = tmp_path / "app"
    shutil.copytree(REPO / "app", source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / ODD_NAME).write_text("odd names survive ssh quoting\n")
    (source / "bin").mkdir()
    (source / "bin" / "run.sh").write_text("#!/bin/sh\n")
    (source / "bin" / "run.sh").chmod(0o755)
    tree = scan_local_tree(source)
    assert len(tree.files) >= 10

    head_runner, worker_runner = ssh_runner(lab, head), ssh_runner(lab, worker1)
    runners = [head_runner, worker_runner]
    dirs = {head.ip: str(app_dir(head)), worker1.ip: str(app_dir(worker1))}
    try:
        # Only the head first: nothing may appear in worker1's directory.
        first = sync_trees([head_runner], tree, {head.ip: dirs[head.ip]})
        assert set(first[head.ip].uploaded) == set(tree.files)
        assert remote_contents(app_dir(head)) == local_contents(tree)
        assert not app_dir(worker1).exists()

        reports: dict[str, SyncReport] = sync_trees(runners, tree, dirs)
        assert reports[head.ip].uploaded == ()  # already there
        assert set(reports[worker1.ip].uploaded) == set(tree.files)
        for host in (head, worker1):
            assert remote_contents(app_dir(host)) == local_contents(tree)
            assert (app_dir(host) / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755
        assert not app_dir(worker2).exists()

        again = sync_trees(runners, tree, dirs)
        for report in again.values():
            assert (report.uploaded, report.deleted, report.bytes_sent, report.rehashed) == ((), (), 0, 0)

        (source / ODD_NAME).write_text("changed once\n")
        (source / "bin" / "run.sh").unlink()
        changed_tree = scan_local_tree(source)
        changed = sync_trees(runners, changed_tree, dirs)
        for host in (head, worker1):
            assert changed[host.ip].uploaded == (ODD_NAME,)
            assert changed[host.ip].deleted == ("bin/run.sh",)
            assert remote_contents(app_dir(host)) == local_contents(changed_tree)
            assert not (app_dir(host) / "bin").exists()
    finally:
        for runner in runners:
            runner.close()
