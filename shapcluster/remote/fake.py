"""A runner that runs nothing: it records commands and answers with scripted results.

It backs ``up --dry-run`` (``shapcluster.dryrun``: `up` itself runs over fake runners scripted
as fresh hosts, and the commands they record are the plan) and the unit tests of the
orchestration (script a failure for one host, assert the exact commands sent).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shapcluster.commands import write_file_command
from shapcluster.errors import RemoteError
from shapcluster.remote.base import Result, check_result, display_command, save_atomically, upload_line

logger = logging.getLogger(__name__)


@dataclass
class _Script:
    pattern: re.Pattern[str]
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    error: RemoteError | None = None
    times: int | None = None  # answers this many commands, then no more; None: every one


class FakeRunner:
    """Records every command; the most recently scripted matching pattern decides the result.

    Unscripted commands succeed with empty output, which is what a dry run wants.
    """

    def __init__(self, host: str = "fake", *, dry_run: bool = False, tunnel_port: int | None = None) -> None:
        self._host = host
        self._dry_run = dry_run
        self._scripts: list[_Script] = []
        self._lock = threading.Lock()
        # The real command text, in order; a put (SFTP, not a command) as its ``upload_line``.
        self.commands: list[str] = []
        self.shown: list[str] = []  # each command as logs show it (a secret one masked), same order
        self.stdins: list[str | None] = []  # stdin of each command, same order
        self.files: dict[str, tuple[bytes, int]] = {}  # remote path -> (content, mode); get reads it
        self.downloads: list[tuple[str, Path]] = []  # (remote path, local path) of each get
        self.tunnels: list[tuple[str, int]] = []  # (remote host, remote port) of each tunnel opened
        self.open_tunnels = 0
        self._tunnel_port = tunnel_port  # the local port a tunnel yields; None: the remote port
        self.closed = False

    @property
    def host(self) -> str:
        return self._host

    def respond(
        self,
        pattern: str,
        *,
        stdout: str = "",
        stderr: str = "",
        exit_code: int = 0,
        times: int | None = None,
    ) -> FakeRunner:
        """Answer commands matching the regex ``pattern`` (``re.search``) with this result
        (only the next ``times`` of them, if given)."""
        self._scripts.append(_Script(re.compile(pattern), exit_code, stdout, stderr, times=times))
        return self

    def fail(
        self, pattern: str, message: str = "connection refused", *, hint: str | None = None
    ) -> FakeRunner:
        """Make matching commands raise as an unreachable host would (with ``hint``, as SSH's)."""
        error = RemoteError(f"{self._host}: {message}", hint=hint)
        self._scripts.append(_Script(re.compile(pattern), error=error))
        return self

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
        display = display_command(command, secret=secret)
        if self._dry_run:
            logger.info("%s: would run: %s", self._host, display)
        with self._lock:
            self.commands.append(command)
            self.shown.append(display)
            self.stdins.append(stdin)
            script = next(
                (s for s in reversed(self._scripts) if s.times != 0 and s.pattern.search(command)), None
            )
            if script is not None and script.times is not None:
                script.times -= 1
        if script is None:
            return Result(command=display, exit_code=0)
        if script.error is not None:
            raise script.error
        result = Result(display, script.exit_code, script.stdout, script.stderr)
        return check_result(self._host, result) if check else result

    def put(self, local_path: Path, remote_path: str, mode: int = 0o600) -> None:
        """Recorded as what SSH does, an SFTP upload (``upload_line``), not as a shell command."""
        self._record(upload_line(local_path, remote_path, mode))
        self._store(local_path.read_bytes(), remote_path, mode)

    def put_text(self, text: str, remote_path: str, mode: int = 0o600) -> None:
        # SSH sends this very command with the text as stdin; the text is never recorded.
        self.run(write_file_command(remote_path, mode))
        self._store(text.encode(), remote_path, mode)

    def get(self, remote_path: str, local_path: Path, mode: int = 0o600) -> None:
        """Copy a file from ``files`` (put there by put/put_text or by a test); missing: RemoteError."""
        if self._dry_run:
            logger.info("%s: would copy %s to %s", self._host, remote_path, local_path)
        with self._lock:
            self.downloads.append((remote_path, local_path))
            stored = self.files.get(remote_path)
        if stored is None:
            raise RemoteError(f"{self._host}: cannot copy {remote_path}: no such file")
        save_atomically(local_path, mode, lambda temp: temp.write_bytes(stored[0]))

    @contextmanager
    def tunnel(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        if self._dry_run:
            logger.info("%s: would forward a local port to %s:%d", self._host, remote_host, remote_port)
        with self._lock:
            self.tunnels.append((remote_host, remote_port))
            self.open_tunnels += 1
        try:
            yield remote_port if self._tunnel_port is None else self._tunnel_port
        finally:
            with self._lock:
                self.open_tunnels -= 1

    def close(self) -> None:
        self.closed = True

    def _record(self, line: str) -> None:
        if self._dry_run:
            logger.info("%s: would %s", self._host, line.removeprefix("# "))
        with self._lock:
            self.commands.append(line)
            self.shown.append(line)
            self.stdins.append(None)

    def _store(self, content: bytes, remote_path: str, mode: int) -> None:
        with self._lock:
            self.files[remote_path] = (content, mode)
