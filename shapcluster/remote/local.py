"""Run commands on this machine with the same interface as the SSH runner."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shapcluster.commands import write_file_command
from shapcluster.errors import RemoteError
from shapcluster.remote.base import (
    Result,
    check_result,
    display_command,
    log_command,
    log_output,
    save_atomically,
)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class LocalRunner:
    """A ``Runner`` for this machine: ``sh -c`` in a subprocess."""

    def __init__(self, name: str = "localhost", *, shell: str = "/bin/sh") -> None:
        self._name = name
        self._shell = shell

    @property
    def host(self) -> str:
        return self._name

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
        data = None if stdin is None else stdin.encode()
        return self._run(command, data, timeout=timeout, hide=hide, secret=secret, check=check)

    def put(self, local_path: Path, remote_path: str, mode: int = 0o600) -> None:
        try:
            data = local_path.read_bytes()
        except OSError as err:
            raise RemoteError(f"cannot read {local_path} to copy it to {self._name}: {err}") from None
        self._run(
            write_file_command(remote_path, mode), data, timeout=None, hide=True, secret=False, check=True
        )

    def put_text(self, text: str, remote_path: str, mode: int = 0o600) -> None:
        self.run(write_file_command(remote_path, mode), stdin=text)

    def get(self, remote_path: str, local_path: Path, mode: int = 0o600) -> None:
        log_command(self._name, f"get {remote_path} -> {local_path}")
        try:
            save_atomically(local_path, mode, lambda temp: shutil.copyfile(remote_path, temp))
        except OSError as err:
            raise RemoteError(f"{self._name}: cannot copy {remote_path} to {local_path}: {err}") from None

    @contextmanager
    def tunnel(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        """No tunnel is needed on this machine: the port itself is already local."""
        if remote_host not in LOOPBACK:
            raise ValueError(f"LocalRunner forwards only to loopback addresses, not {remote_host!r}")
        yield remote_port

    def close(self) -> None:
        """Nothing to close: every command is its own process."""

    def _run(
        self,
        command: str,
        stdin: bytes | None,
        *,
        timeout: float | None,
        hide: bool,
        secret: bool,
        check: bool,
    ) -> Result:
        display = display_command(command, secret=secret)
        log_command(self._name, display)
        try:
            done = subprocess.run(
                [self._shell, "-c", command],
                # No stdin means an empty one: a command must never wait on the user's terminal.
                input=b"" if stdin is None else stdin,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self._name}: `{display}` did not finish within {timeout:g} s") from None
        except OSError as err:
            raise RemoteError(f"{self._name}: cannot start {self._shell}: {err}") from None
        result = Result(
            command=display,
            exit_code=done.returncode,
            stdout=done.stdout.decode(errors="replace"),
            stderr=done.stderr.decode(errors="replace"),
        )
        if not hide and not secret:
            log_output(self._name, result.stdout + result.stderr)
        return check_result(self._name, result) if check else result
