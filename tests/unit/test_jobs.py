"""Submitting to a cluster without one: a FakeRunner head and a fake Jobs API client.

Entrypoint and data mapping are asserted exactly; the flows (success, failure statuses, Ctrl-C,
no cluster, rejected token) go through ``jobs.submit`` as the CLI calls it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import AuthenticationError
from typer.testing import CliRunner

from app.config import JobConfig
from shapcluster import jobs, sync
from shapcluster.cli import app
from shapcluster.config import ClusterConfig, load_cluster_config
from shapcluster.creds import CredentialsMeta
from shapcluster.errors import (
    ExitStatus,
    InputError,
    JobFailedError,
    JobStoppedError,
    NoClusterError,
    RemoteError,
    ResultsDisagreeError,
)
from shapcluster.remote.fake import FakeRunner
from shapcluster.secrets import MASK, mask_secrets

TOKEN = "f00dcafe" * 8
JOB_ID = "shap-20261123-101500-ab12"
RESULTS = f"/srv/sc/results/{JOB_ID}"
HEAD_PS = "c1|shapcluster-lab-head-10-9-0-1|head|sha256:0123|abcd|running|Up 5 minutes\n"


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    (tmp_path / "workers.txt").write_text("")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text("print('hi')\n")
    (tmp_path / "data" / "red").mkdir(parents=True)
    (tmp_path / "data" / "red" / "wine.csv").write_text("a;quality\n1;5\n")
    (tmp_path / "shapcluster.toml").write_text(
        '[cluster]\nname = "lab"\nremote_dir = "/srv/sc"\n[head]\nhost = "root@10.9.0.1"\n'
        '[workers]\nfile = "workers.txt"\n[sync]\napp_dir = "app"\ndata_dir = "data"\n'
    )
    return load_cluster_config(tmp_path / "shapcluster.toml")


# ---------------------------------------------------------------- fakes


@dataclass
class Details:
    """The attributes of Ray's JobDetails that jobs.py reads."""

    submission_id: str | None
    status: str
    entrypoint: str = ""
    driver_exit_code: int | None = None
    message: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    job_id: str | None = None


@dataclass
class FakeClient:
    """A Jobs API that plays back log chunks, then ends in ``status`` with ``exit_code``."""

    chunks: list[str | type[BaseException]] = field(default_factory=list)
    status: str = "SUCCEEDED"
    exit_code: int | None = 0
    full_log: str = ""
    ends_as: str | None = None  # the status once the log stream has ended
    listed: list[Details] = field(default_factory=list)
    submitted: list[tuple[str, str]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    info_calls: int = 0

    def submit_job(self, *, entrypoint: str, submission_id: str) -> str:
        self.submitted.append((entrypoint, submission_id))
        return submission_id

    def get_job_info(self, job_id: str) -> Details:
        self.info_calls += 1
        if job_id != JOB_ID:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return Details(job_id, self.status, "cd /shapcluster && python -m app", self.exit_code)

    def list_jobs(self) -> list[Details]:
        return self.listed

    def get_job_logs(self, job_id: str) -> str:
        return self.full_log

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        for chunk in self.chunks:
            if isinstance(chunk, type):
                raise chunk()
            yield chunk
        if self.ends_as is not None:
            self.status = self.ends_as

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        self.status, self.exit_code = "STOPPED", None
        return True


@dataclass
class Factory:
    client: FakeClient | None = None
    error: Exception | None = None
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __call__(self, address: str, headers: dict[str, str]) -> FakeClient:
        self.calls.append((address, headers))
        if self.error is not None:
            raise self.error
        assert self.client is not None
        return self.client


def healthy_head(*, with_results: bool = True) -> FakeRunner:
    head = FakeRunner("10.9.0.1", tunnel_port=40123)
    head.respond(r"^docker ps --all --no-trunc", stdout=HEAD_PS)
    head.respond(r"^cat -- /srv/sc/secrets/ray-auth-token$", stdout=TOKEN + "\n")
    if with_results:
        head.respond(r"find /srv/sc/results/", stdout=f"{RESULTS}/summary.json\n{RESULTS}/shap_values.csv\n")
        head.files[f"{RESULTS}/summary.json"] = (b'{"run_id": "%s", "rows": 4}\n' % JOB_ID.encode(), 0o644)
        head.files[f"{RESULTS}/shap_values.csv"] = (b"row,class,a\n1,5,0.5\n", 0o644)
    return head


@dataclass
class Run:
    head: FakeRunner
    factory: Factory
    lines: list[str] = field(default_factory=list)
    confirms: list[bool] = field(default_factory=list)
    answer: bool = False

    def confirm(self) -> bool:
        self.confirms.append(self.answer)
        return self.answer


def submit(config: ClusterConfig, run: Run, job: JobConfig | None = None, **kwargs: Any) -> jobs.JobOutcome:
    job = job or JobConfig(rows=4, run_id=JOB_ID, output_dir=str(config.path.parent / "out"))
    return jobs.submit(
        config,
        job,
        on_log=run.lines.append,
        confirm_stop=run.confirm,
        connect=lambda host: run.head,
        client_factory=run.factory,
        **kwargs,
    )


# ---------------------------------------------------------------- pure pieces


def test_entrypoint_runs_the_synced_app_with_results_under_the_job_id() -> None:
    job = JobConfig(
        data="/shapcluster/data/w.csv", rows=4, sweep=(50, 100), cpus=2, ray_address="x:1", output_dir="mine"
    )
    assert jobs.build_entrypoint(job, JOB_ID) == (
        "cd /shapcluster && python -m app --data /shapcluster/data/w.csv --rows 4 --sweep 50,100 "
        f"--output-dir /shapcluster/results --run-id {JOB_ID}"
    )


def test_entrypoint_passes_no_reference() -> None:
    if "reference" not in JobConfig.__dataclass_fields__:
        pytest.skip("JobConfig has no reference field yet")
    entrypoint = jobs.build_entrypoint(JobConfig(reference=False), "j1")
    assert (
        entrypoint
        == "cd /shapcluster && python -m app --output-dir /shapcluster/results --run-id j1 --no-reference"
    )


def test_job_ids_are_ours_and_time_based() -> None:
    job_id = jobs.new_job_id(datetime(2026, 11, 23, 10, 15, 0))
    assert re.fullmatch(r"shap-20261123-101500-[0-9a-f]{4}", job_id)


def test_data_paths_map_into_the_container(config: ClusterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, path = config.sync.data_dir, config.path
    for url in ("s3://bucket/wine.csv", "https://example.org/wine.csv", None):
        assert jobs.map_data_path(url, data_dir, path) == url
    wine = config.path.parent / "data" / "red" / "wine.csv"
    assert jobs.map_data_path(str(wine), data_dir, path) == "/shapcluster/data/red/wine.csv"
    monkeypatch.chdir(config.path.parent / "data")
    assert jobs.map_data_path("red/wine.csv", data_dir, path) == "/shapcluster/data/red/wine.csv"


def test_data_outside_the_synced_folder_is_refused(config: ClusterConfig, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("a\n")
    with pytest.raises(InputError) as caught:
        jobs.map_data_path(str(outside), config.sync.data_dir, config.path)
    folder = (tmp_path / "data").resolve()
    assert caught.value.message == f"--data {outside}: not in the synced data folder {folder}"
    assert caught.value.hint == (
        f"Put the file in {folder} and run `shapcluster sync`; or use s3://bucket/key."
    )
    with pytest.raises(InputError, match="no such file in the synced data folder"):
        jobs.map_data_path(str(tmp_path / "data" / "missing.csv"), config.sync.data_dir, config.path)
    with pytest.raises(InputError, match=r"no synced data folder \(sync.data_dir is not set in .*toml\)"):
        jobs.map_data_path(str(outside), None, config.path)


def test_list_files_command_is_exact() -> None:
    assert jobs.list_files_command("/srv/my results/j1") == (
        "if [ -d '/srv/my results/j1' ]; then find '/srv/my results/j1' -mindepth 1 -maxdepth 1 -type f; fi"
    )


def test_short_entrypoint() -> None:
    assert jobs.short_entrypoint("cd /shapcluster && python -m app --rows 4") == "app --rows 4"
    assert jobs.short_entrypoint("x" * 80, width=10) == "x" * 9 + "…"


LOG = ["Running entrypoint for job j", "✓ etl 1599 rows", "Error: data/w.csv: the file is empty"]


@pytest.mark.parametrize(
    ("status", "code", "error", "exit_status", "message"),
    [
        ("FAILED", 3, InputError, ExitStatus.INPUT, f"Job {JOB_ID}: data/w.csv: the file is empty"),
        (
            "FAILED",
            4,
            ResultsDisagreeError,
            ExitStatus.MISMATCH,
            f"Job {JOB_ID}: data/w.csv: the file is empty.",
        ),
        ("FAILED", 1, JobFailedError, ExitStatus.JOB_FAILED, f"Job {JOB_ID} failed on h (exit status 1):\n"),
        (
            "FAILED",
            None,
            JobFailedError,
            ExitStatus.JOB_FAILED,
            f"Job {JOB_ID} failed on h (no exit status):",
        ),
        ("STOPPED", None, JobStoppedError, ExitStatus.JOB_STOPPED, f"Job {JOB_ID} was stopped."),
        ("RUNNING", None, RemoteError, ExitStatus.REMOTE, f"h: job {JOB_ID} is still RUNNING"),
    ],
)
def test_exit_status_follows_the_driver(
    status: str, code: int | None, error: type[Exception], exit_status: ExitStatus, message: str
) -> None:
    info = jobs.JobInfo(JOB_ID, status, code)
    with pytest.raises(error) as caught:
        jobs.raise_for_status(info, LOG, "h", None)
    assert caught.value.exit_status == exit_status  # type: ignore[attr-defined]
    assert str(caught.value).startswith(message)
    if error is JobFailedError:
        assert str(caught.value).endswith("Error: data/w.csv: the file is empty")
        assert caught.value.hint == f"The whole log: shapcluster logs {JOB_ID}"  # type: ignore[attr-defined]
    jobs.raise_for_status(jobs.JobInfo(JOB_ID, "SUCCEEDED", 0), LOG, "h", None)


def test_a_failure_without_log_lines_shows_rays_message() -> None:
    info = jobs.JobInfo(JOB_ID, "FAILED", None, message="runtime env setup failed")
    with pytest.raises(JobFailedError, match=r"\(no exit status\):\nruntime env setup failed$"):
        jobs.raise_for_status(info, [], "h", None)


def test_cluster_block_is_added_to_the_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert not jobs.add_cluster_block(summary, {"job_id": "j"})
    summary.write_text('{"rows": 4}\n')
    expiry = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    block = jobs.cluster_block(
        job_id="j",
        head="h",
        image_id="sha256:1",
        app_version="abc",
        entrypoint="e",
        credentials_expiry=expiry,
    )
    assert jobs.add_cluster_block(summary, block)
    assert json.loads(summary.read_text()) == {
        "rows": 4,
        "cluster": {
            "job_id": "j",
            "head": "h",
            "image_id": "sha256:1",
            "app_version": "abc",
            "entrypoint": "e",
            "credentials_expire": "2026-11-23T12:00:00+00:00",
        },
    }
    assert summary.stat().st_mode & 0o777 == 0o644
    assert "credentials_expire" not in jobs.cluster_block(
        job_id="j", head="h", image_id="i", app_version="a", entrypoint="e"
    )


def test_app_version_is_the_commit_plus_dirty_else_a_content_hash(tmp_path: Path) -> None:
    app_dir = tmp_path / "repo" / "app"
    app_dir.mkdir(parents=True)
    (app_dir / "a.py").write_text("x = 1\n")
    plain = jobs.app_version(app_dir)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", plain)
    (app_dir / "a.py").write_text("x = 2\n")
    assert jobs.app_version(app_dir) != plain

    def git(*args: str) -> str:
        ident = ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
        done = subprocess.run(
            ["git", *ident, *args], cwd=tmp_path / "repo", capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    commit = git("rev-parse", "HEAD")
    assert jobs.app_version(app_dir) == commit
    (tmp_path / "repo" / "README").write_text("outside the app folder: not the app's change\n")
    assert jobs.app_version(app_dir) == commit
    (app_dir / "a.py").write_text("x = 3\n")
    assert jobs.app_version(app_dir) == commit + "-dirty"


ROLE = "arn:aws:iam::123456789012:role/shap-reader"


def test_credentials_that_expire_before_the_job_likely_ends_are_warned_about() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    meta = CredentialsMeta(ROLE, "s", now + timedelta(minutes=20), now)
    earlier = [
        jobs.JobRow("a", "SUCCEEDED", now, 30 * 60, "app"),
        jobs.JobRow("b", "FAILED", now, 9e4, "app"),
    ]
    warning = jobs.credentials_warning(meta, earlier, now)
    assert (
        warning is not None
        and f"AWS credentials for {ROLE} expire 2026-11-23 12:20 UTC (in 20 min)" in warning
    )
    assert "~30 min, like recent jobs" in warning and "shapcluster creds refresh" in warning
    assert jobs.credentials_warning(meta, [], now) is None  # 20 min left > the 15 min guess
    assert jobs.credentials_warning(meta, [], now + timedelta(minutes=10)) is not None


def synced_as_is(head: FakeRunner, config: ClusterConfig) -> None:
    """Script the head's sync manifest to match the local app folder."""
    tree = sync.scan_local_tree(config.sync.app_dir)
    entries = {p: sync.ManifestEntry(f.sha256, f.size, f.mtime, f.mode) for p, f in tree.files.items()}
    manifest = sync.manifest_path("/srv/sc/app")
    head.respond(f"^cat -- {re.escape(manifest)}$", stdout=sync.render_manifest(entries))


def test_submit_warns_when_the_heads_app_is_not_the_local_one(config: ClusterConfig) -> None:
    never = Run(healthy_head(), Factory(FakeClient()))
    warnings: list[str] = []
    submit(config, never, warn=warnings.append)
    assert warnings == ["The app on 10.9.0.1 was never synced; the job runs the synced copy. "
                        "Run `shapcluster sync` first."]  # fmt: skip

    changed = Run(healthy_head(), Factory(FakeClient()))
    synced_as_is(changed.head, config)
    (config.sync.app_dir / "__main__.py").write_text("print('changed')\n")
    (config.sync.app_dir / "new.py").write_text("x = 1\n")
    warnings.clear()
    submit(config, changed, warn=warnings.append)
    assert len(warnings) == 1 and "differs from" in warnings[0]
    assert "in 2 file(s): __main__.py, new.py" in warnings[0]


def test_wait_for_end_polls_until_the_deadline() -> None:
    client = FakeClient(status="RUNNING", exit_code=None)
    now = [0.0]
    info = jobs.wait_for_end(
        client, JOB_ID, 2.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    assert info.status == "RUNNING" and client.info_calls == 5  # at 0, 0.5, 1, 1.5 and 2 s


# ---------------------------------------------------------------- submit, end to end with fakes


def test_submit_follows_the_log_fetches_results_and_records_the_cluster(config: ClusterConfig) -> None:
    environment = dict(os.environ)
    run = Run(healthy_head(), Factory(FakeClient(chunks=["Running entrypoint\nhel", "lo\n", "last line"])))
    expiry = datetime.now(UTC) + timedelta(hours=1)
    meta = {"role_arn": ROLE, "session_name": "s", "expiration": expiry.isoformat()}
    meta["refreshed_at"] = datetime.now(UTC).isoformat()
    run.head.respond(r"^cat -- /srv/sc/secrets/aws/meta.json$", stdout=json.dumps(meta))
    synced_as_is(run.head, config)
    warnings: list[str] = []
    outcome = submit(config, run, warn=warnings.append)
    assert warnings == []  # an hour left; no job has taken longer than the 15 min guess

    assert outcome == jobs.JobOutcome(JOB_ID, "SUCCEEDED", config.path.parent / "out" / JOB_ID)
    assert run.lines == ["Running entrypoint", "hello", "last line"]
    assert run.head.tunnels == [("127.0.0.1", 8265)] and run.head.open_tunnels == 0
    assert run.factory.calls == [("http://127.0.0.1:40123", {"Authorization": f"Bearer {TOKEN}"})]
    assert mask_secrets(f"token {TOKEN}") == f"token {MASK}"  # registered the moment it was read
    assert dict(os.environ) == environment  # the token never went into the environment
    entrypoint = (
        f"cd /shapcluster && python -m app --rows 4 --output-dir /shapcluster/results --run-id {JOB_ID}"
    )
    assert run.factory.client is not None and run.factory.client.submitted == [(entrypoint, JOB_ID)]

    local = config.path.parent / "out" / JOB_ID
    assert sorted(p.name for p in local.iterdir()) == ["shap_values.csv", "summary.json"]
    assert (local / "shap_values.csv").read_text() == "row,class,a\n1,5,0.5\n"
    summary = json.loads((local / "summary.json").read_text())
    assert summary["rows"] == 4
    cluster = summary["cluster"]
    assert {k: cluster[k] for k in ("job_id", "head", "image_id", "entrypoint")} == {
        "job_id": JOB_ID,
        "head": "10.9.0.1",
        "image_id": "sha256:0123",
        "entrypoint": entrypoint,
    }
    assert cluster["app_version"] == jobs.app_version(config.sync.app_dir)
    assert cluster["credentials_expire"] == expiry.isoformat()
    assert all(TOKEN not in command for command in run.head.commands)
    assert run.head.closed


def test_submit_maps_local_data_and_checks_it_before_contacting_the_head(config: ClusterConfig) -> None:
    run = Run(healthy_head(), Factory(FakeClient()))
    wine = config.path.parent / "data" / "red" / "wine.csv"
    submit(config, run, JobConfig(data=str(wine), run_id=JOB_ID, output_dir=str(config.path.parent / "o")))
    assert run.factory.client is not None
    assert "--data /shapcluster/data/red/wine.csv " in run.factory.client.submitted[0][0]

    refused = Run(healthy_head(), Factory(FakeClient()))
    with pytest.raises(InputError, match="not in the synced data folder"):
        submit(config, refused, JobConfig(data=str(config.path), run_id=JOB_ID))
    assert refused.head.commands == []


@pytest.mark.parametrize(("code", "error"), [(3, InputError), (4, ResultsDisagreeError), (1, JobFailedError)])
def test_a_failed_job_raises_by_its_exit_code_after_fetching_results(
    config: ClusterConfig, code: int, error: type[Exception]
) -> None:
    client = FakeClient(chunks=["working\n", "Error: it went wrong\n"], status="FAILED", exit_code=code)
    run = Run(healthy_head(), Factory(client))
    with pytest.raises(error, match="it went wrong") as caught:
        submit(config, run)
    local = config.path.parent / "out" / JOB_ID
    assert "cluster" in json.loads((local / "summary.json").read_text())
    if code == 4:
        assert str(local) in str(caught.value)


def test_a_failed_job_without_followed_lines_reads_the_whole_log(config: ClusterConfig) -> None:
    client = FakeClient(chunks=[], status="FAILED", exit_code=2, full_log="usage: python -m app\nbad flag\n")
    with pytest.raises(JobFailedError, match=r"exit status 2\):\nusage: python -m app\nbad flag$"):
        submit(config, Run(healthy_head(with_results=False), Factory(client)))


def test_ctrl_c_then_yes_stops_the_job(config: ClusterConfig) -> None:
    client = FakeClient(chunks=["started\n", KeyboardInterrupt], status="RUNNING", exit_code=None)
    run = Run(healthy_head(with_results=False), Factory(client), answer=True)
    with pytest.raises(JobStoppedError) as caught:
        submit(config, run)
    assert caught.value.exit_status == ExitStatus.JOB_STOPPED == 8
    assert client.stopped == [JOB_ID] and run.confirms == [True]
    assert run.lines == ["started"]


def test_ctrl_c_then_no_leaves_the_job_running(config: ClusterConfig) -> None:
    client = FakeClient(chunks=["started\n", KeyboardInterrupt], status="RUNNING", exit_code=None)
    run = Run(healthy_head(), Factory(client), answer=False)
    outcome = submit(config, run)
    assert outcome == jobs.JobOutcome(JOB_ID, "RUNNING", None, detached=True)
    assert client.stopped == [] and run.confirms == [False]
    assert not any("find" in command for command in run.head.commands)  # nothing fetched yet


def test_a_stop_that_never_lands_says_so(config: ClusterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(chunks=[KeyboardInterrupt], status="RUNNING", exit_code=None)
    client.stop_job = lambda job_id: True  # type: ignore[method-assign]
    with pytest.raises(RemoteError, match=r"asked job .* to stop, but it is still RUNNING after 0 s"):
        jobs.run_job(
            jobs.Session(_node(healthy_head()), client, 8265),
            job_id=JOB_ID,
            entrypoint="e",
            output_dir=config.path.parent,
            on_log=lambda line: None,
            confirm_stop=lambda: True,
            stop_timeout=0.0,
        )


def _node(runner: FakeRunner) -> Any:
    from shapcluster import cluster
    from shapcluster import commands as cmd
    from shapcluster.inventory import Host

    return cluster.Node(Host("10.9.0.1"), cmd.Role.HEAD, runner, cmd.RemoteLayout("/srv/sc"))


# ---------------------------------------------------------------- no cluster, bad token, unreachable


def test_no_head_container_means_no_cluster(config: ClusterConfig) -> None:
    head = healthy_head().respond(r"^docker ps --all --no-trunc", stdout="")
    run = Run(head, Factory(FakeClient()))
    with pytest.raises(NoClusterError) as caught:
        submit(config, run)
    assert caught.value.exit_status == ExitStatus.NO_CLUSTER == 9
    assert caught.value.message == "No cluster is up: 10.9.0.1 runs no head container of cluster 'lab'."
    assert caught.value.hint is not None and "shapcluster up" in caught.value.hint
    assert head.tunnels == [] and run.factory.calls == []


def test_an_unreachable_head_is_a_remote_error_naming_it(config: ClusterConfig) -> None:
    head = healthy_head().fail(r"^docker ps", "cannot reach SSH on port 22")
    with pytest.raises(RemoteError, match=r"^10\.9\.0\.1: cannot reach SSH on port 22$"):
        submit(config, Run(head, Factory(FakeClient())))


def test_a_missing_token_means_no_cluster(config: ClusterConfig) -> None:
    head = healthy_head().respond(r"^cat -- .*ray-auth-token", exit_code=1, stderr="No such file")
    with pytest.raises(NoClusterError, match="no Ray token at /srv/sc/secrets/ray-auth-token"):
        submit(config, Run(head, Factory(FakeClient())))


def test_nothing_on_the_dashboard_port_means_no_cluster(config: ClusterConfig) -> None:
    factory = Factory(error=ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:40123."))
    run = Run(healthy_head(), factory)
    with pytest.raises(NoClusterError, match=r"10\.9\.0\.1: nothing answers on the Ray dashboard port 8265"):
        submit(config, run)
    assert run.head.open_tunnels == 0


def test_a_rejected_token_says_to_run_up_again(config: ClusterConfig) -> None:
    factory = Factory(error=AuthenticationError("Authentication failed: Forbidden: Invalid token"))
    with pytest.raises(RemoteError) as caught:
        submit(config, Run(healthy_head(), factory))
    assert caught.value.exit_status == ExitStatus.REMOTE
    assert caught.value.message == "10.9.0.1: the Ray dashboard rejected the token read from the head."
    assert caught.value.hint is not None and "run `shapcluster up` again" in caught.value.hint


def test_an_api_failure_while_following_says_how_to_follow_again(config: ClusterConfig) -> None:
    client = FakeClient(chunks=[RuntimeError], status="RUNNING", exit_code=None)
    with pytest.raises(RemoteError, match=r"^10\.9\.0\.1: the Ray Jobs API failed") as caught:
        submit(config, Run(healthy_head(), Factory(client)))
    assert caught.value.hint == f"The job may still run; follow it: shapcluster logs {JOB_ID} --follow"


def test_a_connection_lost_while_following_names_the_job(config: ClusterConfig) -> None:
    client = FakeClient(chunks=["a\n", ConnectionResetError], status="RUNNING", exit_code=None)
    with pytest.raises(RemoteError, match="lost the connection to the Ray dashboard") as caught:
        submit(config, Run(healthy_head(), Factory(client)))
    assert caught.value.hint == f"The job may still run; follow it: shapcluster logs {JOB_ID} --follow"


# ---------------------------------------------------------------- jobs and logs


def test_jobs_lists_submissions_oldest_first_with_durations(config: ClusterConfig) -> None:
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    ms = int(start.timestamp() * 1000)
    client = FakeClient(
        listed=[
            Details("shap-2", "RUNNING", "cd /shapcluster && python -m app --rows 4", start_time=ms + 60_000),
            Details(None, "SUCCEEDED", "status probe", job_id="01000000"),  # a driver, not a submission
            Details(
                "shap-1", "FAILED", "python -c x", driver_exit_code=3, start_time=ms, end_time=ms + 2_500
            ),
        ]
    )
    rows = jobs.list_jobs(config, connect=lambda host: healthy_head(), client_factory=Factory(client))
    assert rows == [
        jobs.JobRow("shap-1", "FAILED", start, 2.5, "python -c x"),
        jobs.JobRow("shap-2", "RUNNING", start + timedelta(minutes=1), rows[1].seconds, "app --rows 4"),
    ]
    assert rows[1].seconds is not None and rows[1].seconds > 0


def test_logs_prints_the_log_or_follows_it(config: ClusterConfig) -> None:
    client = FakeClient(chunks=["live 1\n", "live 2\n"], status="SUCCEEDED", full_log="old 1\nold 2\n")
    lines: list[str] = []
    connect: Callable[[Any], FakeRunner] = lambda host: healthy_head()  # noqa: E731
    info = jobs.job_logs(
        config, JOB_ID, follow=True, on_log=lines.append, connect=connect, client_factory=Factory(client)
    )
    assert info.status == "SUCCEEDED" and lines == ["old 1", "old 2"]  # ended already: nothing to follow
    client.status, client.ends_as = "RUNNING", "FAILED"
    lines.clear()
    info = jobs.job_logs(
        config, JOB_ID, follow=True, on_log=lines.append, connect=connect, client_factory=Factory(client)
    )
    assert info.status == "FAILED" and lines == ["live 1", "live 2"]
    with pytest.raises(InputError, match=r"No job shap-nope on the cluster of 10\.9\.0\.1") as caught:
        jobs.job_logs(
            config, "shap-nope", follow=False, on_log=print, connect=connect, client_factory=Factory(client)
        )
    assert caught.value.hint == "`shapcluster jobs` lists the jobs."


# ---------------------------------------------------------------- CLI


def test_cli_prints_log_lines_masked_and_where_results_went(
    config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shapcluster.secrets import register_secret

    register_secret("s3cr3t-value")
    seen: dict[str, Any] = {}

    def fake_submit(settings: ClusterConfig, job: JobConfig, **kwargs: Any) -> jobs.JobOutcome:
        seen.update(settings=settings, job=job)
        kwargs["on_log"]("[bold]key=s3cr3t-value[/bold]")
        return jobs.JobOutcome(JOB_ID, "SUCCEEDED", Path("results") / JOB_ID)

    monkeypatch.setattr(jobs, "submit", fake_submit)
    result = CliRunner().invoke(app, ["submit", "-c", str(config.path), "--rows", "4", "--no-reference"])
    assert result.exit_code == 0, result.output
    assert "[bold]key=****[/bold]" in result.output and "s3cr3t" not in result.output
    assert f"results: results/{JOB_ID}" in result.output
    assert seen["settings"].name == "lab" and seen["job"].rows == 4
    if "reference" in JobConfig.__dataclass_fields__:
        assert seen["job"].reference is False


def test_cli_cpus_needs_local_and_errors_get_their_exit_status(
    config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner().invoke(app, ["submit", "-c", str(config.path), "--cpus", "2"])
    assert result.exit_code == ExitStatus.USAGE and "only applies with --local" in result.output

    def no_cluster(*args: Any, **kwargs: Any) -> None:
        raise NoClusterError("No cluster is up: h runs no head container of cluster 'lab'.")

    monkeypatch.setattr(jobs, "submit", no_cluster)
    monkeypatch.setattr(jobs, "list_jobs", no_cluster)
    monkeypatch.setattr(jobs, "job_logs", no_cluster)
    for command in (["submit"], ["jobs"], ["logs", "j1"]):
        result = CliRunner().invoke(app, [*command, "-c", str(config.path)])
        assert result.exit_code == ExitStatus.NO_CLUSTER, result.output
        assert "No cluster is up" in result.output and "shapcluster up" in result.output


def test_cli_jobs_table(config: ClusterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    rows = [
        jobs.JobRow("shap-1", "SUCCEEDED", start, 83.0, "app --rows 4"),
        jobs.JobRow("shap-2", "PENDING", None, None, "app"),
    ]
    monkeypatch.setattr(jobs, "list_jobs", lambda settings: rows)
    result = CliRunner().invoke(app, ["jobs", "-c", str(config.path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert re.search(r"shap-1 .*SUCCEEDED .*2026-11-23 \d\d:00:00 .*1m 23s .*app --rows 4", result.output)
    assert re.search(r"shap-2 .*PENDING .*- .*- .*app", result.output)


class ReusedIdClient(FakeClient):
    def submit_job(self, *, entrypoint: str, submission_id: str) -> str:
        raise RuntimeError(
            "Request failed with status code 400: Traceback (most recent call last):\n.\n.\n"
            f"ValueError: Job with submission_id {submission_id} already exists. "
            "Please use a different submission_id.\n."
        )


def test_a_reused_run_id_is_bad_input_in_one_line(config: ClusterConfig) -> None:
    """Issue 12, fault 7: it exited 6 with stray '.' lines."""
    run = Run(healthy_head(), Factory(ReusedIdClient()))
    synced_as_is(run.head, config)
    with pytest.raises(InputError) as caught:
        submit(config, run)
    assert caught.value.exit_status == 3
    assert (
        caught.value.message == f"--run-id {JOB_ID}: the cluster of 10.9.0.1 already has a job with this id."
    )
    assert "\n" not in caught.value.message and "`shapcluster jobs`" in (caught.value.hint or "")
