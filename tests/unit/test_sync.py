from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from shapcluster import sync
from shapcluster.commands import RemoteLayout
from shapcluster.config import SyncConfig
from shapcluster.errors import InputError, RemoteError
from shapcluster.remote.base import Result
from shapcluster.remote.fake import FakeRunner
from shapcluster.remote.group import HostsFailedError
from shapcluster.remote.local import LocalRunner
from shapcluster.sync import (
    LocalTree,
    ManifestEntry,
    RemoteStat,
    SyncProgress,
    SyncReport,
    scan_local_tree,
    sync_project,
    sync_tree,
    sync_trees,
)

ODD_NAMES = ("name with spaces.txt", "q'uo\"te $HOME `x`.txt", "-dash.txt", "ünï.txt")


class SpyRunner(LocalRunner):
    """A LocalRunner that records what it is asked to do and can fail commands on demand."""

    def __init__(self, name: str = "local") -> None:
        super().__init__(name)
        self.commands: list[str] = []
        self.puts: list[str] = []
        self.fail_pattern: str | None = None

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        hide: bool = True,
        secret: bool = False,
        check: bool = True,
        stdin: str | None = None,
    ) -> Result:
        self.commands.append(command)
        if self.fail_pattern and re.search(self.fail_pattern, command):
            return Result(command, 2, "", "simulated failure\n")
        return super().run(command, timeout=timeout, hide=hide, secret=secret, check=check, stdin=stdin)

    def put(self, local_path: Path, remote_path: str, mode: int = 0o600) -> None:
        self.puts.append(remote_path)
        super().put(local_path, remote_path, mode)


def write(path: Path, content: str | bytes, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    if mode is not None:
        path.chmod(mode)
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(root / "main.py", "print('hi')\n")
    write(root / "pkg" / "__init__.py", "")
    write(root / "pkg" / "deep" / "mod.py", "x = 1\n")
    write(root / "run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    write(root / "data.bin", bytes(range(256)) * 100)
    for name in ODD_NAMES:
        write(root / "odd dir" / name, f"content of {name}\n")
    # Never shipped:
    write(root / "__pycache__" / "main.cpython-311.pyc", b"\0junk")
    write(root / "pkg" / "mod.pyc", b"\0junk")
    write(root / ".main.py.swp", b"swap")
    write(root / ".git" / "HEAD", "ref: refs/heads/main\n")
    return root


@pytest.fixture
def dest(tmp_path: Path) -> str:
    return str(tmp_path / "hosts" / "h1" / "app")


def remote_files(remote_dir: str) -> dict[str, bytes]:
    root = Path(remote_dir)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and sync.STATE_DIR not in p.relative_to(root).parts
    }


def local_files(tree: LocalTree) -> dict[str, bytes]:
    return {path: file.source.read_bytes() for path, file in tree.files.items()}


def stored_manifest(remote_dir: str) -> dict[str, dict[str, object]]:
    data = json.loads(Path(sync.manifest_path(remote_dir)).read_text())
    files: dict[str, dict[str, object]] = data["files"]
    return files


def do_sync(runner: LocalRunner, src: Path, dest: str) -> SyncReport:
    return sync_tree(runner, scan_local_tree(src), dest)


# ---------------------------------------------------------------- local scan


def test_scan_skips_caches_and_editor_files_and_normalises_modes(src: Path) -> None:
    tree = scan_local_tree(src)
    assert sorted(tree.files) == sorted(
        ["main.py", "pkg/__init__.py", "pkg/deep/mod.py", "run.sh", "data.bin"]
        + [f"odd dir/{name}" for name in ODD_NAMES]
    )
    assert set(tree.skipped) == {"__pycache__/", ".git/", ".main.py.swp", "pkg/mod.pyc"}
    assert tree.files["run.sh"].mode == 0o755
    assert tree.files["main.py"].mode == 0o644
    assert tree.files["data.bin"].size == 25600
    assert tree.total_bytes == sum((src / p).stat().st_size for p in tree.files)


def test_symlinks_inside_are_copied_outside_are_refused(tmp_path: Path, src: Path) -> None:
    (src / "alias.py").symlink_to("main.py")
    tree = scan_local_tree(src)
    assert tree.files["alias.py"].sha256 == tree.files["main.py"].sha256

    write(tmp_path / "secret.txt", "outside")
    (src / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (src / "linked-dir").symlink_to(src / "pkg")
    (src / "dangling").symlink_to(src / "nowhere")
    with pytest.raises(InputError) as caught:
        scan_local_tree(src)
    message = caught.value.message
    assert "cannot sync 3 entries" in message
    assert "leak.txt: a symlink out of the synced folder" in message
    assert "linked-dir: a symlink to a folder" in message
    assert "dangling: a symlink to" in message


def test_missing_local_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as caught:
        scan_local_tree(tmp_path / "nope")
    assert caught.value.hint is not None and "sync.app_dir" in caught.value.hint


def test_a_file_changed_after_the_scan_is_not_sent(tmp_path: Path, src: Path) -> None:
    tree = scan_local_tree(src)
    (src / "main.py").write_text("print('edited meanwhile')\n")
    with pytest.raises(InputError, match="changed or vanished while it was being synced"):
        sync.write_batch(tree, ["main.py"], tmp_path / "batch.tar")


# ---------------------------------------------------------------- real behaviour (LocalRunner)


def test_first_sync_copies_everything_byte_identical(src: Path, dest: str) -> None:
    runner = SpyRunner("h1")
    ticks = iter([100.0, 102.5])
    report = sync_tree(runner, scan_local_tree(src), dest, clock=lambda: next(ticks))
    tree = scan_local_tree(src)
    assert remote_files(dest) == local_files(tree)
    assert report.uploaded == tuple(tree.files)
    assert (report.deleted, report.unchanged, report.rehashed) == ((), 0, 0)
    assert report.bytes_sent > tree.total_bytes  # tar headers on top of the contents
    assert report.seconds == 2.5
    assert os.stat(Path(dest) / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(Path(dest) / "main.py").st_mode & 0o777 == 0o644
    manifest = stored_manifest(dest)
    assert sorted(manifest) == sorted(tree.files)
    assert manifest["main.py"]["sha256"] == tree.files["main.py"].sha256
    assert not (Path(sync.state_dir(dest)) / sync.STAGING_NAME).exists()
    assert not Path(sync.incoming_path(dest)).exists()


def test_second_sync_sends_and_hashes_nothing(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    runner = SpyRunner()
    report = do_sync(runner, src, dest)
    assert (report.uploaded, report.deleted, report.bytes_sent, report.rehashed) == ((), (), 0, 0)
    assert report.unchanged == len(scan_local_tree(src).files)
    assert not report.changed
    assert runner.commands == [sync.probe_command(dest)]  # one round trip, nothing written
    assert runner.puts == []


def test_only_a_changed_file_is_sent(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    (src / "pkg" / "deep" / "mod.py").write_text("x = 2  # changed\n")
    os.utime(src / "main.py", (1, 1))  # a touched but identical file is not sent
    runner = SpyRunner()
    report = do_sync(runner, src, dest)
    assert report.uploaded == ("pkg/deep/mod.py",)
    assert report.deleted == ()
    assert (Path(dest) / "pkg" / "deep" / "mod.py").read_text() == "x = 2  # changed\n"
    assert remote_files(dest) == local_files(scan_local_tree(src))
    assert report.bytes_sent < scan_local_tree(src).files["data.bin"].size  # not sent again
    # The batch, the manifest without mod.py (before it is replaced), the new manifest.
    assert runner.puts == [sync.incoming_path(dest)] + [sync.manifest_path(dest)] * 2


def test_mode_change_is_sent(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    (src / "main.py").chmod(0o755)
    report = do_sync(SpyRunner(), src, dest)
    assert report.uploaded == ("main.py",)
    assert os.stat(Path(dest) / "main.py").st_mode & 0o777 == 0o755


def test_deleted_files_and_emptied_folders_are_removed(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    (src / "pkg" / "deep" / "mod.py").unlink()
    (src / "pkg" / "deep").rmdir()
    (src / "odd dir" / ODD_NAMES[1]).unlink()
    report = do_sync(SpyRunner(), src, dest)
    assert report.deleted == ("odd dir/" + ODD_NAMES[1], "pkg/deep/mod.py")
    assert report.uploaded == ()
    assert not (Path(dest) / "pkg" / "deep").exists()
    assert (Path(dest) / "pkg" / "__init__.py").exists()
    assert remote_files(dest) == local_files(scan_local_tree(src))
    assert sorted(stored_manifest(dest)) == sorted(scan_local_tree(src).files)


def test_a_folder_can_become_a_file_and_back(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    for path in (src / "pkg").rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted((src / "pkg").rglob("*"), reverse=True):
        path.rmdir()
    (src / "pkg").rmdir()
    write(src / "pkg", "now a file\n")
    do_sync(SpyRunner(), src, dest)
    assert (Path(dest) / "pkg").read_text() == "now a file\n"
    (src / "pkg").unlink()
    write(src / "pkg" / "again.py", "y = 1\n")
    do_sync(SpyRunner(), src, dest)
    assert remote_files(dest) == local_files(scan_local_tree(src))


def test_odd_names_round_trip(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    for name in ODD_NAMES:
        assert (Path(dest) / "odd dir" / name).read_text() == f"content of {name}\n"
    (src / "odd dir" / ODD_NAMES[1]).write_text("changed\n")
    (src / "odd dir" / ODD_NAMES[2]).unlink()
    report = do_sync(SpyRunner(), src, dest)
    assert report.uploaded == ("odd dir/" + ODD_NAMES[1],)
    assert report.deleted == ("odd dir/" + ODD_NAMES[2],)
    assert remote_files(dest) == local_files(scan_local_tree(src))


def test_a_failing_tar_keeps_the_old_manifest_and_the_next_sync_redoes_the_work(
    src: Path, dest: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    do_sync(SpyRunner(), src, dest)
    before = Path(sync.manifest_path(dest)).read_text()
    (src / "main.py").write_text("print('v2')\n")
    bin_dir = write(
        tmp_path / "bin" / "tar", "#!/bin/sh\necho 'tar: write error' >&2\nexit 2\n", 0o755
    ).parent
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(RemoteError) as caught:
        do_sync(SpyRunner("h1"), src, dest)
    assert (
        caught.value.message == f"h1: unpacking files into {dest} failed (exit status 2):\ntar: write error"
    )
    assert Path(sync.manifest_path(dest)).read_text() == before
    assert (Path(dest) / "main.py").read_text() == "print('hi')\n"

    monkeypatch.undo()
    report = do_sync(SpyRunner(), src, dest)
    assert report.uploaded == ("main.py",)
    assert report.rehashed == 0
    assert remote_files(dest) == local_files(scan_local_tree(src))


def test_interrupted_install_forgets_only_the_touched_files(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    (src / "main.py").write_text("print('v2')\n")
    (src / "run.sh").unlink()
    runner = SpyRunner()
    runner.fail_pattern = re.escape(sync.install_staged_command(dest))
    with pytest.raises(RemoteError, match="moving new files into"):
        do_sync(runner, src, dest)
    manifest = stored_manifest(dest)
    assert "main.py" not in manifest
    assert "run.sh" not in manifest
    assert "pkg/deep/mod.py" in manifest

    report = do_sync(SpyRunner(), src, dest)
    assert report.rehashed == 1  # main.py: still the old content, no longer vouched for
    assert report.uploaded == ("main.py",)
    assert report.deleted == ()  # run.sh was deleted before the failure
    assert remote_files(dest) == local_files(scan_local_tree(src))


def test_files_edited_on_the_host_are_rehashed_and_repaired(src: Path, dest: str) -> None:
    do_sync(SpyRunner(), src, dest)
    (Path(dest) / "main.py").write_text("tampered with\n")
    write(Path(dest) / "stray.txt", "left behind\n")
    report = do_sync(SpyRunner(), src, dest)
    assert report.rehashed == 2
    assert report.uploaded == ("main.py",)
    assert report.deleted == ("stray.txt",)
    assert remote_files(dest) == local_files(scan_local_tree(src))


@pytest.mark.parametrize("damage", ["{not json", '{"version": 99, "files": {}}', ""])
def test_an_unusable_manifest_means_hashing_not_resending(src: Path, dest: str, damage: str) -> None:
    do_sync(SpyRunner(), src, dest)
    Path(sync.manifest_path(dest)).write_text(damage)
    runner = SpyRunner()
    report = do_sync(runner, src, dest)
    assert report.rehashed == len(scan_local_tree(src).files)
    assert (report.uploaded, report.deleted) == ((), ())
    assert runner.puts == [sync.manifest_path(dest)]
    assert sorted(stored_manifest(dest)) == sorted(scan_local_tree(src).files)  # rebuilt
    assert do_sync(SpyRunner(), src, dest).rehashed == 0


def test_refuses_to_delete_files_it_did_not_put_there(src: Path, dest: str) -> None:
    write(Path(dest) / "precious.txt", "not ours\n")
    with pytest.raises(RemoteError, match=r"already holds 1 files that shapcluster did not put") as caught:
        do_sync(SpyRunner("h1"), src, dest)
    assert caught.value.hint is not None and "Empty that folder on h1" in caught.value.hint
    assert (Path(dest) / "precious.txt").exists()


@pytest.mark.parametrize("bad", ["relative/app", "/", "/opt", "/opt/x/../y", "/opt/app/"])
def test_refuses_unsafe_remote_dirs(src: Path, bad: str) -> None:
    runner = SpyRunner()
    with pytest.raises(InputError, match="refusing to sync into"):
        sync_tree(runner, scan_local_tree(src), bad)
    assert runner.commands == []


def test_batches_report_progress(src: Path, dest: str) -> None:
    events: list[SyncProgress] = []
    tree = scan_local_tree(src)
    runner = SpyRunner("h1")
    sync_tree(runner, tree, dest, progress=events.append, batch_bytes=1000)
    assert len(runner.puts) >= 2  # data.bin alone exceeds a batch
    assert events[0] == SyncProgress("h1", dest, 0, len(tree.files), 0, tree.total_bytes)
    assert events[-1] == SyncProgress("h1", dest, len(tree.files), len(tree.files), *[tree.total_bytes] * 2)
    done = [event.bytes_done for event in events]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert remote_files(dest) == local_files(tree)

    events.clear()
    sync_tree(runner, tree, dest, progress=events.append)
    assert events == [SyncProgress("h1", dest, 0, 0, 0, 0)]


def test_sync_project_puts_app_and_data_in_each_hosts_own_dirs(src: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data / "wine.csv", "a,b\n1,2\n")
    runners = [SpyRunner("h1"), SpyRunner("h2")]
    layouts = {name: RemoteLayout(str(tmp_path / "remote" / name)) for name in ("h1", "h2")}
    reports = sync_project(runners, layouts, SyncConfig(app_dir=src, data_dir=data))
    for name, layout in layouts.items():
        app_report, data_report = reports[name]
        assert (app_report.host, app_report.remote_dir) == (name, layout.app_dir)
        assert data_report.uploaded == ("wine.csv",)
        assert remote_files(layout.app_dir) == local_files(scan_local_tree(src))
        assert remote_files(layout.data_dir) == {"wine.csv": b"a,b\n1,2\n"}
    only_app = sync_project(runners, layouts, SyncConfig(app_dir=src, data_dir=None))
    assert [len(r) for r in only_app.values()] == [1, 1]


# ---------------------------------------------------------------- many hosts (FakeRunner)


def fake_host(name: str) -> FakeRunner:
    return FakeRunner(name).respond(r"^mkdir -p -- ", stdout="new\0\0")


def test_errors_of_all_hosts_are_reported_together(src: Path) -> None:
    tree = scan_local_tree(src)
    ok = fake_host("ok")
    full = fake_host("full").respond(
        r"tar -x", exit_code=2, stderr="tar: main.py: Cannot write: No space left on device\n"
    )
    down = FakeRunner("down").fail(r".", "cannot reach SSH on port 22")
    dirs = {name: f"/srv/{name}/app" for name in ("ok", "full", "down")}
    with pytest.raises(HostsFailedError) as caught:
        sync_trees([ok, full, down], tree, dirs)
    assert caught.value.message == (
        f"syncing {src} failed on 2 of 3 hosts:\n"
        "  - full: unpacking files into /srv/full/app failed (exit status 2):\n"
        "    tar: main.py: Cannot write: No space left on device\n"
        "  - down: cannot reach SSH on port 22"
    )
    assert list(caught.value.result.successes) == ["ok"]
    assert caught.value.result.successes["ok"].uploaded == tuple(tree.files)


def test_commands_sent_to_a_new_host(src: Path) -> None:
    tree = scan_local_tree(src)
    runner = fake_host("h")
    d = "/srv/my app/app"
    sync_tree(runner, tree, d)
    manifest = f"{d}/.shapcluster-sync/manifest.json"

    def upload(name: str, remote: str, mode: str) -> str:  # an SFTP put from a scratch folder here
        return rf"# upload /\S+/{name} -> {re.escape(shlex.quote(remote))} \(sftp, mode {mode}\)"

    expected = [
        re.escape(sync.probe_command(d)),
        re.escape(sync.prepare_staging_command(d)),
        upload("incoming.tar", f"{d}/.shapcluster-sync/incoming.tar", "0600"),
        re.escape(sync.unpack_batch_command(d)),
        re.escape(sync.install_staged_command(d)),  # no manifest yet, so none to amend first
        upload("manifest.json", manifest, "0644"),
    ]
    assert len(runner.commands) == len(expected), runner.commands
    for command, pattern in zip(runner.commands, expected, strict=True):
        assert re.fullmatch(pattern, command), command
    assert json.loads(runner.files[manifest][0])["files"].keys() == tree.files.keys()


# ---------------------------------------------------------------- exact commands


D = "/srv/it's here/app"
QD = "'/srv/it'\"'\"'s here/app'"


def test_probe_command() -> None:
    assert sync.probe_command(D) == (
        f"mkdir -p -- {QD} && cd -- {QD} && "
        "{ if [ -d .shapcluster-sync ]; then printf 'tracked\\000'; else printf 'new\\000'; fi; "
        "cat -- .shapcluster-sync/manifest.json 2>/dev/null; printf '\\000'; "
        "find . -path ./.shapcluster-sync -prune -o -type f "
        "-exec stat --printf '%s %Y %a %n\\0' -- {} +; }"
    )


def test_path_list_commands() -> None:
    names = ["a b", "it's", "-x"]
    assert sync.hash_files_command(D, names) == f"cd -- {QD} && sha256sum -z -- 'a b' 'it'\"'\"'s' -x"
    assert sync.delete_files_command(D, names) == f"cd -- {QD} && rm -f -- 'a b' 'it'\"'\"'s' -x"
    assert (
        sync.remove_empty_dirs_command(D, ["p q/r"])
        == f"cd -- {QD} && rmdir -p --ignore-fail-on-non-empty -- 'p q/r'"
    )


def test_staging_commands() -> None:
    state = "'/srv/it'\"'\"'s here/app/.shapcluster-sync'"
    assert sync.prepare_staging_command(D) == (
        f"mkdir -p -- {state} && cd -- {state} && rm -rf -- staging incoming.tar && mkdir -- staging"
    )
    assert sync.unpack_batch_command(D) == (
        f"cd -- {state} && tar -x -p --no-same-owner -f incoming.tar -C staging && rm -f -- incoming.tar"
    )
    assert sync.install_staged_command(D) == (
        "cd -- '/srv/it'\"'\"'s here/app/.shapcluster-sync/staging' && find . -type f -exec sh -c "
        '\'for f in "$@"; do mkdir -p -- "$0/${f%/*}" && mv -f -- "$f" "$0/$f" || exit 1; done\' '
        f"{QD} {{}} + && cd .. && rm -rf -- staging"
    )


def test_split_paths_keeps_commands_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "MAX_COMMAND_CHARS", 10)
    build: Callable[[Sequence[str]], str] = "|".join
    assert sync.split_paths(["aaaa", "bbbb", "cc", "dddddddddddd"], build) == [
        "aaaa|bbbb",
        "cc",
        "dddddddddddd",
    ]
    assert sync.split_paths([], build) == []


# ---------------------------------------------------------------- parsing and planning


def test_parse_probe_and_hashes() -> None:
    state = sync.parse_probe("tracked\0\0" + "5 100 644 ./a b\0" + "0 7 755 ./x/it's\0", "/r")
    assert state.tracked and state.manifest is None
    assert state.files == {"a b": RemoteStat(5, 100, 0o644), "x/it's": RemoteStat(0, 7, 0o755)}
    with pytest.raises(RemoteError, match="unexpected output while listing /r"):
        sync.parse_probe("bash: stat: not found\n", "/r")
    with pytest.raises(RemoteError, match="unexpected `stat` output"):
        sync.parse_probe("new\0\0garbage\0", "/r")
    digest = "ab" * 32
    assert sync.parse_hashes(f"{digest}  a b\0{digest} *c\nd\0") == {"a b": digest, "c\nd": digest}
    with pytest.raises(RemoteError, match="unexpected `sha256sum` output"):
        sync.parse_hashes("sha256sum: x: No such file\0")


def test_manifest_round_trip_and_rejects() -> None:
    entries = {"a": ManifestEntry("ab" * 32, 3, 9, 0o644)}
    assert sync.parse_manifest(sync.render_manifest(entries), "/r") == entries
    bad_entry = json.dumps(
        {"version": 1, "files": {"a": {"sha256": "x", "size": "3", "mtime": 1, "mode": 1}}}
    )
    for text in ("", "[]", "{", bad_entry, '{"version": 1}'):
        assert sync.parse_manifest(text, "/r") is None


def test_plan_trusts_only_manifest_entries_whose_stat_matches(src: Path) -> None:
    tree = scan_local_tree(src)
    main = tree.files["main.py"]
    good = ManifestEntry(main.sha256, main.size, 50, 0o644)
    state = sync.RemoteState(
        tracked=True,
        manifest={"main.py": good, "run.sh": ManifestEntry("00" * 32, 1, 1, 0o755)},
        files={"main.py": RemoteStat(main.size, 50, 0o644), "run.sh": RemoteStat(2, 1, 0o755)},
    )
    assert sync.untrusted_files(state) == ["run.sh"]
    plan = sync.plan_sync(tree, state, {"run.sh": tree.files["run.sh"].sha256})
    assert "main.py" not in plan.upload and "run.sh" not in plan.upload
    assert plan.manifest["main.py"] == good  # the host's mtime, not the local one
    assert plan.interim.keys() == {"main.py", "run.sh"}


def test_leaf_dirs() -> None:
    assert sync.leaf_dirs(["top.txt", "a/x", "a/b/y", "a/b/z", "c d/e/f"]) == ["a/b", "c d/e"]
