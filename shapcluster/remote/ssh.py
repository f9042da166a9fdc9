"""Run commands on a host over SSH. The only module that imports fabric (and paramiko).

Host keys are checked against one known_hosts file. An unknown key is refused unless the user
explicitly asked to accept new keys on first contact (like ssh's ``accept-new``); a changed key
is always refused.

The user's ``~/.ssh/config`` is honoured as OpenSSH does (``HostName``, ``User``, ``Port``,
``IdentityFile``, ``ProxyJump``), values given in shapcluster's own files winning, unless
``ssh.use_ssh_config = false``; docker-py's connections (``connect_ssh``) resolve hosts the
same way, so a hint's ``ssh`` command and shapcluster reach the same machine.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
import select
import shlex
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fabric
import paramiko
from invoke.exceptions import CommandTimedOut

from shapcluster.commands import install_file_command, make_dirs_command, write_file_command
from shapcluster.config import SshConfig
from shapcluster.errors import InputError, RemoteError, ShapclusterError
from shapcluster.inventory import DEFAULT_SSH_PORT, Host, parse_host_spec
from shapcluster.remote.base import (
    Result,
    check_result,
    display_command,
    log_command,
    save_atomically,
    upload_line,
)

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30  # a followed job may print nothing for minutes; NATs must not drop the link
_POLL_SECONDS = 0.2  # how often forwarding threads look whether their tunnel was closed
_BUFFER = 1 << 16

# What a broken SSH connection raises, for modules that must not import paramiko themselves.
SSH_ERRORS: tuple[type[Exception], ...] = (paramiko.SSHException, OSError, EOFError)

_known_hosts_lock = threading.Lock()  # hosts are contacted in parallel; appends must not interleave


class UnknownHostKeyError(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"unknown host key for {hostname}")
        self.hostname = hostname
        self.key = key


class RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKeyError(hostname, key)


class AcceptNewHostKey(paramiko.MissingHostKeyPolicy):
    """Trust a host seen for the first time and remember its key in ``known_hosts``."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self.known_hosts.open("a", encoding="utf-8") as file:
                file.write(line)
        logger.warning("%s: trusted new host key %s %s", hostname, key.get_name(), fingerprint(key))


def fingerprint(key: paramiko.PKey) -> str:
    """The SHA256 fingerprint as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def make_client(options: SshConfig) -> paramiko.SSHClient:
    """An SSHClient that knows only the configured known_hosts file (never ~/.ssh implicitly)."""
    client = paramiko.SSHClient()
    if options.known_hosts.exists():
        client.get_host_keys().load(str(options.known_hosts))
    policy: paramiko.MissingHostKeyPolicy = (
        AcceptNewHostKey(options.known_hosts) if options.accept_new_host_keys else RejectUnknownHostKey()
    )
    client.set_missing_host_key_policy(policy)
    return client


class _WholeStdinRemote(fabric.runners.Remote):  # type: ignore[misc]
    """fabric reads stdin one byte per 10 ms poll, as for a person typing: a 2 kB file took
    20 s. Our stdin is a string already in memory, so hand it over in large pieces."""

    def read_our_stdin(self, input_: Any) -> str | None:
        data = input_.read(1 << 16)
        return data.decode() if isinstance(data, bytes) else data


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to connect for one host, after the user's ssh config."""

    hostname: str
    port: int
    user: str | None
    identity_files: tuple[Path, ...] = ()
    proxy_jump: str | None = None  # OpenSSH's [user@]host[:port][,...]


def ssh_config_file(options: SshConfig) -> Path | None:
    """The OpenSSH client config to honour; None when ``ssh.use_ssh_config`` is false."""
    if not options.use_ssh_config:
        return None
    return options.ssh_config_file or Path.home() / ".ssh" / "config"


def resolve_target(host: Host, options: SshConfig) -> SshTarget:
    """``host`` as OpenSSH would reach it: its ssh config block fills in what shapcluster's files
    leave open (a port other than 22 and a user given there win, as on ssh's command line)."""
    path = ssh_config_file(options)
    found: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            found = dict(paramiko.SSHConfig.from_path(str(path)).lookup(host.address))
        except (OSError, ValueError, paramiko.SSHException) as err:
            raise InputError(
                f"{path}: cannot read this ssh config: {err}",
                hint="Fix it, or set use_ssh_config = false in the [ssh] table of the config file.",
            ) from None
    port = host.port if host.port != DEFAULT_SSH_PORT else int(found.get("port", DEFAULT_SSH_PORT))
    identity = tuple(Path(p).expanduser() for p in found.get("identityfile", ()))
    jump = found.get("proxyjump")
    return SshTarget(
        hostname=str(found.get("hostname", host.address)),
        port=port,
        user=host.user or found.get("user"),
        identity_files=identity,
        proxy_jump=None if jump in (None, "none") else str(jump),
    )


def jump_hosts(target: SshTarget, where: str) -> list[Host]:
    """The ProxyJump hops, first hop first."""
    if not target.proxy_jump:
        return []
    hops = []
    for spec in target.proxy_jump.split(","):
        user, address, port = parse_host_spec(spec.strip().removeprefix("ssh://"), where=where)
        hops.append(Host(address=address, user=user, port=port, source=where))
    return hops


def auth_kwargs(options: SshConfig, target: SshTarget) -> dict[str, Any]:
    """paramiko's key arguments: ssh.key, else the ssh config's IdentityFile, the agent and the
    default keys."""
    kwargs: dict[str, Any] = {"look_for_keys": options.key is None, "allow_agent": True}
    if options.key is not None:
        # A loaded key instead of key_filename: paramiko would otherwise report a failed login
        # with an RSA or ECDSA key as a confusing key-format error.
        kwargs["pkey"] = load_private_key(options.key)
    elif target.identity_files:
        existing = [str(p) for p in target.identity_files if p.is_file()]
        if existing:
            kwargs["key_filename"] = existing
    return kwargs


def make_connection(host: Host, options: SshConfig, *, hop: bool = False) -> fabric.Connection:
    """A fabric Connection for ``host`` (not yet open); ``hop``: a ProxyJump host, whose own
    ProxyJump is not followed."""
    timeout = max(1, round(options.connect_timeout))
    target = resolve_target(host, options)
    connect_kwargs: dict[str, Any] = {
        **auth_kwargs(options, target),
        "banner_timeout": timeout,
        "auth_timeout": timeout,
    }
    gateway = None
    if not hop:
        for jump in jump_hosts(target, f"ProxyJump of {host.name} in {ssh_config_file(options)}"):
            gateway = _chain(make_connection(jump, options, hop=True), gateway)
    # fabric's own ssh-config loading stays off: resolve_target did it, with our precedence.
    config = fabric.Config(
        lazy=True, overrides={"load_ssh_configs": False, "runners": {"remote": _WholeStdinRemote}}
    )
    connection = fabric.Connection(
        target.hostname,
        user=target.user,
        port=target.port,
        config=config,
        gateway=gateway,
        connect_timeout=timeout,
        connect_kwargs=connect_kwargs,
    )
    connection.client = make_client(options)  # fabric's own client would auto-add unknown keys
    return connection


def _chain(hop: fabric.Connection, previous: fabric.Connection | None) -> fabric.Connection:
    if previous is not None:
        hop.gateway = previous
    return hop


def ssh_connect_params(host: Host, ssh: SshConfig) -> dict[str, Any]:
    """``paramiko.SSHClient.connect`` arguments for ``host`` (after the ssh config), without a
    ProxyJump socket (``connect_ssh`` adds one)."""
    timeout = ssh.connect_timeout
    target = resolve_target(host, ssh)
    return {
        "hostname": target.hostname,
        "port": target.port,
        "username": target.user,
        "timeout": timeout,
        "banner_timeout": timeout,
        "auth_timeout": timeout,
        **auth_kwargs(ssh, target),
    }


def open_jump(host: Host, ssh: SshConfig, params: dict[str, Any]) -> fabric.Connection | None:
    """Through the ssh config's ProxyJump hops (if any): open them and put a channel to the
    host into ``params["sock"]``; return the last hop, which must stay open as long as that."""
    hops = jump_hosts(resolve_target(host, ssh), f"ProxyJump of {host.name}")
    if not hops:
        return None
    gateway = None
    for hop in hops:
        gateway = _chain(make_connection(hop, ssh, hop=True), gateway)
    assert gateway is not None
    gateway.open()
    params["sock"] = gateway.transport.open_channel(
        "direct-tcpip", (params["hostname"], params["port"]), ("127.0.0.1", 0)
    )
    return gateway


def connect_ssh(host: Host, ssh: SshConfig) -> paramiko.SSHClient:
    """A connected paramiko client that checks the host key against ``ssh.known_hosts`` only,
    through the ProxyJump hops of the ssh config if any."""
    params = ssh_connect_params(host, ssh)
    client = make_client(ssh)
    try:
        gateway = open_jump(host, ssh, params)
        if gateway is not None:
            client._shapcluster_gateway = gateway  # type: ignore[attr-defined]  # lives with the client
        client.connect(**params)
    except ShapclusterError:
        client.close()
        raise
    except Exception as err:
        client.close()
        raise translate_ssh_error(err, host, ssh) from err
    return client


def load_private_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise InputError(
            f"ssh.key: {path} does not exist", hint="Set ssh.key to your private key file."
        ) from None
    except (paramiko.PasswordRequiredException, TypeError):
        # cryptography reports an encrypted PEM key as TypeError, paramiko an OpenSSH one as this.
        raise InputError(
            f"ssh.key: {path} is protected by a passphrase",
            hint=f"Load it into your ssh agent (ssh-add {shlex.quote(str(path))}) and remove ssh.key.",
        ) from None
    except (OSError, ValueError, paramiko.SSHException) as err:
        raise InputError(f"ssh.key: cannot load {path} as a private key: {err}") from None


def keyscan_command(host: Host, known_hosts: Path, key_type: str | None = None) -> str:
    """The local command that fetches a host's key into known_hosts (check its fingerprint first)."""
    args = ["ssh-keyscan"]
    if host.port != DEFAULT_SSH_PORT:
        args += ["-p", str(host.port)]
    if key_type:
        args += ["-t", key_type]
    return f"{shlex.join([*args, host.address])} >> {shlex.quote(str(known_hosts))}"


def forget_key_command(host: Host, known_hosts: Path) -> str:
    name = host.address if host.port == DEFAULT_SSH_PORT else f"[{host.address}]:{host.port}"
    return shlex.join(["ssh-keygen", "-R", name, "-f", str(known_hosts)])


def _connected_as(host: Host, options: SshConfig) -> Host:
    """``host`` with the address and port SSH connects to after the ssh config."""
    try:
        target = resolve_target(host, options)
    except InputError:  # an unreadable ssh config is reported where it is read
        return host
    return Host(address=target.hostname, user=host.user, port=target.port, source=host.source)


def translate_ssh_error(  # noqa: PLR0911 - one branch per kind of failure reads best
    error: BaseException, host: Host, options: SshConfig
) -> RemoteError:
    """Turn a paramiko/socket/invoke failure into an error that says what to do next."""
    target = f"{host.user + '@' if host.user else ''}{host.address}"
    no_config = [] if options.use_ssh_config else ["-F", "/dev/null"]  # as shapcluster: ignore it
    # ssh itself reads the ssh config for what is left open: a -p 22 would override its Port.
    port = ["-p", str(host.port)] if host.port != DEFAULT_SSH_PORT else []
    ssh_test = shlex.join(
        ["ssh", *no_config, *(["-i", str(options.key)] if options.key else []), *port, target, "true"]
    )
    # Host keys are checked (and kept in known_hosts) under the name and port connected to: the
    # ssh config's HostName and Port, not an alias.
    keyed = _connected_as(host, options)
    if isinstance(error, UnknownHostKeyError):
        return RemoteError(
            f"{host.name}: unknown host key {error.key.get_name()} {fingerprint(error.key)} "
            f"(not in {options.known_hosts})",
            hint=f"Check the fingerprint with the host's owner, then trust it: "
            f"{keyscan_command(keyed, options.known_hosts, error.key.get_name())}"
            " (or set accept_new_host_keys = true in the [ssh] table of the config file).",
        )
    if isinstance(error, paramiko.BadHostKeyException):
        return RemoteError(
            f"{host.name}: HOST KEY CHANGED: it offered {fingerprint(error.key)}, "
            f"but {options.known_hosts} expects {fingerprint(error.expected_key)}",
            hint="Someone may be intercepting the connection. If the host was reinstalled, remove the "
            f"old key: {forget_key_command(keyed, options.known_hosts)}",
        )
    if isinstance(error, paramiko.AuthenticationException):
        return RemoteError(
            f"{host.name}: SSH authentication failed for user {host.user or '(your local user)'}: {error}",
            hint=f"Check ssh.user and ssh.key in the config file; this must work: {ssh_test}",
        )
    if isinstance(error, CommandTimedOut):
        return RemoteError(f"{host.name}: command did not finish within {error.timeout} s")
    if isinstance(error, socket.gaierror):
        return RemoteError(f"{host.name}: cannot resolve {keyed.address}: {error.strerror}")
    if isinstance(error, (OSError, EOFError, paramiko.SSHException)):
        reason = str(error) or type(error).__name__
        return RemoteError(
            f"{host.name}: cannot reach SSH on port {keyed.port}"
            + (f" of {keyed.address}" if keyed.address != host.address else "")
            + f": {reason}",
            hint=f"Is the host up and sshd running? This must work: {ssh_test}",
        )
    return RemoteError(f"{host.name}: SSH failed: {type(error).__name__}: {error}")


class SshRunner:
    """A ``Runner`` over one fabric Connection, opened on first use."""

    def __init__(self, host: Host, options: SshConfig) -> None:
        self._host = host
        self._options = options
        self._connection = make_connection(host, options)

    @property
    def host(self) -> str:
        return self._host.name

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
        log_command(self.host, display)
        streams: dict[str, Any] = {}
        if not hide and not secret:
            streams = {"out_stream": _LogStream(self.host), "err_stream": _LogStream(self.host)}
        try:
            done = self._connection.run(
                command,
                hide=hide or secret,
                warn=True,  # a non-zero exit is a Result; check_result decides
                timeout=None if timeout is None else max(1, round(timeout)),
                in_stream=io.StringIO(stdin) if stdin is not None else False,
                echo_stdin=False,  # stdin may carry secrets
                pty=False,
                **streams,
            )
        except Exception as err:  # every transport failure becomes a RemoteError
            raise translate_ssh_error(err, self._host, self._options) from err
        result = Result(display, done.exited, done.stdout, done.stderr)
        return check_result(self.host, result) if check else result

    def put(self, local_path: Path, remote_path: str, mode: int = 0o600) -> None:
        target = PurePosixPath(remote_path)
        temp = f"{target.parent}/.{target.name}.{secrets.token_hex(4)}.part"
        self.run(make_dirs_command(str(target.parent)))  # also opens the connection
        log_command(self.host, upload_line(local_path, remote_path, mode))
        try:
            source = local_path.open("rb")
        except OSError as err:
            raise RemoteError(f"cannot read {local_path} to copy it to {self.host}: {err}") from None
        with source:
            try:
                with self._connection.sftp().open(temp, "wb") as sink:
                    sink.chmod(mode)  # before any content arrives
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
            except OSError as err:  # paramiko reports remote failures as IOError
                raise RemoteError(f"{self.host}: cannot write {temp}: {err}") from err
            except paramiko.SSHException as err:
                raise translate_ssh_error(err, self._host, self._options) from err
        self.run(install_file_command(temp, remote_path, mode))

    def put_text(self, text: str, remote_path: str, mode: int = 0o600) -> None:
        self.run(write_file_command(remote_path, mode), stdin=text)

    def get(self, remote_path: str, local_path: Path, mode: int = 0o600) -> None:
        log_command(self.host, f"get {remote_path} -> {local_path}")
        try:
            sftp = self._connection.sftp()  # also opens the connection
        except Exception as err:
            raise translate_ssh_error(err, self._host, self._options) from err
        try:
            save_atomically(local_path, mode, lambda temp: sftp.get(remote_path, str(temp)))
        except paramiko.SSHException as err:
            raise translate_ssh_error(err, self._host, self._options) from err
        except OSError as err:  # a missing remote file arrives as IOError too
            raise RemoteError(f"{self.host}: cannot copy {remote_path} to {local_path}: {err}") from err

    @contextmanager
    def tunnel(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        """Forward a free port on 127.0.0.1 here to ``remote_host:remote_port`` as the host sees
        it, through direct-tcpip channels of this SSH connection (like ``ssh -L``)."""
        try:
            self._connection.open()
            transport = self._connection.client.get_transport()
        except Exception as err:
            raise translate_ssh_error(err, self._host, self._options) from err
        if transport is None or not transport.is_active():
            raise RemoteError(f"{self.host}: the SSH connection closed before the tunnel could open")
        transport.set_keepalive(KEEPALIVE_SECONDS)
        forwarder = _Forwarder(transport, (remote_host, remote_port), self.host)
        logger.debug(
            "%s: forwarding 127.0.0.1:%d to %s:%d", self.host, forwarder.port, remote_host, remote_port
        )
        try:
            yield forwarder.port
        finally:
            forwarder.close()

    def close(self) -> None:
        self._connection.close()


class _Forwarder:
    """A listener on 127.0.0.1 (free port) whose every connection is piped through its own
    direct-tcpip channel. A destination that refuses is logged and the local connection closed,
    so the client sees a refused connection as it would without the tunnel."""

    def __init__(self, transport: paramiko.Transport, destination: tuple[str, int], host: str) -> None:
        self._transport = transport
        self._destination = destination
        self._host = host
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._start(self._accept_loop)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:  # each notices the event within one poll interval
            thread.join(timeout=5)
        self._listener.close()

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"tunnel-{self.port}")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            readable, _, _ = select.select([self._listener], [], [], _POLL_SECONDS)
            if not readable:
                continue
            try:
                client, peer = self._listener.accept()
            except OSError:
                return
            self._start(self._pipe, client, peer)

    def _pipe(self, client: socket.socket, peer: tuple[str, int]) -> None:
        with client:
            try:
                channel = self._transport.open_channel("direct-tcpip", self._destination, peer, timeout=10)
            except (paramiko.SSHException, OSError, EOFError) as err:
                host, port = self._destination
                logger.debug("%s: %s:%d refused a tunnelled connection: %s", self._host, host, port, err)
                return
            with channel:
                self._copy_until_closed(client, channel)

    def _copy_until_closed(self, client: socket.socket, channel: paramiko.Channel) -> None:
        watched: list[Any] = [client, channel]
        while not self._closed.is_set():
            readable, _, _ = select.select(watched, [], [], _POLL_SECONDS)
            try:
                if client in readable:
                    data = client.recv(_BUFFER)
                    if not data:
                        return
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(_BUFFER)
                    if not data:
                        return
                    client.sendall(data)
            except (OSError, EOFError, paramiko.SSHException):
                return


class _LogStream(io.StringIO):
    """An output stream for fabric that logs whole lines as they arrive."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self._host = host
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            logger.info("%s: %s", self._host, line)
        return len(text)
