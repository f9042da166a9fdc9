"""The Jobs API layer against a real Ray head with token auth, started here, on this machine.

The head's runner is a LocalRunner (no SSH: its tunnel is the port itself, its "results dir" a
temp folder), so everything from the token to the fetched results is the real code path. The
multi-host run through an SSH tunnel to a Docker head is the lab's test.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from shapcluster import cluster, jobs
from shapcluster import commands as cmd
from shapcluster.errors import (
    ExitStatus,
    InputError,
    JobFailedError,
    JobStoppedError,
    NoClusterError,
    RemoteError,
    ResultsDisagreeError,
)
from shapcluster.inventory import Host
from shapcluster.remote.local import LocalRunner

pytestmark = pytest.mark.ray
START_TIMEOUT = 60.0
RAY = Path(sys.executable).with_name("ray")

# Run by the job: print, optionally wait for a marker file (made by the test when it sees the
# first line, which proves the log is live), write results, exit with the given status.
JOB_SCRIPT = """\
import json, os, sys, time
out, code, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print("first line", flush=True)
if marker != "-":
    deadline = time.monotonic() + 20
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            print("Error: the first line never reached the client", file=sys.stderr)
            sys.exit(5)
        time.sleep(0.05)
    print("after the marker", flush=True)
if out != "-":
    os.makedirs(out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"rows": 2, "run_id": os.path.basename(out)}, f)
    with open(os.path.join(out, "shap_values.csv"), "w") as f:
        f.write("row,class,a\\n1,5,0.25\\n")
if code == 3:
    print("Error: data/w.csv: the file is empty", file=sys.stderr)
elif code == 4:
    print("Error: our KernelSHAP and shap.KernelExplainer differ by up to 0.1", file=sys.stderr)
elif code:
    print("Traceback (most recent call last):\\nValueError: boom", file=sys.stderr)
sys.exit(code)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RayHead:
    node: cluster.Node  # LocalRunner, layout in a temp folder holding the token and results
    dashboard: int
    script: Path


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment holds ``marker``: every process our head started, and no other."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)  # a poll interval; the deadline decides
    return True


def _stop(process: subprocess.Popen[bytes], marker: str) -> None:
    """SIGTERM the `ray start --block` group (it stops what it started), then SIGKILL whatever of
    ours is left: Ray's workers run in sessions of their own."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        if not _wait(lambda: process.poll() is not None, 10):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if not _wait(lambda: not _processes_with(marker), 10):
        for pid in _processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _dashboard_up(port: int, token: str) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    root = tmp_path_factory.mktemp("head")
    layout = cmd.RemoteLayout(str(root))
    token = secrets.token_hex(32)
    token_file = Path(layout.token_file)
    token_file.parent.mkdir(mode=0o700)
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    Path(layout.results_dir).mkdir()
    temp_dir = tmp_path_factory.mktemp("r")  # short: Ray puts unix sockets below it
    dashboard = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    environment |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),  # unique: marks every process of this head
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops at once (default: drain 30 s)
    }
    command = [
        str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    log_file = (root / "ray-start.log").open("wb")
    process = subprocess.Popen(
        command, env=environment, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    marker = f"RAY_AUTH_TOKEN_PATH={token_file}"
    try:
        if not _wait(lambda: _dashboard_up(dashboard, token) or process.poll() is not None, START_TIMEOUT):
            pytest.fail(f"the Ray dashboard did not answer within {START_TIMEOUT:.0f} s")
        if process.poll() is not None:
            pytest.fail(
                f"ray start exited with {process.returncode}:\n{(root / 'ray-start.log').read_text()}"
            )
        script = root / "job.py"
        script.write_text(JOB_SCRIPT)
        node = cluster.Node(Host("127.0.0.1"), cmd.Role.HEAD, LocalRunner("ray-head"), layout)
        yield RayHead(node, dashboard, script)
    finally:
        _stop(process, marker)
        log_file.close()


def entrypoint(head: RayHead, job_id: str, code: int, *, results: bool = False, marker: str = "-") -> str:
    out = f"{head.node.layout.results_dir}/{job_id}" if results else "-"
    return subprocess.list2cmdline([sys.executable, str(head.script), out, str(code), marker])


def run(
    head: RayHead,
    tmp_path: Path,
    job_id: str,
    command: str,
    lines: list[str],
    on_log: Callable[[str], None] | None = None,
    confirm_stop: Callable[[], bool] = lambda: False,
) -> jobs.JobOutcome:
    def log_line(line: str) -> None:
        lines.append(line)
        if on_log is not None:
            on_log(line)

    with jobs.open_session(head.node, head.dashboard) as session:
        return jobs.run_job(
            session,
            job_id=job_id,
            entrypoint=command,
            output_dir=tmp_path / "results",
            on_log=log_line,
            confirm_stop=confirm_stop,
            block={"job_id": job_id, "head": head.node.name},
        )


def test_live_log_and_bad_input_exit_status(ray_head: RayHead, tmp_path: Path) -> None:
    marker = tmp_path / "seen-first-line"
    lines: list[str] = []

    def on_log(line: str) -> None:
        if line == "first line":
            marker.touch()  # the job waits for this: only a live log lets it finish in time

    job_id = jobs.new_job_id()
    with pytest.raises(InputError) as caught:
        run(ray_head, tmp_path, job_id, entrypoint(ray_head, job_id, 3, marker=str(marker)), lines, on_log)
    assert caught.value.exit_status == ExitStatus.INPUT
    assert caught.value.message == f"Job {job_id}: data/w.csv: the file is empty"
    assert lines.index("first line") < lines.index("after the marker")
    assert not (tmp_path / "results").exists()  # the job wrote no results


def test_ctrl_c_and_yes_stops_the_job(ray_head: RayHead, tmp_path: Path) -> None:
    job_id = jobs.new_job_id()
    command = subprocess.list2cmdline(
        [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"]
    )

    def interrupt(line: str) -> None:
        if line == "working":
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(JobStoppedError) as caught:
        run(ray_head, tmp_path, job_id, command, [], interrupt, confirm_stop=lambda: True)
    assert caught.value.exit_status == ExitStatus.JOB_STOPPED
    assert time.monotonic() - started < 60  # stopped, not run to its end
    with jobs.open_session(ray_head.node, ray_head.dashboard) as session:
        assert {r.job_id: r.state for r in jobs.jobs_on(session)}[job_id] == "STOPPED"


def test_results_and_exit_statuses_of_concurrent_jobs(ray_head: RayHead, tmp_path: Path) -> None:
    """Three jobs at once (each takes seconds of Ray's own start-up): success, disagreement, crash."""
    ids = {code: jobs.new_job_id() for code in (0, 4, 1)}
    lines: dict[int, list[str]] = {code: [] for code in ids}

    def one(code: int) -> jobs.JobOutcome | Exception:
        job_id = ids[code]
        command = entrypoint(ray_head, job_id, code, results=code != 1)
        try:
            return run(ray_head, tmp_path / str(code), job_id, command, lines[code])
        except Exception as err:  # compared below, per job
            return err

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = dict(zip(ids, pool.map(one, ids), strict=True))

    local = tmp_path / "0" / "results" / ids[0]
    assert outcomes[0] == jobs.JobOutcome(ids[0], "SUCCEEDED", local)
    assert "first line" in lines[0]
    assert sorted(p.name for p in local.iterdir()) == ["shap_values.csv", "summary.json"]
    assert (local / "shap_values.csv").read_text() == "row,class,a\n1,5,0.25\n"
    summary = json.loads((local / "summary.json").read_text())
    assert summary == {"rows": 2, "run_id": ids[0], "cluster": {"job_id": ids[0], "head": "ray-head"}}

    disagreement = outcomes[4]
    assert isinstance(disagreement, ResultsDisagreeError), disagreement
    assert disagreement.exit_status == ExitStatus.MISMATCH
    assert "differ by up to 0.1" in disagreement.message
    assert str(tmp_path / "4" / "results" / ids[4]) in disagreement.message
    assert "cluster" in json.loads((tmp_path / "4" / "results" / ids[4] / "summary.json").read_text())

    crash = outcomes[1]
    assert isinstance(crash, JobFailedError), crash
    assert crash.exit_status == ExitStatus.JOB_FAILED
    assert crash.message.startswith(f"Job {ids[1]} failed on ray-head (exit status 1):\n")
    assert crash.message.endswith("ValueError: boom")
    assert crash.hint == f"The whole log: shapcluster logs {ids[1]}"

    with jobs.open_session(ray_head.node, ray_head.dashboard) as session:
        rows = {row.job_id: row for row in jobs.jobs_on(session)}
        assert {rows[ids[code]].state for code in (4, 1)} == {"FAILED"} and rows[ids[0]].state == "SUCCEEDED"
        assert all(rows[i].seconds is not None and rows[i].seconds > 0 for i in ids.values())  # type: ignore[operator]
        assert rows[ids[1]].entrypoint.startswith(sys.executable[:20])
        followed: list[str] = []
        info = jobs.logs_on(session, ids[1], follow=True, on_log=followed.append)
        assert info.status == "FAILED" and info.exit_code == 1
        assert "first line" in followed and "ValueError: boom" in followed
        with pytest.raises(InputError, match="No job shap-nope on the cluster of ray-head"):
            jobs.logs_on(session, "shap-nope", follow=False, on_log=followed.append)


def test_a_wrong_token_is_rejected_clearly(ray_head: RayHead, tmp_path: Path) -> None:
    layout = cmd.RemoteLayout(str(tmp_path))
    Path(layout.secrets_dir).mkdir()
    Path(layout.token_file).write_text(secrets.token_hex(32) + "\n")
    node = cluster.Node(Host("127.0.0.1"), cmd.Role.HEAD, LocalRunner("ray-head"), layout)
    with pytest.raises(RemoteError) as caught, jobs.open_session(node, ray_head.dashboard):
        pass
    assert caught.value.exit_status == ExitStatus.REMOTE
    assert caught.value.message == "ray-head: the Ray dashboard rejected the token read from the head."
    assert caught.value.hint is not None and "run `shapcluster up` again" in caught.value.hint


def test_nothing_listening_means_no_cluster(ray_head: RayHead) -> None:
    port = free_port()
    with pytest.raises(NoClusterError) as caught, jobs.open_session(ray_head.node, port):
        pass
    assert caught.value.exit_status == ExitStatus.NO_CLUSTER
    assert caught.value.message.startswith(f"ray-head: nothing answers on the Ray dashboard port {port}")
    assert caught.value.hint is not None and "shapcluster up" in caught.value.hint
