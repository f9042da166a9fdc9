from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from shapcluster.commands import write_file_command
from shapcluster.config import SshConfig
from shapcluster.errors import InputError, RemoteError
from shapcluster.inventory import Host
from shapcluster.remote.base import Result, Runner, check_result, display_command, tail
from shapcluster.remote.fake import FakeRunner
from shapcluster.remote.group import HostsFailedError, gather_results, run_in_parallel
from shapcluster.remote.local import LocalRunner
from shapcluster.remote.ssh import (
    AcceptNewHostKey,
    RejectUnknownHostKey,
    SshRunner,
    SshTarget,
    UnknownHostKeyError,
    fingerprint,
    keyscan_command,
    load_private_key,
    make_connection,
    resolve_target,
    translate_ssh_error,
)

# ---------------------------------------------------------------- base


def test_display_command_redacts_secrets() -> None:
    assert display_command("echo hi", secret=False) == "echo hi"
    assert display_command("aws configure set key AKIA123", secret=True) == "aws ****"
    assert display_command("echo 'unterminated", secret=True) == "****"
    assert "AKIA" not in repr(Result(display_command("x AKIA", secret=True), 0, "AKIA", "AKIA"))


def test_tail_keeps_the_last_lines() -> None:
    assert tail("1\n2\n3\n4\n5\n6\n7\n") == "3\n4\n5\n6\n7"
    assert tail("x" * 700, chars=10) == "…" + "x" * 10


def test_check_result_names_host_command_and_stderr_tail() -> None:
    ok = Result("true", 0)
    assert check_result("h1", ok) is ok
    with pytest.raises(RemoteError) as caught:
        check_result("h1", Result("docker ps", 127, "", "sh: docker: not found\n"))
    assert caught.value.message == "h1: `docker ps` exited with status 127:\nsh: docker: not found"


# ---------------------------------------------------------------- fake


def test_fake_records_commands_and_answers_by_pattern() -> None:
    fake = FakeRunner("w1").respond(r"^nproc$", stdout="4\n").respond(r"^docker ps", stdout="a|b|c|d|e|f\n")
    fake.respond(r"^nproc$", stdout="8\n")  # the most recent script wins
    assert isinstance(fake, Runner)
    assert fake.run("nproc").stdout == "8\n"
    assert fake.run("docker ps --all").stdout.startswith("a|")
    assert fake.run("unscripted") == Result("unscripted", 0)
    assert fake.commands == ["nproc", "docker ps --all", "unscripted"]


def test_fake_scripted_failures() -> None:
    fake = FakeRunner("w1").respond("boom", stderr="bad\n", exit_code=2).fail("^ssh-me", "unreachable")
    with pytest.raises(RemoteError, match="w1: `boom` exited with status 2:\nbad"):
        fake.run("boom")
    assert fake.run("boom", check=False).exit_code == 2
    with pytest.raises(RemoteError, match="w1: unreachable"):
        fake.run("ssh-me")


def test_fake_stores_files_and_records_the_write(tmp_path: Path) -> None:
    fake = FakeRunner("w1")
    fake.put_text("TOKEN", "/r/secrets/token")
    source = tmp_path / "f.bin"
    source.write_bytes(b"\x00\x01")
    fake.put(source, "/r/app/f.bin", 0o644)
    assert fake.files == {"/r/secrets/token": (b"TOKEN", 0o600), "/r/app/f.bin": (b"\x00\x01", 0o644)}
    # put_text is the command SSH sends (the text on stdin); put is an SFTP upload, shown as one.
    assert fake.commands == [
        write_file_command("/r/secrets/token"),
        f"# upload {source} -> /r/app/f.bin (sftp, mode 0644)",
    ]
    assert fake.shown == fake.commands and fake.stdins == [None, None]
    assert all("TOKEN" not in command for command in fake.commands)


def test_ssh_put_logs_the_upload_as_the_fake_records_it(
    tmp_path: Path, sshd: Sshd, caplog: pytest.LogCaptureFixture
) -> None:
    """The dry run shows a put as the line the SSH runner logs for it, not as a shell command."""
    caplog.set_level(logging.DEBUG, logger="shapcluster.remote")
    trust(tmp_path, sshd, sshd.host_key)
    runner = ssh_runner(tmp_path, sshd)
    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    with contextlib.suppress(RemoteError):  # the test sshd's SFTP is read-only
        runner.put(source, str(tmp_path / "up" / "f.bin"), 0o644)
    runner.close()
    fake = FakeRunner("w1")
    fake.put(source, str(tmp_path / "up" / "f.bin"), 0o644)
    assert f"127.0.0.1:{sshd.port}: $ {fake.shown[0]}" in caplog.messages


def test_fake_dry_run_logs_masked_commands(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shapcluster")
    fake = FakeRunner("w1", dry_run=True)
    fake.run("docker stop x")
    fake.run("login --password hunter2", secret=True)
    assert caplog.messages == ["w1: would run: docker stop x", "w1: would run: login ****"]


def test_fake_get_copies_recorded_files_and_tunnels_are_recorded(tmp_path: Path) -> None:
    fake = FakeRunner("h1", tunnel_port=40001)
    fake.files["/r/results/j/summary.json"] = (b"{}\n", 0o644)
    fake.get("/r/results/j/summary.json", tmp_path / "out" / "summary.json", 0o644)
    assert (tmp_path / "out" / "summary.json").read_bytes() == b"{}\n"
    assert (tmp_path / "out" / "summary.json").stat().st_mode & 0o777 == 0o644
    with pytest.raises(RemoteError, match="h1: cannot copy /r/missing: no such file"):
        fake.get("/r/missing", tmp_path / "out" / "missing")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json"]  # no temp left
    assert fake.downloads == [
        ("/r/results/j/summary.json", tmp_path / "out" / "summary.json"),
        ("/r/missing", tmp_path / "out" / "missing"),
    ]
    with fake.tunnel(8265) as port:
        assert port == 40001 and fake.open_tunnels == 1
    assert fake.tunnels == [("127.0.0.1", 8265)] and fake.open_tunnels == 0
    with FakeRunner("h2").tunnel(8265) as port:
        assert port == 8265


# ---------------------------------------------------------------- group


def test_group_collects_successes_and_failures_in_runner_order() -> None:
    runners = [
        FakeRunner("h1").respond("nproc", stdout="2"),
        FakeRunner("w1").respond("nproc", stderr="l1\nl2\nl3\nl4\nl5\nl6\n", exit_code=1),
        FakeRunner("w2").fail("nproc", "cannot reach SSH on port 22"),
        FakeRunner("w3").respond("nproc", stdout="4"),
    ]
    result = gather_results(runners, lambda r: r.run("nproc").stdout)
    assert result.successes == {"h1": "2", "w3": "4"}
    assert list(result.failures) == ["w1", "w2"]
    with pytest.raises(HostsFailedError) as caught:
        run_in_parallel(runners, lambda r: r.run("nproc").stdout, what="Counting CPUs")
    error = caught.value
    assert isinstance(error, RemoteError)
    assert error.message == (
        "Counting CPUs failed on 2 of 4 hosts:\n"
        "  - w1: `nproc` exited with status 1:\n    l2\n    l3\n    l4\n    l5\n    l6\n"
        "  - w2: cannot reach SSH on port 22"
    )
    assert error.result.successes == {"h1": "2", "w3": "4"}


def test_group_runs_hosts_in_parallel() -> None:
    barrier = threading.Barrier(3, timeout=5)  # deadlocks (and fails) if the hosts ran one by one
    runners = [FakeRunner(f"h{i}") for i in range(3)]
    assert run_in_parallel(runners, lambda r: barrier.wait() >= 0, what="x") == {
        "h0": True,
        "h1": True,
        "h2": True,
    }


def test_group_keeps_unexpected_errors_as_cause_and_merges_hints() -> None:
    def action(runner: Runner) -> None:
        if runner.host == "a":
            raise KeyError("bug")
        raise RemoteError(f"{runner.host}: nope", hint="Do this.")

    with pytest.raises(HostsFailedError) as caught:
        run_in_parallel([FakeRunner("a"), FakeRunner("b"), FakeRunner("c")], action, what="Step")
    assert (
        caught.value.message
        == "Step failed on 3 of 3 hosts:\n  - a: KeyError: 'bug'\n  - b: nope\n  - c: nope"
    )
    assert caught.value.hint == "Do this."
    assert isinstance(caught.value.__cause__, KeyError)


def test_group_edge_cases() -> None:
    assert run_in_parallel([], lambda r: 1, what="x") == {}
    with pytest.raises(ValueError, match="distinct host names"):
        gather_results([FakeRunner("a"), FakeRunner("a")], lambda r: 1)


# ---------------------------------------------------------------- local


def test_local_runner_runs_for_real() -> None:
    runner = LocalRunner()
    assert isinstance(runner, Runner)
    result = runner.run("echo out; echo err >&2; exit 3", check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert runner.run("cat", stdin="piped").stdout == "piped"
    assert runner.run("cat").stdout == ""  # never waits on the terminal
    with pytest.raises(RemoteError, match=r"localhost: `exit 4` exited with status 4"):
        runner.run("exit 4")


def test_local_runner_timeout_and_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="shapcluster")
    runner = LocalRunner("here")
    with pytest.raises(RemoteError, match=r"here: `sleep 5` did not finish within 0.2 s"):
        runner.run("sleep 5", timeout=0.2)
    with pytest.raises(RemoteError) as caught:
        runner.run("echo hunter2 >/dev/null; exit 1", secret=True, hide=False)
    assert "hunter2" not in caught.value.message + "".join(caplog.messages)


def test_local_runner_logs_output_when_not_hidden(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shapcluster")
    LocalRunner("here").run("echo a; echo b", hide=False)
    assert caplog.messages == ["here: a", "here: b"]


def test_local_runner_writes_files_atomically(tmp_path: Path) -> None:
    runner = LocalRunner()
    runner.put_text("secret\n", str(tmp_path / "s" / "env.list"))
    assert (tmp_path / "s" / "env.list").read_text() == "secret\n"
    assert (tmp_path / "s" / "env.list").stat().st_mode & 0o777 == 0o600
    source = tmp_path / "blob"
    source.write_bytes(bytes(range(256)))
    runner.put(source, str(tmp_path / "copy"), 0o644)
    assert (tmp_path / "copy").read_bytes() == bytes(range(256))
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o644
    with pytest.raises(RemoteError, match="cannot read"):
        runner.put(tmp_path / "missing", str(tmp_path / "x"))


def test_local_runner_gets_files_atomically_and_needs_no_tunnel(tmp_path: Path) -> None:
    runner = LocalRunner("here")
    source = tmp_path / "remote" / "shap_summary.png"
    source.parent.mkdir()
    source.write_bytes(b"\x89PNG" + bytes(range(256)))
    runner.get(str(source), tmp_path / "local" / "plot.png", 0o644)
    assert (tmp_path / "local" / "plot.png").read_bytes() == source.read_bytes()
    assert (tmp_path / "local" / "plot.png").stat().st_mode & 0o777 == 0o644
    with pytest.raises(RemoteError, match=r"here: cannot copy .*/missing to .*/local/missing: "):
        runner.get(str(tmp_path / "missing"), tmp_path / "local" / "missing")
    assert [p.name for p in (tmp_path / "local").iterdir()] == ["plot.png"]
    with runner.tunnel(8265) as port:
        assert port == 8265
    with pytest.raises(ValueError, match="loopback"), runner.tunnel(8265, "10.0.0.5"):
        pass


# ---------------------------------------------------------------- ssh, without a server


def ssh_options(tmp_path: Path, *, accept_new: bool = False, key: Path | None = None) -> SshConfig:
    return SshConfig(
        user="tester",
        key=key,
        known_hosts=tmp_path / "known_hosts",
        accept_new_host_keys=accept_new,
        connect_timeout=5,
    )


HOST = Host("10.0.0.5", user="tester", port=2222)


@pytest.fixture(scope="module")
def host_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


def test_reject_policy_raises_unknown_host_key(host_key: paramiko.PKey) -> None:
    with pytest.raises(UnknownHostKeyError) as caught:
        RejectUnknownHostKey().missing_host_key(paramiko.SSHClient(), "[10.0.0.5]:2222", host_key)
    assert caught.value.key is host_key


def test_accept_new_policy_records_the_key(tmp_path: Path, host_key: paramiko.PKey) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    client = paramiko.SSHClient()
    AcceptNewHostKey(known_hosts).missing_host_key(client, "[10.0.0.5]:2222", host_key)
    assert known_hosts.read_text() == f"[10.0.0.5]:2222 {host_key.get_name()} {host_key.get_base64()}\n"
    assert client.get_host_keys().lookup("[10.0.0.5]:2222") is not None
    reloaded = paramiko.HostKeys(str(known_hosts))
    assert reloaded.check("[10.0.0.5]:2222", host_key)


def test_connection_uses_only_our_known_hosts_and_refuses_unknown_keys(tmp_path: Path) -> None:
    key = paramiko.ECDSAKey.generate()
    key.write_private_key_file(str(tmp_path / "id"))
    connection = make_connection(HOST, ssh_options(tmp_path, key=tmp_path / "id"))
    assert (connection.host, connection.user, connection.port) == ("10.0.0.5", "tester", 2222)
    assert connection.ssh_config == {"hostname": "10.0.0.5"}  # ~/.ssh/config is not read
    assert connection.connect_kwargs["pkey"] == key
    assert connection.connect_kwargs["look_for_keys"] is False
    assert isinstance(connection.client._policy, RejectUnknownHostKey)
    assert len(connection.client.get_host_keys()) == 0
    accepting = make_connection(HOST, ssh_options(tmp_path, accept_new=True))
    assert isinstance(accepting.client._policy, AcceptNewHostKey)


def test_unknown_host_key_error_says_how_to_trust_it(tmp_path: Path, host_key: paramiko.PKey) -> None:
    options = ssh_options(tmp_path)
    error = translate_ssh_error(UnknownHostKeyError("[10.0.0.5]:2222", host_key), HOST, options)
    assert error.message == (
        f"10.0.0.5:2222: unknown host key ecdsa-sha2-nistp256 {fingerprint(host_key)} "
        f"(not in {tmp_path}/known_hosts)"
    )
    assert error.hint == (
        "Check the fingerprint with the host's owner, then trust it: "
        f"ssh-keyscan -p 2222 -t ecdsa-sha2-nistp256 10.0.0.5 >> {tmp_path}/known_hosts"
        " (or set accept_new_host_keys = true in the [ssh] table of the config file)."
    )


def test_changed_host_key_error(tmp_path: Path, host_key: paramiko.PKey) -> None:
    other = paramiko.ECDSAKey.generate()
    error = translate_ssh_error(
        paramiko.BadHostKeyException("h", host_key, other), HOST, ssh_options(tmp_path)
    )
    assert error.message.startswith("10.0.0.5:2222: HOST KEY CHANGED")
    assert error.hint is not None
    assert f"ssh-keygen -R '[10.0.0.5]:2222' -f {tmp_path}/known_hosts" in error.hint


@pytest.mark.parametrize(
    ("error", "message", "hint"),
    [
        (
            paramiko.AuthenticationException("Authentication failed."),
            "10.0.0.5:2222: SSH authentication failed for user tester: Authentication failed.",
            "Check ssh.user and ssh.key in the config file; this must work: ssh -p 2222 tester@10.0.0.5 true",
        ),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "10.0.0.5:2222: cannot reach SSH on port 2222: [Errno 111] Connection refused",
            "Is the host up and sshd running? This must work: ssh -p 2222 tester@10.0.0.5 true",
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            "10.0.0.5:2222: cannot resolve 10.0.0.5: Name or service not known",
            None,
        ),
        (ValueError("odd"), "10.0.0.5:2222: SSH failed: ValueError: odd", None),
    ],
)
def test_transport_errors_are_translated(
    tmp_path: Path, error: Exception, message: str, hint: str | None
) -> None:
    translated = translate_ssh_error(error, HOST, ssh_options(tmp_path))
    assert (translated.message, translated.hint) == (message, hint)


def test_bad_key_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_private_key(tmp_path / "nope")
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(InputError, match="cannot load"):
        load_private_key(tmp_path / "junk")
    paramiko.ECDSAKey.generate().write_private_key_file(str(tmp_path / "locked"), password="pw")
    with pytest.raises(InputError, match="passphrase") as caught:
        load_private_key(tmp_path / "locked")
    assert caught.value.hint is not None and "ssh-add" in caught.value.hint


def test_keyscan_command_default_port() -> None:
    assert keyscan_command(Host("h"), Path("/k h")) == "ssh-keyscan h >> '/k h'"


# ---------------------------------------------------------------- ssh, against a loopback server


class _Server(paramiko.ServerInterface):
    """A tiny sshd: public-key auth for one key, exec runs ``sh -c`` on this machine, sftp serves
    this machine's files, direct-tcpip connects to this machine's ports (like ``ssh -L``)."""

    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.forwards: dict[int, socket.socket] = {}  # channel id -> connected destination

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "tester" and key == self.client_key
        return paramiko.common.AUTH_SUCCESSFUL if ok else paramiko.common.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (
            paramiko.common.OPEN_SUCCEEDED
            if kind == "session"
            else paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        )

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        try:
            self.forwards[chanid] = socket.create_connection(destination, timeout=5)
        except OSError:
            return paramiko.common.OPEN_FAILED_CONNECT_FAILED
        return paramiko.common.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=_execute, args=(channel, command.decode()), daemon=True).start()
        return True


def _execute(channel: paramiko.Channel, command: str) -> None:
    process = subprocess.Popen(
        ["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None

    def pump_stdin() -> None:
        try:
            while data := channel.recv(65536):
                process.stdin.write(data)  # type: ignore[union-attr]
            process.stdin.close()  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass

    threading.Thread(target=pump_stdin, daemon=True).start()
    stdout, stderr = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    channel.sendall(stdout)
    channel.sendall_stderr(stderr)
    # EOF and exit status, but no close: a close could overtake paramiko's reply to the exec
    # request and make the client fail with "Channel closed". The client closes instead.
    channel.shutdown_write()
    channel.send_exit_status(process.wait())


def _pump(channel: paramiko.Channel, destination: socket.socket) -> None:
    """Copy bytes both ways between a direct-tcpip channel and its destination until either closes."""
    with channel, destination:
        destination.settimeout(None)
        while True:
            readable, _, _ = select.select([channel, destination], [], [], 5)
            source, sink = (channel, destination) if channel in readable else (destination, channel)
            if not readable:
                continue
            data = source.recv(65536)
            if not data:
                return
            sink.sendall(data)


def _accept_forwards(transport: paramiko.Transport, server: _Server) -> None:
    while transport.is_active():
        channel = transport.accept(timeout=0.5)
        if channel is not None and channel.get_id() in server.forwards:
            destination = server.forwards.pop(channel.get_id())
            threading.Thread(target=_pump, args=(channel, destination), daemon=True).start()


class _LocalSftp(paramiko.SFTPServerInterface):
    """Read-only SFTP over this machine's files: enough for ``sftp.get``."""

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(path))
        except OSError as err:
            return paramiko.SFTPServer.convert_errno(err.errno)

    lstat = stat

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        try:
            file = open(path, "rb")  # noqa: SIM115 - the handle owns it and closes it
        except OSError as err:
            return paramiko.SFTPServer.convert_errno(err.errno)
        handle = paramiko.SFTPHandle(flags)
        handle.readfile = file  # type: ignore[attr-defined]
        return handle


@dataclass
class Sshd:
    port: int
    host_key: paramiko.PKey
    client_key_file: Path


@pytest.fixture
def sshd(tmp_path: Path, host_key: paramiko.PKey) -> Iterator[Sshd]:
    client_key = paramiko.ECDSAKey.generate()
    key_file = tmp_path / "id_ecdsa"
    client_key.write_private_key_file(str(key_file))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _LocalSftp)
            transports.append(transport)
            server = _Server(client_key)
            with contextlib.suppress(paramiko.SSHException, EOFError):
                transport.start_server(server=server)
                threading.Thread(target=_accept_forwards, args=(transport, server), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield Sshd(listener.getsockname()[1], host_key, key_file)
    listener.close()
    for transport in transports:
        transport.close()


def ssh_runner(tmp_path: Path, sshd: Sshd, *, accept_new: bool = False, key: Path | None = None) -> SshRunner:
    host = Host("127.0.0.1", user="tester", port=sshd.port)
    return SshRunner(host, ssh_options(tmp_path, accept_new=accept_new, key=key or sshd.client_key_file))


def test_ssh_refuses_an_unknown_host_then_accepts_it_when_asked(tmp_path: Path, sshd: Sshd) -> None:
    with pytest.raises(RemoteError, match="unknown host key") as caught:
        ssh_runner(tmp_path, sshd).run("true")
    assert caught.value.hint is not None and f"ssh-keyscan -p {sshd.port}" in caught.value.hint
    assert not (tmp_path / "known_hosts").exists()

    runner = ssh_runner(tmp_path, sshd, accept_new=True)
    assert runner.run("echo hi").stdout == "hi\n"
    runner.close()
    assert f"[127.0.0.1]:{sshd.port} ecdsa-sha2-nistp256" in (tmp_path / "known_hosts").read_text()

    strict = ssh_runner(tmp_path, sshd)  # now known: the strict policy connects
    assert strict.host == f"127.0.0.1:{sshd.port}"
    assert strict.run("echo again").stdout == "again\n"
    strict.close()


def trust(tmp_path: Path, sshd: Sshd, key: paramiko.PKey) -> None:
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {key.get_name()} {key.get_base64()}\n")


def test_ssh_runs_commands_and_writes_files(tmp_path: Path, sshd: Sshd) -> None:
    trust(tmp_path, sshd, sshd.host_key)
    runner = ssh_runner(tmp_path, sshd)
    result = runner.run("echo out; echo err >&2; exit 3", check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(RemoteError, match=rf"127.0.0.1:{sshd.port}: `exit 4` exited with status 4"):
        runner.run("exit 4")
    target = tmp_path / "remote" / "env.list"
    runner.put_text("AWS_SECRET=x\n", str(target))
    assert target.read_text() == "AWS_SECRET=x\n"
    assert target.stat().st_mode & 0o777 == 0o600
    # fabric alone feeds stdin a byte per 10 ms poll: this would take over 3 minutes.
    bulk = "".join(f"line {i}: {'x' * 60}\n" for i in range(300))
    result = runner.run("wc -c", stdin=bulk)
    assert result.stdout.strip() == str(len(bulk.encode()))
    runner.close()


def test_ssh_logs_output_lines_unless_hidden_or_secret(
    tmp_path: Path, sshd: Sshd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shapcluster")
    trust(tmp_path, sshd, sshd.host_key)
    runner = ssh_runner(tmp_path, sshd)
    runner.run("echo a; echo b", hide=False)
    runner.run("echo hunter2", hide=False, secret=True)
    runner.close()
    assert caplog.messages == [f"127.0.0.1:{sshd.port}: a", f"127.0.0.1:{sshd.port}: b"]


def test_ssh_refuses_a_changed_host_key(tmp_path: Path, sshd: Sshd) -> None:
    trust(tmp_path, sshd, paramiko.ECDSAKey.generate())
    with pytest.raises(RemoteError, match="HOST KEY CHANGED"):
        ssh_runner(tmp_path, sshd, accept_new=True).run("true")


def test_ssh_wrong_key_is_an_authentication_error(tmp_path: Path, sshd: Sshd) -> None:
    trust(tmp_path, sshd, sshd.host_key)
    other = tmp_path / "other"
    paramiko.ECDSAKey.generate().write_private_key_file(str(other))
    with pytest.raises(RemoteError, match="SSH authentication failed for user tester"):
        ssh_runner(tmp_path, sshd, key=other).run("true")


def test_ssh_closed_port_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = SshRunner(Host("127.0.0.1", user="tester", port=port), ssh_options(tmp_path))
    with pytest.raises(RemoteError, match=rf"cannot reach SSH on port {port}"):
        runner.run("true")


def test_ssh_get_downloads_a_file_atomically(tmp_path: Path, sshd: Sshd) -> None:
    trust(tmp_path, sshd, sshd.host_key)
    runner = ssh_runner(tmp_path, sshd)
    remote = tmp_path / "remote.bin"
    remote.write_bytes(bytes(range(256)) * 1000)
    runner.get(str(remote), tmp_path / "down" / "copy.bin", 0o644)
    assert (tmp_path / "down" / "copy.bin").read_bytes() == remote.read_bytes()
    assert (tmp_path / "down" / "copy.bin").stat().st_mode & 0o777 == 0o644
    with pytest.raises(RemoteError, match=rf"127.0.0.1:{sshd.port}: cannot copy .*/nope to .*/down/nope: "):
        runner.get(str(tmp_path / "nope"), tmp_path / "down" / "nope")
    assert [p.name for p in (tmp_path / "down").iterdir()] == ["copy.bin"]  # no partial file left
    runner.close()


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo service on this machine's loopback, like the dashboard on the head's."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_ssh_tunnel_forwards_a_local_port_to_the_hosts_loopback(tmp_path: Path, sshd: Sshd) -> None:
    trust(tmp_path, sshd, sshd.host_key)
    runner = ssh_runner(tmp_path, sshd)
    with echo_server() as service, runner.tunnel(service) as local:
        assert local != service
        big = os.urandom(1 << 20)
        results: dict[int, bytes] = {}
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, roundtrip(local, big[i:] + b"x")))
            for i in range(3)
        ]  # concurrent connections, each through its own channel
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert results == {i: big[i:] + b"x" for i in range(3)}
    with pytest.raises(ConnectionRefusedError):  # the tunnel is gone with its context
        socket.create_connection(("127.0.0.1", local), timeout=5)
    runner.close()


def test_ssh_tunnel_to_a_closed_port_closes_the_local_connection(tmp_path: Path, sshd: Sshd) -> None:
    trust(tmp_path, sshd, sshd.host_key)
    runner = ssh_runner(tmp_path, sshd)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with (
        runner.tunnel(closed) as local,
        socket.create_connection(("127.0.0.1", local), timeout=10) as conn,
        contextlib.suppress(ConnectionResetError),  # closed or reset: either way, not left hanging
    ):
        assert conn.recv(1) == b""
    runner.close()


def test_ssh_tunnel_to_an_unreachable_host_is_a_remote_error(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = SshRunner(Host("127.0.0.1", user="tester", port=port), ssh_options(tmp_path))
    with pytest.raises(RemoteError, match=rf"cannot reach SSH on port {port}"), runner.tunnel(8265):
        pass


# ---------------------------------------------------------------- the user's ssh config (issue 12)

SSH_CONFIG = """
Host box
    HostName 10.1.2.3
    User alice
    Port 2200
    IdentityFile {key}

Host behind
    HostName 10.9.9.9
    ProxyJump ops@bastion:2201,10.1.1.1
"""


def config_options(tmp_path: Path, *, use: bool = True) -> SshConfig:
    key = tmp_path / "id_box"
    key.write_text("not read here")
    (tmp_path / "ssh_config").write_text(SSH_CONFIG.format(key=key))
    return SshConfig(
        user=None, key=None, known_hosts=tmp_path / "kh", accept_new_host_keys=False, connect_timeout=5,
        use_ssh_config=use, ssh_config_file=tmp_path / "ssh_config",
    )  # fmt: skip


def test_the_ssh_config_fills_in_what_shapclusters_files_leave_open(tmp_path: Path) -> None:
    options = config_options(tmp_path)
    target = resolve_target(Host("box"), options)
    assert target == SshTarget("10.1.2.3", 2200, "alice", (tmp_path / "id_box",), None)
    # A user or a non-default port written in workers.txt / the config wins, as on ssh's command line.
    explicit = resolve_target(Host("box", user="bob", port=2222), options)
    assert (explicit.port, explicit.user) == (2222, "bob")
    connection = make_connection(Host("box"), options)
    assert (connection.host, connection.user, connection.port) == ("10.1.2.3", "alice", 2200)
    assert connection.connect_kwargs["key_filename"] == [str(tmp_path / "id_box")]


def test_proxyjump_hops_become_a_gateway_chain(tmp_path: Path) -> None:
    connection = make_connection(Host("behind", user="root"), config_options(tmp_path))
    assert (connection.host, connection.user) == ("10.9.9.9", "root")
    last = connection.gateway
    assert (last.host, last.port) == ("10.1.1.1", 22)
    assert (last.gateway.host, last.gateway.user, last.gateway.port) == ("bastion", "ops", 2201)
    assert last.gateway.gateway is None


def test_use_ssh_config_false_ignores_it_and_the_hint_says_so(tmp_path: Path) -> None:
    options = config_options(tmp_path, use=False)
    assert resolve_target(Host("box"), options) == SshTarget("box", 22, None)
    error = translate_ssh_error(OSError("refused"), Host("box"), options)
    assert "ssh -F /dev/null box true" in (error.hint or "")


def test_host_key_hints_name_the_hostname_and_port_of_the_ssh_config(
    tmp_path: Path, host_key: paramiko.PKey
) -> None:
    """Paramiko checks the key of 10.1.2.3:2200 (the config's HostName and Port of alias `box`):
    the hint must fetch and forget that one, not look up `box` on port 22."""
    options = config_options(tmp_path)
    unknown = translate_ssh_error(UnknownHostKeyError("[10.1.2.3]:2200", host_key), Host("box"), options)
    assert f"ssh-keyscan -p 2200 -t ecdsa-sha2-nistp256 10.1.2.3 >> {tmp_path}/kh" in (unknown.hint or "")
    changed = translate_ssh_error(
        paramiko.BadHostKeyException("box", host_key, paramiko.ECDSAKey.generate()), Host("box"), options
    )
    assert f"ssh-keygen -R '[10.1.2.3]:2200' -f {tmp_path}/kh" in (changed.hint or "")
    # ssh reads the config itself: the test command must not override its Port with -p 22
    refused = translate_ssh_error(OSError("refused"), Host("box"), options)
    assert refused.message == "box: cannot reach SSH on port 2200 of 10.1.2.3: refused"
    assert "This must work: ssh box true" in (refused.hint or "")
    assert "ssh -p 2222 box true" in (
        translate_ssh_error(OSError("x"), Host("box", port=2222), options).hint or ""
    )


def test_tests_never_read_the_users_ssh_files() -> None:
    """tests/conftest.py gives every test an empty HOME: the default ~/.ssh/config and
    known_hosts are the test's own, absent, never the user's."""
    import pwd

    from shapcluster.remote.ssh import ssh_config_file

    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert Path.home() != real_home and Path("~").expanduser() == Path.home()
    default = SshConfig(None, None, Path("~/.ssh/known_hosts").expanduser(), False, 5)
    assert ssh_config_file(default) == Path.home() / ".ssh" / "config"
    assert not (Path.home() / ".ssh").exists()
    assert resolve_target(Host("box"), default) == SshTarget("box", 22, None)
