"""Hosts of a cluster: the head from the config file, the workers from ``workers.txt``.

A worker line is ``[user@]host[:port] [cpus=N] [ray_address=IP]``; ``#`` starts a comment. Every problem is
reported with its ``file:line`` so the user can go straight to it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shapcluster.errors import InputError, RemoteError

DEFAULT_SSH_PORT = 22
LINE_FORMAT = "[user@]host[:port] [cpus=N] [ray_address=IP]"

# Conservative on purpose: these values end up in ssh targets and docker labels.
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_DOTTED_NUMBERS_RE = re.compile(r"^[0-9.]+$")
_SPEC_RE = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s@\[\]]+))(?::(?P<port>[^:\s]*))?$"
)


@dataclass(frozen=True)
class Host:
    """One machine reached over SSH. ``user``/``cpus`` are None when the config default applies."""

    address: str
    user: str | None = None
    port: int = DEFAULT_SSH_PORT
    cpus: int | None = None
    source: str = "<unknown>"
    line: int | None = None
    ray_address: str | None = None  # the IP Ray advertises, for hosts on several networks

    @property
    def name(self) -> str:
        """Display name used in logs, errors and results: the address, plus the port if unusual."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return address if self.port == DEFAULT_SSH_PORT else f"{address}:{self.port}"

    @property
    def location(self) -> str:
        """Where this host was declared, as ``file:line`` (or just the file)."""
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Inventory:
    head: Host
    workers: tuple[Host, ...] = ()

    @property
    def hosts(self) -> tuple[Host, ...]:
        """The head first, then the workers in file order (the order Ray is started in)."""
        return (self.head, *self.workers)


def parse_host_spec(spec: str, *, where: str) -> tuple[str | None, str, int]:
    """Split ``[user@]host[:port]`` into ``(user, address, port)``; ``where`` prefixes errors."""
    match = _SPEC_RE.match(spec)
    if match is None:
        raise InputError(f"{where}: {spec!r} is not a host: expected [user@]host[:port]")
    user, port_text = match["user"], match["port"]
    if user is not None and not USER_RE.match(user):
        raise InputError(f"{where}: {user!r} is not a valid user name in {spec!r}")
    if match["v6"] is not None:
        address = _check_ipv6(match["v6"], spec, where)
    else:
        address = match["host"]
        if not _HOSTNAME_RE.match(address) or (_DOTTED_NUMBERS_RE.match(address) and not _is_ipv4(address)):
            raise InputError(f"{where}: {address!r} is not a valid host name or IPv4 address")
    port = DEFAULT_SSH_PORT
    if port_text is not None:
        port = _parse_port(port_text, spec, where)
    return user, address, port


def parse_inventory(text: str, source: str) -> list[Host]:
    """Parse a workers file. All bad lines are reported together; an empty file is no workers."""
    hosts: list[Host] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            hosts.append(_parse_line(content, source, number))
        except InputError as err:
            problems.append(err.message)
    try:
        check_unique_hosts(hosts)
    except InputError as err:
        problems.append(err.message)
    if problems:
        raise InputError("\n".join(problems), hint=f"Each line of {source} is `{LINE_FORMAT}`.")
    return hosts


def check_unique_hosts(hosts: Iterable[Host]) -> None:
    """Raise if one machine is listed twice. Ports are ignored: one address is one network stack,
    and two Ray nodes with ``--network host`` there would fight over the same ports."""
    seen: dict[str, Host] = {}
    problems = []
    for host in hosts:
        key = host.address.lower()
        first = seen.setdefault(key, host)
        if first is not host:
            problems.append(f"{host.location}: {host.address} is already listed at {first.location}")
    if problems:
        raise InputError("\n".join(problems), hint="List every machine once.")


def build_inventory(head: Host, workers: Sequence[Host]) -> Inventory:
    """Combine the head and the workers, refusing a head that is also listed as a worker."""
    for worker in workers:
        if worker.address.lower() == head.address.lower():
            raise InputError(
                f"{worker.location}: {worker.address} is the head (declared at {head.location}) "
                "and cannot also be a worker",
                hint="Remove it from the workers file: the head runs Ray tasks too.",
            )
    check_unique_hosts(workers)
    return Inventory(head=head, workers=tuple(workers))


def check_cpus(host: Host, nproc_output: str) -> int:
    """Compare ``nproc`` on a host with its configured CPUs; return the CPUs to give Ray there
    (the configured count, or all of them when none is configured)."""
    text = nproc_output.strip()
    if not text.isdigit() or int(text) < 1:
        raise RemoteError(f"{host.name}: `nproc` printed {text[:80]!r}, expected a positive number")
    available = int(text)
    if host.cpus is None:
        return available
    if host.cpus > available:
        raise InputError(
            f"{host.location}: {host.name} is configured with {host.cpus} CPUs but has only {available}",
            hint=f"Set cpus={available} or less for {host.name} there.",
        )
    return host.cpus


def _parse_line(content: str, source: str, number: int) -> Host:
    where = f"{source}:{number}"
    spec, *options = content.split()
    user, address, port = parse_host_spec(spec, where=where)
    cpus: int | None = None
    ray_address: str | None = None
    seen: set[str] = set()
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in {"cpus", "ray_address"}:
            raise InputError(f"{where}: unknown option {option!r}: expected {LINE_FORMAT}")
        if key in seen:
            raise InputError(f"{where}: {key}= is given twice")
        seen.add(key)
        if key == "cpus":
            cpus = parse_positive_int(value, where=f"{where}: cpus")
        else:
            ray_address = parse_ip(value, where=f"{where}: ray_address")
    return Host(
        address=address, user=user, port=port, cpus=cpus, source=source, line=number, ray_address=ray_address
    )


def parse_ip(text: str, *, where: str) -> str:
    """An IPv4 or IPv6 address, normalised; anything else is an InputError naming ``where``."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InputError(f"{where}: {text!r} is not an IP address") from None


def parse_positive_int(text: str, *, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{where}: {text!r} is not a whole number of 1 or more")
    return int(text)


def _parse_port(text: str, spec: str, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InputError(f"{where}: port {text!r} in {spec!r} is not a number from 1 to 65535")
    return int(text)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _check_ipv6(text: str, spec: str, where: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise InputError(f"{where}: {text!r} in {spec!r} is not an IPv6 address") from None
