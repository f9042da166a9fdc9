"""The job on a cluster through Ray's Jobs API: the only shapcluster module that imports ray,
lazily, for the client.

The head's Ray token is read over SSH and registered as a secret at once; an SSH tunnel reaches
the dashboard, which listens on the head's 127.0.0.1 only; the job runs the synced app inside
the head container; its log lines reach the caller as they arrive; its results are copied to
``<output_dir>/<job-id>/`` and summary.json gets a "cluster" block.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import shlex
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, cast

from app.contract import JobConfig
from shapcluster import cluster, creds, ray_token
from shapcluster import commands as cmd
from shapcluster.config import ClusterConfig
from shapcluster.creds import CredentialsMeta, describe_expiry
from shapcluster.errors import (
    InputError,
    NoClusterError,
    RemoteError,
)
from shapcluster.inventory import Host
from shapcluster.jobs.provenance import (
    add_cluster_block,
    app_version,
    cluster_block,
    sync_warning,
    unsynced_files,
)
from shapcluster.jobs.results import (
    LOG_TAIL_LINES,
    JobInfo,
    fetch_results,
    job_info,
    raise_for_status,
)
from shapcluster.remote.base import Runner, tail

log = logging.getLogger(__name__)

OnLog = Callable[[str], None]
ConfirmStop = Callable[[], bool]
Progress = Callable[[str], None]

CONTAINER_ROOT = str(PurePosixPath(cmd.CONTAINER_APP_DIR).parent)  # the job's working directory
ENTRYPOINT_PREFIX = f"cd {shlex.quote(CONTAINER_ROOT)} && python -m app"
PASS_THROUGH_SCHEMES = ("s3://", "https://", "http://")
END_TIMEOUT_SECONDS = 30.0  # after the log stream ends, until Ray reports the end state
STOP_TIMEOUT_SECONDS = 30.0  # Ray sends SIGTERM, then SIGKILL after a few seconds
POLL_SECONDS = 0.5
DEFAULT_JOB_SECONDS = 15 * 60  # a job's likely length before any has finished on the cluster


class JobsClient(Protocol):
    """What we use of ``ray.job_submission.JobSubmissionClient`` (a fake in the unit tests)."""

    def submit_job(self, *, entrypoint: str, submission_id: str) -> str: ...
    def get_job_info(self, job_id: str) -> Any: ...
    def list_jobs(self) -> list[Any]: ...
    def get_job_logs(self, job_id: str) -> str: ...
    def tail_job_logs(self, job_id: str) -> AsyncIterator[str]: ...
    def stop_job(self, job_id: str) -> bool: ...


ClientFactory = Callable[[str, dict[str, str]], JobsClient]


def ray_jobs_client(address: str, headers: dict[str, str]) -> JobsClient:
    """Ray's client with the token header passed explicitly: the environment is left alone."""
    from ray.job_submission import JobSubmissionClient

    return cast(JobsClient, JobSubmissionClient(address, headers=headers))


@dataclass(frozen=True)
class JobRow:
    """One line of `shapcluster jobs`."""

    job_id: str
    state: str
    start: datetime | None
    seconds: float | None  # run time so far, or until the end
    entrypoint: str  # shortened


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: str
    results_dir: Path | None  # local copy of the job's results, if it wrote any
    detached: bool = False  # the user left it running (Ctrl-C, then "no")


@dataclass(frozen=True)
class Session:
    """A Jobs API client reaching the head's dashboard through a tunnel."""

    head: cluster.Node
    client: JobsClient
    port: int  # the dashboard port on the head (for messages)


def new_job_id(now: datetime | None = None) -> str:
    """Our own submission id, also the results folder: shap-YYYYmmdd-HHMMSS-<4 hex>."""
    now = now or datetime.now().astimezone()
    return f"shap-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def map_data_path(
    data: str | None, data_dir: Path | None, config_path: Path, option: str = "--data"
) -> str | None:
    """Where the job finds ``--data`` (or the file of ``option``, e.g. --model) inside the head container.

    URLs pass through; a local file must lie in the synced data folder, which the containers
    see at CONTAINER_DATA_DIR. None keeps the app's default (data/ below the synced root).
    """
    if data is None or data.startswith(PASS_THROUGH_SCHEMES):
        return data
    path = Path(data).expanduser().resolve()
    if data_dir is None:
        raise InputError(
            f"{option} {data}: the cluster has no synced data folder "
            f"(sync.data_dir is not set in {config_path})",
            hint="Set sync.data_dir, put the file there and run `shapcluster sync`; or use s3://bucket/key.",
        )
    folder = data_dir.expanduser().resolve()
    if not path.is_relative_to(folder):
        raise InputError(
            f"{option} {data}: not in the synced data folder {folder}",
            hint=f"Put the file in {folder} and run `shapcluster sync`; or use s3://bucket/key.",
        )
    if not path.is_file():
        raise InputError(f"{option} {data}: no such file in the synced data folder {folder}")
    return f"{cmd.CONTAINER_DATA_DIR}/{path.relative_to(folder).as_posix()}"


def build_entrypoint(job: JobConfig, job_id: str) -> str:
    """The shell command Ray runs in the head container: the synced app, results to the
    writable results mount under the job id. The Jobs API sets RAY_ADDRESS itself."""
    remote = dataclasses.replace(
        job, output_dir=cmd.CONTAINER_RESULTS_DIR, run_id=job_id, cpus=None, ray_address=None
    )
    return (
        shlex.join(["cd", CONTAINER_ROOT]) + " && " + shlex.join(["python", "-m", "app", *remote.to_argv()])
    )


def short_entrypoint(entrypoint: str, width: int = 60) -> str:
    text = entrypoint
    if text.startswith(ENTRYPOINT_PREFIX):
        text = "app" + text[len(ENTRYPOINT_PREFIX) :]
    return text if len(text) <= width else text[: width - 1] + "…"


def read_token(head: cluster.Node) -> str:
    """The cluster's Ray token from the head (registered as a secret); NoClusterError without one."""
    token = ray_token.read_token(head)
    if token is None:
        raise NoClusterError(
            f"{head.name}: no Ray token at {head.layout.token_file}: no cluster was started there."
        )
    return token


def head_image(head: cluster.Node, cluster_name: str) -> str:
    """The image ID of the running head container; NoClusterError when there is none."""
    running = [
        c
        for c in cluster.containers_on(head.runner, cluster_name)
        if c.role == cmd.Role.HEAD and c.state == "running"
    ]
    if not running:
        raise NoClusterError(
            f"No cluster is up: {head.name} runs no head container of cluster {cluster_name!r}.",
            hint="Start it: shapcluster up (shapcluster status shows every host).",
        )
    return running[0].image_id


@contextmanager
def jobs_api_errors(head: str, port: int, job_id: str | None = None) -> Iterator[None]:
    """Ray's and the HTTP libraries' exceptions as ShapclusterErrors. Before a job exists a lost
    connection means no cluster answers; after, the job may still run and can be followed."""
    import aiohttp
    from ray.exceptions import AuthenticationError

    rejected = RemoteError(
        f"{head}: the Ray dashboard rejected the token read from the head.",
        hint="The token on the head differs from the one its Ray was started with: "
        "run `shapcluster up` again.",
    )
    try:
        yield
    except AuthenticationError:
        raise rejected from None
    except aiohttp.ClientResponseError as err:  # the log stream's handshake
        if err.status in {401, 403}:
            raise rejected from None
        raise _api_failure(head, job_id, f"HTTP {err.status} {err.message}") from None
    except (OSError, aiohttp.ClientError) as err:  # refused, reset or dropped connections
        if job_id is None:
            raise NoClusterError(
                f"{head}: nothing answers on the Ray dashboard port {port}: no cluster is up ({err}).",
                hint="Start it: shapcluster up (shapcluster status shows what runs where).",
            ) from None
        raise RemoteError(
            f"{head}: lost the connection to the Ray dashboard ({err}).",
            hint=f"The job may still run; follow it: shapcluster logs {job_id} --follow",
        ) from None
    except RuntimeError as err:  # Ray's "Request failed with status code ..."
        raise _api_failure(head, job_id, str(err)) from None


def _api_failure(head: str, job_id: str | None, detail: str) -> InputError | RemoteError:
    if job_id is not None and ("404" in detail or "does not exist" in detail):
        return InputError(
            f"No job {job_id} on the cluster of {head}.", hint="`shapcluster jobs` lists the jobs."
        )
    follow = f"The job may still run; follow it: shapcluster logs {job_id} --follow" if job_id else None
    return RemoteError(f"{head}: the Ray Jobs API failed: {tail(detail, lines=3)}", hint=follow)


@contextmanager
def open_session(
    head: cluster.Node, dashboard_port: int, client_factory: ClientFactory = ray_jobs_client
) -> Iterator[Session]:
    """Token, tunnel and client: a Jobs API session with the head, closed afterwards."""
    token = read_token(head)
    with head.runner.tunnel(dashboard_port) as local_port:
        with jobs_api_errors(head.name, dashboard_port):
            client = client_factory(f"http://127.0.0.1:{local_port}", {"Authorization": f"Bearer {token}"})
        yield Session(head, client, dashboard_port)


def follow_logs(client: JobsClient, job_id: str, on_log: OnLog) -> list[str]:
    """Hand every log line to ``on_log`` as it arrives, until the job ends; return the last lines."""
    kept: deque[str] = deque(maxlen=LOG_TAIL_LINES * 4)

    def emit(line: str) -> None:
        line = line.rstrip("\r")
        kept.append(line)
        on_log(line)

    async def pump() -> None:
        partial = ""
        async for chunk in client.tail_job_logs(job_id):
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            for line in lines:
                emit(line)
        if partial:
            emit(partial)

    asyncio.run(pump())
    return list(kept)


def wait_for_end(
    client: JobsClient,
    job_id: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobInfo:
    """Poll until the job reaches an end state or the deadline passes; the last info either way."""
    deadline = clock() + timeout
    while True:
        info = job_info(client.get_job_info(job_id))
        if info.done or clock() >= deadline:
            return info
        sleep(POLL_SECONDS)  # a poll interval; the deadline decides


def submit_once(session: Session, job_id: str, entrypoint: str) -> None:
    """Submit the job under ``job_id``; a job id the cluster knows already is bad input (exit 3),
    said in one line, because Ray keeps every submission id for good."""
    with jobs_api_errors(session.head.name, session.port):
        try:
            session.client.submit_job(entrypoint=entrypoint, submission_id=job_id)
        except RuntimeError as err:  # Ray: "Request failed with status code 400: Job with ..."
            if "already exists" not in str(err):
                raise
            duplicate = True
        else:
            duplicate = False
    if duplicate:
        raise InputError(
            f"--run-id {job_id}: the cluster of {session.head.name} already has a job with this id.",
            hint="Pick another --run-id, or leave it out for a fresh one (`shapcluster jobs` lists the ids).",
        ) from None


def run_job(
    session: Session,
    *,
    job_id: str,
    entrypoint: str,
    output_dir: Path,
    on_log: OnLog,
    confirm_stop: ConfirmStop,
    block: Mapping[str, str] | None = None,
    progress: Progress = lambda _: None,
    stop_timeout: float = STOP_TIMEOUT_SECONDS,
    wait: bool = True,
) -> JobOutcome:
    """Submit, follow the log, fetch the results, and raise unless the job succeeded.

    Ctrl-C while following asks ``confirm_stop``: yes stops the job and waits until Ray says it
    stopped (JobStoppedError); no leaves it running and returns a detached outcome.
    ``wait`` False (`submit --no-wait`): return a detached outcome as soon as Ray accepted it.
    """
    head, client = session.head, session.client
    submit_once(session, job_id, entrypoint)
    if not wait:
        return JobOutcome(job_id, "PENDING", None, detached=True)
    progress(f"Job {job_id} submitted to {head.name}; its log follows (Ctrl-C to stop or detach).")
    lines: list[str] = []
    with jobs_api_errors(head.name, session.port, job_id):
        try:
            lines = follow_logs(client, job_id, on_log)
            info = wait_for_end(client, job_id, END_TIMEOUT_SECONDS)
        except KeyboardInterrupt:
            if not confirm_stop():
                return JobOutcome(job_id, "RUNNING", None, detached=True)
            progress(f"Stopping job {job_id} …")
            client.stop_job(job_id)
            info = wait_for_end(client, job_id, stop_timeout)
            if not info.done:
                raise RemoteError(
                    f"{head.name}: asked job {job_id} to stop, but it is still {info.status} "
                    f"after {stop_timeout:.0f} s.",
                    hint="`shapcluster jobs` shows when it ends.",
                ) from None
        if info.status == "FAILED" and not lines:
            lines = client.get_job_logs(job_id).splitlines()
    results = fetch_results(head, job_id, output_dir) if info.done else None
    if results is not None and block is not None:
        add_cluster_block(results / "summary.json", block)
    raise_for_status(info, lines, head.name, results)
    return JobOutcome(job_id, info.status, results)


def jobs_on(session: Session, now: datetime | None = None) -> list[JobRow]:
    """The jobs submitted to this cluster, oldest first (drivers of `status` probes left out)."""
    now = now or datetime.now(UTC)
    with jobs_api_errors(session.head.name, session.port):
        infos = [job_info(d) for d in session.client.list_jobs() if d.submission_id]
    rows = []
    for info in sorted(infos, key=lambda i: (i.start is None, i.start or now)):
        seconds = None if info.start is None else ((info.end or now) - info.start).total_seconds()
        rows.append(JobRow(info.job_id, info.status, info.start, seconds, short_entrypoint(info.entrypoint)))
    return rows


def logs_on(session: Session, job_id: str, *, follow: bool, on_log: OnLog) -> JobInfo:
    """Print a job's log so far (``follow``: until it ends); return its state afterwards."""
    client = session.client
    with jobs_api_errors(session.head.name, session.port, job_id):
        info = job_info(client.get_job_info(job_id))  # an unknown id fails here, clearly
        if follow and not info.done:
            follow_logs(client, job_id, on_log)
            return wait_for_end(client, job_id, END_TIMEOUT_SECONDS)
        for line in client.get_job_logs(job_id).splitlines():
            on_log(line)
    return info


def credentials_warning(meta: CredentialsMeta, previous: Sequence[JobRow], now: datetime) -> str | None:
    """A warning when the AWS credentials on the head expire before this job likely ends: as
    long as the longest of the last few successful jobs, or DEFAULT_JOB_SECONDS without any."""
    durations = [r.seconds for r in previous if r.state == "SUCCEEDED" and r.seconds]
    likely = max(durations[-5:]) if durations else DEFAULT_JOB_SECONDS
    if meta.seconds_left(now) >= likely:
        return None
    basis = "like recent jobs" if durations else "a guess: no job has finished yet"
    return (
        f"AWS credentials for {meta.role_arn} expire {describe_expiry(meta.expiration, now)}, "
        f"before this job likely ends (~{likely / 60:.0f} min, {basis}). Run `shapcluster creds "
        "refresh` now or while it runs: running jobs pick new credentials up without a restart."
    )


def submit(
    config: ClusterConfig,
    job: JobConfig,
    *,
    on_log: OnLog,
    confirm_stop: ConfirmStop,
    progress: Progress = lambda _: None,
    warn: Progress = lambda _: None,
    connect: Callable[[Host], Runner] | None = None,
    client_factory: ClientFactory = ray_jobs_client,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    wait: bool = True,
) -> JobOutcome:
    """Run the job on the cluster's head through the Jobs API; results to job.output_dir/<id>/.
    ``wait`` False: return once the job is submitted (its results stay on the head).

    Local problems (a --data file outside the synced folder) are found before any host is
    contacted. ``warn`` hears about credentials that expire before the job likely ends.
    ``connect`` and ``client_factory`` replace SSH and Ray in tests.
    """
    job_id = job.run_id or new_job_id()
    data = map_data_path(job.data, config.sync.data_dir, config.path)
    folder, where = config.sync.data_dir, config.path
    remote = dataclasses.replace(
        job,
        data=data,
        model=map_data_path(job.model, folder, where, "--model"),
        explain=map_data_path(job.explain, folder, where, "--explain"),
        background_data=map_data_path(job.background_data, folder, where, "--background-data"),
    )
    entrypoint = build_entrypoint(remote, job_id)
    version = app_version(config.sync.app_dir)
    with cluster.open_nodes(config, connect) as nodes:
        head = nodes[0]
        image_id = head_image(head, config.name)
        meta = creds.read_credentials(head)
        block = cluster_block(
            job_id=job_id,
            head=head.name,
            image_id=image_id,
            app_version=version,
            entrypoint=entrypoint,
            credentials_expiry=meta.expiration if meta else None,
        )
        stale_app = sync_warning(unsynced_files(head, config.sync.app_dir), config.sync.app_dir, head.name)
        if stale_app:
            warn(stale_app)
        with open_session(head, config.ray.dashboard, client_factory) as session:
            expiring = meta and credentials_warning(meta, jobs_on(session), clock())
            if expiring:
                warn(expiring)
            return run_job(
                session,
                job_id=job_id,
                entrypoint=entrypoint,
                output_dir=Path(job.output_dir),
                on_log=on_log,
                confirm_stop=confirm_stop,
                block=block,
                progress=progress,
                wait=wait,
            )


def list_jobs(
    config: ClusterConfig,
    *,
    connect: Callable[[Host], Runner] | None = None,
    client_factory: ClientFactory = ray_jobs_client,
) -> list[JobRow]:
    with cluster.open_nodes(config, connect) as nodes, _session(config, nodes[0], client_factory) as session:
        return jobs_on(session)


def job_logs(
    config: ClusterConfig,
    job_id: str,
    *,
    follow: bool,
    on_log: OnLog,
    results_to: Path | None = None,
    connect: Callable[[Host], Runner] | None = None,
    client_factory: ClientFactory = ray_jobs_client,
) -> JobInfo:
    """Print a job's log (``follow``: until it ends); with ``results_to``, copy an ended job's
    results to ``results_to/<job-id>/`` (what `submit` does at the end; for `submit --no-wait`)."""
    with cluster.open_nodes(config, connect) as nodes, _session(config, nodes[0], client_factory) as session:
        info = logs_on(session, job_id, follow=follow, on_log=on_log)
        if results_to is not None and info.done:
            fetch_results(nodes[0], job_id, results_to)
        return info


def stop_job(
    config: ClusterConfig,
    job_id: str,
    *,
    connect: Callable[[Host], Runner] | None = None,
    client_factory: ClientFactory = ray_jobs_client,
    timeout: float = STOP_TIMEOUT_SECONDS,
) -> JobInfo:
    """Stop a cluster job and wait until Ray says it ended; a job that has ended already is left
    as it is (its info returned). Raises InputError for an unknown id, RemoteError when the stop
    does not land within ``timeout`` seconds."""
    with cluster.open_nodes(config, connect) as nodes, _session(config, nodes[0], client_factory) as session:
        head = session.head.name
        with jobs_api_errors(head, session.port, job_id):
            info = job_info(session.client.get_job_info(job_id))
            if info.done:
                return info
            session.client.stop_job(job_id)
            info = wait_for_end(session.client, job_id, timeout)
    if not info.done:
        raise RemoteError(
            f"{head}: asked job {job_id} to stop, but it is still {info.status} after {timeout:.0f} s.",
            hint="`shapcluster jobs` shows when it ends.",
        )
    return info


@contextmanager
def _session(config: ClusterConfig, head: cluster.Node, client_factory: ClientFactory) -> Iterator[Session]:
    head_image(head, config.name)  # "no cluster is up" said plainly, before any token or tunnel
    with open_session(head, config.ray.dashboard, client_factory) as session:
        yield session
