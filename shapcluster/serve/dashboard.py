"""Ray Serve's REST API on the head's dashboard, and the served application's own routes, over
plain HTTP (the standard library's urllib: no Ray on the control side).

Both are reached on this machine's loopback: through an SSH tunnel to the head's 127.0.0.1 for
a cluster, directly for the local head. Every request carries the cluster's token as
``Authorization: Bearer <token>``; the token is a registered secret, so no message shows it.

The Serve REST API (``ray/dashboard/modules/serve/serve_head.py``): ``PUT
/api/serve/applications/`` deploys a ServeDeploySchema (every application at once), ``GET``
returns the ServeInstanceDetails (applications, deployments, replicas and their states),
``DELETE`` shuts Serve down (controller, proxies and replicas).
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from shapcluster.errors import NoClusterError, RemoteError

log = logging.getLogger(__name__)

SERVE_API = "/api/serve/applications/"
ACTORS_API = "/api/v0/actors"
TIMEOUT_SECONDS = 60.0
ERROR_CHARS = 400


class HttpStatusError(RemoteError):
    """An HTTP answer other than 2xx; ``status`` and ``body`` as the server sent them."""

    def __init__(self, message: str, *, status: int, body: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Endpoint:
    """An HTTP service on this machine's loopback (a tunnel's end or the local head).

    ``where`` names it in messages (the head, or "the local Ray head"); ``what`` says which
    service it is ("the Ray dashboard", "the Serve application")."""

    base_url: str
    token: str | None = field(repr=False)
    where: str
    what: str

    def headers(self, *, with_token: bool = True) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if with_token and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        with_token: bool = True,
        timeout: float = TIMEOUT_SECONDS,
    ) -> tuple[int, str]:
        """(status, text) of one request with a 2xx answer. Raises HttpStatusError for any other
        status (401/403: "rejected the token"), NoClusterError when nothing answers."""
        data = None if body is None else json.dumps(body).encode()
        headers = self.headers(with_token=with_token)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        log.debug("%s: %s %s", self.where, method, path)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return int(answer.status), answer.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", errors="replace")
            raise self._status_error(method, path, err.code, text) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise NoClusterError(
                f"{self.where}: nothing answers as {self.what} ({type(reason).__name__}: {reason}).",
                hint=None,
            ) from None

    def get_json(self, path: str, *, with_token: bool = True) -> Any:
        _, text = self.request("GET", path, with_token=with_token)
        try:
            return json.loads(text)
        except ValueError:
            raise RemoteError(
                f"{self.where}: {self.what} answered GET {path} with something that is not JSON: "
                f"{_short(text)}"
            ) from None

    def _status_error(self, method: str, path: str, status: int, text: str) -> HttpStatusError:
        if status in {401, 403}:
            return HttpStatusError(
                f"{self.where}: {self.what} rejected the token (HTTP {status}).",
                status=status,
                body=text,
                hint="The token on the head differs from the one its Ray was started with: "
                "run `shapcluster up` again.",
            )
        return HttpStatusError(
            f"{self.where}: {self.what} answered {method} {path} with HTTP {status}: {_short(text)}",
            status=status,
            body=text,
        )


def _short(text: str) -> str:
    """One line of at most ERROR_CHARS characters of a server's answer."""
    line = " ".join(text.split())
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def query(**params: str) -> str:
    return "?" + urllib.parse.urlencode(params)
