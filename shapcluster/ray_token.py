"""The cluster's Ray auth token: one per cluster, kept on every host (0600), never shown.

Ray's token authentication (``RAY_AUTH_MODE=token``) admits a node, a driver or a Jobs API
call only with this token; the containers read it from the file mounted at
``commands.CONTAINER_TOKEN_PATH``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shapcluster import commands as cmd
from shapcluster.remote.group import run_on_nodes
from shapcluster.secrets import register_secret

if TYPE_CHECKING:
    from shapcluster.cluster import Node


def read_token(node: Node) -> str | None:
    """The cluster's Ray token as a host (the head, for the cluster's) holds it (None if it has
    none), registered as a secret the moment it is read."""
    found = node.runner.run(cmd.read_file_command(node.layout.token_file), check=False, secret=True)
    token = found.stdout.strip()
    if not found.ok or not token:
        return None
    register_secret(token)
    return token


def ensure_token(nodes: Sequence[Node]) -> None:
    """One Ray auth token for the cluster: kept from the head if it has one, else made here;
    written 0600 on every host that lacks it. Raises HostsFailedError naming the failed hosts."""
    held = run_on_nodes(nodes, read_token, what="reading the Ray token")
    token = held[nodes[0].name] or secrets.token_hex(32)
    register_secret(token)

    def place(node: Node) -> None:
        node.runner.run(cmd.make_dirs_command(node.layout.secrets_dir, mode=0o700))
        node.runner.run(
            cmd.write_file_command(node.layout.token_file, 0o600), stdin=token + "\n", secret=True
        )

    # Hosts that hold it already (a warm `up`) are left alone.
    run_on_nodes([n for n in nodes if held[n.name] != token], place, what="placing the Ray token")
