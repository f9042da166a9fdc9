"""The Gateway's handling of a lost Explainer replica (app/serve.py), without Ray: a request
whose replica dies is sent again; after three lost attempts the client gets 503 with what to do.
The real loss (a replica killed with ray.kill) is in tests/serve/; this pins the retry rule."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ray.exceptions import ActorDiedError
from starlette.requests import Request

from app.contract import ServeOptions
from app.serve import ATTEMPTS, Gateway

OPTIONS = ServeOptions(model="m.skops", data="d.csv").to_args()
ANSWER = {
    "status": 200,
    "body": {"explanations": []},
    "counters": {"replica": "r1", "requests": 1, "rows": 1, "batches": 1},
}


class _Call:
    """What a DeploymentHandle's ``explain.remote(payload)`` returns: an awaitable."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def __await__(self) -> Any:
        async def resolve() -> Any:
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return resolve().__await__()


class _Method:
    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def remote(self, payload: Any) -> _Call:
        self.calls += 1
        return _Call(self.outcomes.pop(0))


class _Handle:
    def __init__(self, outcomes: list[Any]) -> None:
        self.explain = _Method(outcomes)


def _request(body: dict[str, Any]) -> Request:
    raw = json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/explain", "headers": [], "query_string": b""}
    return Request(scope, receive)


def _gateway(outcomes: list[Any]) -> tuple[Any, _Handle]:
    handle = _Handle(outcomes)
    # serve.ingress wraps our class in a subclass with an async __init__: build ours directly
    ours = Gateway.func_or_class.__mro__[1]
    assert ours.__module__ == "app.serve" and ours.__name__ == "Gateway"
    return ours(handle, OPTIONS), handle


def test_a_request_whose_replica_is_lost_is_sent_again() -> None:
    gateway, handle = _gateway([ActorDiedError(), ANSWER])
    answer = asyncio.run(gateway.explain(_request({"rows": []})))
    assert answer == ANSWER["body"] and handle.explain.calls == 2
    stats = gateway.stats_now()
    assert stats["retried"] == 1 and stats["lost"] == 0 and stats["requests"] == 1
    assert stats["replicas"] == [ANSWER["counters"]]


def test_three_lost_attempts_answer_503_with_what_to_do() -> None:
    gateway, handle = _gateway([ActorDiedError() for _ in range(ATTEMPTS)])
    answer = asyncio.run(gateway.explain(_request({"rows": []})))
    assert answer.status_code == 503 and handle.explain.calls == ATTEMPTS
    assert "send the request again in a few seconds" in json.loads(answer.body)["error"]
    assert gateway.stats_now()["lost"] == 1


def test_an_explainer_bug_is_one_json_500_line() -> None:
    gateway, _ = _gateway([ZeroDivisionError("boom")])
    answer = asyncio.run(gateway.explain(_request({"rows": []})))
    assert answer.status_code == 500
    assert json.loads(answer.body) == {
        "error": "the explainer failed (ZeroDivisionError); see the replica's log"
    }


def test_in_flight_counts_requests_until_they_are_answered() -> None:
    seen: list[int] = []

    class _Pending(_Method):
        def remote(self, payload: Any) -> _Call:
            seen.append(gateway.stats_now()["in_flight"])  # while the request waits for its batch
            return super().remote(payload)

    gateway, handle = _gateway([])
    handle.explain = _Pending([ANSWER, ZeroDivisionError("boom")])
    asyncio.run(gateway.explain(_request({"rows": []})))
    asyncio.run(gateway.explain(_request({"rows": []})))
    assert seen == [1, 1] and gateway.stats_now()["in_flight"] == 0
