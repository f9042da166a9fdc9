"""Stream one command's output into several commands' input, each on its own host, over SSH.

Used to ship an image (``docker save`` on the head into ``docker load`` on every worker). Memory
use is one chunk, whatever the size; a target that stops reading drops out alone.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping

import paramiko

from shapcluster.config import SshConfig
from shapcluster.errors import RemoteError, ShapclusterError
from shapcluster.inventory import Host
from shapcluster.remote.base import tail
from shapcluster.remote.ssh import connect_ssh

Progress = Callable[[str], None]
CHUNK_BYTES = 1 << 20


def fan_out(
    source: Host,
    source_command: str,
    targets: Mapping[str, Host],
    target_command: str,
    ssh: SshConfig,
    *,
    size: int | None,
    progress: Progress,
    stall_seconds: float,
    finish_seconds: float,
) -> dict[str, Exception]:
    """Run ``source_command`` on ``source`` and feed its stdout to ``target_command`` on every
    target (name -> host). Returns the failures by target name; raises RemoteError naming the
    source if its command fails. ``stall_seconds``: no byte moving for this long is a failure;
    ``finish_seconds``: how long a target may take after the last byte."""
    failures: dict[str, Exception] = {}
    with contextlib.ExitStack() as stack:
        source_client = stack.enter_context(connect_ssh(source, ssh))
        sinks: dict[str, paramiko.Channel] = {}
        for name, host in targets.items():
            try:
                client = stack.enter_context(connect_ssh(host, ssh))
                sinks[name] = _start(client, target_command, stall_seconds)
            except (ShapclusterError, paramiko.SSHException, OSError) as err:
                failures[name] = err
        if not sinks:
            return failures
        pipe = _start(source_client, source_command, stall_seconds)
        _pump(pipe, sinks, failures, size, progress, target_command)
        if not sinks:  # every target failed: the source was cut off by us, not by its host
            pipe.close()
            return failures
        status, err_text = _finish(pipe, stall_seconds)
        if status != 0:
            raise RemoteError(f"{source.name}: `{source_command}` failed (exit {status}): {tail(err_text)}")
        for name, channel in sinks.items():
            status, err_text = _finish(channel, finish_seconds)
            if status != 0:
                failures[name] = RemoteError(
                    f"{name}: `{target_command}` failed (exit {status}): {tail(err_text) or 'no output'}"
                )
    return failures


def _start(client: paramiko.SSHClient, command: str, stall_seconds: float) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None:
        raise RemoteError("the SSH connection closed")
    channel = transport.open_session(timeout=stall_seconds)
    channel.settimeout(stall_seconds)  # a stalled send or receive raises instead of hanging
    channel.exec_command(command)
    return channel


def _pump(
    source: paramiko.Channel,
    sinks: dict[str, paramiko.Channel],
    failures: dict[str, Exception],
    size: int | None,
    progress: Progress,
    target_command: str = "docker load",
) -> None:
    """Copy the source's stdout into every sink's stdin; a sink that fails drops out alone."""
    sent, step = 0, max((size or 0) // 10, 256 * CHUNK_BYTES)
    next_report = step
    while sinks:
        try:
            chunk = source.recv(CHUNK_BYTES)
        except TimeoutError:
            source.close()
            break  # _finish reports the source
        if not chunk:
            break
        for name, channel in list(sinks.items()):
            try:
                channel.sendall(chunk)
            except (OSError, paramiko.SSHException) as err:
                _, err_text = _finish(channel, 5.0)
                failures[name] = RemoteError(
                    f"{name}: `{target_command}` stopped reading after {sent // 2**20} MB: "
                    f"{tail(err_text) or err or 'connection closed'}"
                )
                channel.close()
                del sinks[name]
        sent += len(chunk)
        if sent >= next_report:
            total = f" of about {size // 2**20}" if size else ""
            progress(f"shipped {sent // 2**20}{total} MB to {', '.join(sinks) or 'no host'}")
            next_report += step
    for channel in sinks.values():
        with contextlib.suppress(OSError, paramiko.SSHException):
            channel.shutdown_write()  # EOF: the target finishes its work


def _finish(channel: paramiko.Channel, timeout: float) -> tuple[int, str]:
    """Exit status (-1 if it did not end in time) and stderr plus stdout of a channel's command."""
    ended = channel.status_event.wait(timeout)
    output = b""
    with contextlib.suppress(OSError, paramiko.SSHException, socket.timeout):
        while channel.recv_stderr_ready():
            output += channel.recv_stderr(CHUNK_BYTES)
        while channel.recv_ready():
            output += channel.recv(CHUNK_BYTES)
    status = channel.recv_exit_status() if ended else -1
    if not ended:
        channel.close()
        output += f"\n(no exit status within {timeout:.0f} s)".encode()
    return status, output.decode(errors="replace")
