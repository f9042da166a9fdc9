"""A Ray head on this machine for `serve up --local`: started once (``ray start --head --block``
in its own session), kept running between commands, stopped by `serve down --local`.

Its state lives in one folder (``SHAPCLUSTER_LOCAL_RAY_DIR``, default
``~/.cache/shapcluster/local-ray``): ``head.json`` (process id and ports), ``token`` (0600, the
head's Ray token: it runs with token auth like a cluster) and ``ray-start.log``. Its own
``--temp-dir`` (``/tmp/shapcluster-ray-<uid>-<hash of the folder>``) keeps other Ray users of
this machine away from it: a plain ``ray.init()`` elsewhere looks for
``/tmp/ray/ray_current_cluster``, not there. Every port is
picked free (the dashboard and Serve prefer 8265 and 8000), all on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from shapcluster.errors import RemoteError, ShapclusterError
from shapcluster.remote.base import save_atomically, tail
from shapcluster.secrets import register_secret
from shapcluster.serve.dashboard import Endpoint

log = logging.getLogger(__name__)

STATE_ENV = "SHAPCLUSTER_LOCAL_RAY_DIR"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 40.0  # ray start --block stops its processes on SIGTERM
POLL_SECONDS = 0.5
WHERE = "the local Ray head"


def state_dir() -> Path:
    configured = os.environ.get(STATE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "shapcluster" / "local-ray"


@dataclass(frozen=True)
class LocalHead:
    pid: int
    gcs_port: int
    dashboard_port: int
    serve_port: int
    temp_dir: str

    folder: str  # the state folder (head.json, token, log)

    @property
    def token_file(self) -> Path:
        return Path(self.folder) / "token"

    def token(self) -> str:
        token = self.token_file.read_text(encoding="utf-8").strip()
        register_secret(token)
        return token

    def dashboard(self) -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.dashboard_port}", self.token(), WHERE, "the Ray dashboard")

    def service(self) -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.serve_port}", self.token(), WHERE, "the Serve application")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RemoteError("no free TCP port on 127.0.0.1 for the local Ray head")


def ray_temp_dir(folder: Path) -> Path:
    """The head's own --temp-dir: short (Ray's socket paths must stay under 107 characters) and
    one per state folder."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"shapcluster-ray-{os.getuid()}-{digest}"


def running_head(folder: Path | None = None) -> LocalHead | None:
    """The local head started earlier, if its process still runs; None otherwise."""
    folder = folder or state_dir()
    try:
        head = LocalHead(**json.loads((folder / "head.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return head if _alive(head.pid) else None


def start_command(head: LocalHead, cpus: int | None, ports: dict[str, int]) -> list[str]:
    """``ray start --head --block`` with every port on 127.0.0.1 given (tested as a list)."""
    command = [
        sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={head.gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={head.dashboard_port}",
        f"--ray-client-server-port={ports['client']}",
        f"--dashboard-agent-listen-port={ports['agent']}",
        f"--temp-dir={head.temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    if cpus is not None:
        command.append(f"--num-cpus={cpus}")
    return command


def ensure_head(
    *,
    cpus: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
    folder: Path | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
) -> LocalHead:
    """The running local head, or a new one (said through ``progress``) once its dashboard
    answers. RemoteError with the tail of its log when it does not start within ``timeout``."""
    folder = folder or state_dir()
    head = running_head(folder)
    if head is not None:
        return head
    folder.mkdir(parents=True, exist_ok=True)
    token_file = folder / "token"
    if not token_file.exists():
        save_atomically(token_file, 0o600, lambda path: path.write_text(secrets.token_hex(32)))
    ports = {"client": _free_port(), "agent": _free_port()}
    temp_dir = ray_temp_dir(folder)
    planned = LocalHead(0, _free_port(), _free_port(8265), _free_port(8000), str(temp_dir), str(folder))
    log_file = folder / "ray-start.log"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    progress(
        f"Starting a local Ray head (dashboard 127.0.0.1:{planned.dashboard_port}, "
        f"Serve 127.0.0.1:{planned.serve_port}); `shapcluster serve down --local` stops it."
    )
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            start_command(planned, cpus, ports),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    head = dataclasses.replace(planned, pid=process.pid)
    save_atomically(folder / "head.json", 0o600, lambda path: path.write_text(json.dumps(asdict(head))))
    deadline = time.monotonic() + timeout
    dashboard = head.dashboard()
    while True:
        if process.poll() is not None:
            raise RemoteError(
                f"{WHERE} exited with status {process.returncode} while starting:\n"
                f"{tail(log_file.read_text(errors='replace'))}"
            )
        try:
            dashboard.get_json("/api/ray/version")
            dashboard.get_json("/api/serve/applications/")  # the Serve module is up too
            return head
        except ShapclusterError:
            if time.monotonic() >= deadline:
                stop_head(head)
                raise RemoteError(
                    f"{WHERE}: its dashboard did not answer within {timeout:.0f} s:\n"
                    f"{tail(log_file.read_text(errors='replace'))}"
                ) from None
        time.sleep(POLL_SECONDS)  # a poll interval; the deadline decides


def stop_head(head: LocalHead, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM to the head's ``ray start --block`` (it stops the processes it started), then
    SIGKILL to what is left of its process group; its state and temp dir are removed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(head.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(head.pid) and time.monotonic() < deadline:
        _reap(head.pid)
        time.sleep(POLL_SECONDS)  # a poll interval; the deadline decides
    if _alive(head.pid):
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing its processes", WHERE, head.pid, timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the rest of its process group
        os.killpg(head.pid, signal.SIGKILL)
    _reap(head.pid)
    (Path(head.folder) / "head.json").unlink(missing_ok=True)
    shutil.rmtree(head.temp_dir, ignore_errors=True)  # its session logs; ray-start.log stays


def _reap(pid: int) -> None:
    """Collect the exit status of a head this process started (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
