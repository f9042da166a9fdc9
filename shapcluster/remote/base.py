"""The runner interface every host implementation shares, and the result of one command."""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from shapcluster.errors import RemoteError, ShapclusterError
from shapcluster.secrets import MASK

logger = logging.getLogger(__name__)

REDACTED = MASK  # one mask for secrets in commands and in output
TAIL_LINES = 5
TAIL_CHARS = 600


@dataclass(frozen=True)
class Result:
    """The outcome of one command. ``command`` is the display form: redacted for a secret command,
    so a Result can go into logs and errors as it is."""

    command: str
    exit_code: int
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@runtime_checkable
class Runner(Protocol):
    """Runs shell commands on one host. Implementations: ssh, local, fake."""

    @property
    def host(self) -> str:
        """Display name of the host, used in logs, errors and group results."""
        ...

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
        """Run ``command`` in the host's shell.

        ``hide=False`` logs the output line by line as it arrives (never for ``secret``);
        ``secret`` keeps the command and its output out of every log and error;
        ``check`` raises RemoteError on a non-zero exit; ``stdin`` is fed to the command and
        never logged. Unreachable hosts and timeouts always raise RemoteError.
        """
        ...

    def put(self, local_path: Path, remote_path: str, mode: int = 0o600) -> None:
        """Copy a local file to the host atomically (temp file, chmod, rename)."""
        ...

    def put_text(self, text: str, remote_path: str, mode: int = 0o600) -> None:
        """Write ``text`` to a file on the host atomically; the text is never logged."""
        ...

    def get(self, remote_path: str, local_path: Path, mode: int = 0o600) -> None:
        """Copy one file from the host to ``local_path`` atomically (temp file, chmod, rename)."""
        ...

    def tunnel(self, remote_port: int, remote_host: str = "127.0.0.1") -> AbstractContextManager[int]:
        """Forward a free port on this machine's 127.0.0.1 to ``remote_host:remote_port`` as the
        host sees it, for as long as the context lasts; yields the local port. Services bound to
        the host's loopback (the Ray dashboard) are reached this way, never opened to the network.
        """
        ...

    def close(self) -> None: ...


def display_command(command: str, *, secret: bool) -> str:
    """What logs and errors may show of a command: a secret one keeps only its program name."""
    if not secret:
        return command
    try:
        program = shlex.split(command)[0]
    except (ValueError, IndexError):
        return REDACTED
    return f"{program} {REDACTED}"


def upload_line(local_path: Path, remote_path: str, mode: int) -> str:
    """How logs and the dry run show ``put``: a file copied over SFTP is no shell command, so it
    is shown as a comment line (a no-op to a shell) naming both ends and the mode it gets."""
    return f"# upload {shlex.quote(str(local_path))} -> {shlex.quote(remote_path)} (sftp, mode {mode:04o})"


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last few lines of an output, enough to see why a command failed."""
    kept = "\n".join(text.rstrip().splitlines()[-lines:])
    return kept if len(kept) <= chars else "…" + kept[-chars:]


def host_error_text(host: str, error: Exception) -> str:
    """One host's failure as text that starts with the host's name (once), for the one error
    that names every failed host."""
    text = error.message if isinstance(error, ShapclusterError) else f"{type(error).__name__}: {error}"
    return text if text.startswith(f"{host}:") else f"{host}: {text}"


def check_result(host: str, result: Result) -> Result:
    """Return ``result`` if it succeeded, else raise a RemoteError naming the host and command."""
    if result.ok:
        return result
    message = f"{host}: `{result.command}` exited with status {result.exit_code}"
    detail = tail(result.stderr) or tail(result.stdout)
    raise RemoteError(f"{message}:\n{detail}" if detail else message)


def save_atomically(local_path: Path, mode: int, fill: Callable[[Path], object]) -> None:
    """Create ``local_path`` through a temp file beside it: ``fill`` writes the temp file, which
    gets ``mode`` and is renamed into place only when complete (removed on any failure)."""
    local_path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=local_path.parent, prefix=f".{local_path.name}.", suffix=".part")
    os.close(fd)
    temp = Path(name)
    try:
        fill(temp)
        temp.chmod(mode)
        os.replace(temp, local_path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def log_command(host: str, display: str) -> None:
    logger.debug("%s: $ %s", host, display)


def log_output(host: str, text: str) -> None:
    for line in text.splitlines():
        logger.info("%s: %s", host, line)
