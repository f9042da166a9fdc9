"""The CLI behaves like ray's and sky's: fast help, global flags anywhere, job control, --json,
a confirmation before --purge, help that is never cut."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from shapcluster import cluster, jobs
from shapcluster.cli import app, hoist_global_flags
from shapcluster.config import ClusterConfig
from shapcluster.errors import ExitStatus, InputError, RemoteError
from tests.unit.test_jobs import JOB_ID, Factory, FakeClient, Run, config, healthy_head, submit

__all__ = ["config"]  # the fixture, shared with test_jobs.py

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "pandas", "ray", "docker", "paramiko", "fabric", "boto3", "botocore", "sklearn", "shap")
COMMANDS = [[], ["submit"], ["up"], ["sync"], ["status"], ["down"], ["jobs"], ["logs"], ["stop"], ["creds"],
            ["creds", "refresh"]]  # fmt: skip


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point in a child process, output piped (as in a shell pipeline)."""
    return subprocess.run(
        [sys.executable, "-m", "shapcluster", *args],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=60, check=False,
    )  # fmt: skip


def test_the_cli_module_tree_imports_no_heavy_library() -> None:
    """What `--help` and tab completion load: typer, rich, our CLI; no numpy, Ray, docker, SSH, AWS."""
    code = f"import sys, shapcluster.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "shapcluster")
def test_help_is_never_cut_at_80_columns_when_piped(command: list[str]) -> None:
    result = cli(*command, "--help", COLUMNS="80")
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "<bool>" not in result.stdout  # a switch takes no value: no placeholder beside it


def test_tables_fold_long_cells_instead_of_cutting_them(capsys: pytest.CaptureFixture[str]) -> None:
    """Piped output is 80 columns wide: a long host name folds inside its cell, whole."""
    from shapcluster import console

    host = "ip-10-78-123-45.eu-central-1.compute.internal"
    console.print_table("Cluster c", ("host", "role", "error"), [(host, "worker", "x" * 70)])
    out = capsys.readouterr().out
    assert "…" not in out
    cells = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 3]
    assert "".join(cells) == host  # the host folded into pieces, in order, none cut
    assert max(len(line) for line in out.splitlines()) <= 80


def test_global_flags_are_hoisted_before_the_subcommand() -> None:
    assert hoist_global_flags(["status", "--debug", "-c", "x"]) == ["--debug", "status", "-c", "x"]
    assert hoist_global_flags(["--debug", "jobs"]) == ["--debug", "jobs"]
    assert hoist_global_flags(["logs", "j", "--", "--debug"]) == ["logs", "j", "--", "--debug"]


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path: Path) -> None:
    result = cli("status", "-c", str(tmp_path / "missing.toml"), "--debug")
    assert result.returncode == ExitStatus.INPUT, result.stderr
    assert "Traceback" in result.stderr and "missing.toml" in result.stderr
    quiet = cli("status", "-c", str(tmp_path / "missing.toml"))
    assert quiet.returncode == ExitStatus.INPUT and "Traceback" not in quiet.stderr


def test_submit_without_a_config_suggests_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["submit"])
    assert result.exit_code == ExitStatus.INPUT
    assert "shapcluster submit --local" in result.output.replace("\n", " ")


def test_missing_files_are_named_by_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "shapcluster.toml").write_text(
        '[head]\nhost = "10.9.0.1"\n[workers]\nfile = "workers.txt"\n'
    )
    result = CliRunner().invoke(app, ["status", "-c", "inventory/shapcluster.toml"], terminal_width=300)
    assert result.exit_code == ExitStatus.INPUT
    assert f"{tmp_path}/inventory/workers.txt: workers file not found" in result.output
    result = CliRunner().invoke(app, ["status", "-c", "nowhere.toml"], terminal_width=300)
    assert f"{tmp_path}/nowhere.toml: not found" in result.output
    result = CliRunner().invoke(app, ["submit", "--local", "--data", "no.csv"], terminal_width=300)
    assert result.exit_code == ExitStatus.INPUT and f"{tmp_path}/no.csv: no such file" in result.output


# ---------------------------------------------------------------- job control


def test_stop_stops_a_running_job_and_leaves_an_ended_one(config: ClusterConfig) -> None:
    client = FakeClient(status="RUNNING", exit_code=None)
    info = jobs.stop_job(config, JOB_ID, connect=lambda host: healthy_head(), client_factory=Factory(client))
    assert info.status == "STOPPED" and client.stopped == [JOB_ID]
    ended = FakeClient(status="SUCCEEDED")
    info = jobs.stop_job(config, JOB_ID, connect=lambda host: healthy_head(), client_factory=Factory(ended))
    assert info.status == "SUCCEEDED" and ended.stopped == []
    with pytest.raises(InputError, match="No job shap-nope"):
        jobs.stop_job(
            config, "shap-nope", connect=lambda host: healthy_head(), client_factory=Factory(client)
        )


def test_a_stop_that_does_not_land_is_a_remote_error(config: ClusterConfig) -> None:
    client = FakeClient(status="RUNNING", exit_code=None)
    client.stop_job = lambda job_id: True  # type: ignore[method-assign]
    with pytest.raises(RemoteError, match="still RUNNING"):
        jobs.stop_job(
            config, JOB_ID, connect=lambda host: healthy_head(), client_factory=Factory(client), timeout=0.0
        )


def test_cli_stop(config: ClusterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_stop(settings: ClusterConfig, job_id: str) -> Any:
        seen.append(job_id)
        return jobs.JobInfo(job_id, "STOPPED")

    monkeypatch.setattr(jobs, "stop_job", fake_stop)
    result = CliRunner().invoke(app, ["stop", JOB_ID, "-c", str(config.path)])
    assert result.exit_code == 0 and f"job {JOB_ID}: STOPPED" in result.output and seen == [JOB_ID]


def test_no_wait_returns_once_submitted(config: ClusterConfig) -> None:
    client = FakeClient(chunks=["never read\n"], status="RUNNING", exit_code=None)
    run = Run(healthy_head(), Factory(client))
    outcome = submit(config, run, wait=False)
    assert outcome == jobs.JobOutcome(JOB_ID, "PENDING", None, detached=True)
    assert [job_id for _, job_id in client.submitted] == [JOB_ID]
    assert run.lines == [] and client.info_calls == 0  # no log followed, no wait


def test_cli_no_wait_prints_the_id_and_how_to_follow(
    config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_submit(settings: ClusterConfig, job: Any, **kwargs: Any) -> jobs.JobOutcome:
        seen.update(kwargs)
        return jobs.JobOutcome(JOB_ID, "PENDING", None, detached=True)

    monkeypatch.setattr(jobs, "submit", fake_submit)
    result = CliRunner().invoke(app, ["submit", "-c", str(config.path), "--no-wait"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert seen["wait"] is False
    assert (
        f"job {JOB_ID} submitted" in result.output and f"shapcluster logs {JOB_ID} --follow" in result.output
    )
    local = CliRunner().invoke(app, ["submit", "--local", "--no-wait"])
    assert local.exit_code == ExitStatus.USAGE


def test_json_output_of_submit_jobs_and_status(
    config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    def fake_submit(settings: ClusterConfig, job: Any, **kwargs: Any) -> jobs.JobOutcome:
        kwargs["on_log"]("a log line")
        return jobs.JobOutcome(JOB_ID, "SUCCEEDED", Path("results") / JOB_ID)

    monkeypatch.setattr(jobs, "submit", fake_submit)
    result = CliRunner().invoke(app, ["submit", "-c", str(config.path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "job_id": JOB_ID, "status": "SUCCEEDED", "results_dir": f"results/{JOB_ID}", "detached": False,
        "local": False,
    }  # fmt: skip
    assert "a log line" in result.stderr

    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    monkeypatch.setattr(
        jobs, "list_jobs", lambda settings: [jobs.JobRow("shap-1", "RUNNING", start, 5.0, "app")]
    )
    result = CliRunner().invoke(app, ["jobs", "-c", str(config.path), "--json"])
    assert json.loads(result.stdout) == [
        {"job_id": "shap-1", "state": "RUNNING", "start": "2026-11-23 10:00:00+00:00", "seconds": 5.0,
         "entrypoint": "app"}
    ]  # fmt: skip

    rows = [
        cluster.HostStatus("10.9.0.1", "head", True, "running", "sha256:1", True, True, 2.0),
        cluster.HostStatus("10.9.0.2", "worker", False, "none", "", None, False, 0.0, "unreachable"),
    ]
    monkeypatch.setattr(cluster, "open_nodes", lambda settings: _Nodes())
    monkeypatch.setattr(cluster, "status", lambda settings, nodes: rows)
    result = CliRunner().invoke(app, ["status", "-c", str(config.path), "--json"])
    assert result.exit_code == ExitStatus.DEGRADED  # the exit status holds with --json too
    document = json.loads(result.stdout)
    assert (document["nodes_alive"], document["hosts"], document["cpus_alive"]) == (1, 2, 2.0)
    assert [r["host"] for r in document["rows"]] == ["10.9.0.1", "10.9.0.2"]


class _Nodes:
    def __enter__(self) -> list[Any]:
        return []

    def __exit__(self, *exc: object) -> None:
        return None


def test_down_purge_asks_first(config: ClusterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    class Result:
        successes: ClassVar[dict[str, str]] = {"10.9.0.1": "removed"}

        def raise_for_failures(self, what: str) -> None:
            return None

    def fake_down(settings: ClusterConfig, nodes: Any, *, purge: bool) -> Result:
        calls.append(purge)
        return Result()

    monkeypatch.setattr(cluster, "open_nodes", lambda settings: _Nodes())
    monkeypatch.setattr(cluster, "down", fake_down)
    result = CliRunner().invoke(app, ["down", "--purge", "-c", str(config.path)], input="n\n")
    assert result.exit_code == 1 and calls == [] and "Nothing removed" in result.output
    result = CliRunner().invoke(app, ["down", "--purge", "-c", str(config.path)], input="y\n")
    assert result.exit_code == 0 and calls == [True]
    result = CliRunner().invoke(app, ["down", "--purge", "-y", "-c", str(config.path)])
    assert result.exit_code == 0 and calls == [True, True] and "?" not in result.output
    result = CliRunner().invoke(app, ["down", "-c", str(config.path)])  # no --purge: no question
    assert result.exit_code == 0 and calls == [True, True, False]


def test_local_json_keeps_stdout_for_the_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_run_local(job: Any) -> dict[str, Any]:
        print("✓ etl ...")  # the job's own lines, printed to stdout by its reporter
        return {"run_id": "r1", "comparison": {"verdict": "match"}}

    monkeypatch.setattr(jobs, "run_local", fake_run_local)
    result = CliRunner().invoke(app, ["submit", "--local", "--json", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "job_id": "r1", "status": "SUCCEEDED", "results_dir": str(tmp_path / "r1"), "detached": False,
        "local": True, "verdict": "match",
    }  # fmt: skip
    assert "✓ etl" in result.stderr


def test_dry_run_wheelhouse_plan_downloads_nothing(tmp_path: Path) -> None:
    from shapcluster import project

    context = tmp_path / "docker"
    context.mkdir()
    (context / "requirements.txt").write_text("ray[default]==2.60.0\n")
    cache = tmp_path / "cache"
    wheels, note = project.planned_wheelhouse(context, None, cache_dir=cache)
    assert wheels is None and note is not None and note.startswith("wheelhouse missing")
    assert "pip download" in note and str(context / "wheels") in note
    assert not cache.exists()  # nothing made
    explicit = tmp_path / "mine"
    wheels, note = project.planned_wheelhouse(context, explicit, cache_dir=cache)
    assert wheels is None and note == f"wheelhouse missing: {explicit} holds no wheels; `up` would stop there"
    cached = cache / project.requirements_hash(context / "requirements.txt")
    cached.mkdir(parents=True)
    (cached / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"x")
    wheels, note = project.planned_wheelhouse(context, None, cache_dir=cache)
    assert wheels == cached and note is not None and "made earlier" in note
    (context / "wheels").mkdir()
    (context / "wheels" / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"x")
    assert project.planned_wheelhouse(context, None, cache_dir=cache) == (context / "wheels", None)


def test_logs_follow_fetches_the_results_of_an_ended_job(config: ClusterConfig, tmp_path: Path) -> None:
    """After `submit --no-wait`, `logs JOB --follow` brings the results back as submit would."""
    client = FakeClient(status="SUCCEEDED", full_log="done\n")
    lines: list[str] = []
    out = tmp_path / "out"
    info = jobs.job_logs(
        config, JOB_ID, follow=True, on_log=lines.append, results_to=out,
        connect=lambda host: healthy_head(), client_factory=Factory(client),
    )  # fmt: skip
    assert info.status == "SUCCEEDED" and lines == ["done"]
    assert sorted(p.name for p in (out / JOB_ID).iterdir()) == ["shap_values.csv", "summary.json"]
    running = FakeClient(status="RUNNING", exit_code=None, full_log="so far\n")
    jobs.job_logs(
        config, JOB_ID, follow=False, on_log=lines.append, results_to=tmp_path / "none",
        connect=lambda host: healthy_head(), client_factory=Factory(running),
    )  # fmt: skip
    assert not (tmp_path / "none").exists()  # a running job has nothing to fetch yet
