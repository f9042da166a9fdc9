"""Run the SHAP job: on this machine (`submit --local`) or on a cluster through Ray's Jobs API.

The job itself lives in ``app`` and knows nothing of shapcluster; this package translates its
failures (locally its exceptions, on a cluster its driver's exit status) into ShapclusterError
so the CLI can report them with the right exit status.

- ``local``: the job on a local Ray instance;
- ``api``: the job on a cluster through the Jobs API (token, tunnel, submit, follow, stop);
- ``results``: a finished job's status and its results fetched back;
- ``provenance``: where a cluster run came from (the summary's "cluster" block, stale-app warning).

The names below are the package's interface; import from here.
"""

from shapcluster.jobs.api import (
    ClientFactory,
    ConfirmStop,
    JobOutcome,
    JobRow,
    JobsClient,
    OnLog,
    Session,
    build_entrypoint,
    credentials_warning,
    follow_logs,
    head_image,
    job_logs,
    jobs_api_errors,
    jobs_on,
    list_jobs,
    logs_on,
    map_data_path,
    new_job_id,
    open_session,
    ray_jobs_client,
    read_token,
    run_job,
    short_entrypoint,
    stop_job,
    submit,
    submit_once,
    wait_for_end,
)
from shapcluster.jobs.local import build_job_config, local_command, run_local
from shapcluster.jobs.provenance import (
    add_cluster_block,
    app_version,
    cluster_block,
    content_hash,
    sync_warning,
    unsynced_files,
)
from shapcluster.jobs.results import (
    RESULTS_MODE,
    JobInfo,
    app_error,
    fetch_results,
    job_info,
    list_files_command,
    raise_for_status,
)

__all__ = [
    "RESULTS_MODE", "ClientFactory", "ConfirmStop", "JobInfo", "JobOutcome", "JobRow", "JobsClient", "OnLog",
    "Session", "add_cluster_block", "app_error", "app_version", "build_entrypoint", "build_job_config",
    "cluster_block", "content_hash", "credentials_warning", "fetch_results", "follow_logs", "head_image",
    "job_info", "job_logs", "jobs_api_errors", "jobs_on", "list_files_command", "list_jobs",
    "local_command", "logs_on",
    "map_data_path", "new_job_id", "open_session", "raise_for_status", "ray_jobs_client", "read_token",
    "run_job", "run_local", "short_entrypoint", "stop_job", "submit", "submit_once", "sync_warning",
    "unsynced_files", "wait_for_end",
]  # fmt: skip
