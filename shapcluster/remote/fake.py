"""A runner that runs nothing: it records commands and answers with scripted results.

It backs ``--dry-run`` (every command is logged, nothing touches a host) and the unit tests of
the orchestration (script a failure for one host, assert the exact commands sent).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from shapcluster.commands import write_file_command
from shapcluster.errors import RemoteError
from shapcluster.remote.base import Result, check_result, display_command

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Script:
    pattern: re.Pattern[str]
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    error: RemoteError | None = None


class FakeRunner:
    """Records every command; the most recently scripted matching pattern decides the result.

    Unscripted commands succeed with empty output, which is what a dry run wants.
    """

    def __init__(self, host: str = "fake", *, dry_run: bool = False) -> None:
        self._host = host
        self._dry_run = dry_run
        self._scripts: list[_Script] = []
        self._lock = threading.Lock()
        self.commands: list[str] = []  # the real command text, in order
        self.stdins: list[str | None] = []  # stdin of each command, same order
        self.files: dict[str, tuple[bytes, int]] = {}  # remote path -> (content, mode)
        self.closed = False

    @property
    def host(self) -> str:
        return self._host

    def respond(self, pattern: str, *, stdout: str = "", stderr: str = "", exit_code: int = 0) -> FakeRunner:
        """Answer commands matching the regex ``pattern`` (``re.search``) with this result."""
        self._scripts.append(_Script(re.compile(pattern), exit_code, stdout, stderr))
        return self

    def fail(self, pattern: str, message: str = "connection refused") -> FakeRunner:
        """Make matching commands raise as an unreachable host would."""
        error = RemoteError(f"{self._host}: {message}")
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
            self.stdins.append(stdin)
            script = next((s for s in reversed(self._scripts) if s.pattern.search(command)), None)
        if script is None:
            return Result(command=display, exit_code=0)
        if script.error is not None:
            raise script.error
        result = Result(display, script.exit_code, script.stdout, script.stderr)
        return check_result(self._host, result) if check else result

    def put(self, local_path: Path, remote_path: str, mode: int = 0o600) -> None:
        self._store(local_path.read_bytes(), remote_path, mode)

    def put_text(self, text: str, remote_path: str, mode: int = 0o600) -> None:
        self._store(text.encode(), remote_path, mode)

    def close(self) -> None:
        self.closed = True

    def _store(self, content: bytes, remote_path: str, mode: int) -> None:
        # Recorded as the command a real runner would send, so dry runs show every write.
        self.run(write_file_command(remote_path, mode))
        with self._lock:
            self.files[remote_path] = (content, mode)
