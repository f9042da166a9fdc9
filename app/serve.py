"""The Ray Serve application of ``shapcluster serve``: explanations over HTTP, batched per replica.

How to deploy it
----------------
The application builder is ``app.serve:build_app`` (``contract.SERVE_IMPORT_PATH``); its ``args``
are ``contract.ServeOptions(...).to_args()`` (plain JSON). The ``app`` package must be importable
where the replicas run (the cluster image, or a runtime_env ``working_dir`` holding ``app/``), and
the model and data paths must be readable there.

1. Locally, or from a driver connected to the cluster (``serve.run``)::

       from ray import serve
       from app.contract import SERVE_APP_NAME, SERVE_ROUTE_PREFIX, ServeOptions
       from app.serve import build_app

       options = ServeOptions(model="wine.skops", data="data/winequality-red.csv", replicas=2)
       serve.start(http_options={"host": "127.0.0.1", "port": 8000})
       serve.run(build_app(options.to_args()), name=SERVE_APP_NAME, route_prefix=SERVE_ROUTE_PREFIX)

2. Through the dashboard's Serve REST API (what ``shapcluster serve up`` does over the tunnel,
   with the cluster's token as ``Authorization: Bearer <ray token>`` for the dashboard)::

       PUT http://<head>:8265/api/serve/applications/
       {"http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [{"name": "shapcluster", "route_prefix": "/",
                          "import_path": "app.serve:build_app",
                          "args": <ServeOptions.to_args()>}]}

   ``DELETE /api/serve/applications/`` removes it (``serve down``); ``GET`` shows its status.
   Host 127.0.0.1: the endpoint is reached only through the SSH tunnel to the head, as the Jobs
   API is (with host networking, 0.0.0.0 would open it to the whole network, token or not).

The application is two deployments: ``Gateway``, the HTTP ingress (one replica, no CPU, pinned
to the head node next to the proxy the tunnel reaches), and ``Explainer``, ``replicas`` replicas
of one CPU each (Serve spreads them over the nodes), each loading the model and background once.

How the token is checked
------------------------
Ray 2.60's token auth (``RAY_AUTH_MODE=token``) guards the dashboard (so the REST API above) and
Ray's gRPC, but NOT Serve's HTTP proxy (``ray/serve/_private/proxy.py`` checks no token): the
Gateway checks it itself. It takes the token, in this order, from: the file ``token_file`` of
the args (a path on the head); the environment variable ``SHAPCLUSTER_SERVE_TOKEN``
(``contract.SERVE_TOKEN_ENV``); Ray's own token when Ray runs with token auth
(``RAY_AUTH_TOKEN``, else the file at ``RAY_AUTH_TOKEN_PATH``, which the cluster's containers
set), so on a cluster the service takes the cluster's Ray token without any option; else no
token (a local test instance; the log says so). With a token, every route but ``GET /healthz``
needs ``Authorization: Bearer <token>`` (``contract.SERVE_TOKEN_HEADER``): 401 otherwise,
compared in constant time; the token is never logged nor shown by ``/info``.

Routes
------
``POST /explain`` ({"rows": [{column: value, ...}, ...]} -> per row and class: values per player,
expected value, model output, standard errors in sampling mode), ``GET /healthz``, ``GET /info``
(model, features, classes, background, algorithm, versions, image ID from ``SHAPCLUSTER_IMAGE_ID``
in the replicas' environment, and the stats), ``GET /stats`` (requests, retries, refusals,
latency percentiles, and the latest counters of every Explainer replica the Gateway heard from:
requests, rows, batches, batch sizes). A request is checked whole (``service.parse_rows``) on an
Explainer replica before its rows join a batch, so a bad request gets its 4xx (400, 413, 422 with
the row and column, or the limit) and never fails the other requests of a batch.

Batching: each row of a checked request goes to ``Explainer._explain_batch``
(``@serve.batch(max_batch_size, batch_wait_timeout_s)``), which explains the rows of all
requests waiting at once in ONE call of the job's explainer (in a worker thread, single-threaded
BLAS, so the replica keeps answering health checks); ``max_batch_size`` therefore counts rows.

A replica lost mid-request (its node or container killed): the Gateway sees Ray's
ActorDiedError and sends the request again (explaining is deterministic, so a retry is safe),
to another replica or to the one Serve starts in its place; after 3 lost attempts it answers
503 "send the request again in a few seconds". Serve's controller replaces the replica by itself.
"""

import asyncio
import hmac
import json
import logging
import os
import platform
import time
from collections import Counter, deque
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import NodeDiedError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from app import service
from app.contract import (
    IMAGE_ID_ENV,
    RAY_TOKEN_PATH_ENV,
    SERVE_EXPLAIN_ROUTE,
    SERVE_HEALTH_ROUTE,
    SERVE_INFO_ROUTE,
    SERVE_STATS_ROUTE,
    SERVE_TOKEN_ENV,
    SERVE_TOKEN_SCHEME,
    ServeOptions,
)

logger = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000  # the last requests whose latency the percentiles are over
RAY_TOKEN_ENV = "RAY_AUTH_TOKEN"  # Ray's token itself, when given in the environment
ATTEMPTS = 3  # tries of one request when its replica is lost (then 503)
HEAD_RESOURCE = "node:__internal_head__"  # Ray's resource of the head node: the gateway lives there


def resolve_token(options: ServeOptions, environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The bearer token the routes require (None: none) and where it came from (never the
    token itself). Raises OSError/ValueError when ``token_file`` cannot be read or is empty."""
    env = os.environ if environ is None else environ
    if options.token_file:
        token = Path(options.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"token_file {options.token_file} is empty")
        return token, f"token_file {options.token_file}"
    if env.get(SERVE_TOKEN_ENV, "").strip():
        return env[SERVE_TOKEN_ENV].strip(), f"${SERVE_TOKEN_ENV}"
    if env.get("RAY_AUTH_MODE", "").lower() == "token":
        if env.get(RAY_TOKEN_ENV, "").strip():
            return env[RAY_TOKEN_ENV].strip(), f"Ray's token (${RAY_TOKEN_ENV})"
        path = env.get(RAY_TOKEN_PATH_ENV)
        if path and Path(path).is_file():
            token = Path(path).read_text(encoding="utf-8").strip()
            if token:
                return token, f"Ray's token (${RAY_TOKEN_PATH_ENV})"
    return None, "none: every route is open (no token_file, no $SHAPCLUSTER_SERVE_TOKEN, no Ray token auth)"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


UNAUTHORISED = "missing or wrong token: send 'Authorization: Bearer <token>'"
# What a lost replica raises at the gateway: the request is retried on another replica.
REPLICA_LOST = (RayActorError, NodeDiedError, DeploymentUnavailableError, ReplicaUnavailableError)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Explainer:
    """One explaining replica (one CPU): the model and background loaded once
    (``service.load_explainer``), each request checked whole before its rows join a batch, and
    counters of what it explained."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.options = ServeOptions.from_args(args)
        started = time.perf_counter()
        self.explainer = service.load_explainer(self.options)
        self.load_seconds = time.perf_counter() - started
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.requests = 0
        self.rows = 0
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()  # rows per explainer call -> calls
        self.refused: Counter[int] = Counter()  # HTTP status -> requests refused
        batched: Any = self._explain_batch  # serve.batch's setters: sizes from the options
        batched.set_max_batch_size(self.options.max_batch_size)
        batched.set_batch_wait_timeout_s(self.options.batch_wait_s)
        logger.info(
            "replica %s: %s explainer ready in %.2f s (%d background rows, %d columns)",
            self.replica,
            self.explainer.algorithm,
            self.load_seconds,
            len(self.explainer.background),
            len(self.explainer.names),
        )

    def counters(self) -> dict[str, Any]:
        """This replica's counters: requests and rows explained, explainer calls (batches) and
        their sizes in rows, requests refused by HTTP status."""
        return {
            "replica": self.replica,
            "requests": self.requests,
            "rows": self.rows,
            "batches": self.batches,
            "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
            "refused": {str(status): n for status, n in sorted(self.refused.items())},
            "load_seconds": self.load_seconds,
        }

    def describe(self) -> dict[str, Any]:
        e = self.explainer
        return {
            "model": self.options.model,
            "model_type": type(e.fitted.estimator).__name__,
            "features": list(e.names),
            "players": list(e.players),
            "classes": list(e.classes),
            "explains": e.explains,
            "background": len(e.background),
            "algorithm": e.algorithm,
            "algorithm_reason": e.algorithm_reason,
            "nsamples": e.nsamples,
            "link": self.options.link.value,
            "seed": self.options.seed,
            "max_rows_per_request": self.options.max_rows_per_request,
            "max_batch_size": self.options.max_batch_size,
            "batch_wait_ms": self.options.batch_wait_ms,
            "image_id": os.environ.get(IMAGE_ID_ENV),
            "versions": {
                "python": platform.python_version(),
                "ray": ray.__version__,
                "shap": _version("shap"),
                "scikit-learn": _version("scikit-learn"),
                "numpy": np.__version__,
                "app": _version("shapcluster"),
            },
        }

    async def explain(self, payload: Any) -> dict[str, Any]:
        """A request's JSON -> {"status": 200, "body": explanations} or {"status": 4xx, "body":
        {"error": message}}; its rows join the replica's batch only once all of them are valid."""
        try:
            codes = service.parse_rows(payload, self.explainer, self.options.max_rows_per_request)
        except service.RequestError as err:
            self.refused[err.status] += 1
            return {"status": err.status, "body": {"error": str(err)}, "counters": self.counters()}
        rows = await asyncio.gather(*(self._explain_batch(row) for row in codes))
        self.requests += 1
        self.rows += len(rows)
        e = self.explainer
        body = {
            "algorithm": e.algorithm,
            "explains": e.explains,
            "link": self.options.link.value,
            "classes": list(e.classes),
            "players": list(e.players),
            "nsamples": e.nsamples,  # kernel: coalitions per plan (exact when >= 2^G - 2); None: 2G + 2048
            "explanations": rows,
        }
        return {"status": 200, "body": body, "counters": self.counters()}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def _explain_batch(self, rows: list[np.ndarray]) -> list[dict[str, Any]]:
        """One explainer call for the rows (M,) of every request waiting -> one JSON explanation
        per row; the sizes are set from the options in __init__."""
        codes = np.stack(rows)
        self.batches += 1
        self.batch_sizes[len(rows)] += 1
        explained = await asyncio.to_thread(self._explain_single_threaded, codes)
        return [service.row_response(self.explainer, explained, r) for r in range(len(rows))]

    def _explain_single_threaded(self, codes: np.ndarray) -> service.Explained:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # one CPU per replica means what it says
            return service.explain_codes(self.explainer, codes)


api = FastAPI(title="shapcluster", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class Gateway:
    """The HTTP ingress (no CPU, next to the proxy): checks the token, hands each request to an
    Explainer replica, retries it on another one when its replica is lost, and keeps the
    latencies and the latest counters of every Explainer replica it heard from."""

    def __init__(self, explainer: Any, args: dict[str, Any]) -> None:
        self.explainer = explainer
        self.options = ServeOptions.from_args(args)
        self._token, token_source = resolve_token(self.options)
        self.requests = 0
        self.retries = 0
        self.lost = 0  # requests answered 503: every attempt's replica was lost
        self.in_flight = 0  # requests handed to the Explainers and not answered yet (the queue)
        self.refused: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)  # seconds per served request
        self.replicas: dict[str, dict[str, Any]] = {}  # Explainer replica -> its latest counters
        logger.info("gateway ready; token: %s", token_source)

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != SERVE_TOKEN_SCHEME.lower():
            return False
        return hmac.compare_digest(given.strip().encode(), self._token.encode())

    def _refuse(self, status: int, message: str) -> JSONResponse:
        self.refused[status] += 1
        return _error(status, message)

    @api.get(SERVE_HEALTH_ROUTE)
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get(SERVE_INFO_ROUTE)
    async def info(self, request: Request) -> Any:
        if not self._authorised(request):
            return self._refuse(401, UNAUTHORISED)
        described: dict[str, Any] = await self.explainer.describe.remote()
        return described | {"replicas": self.options.replicas, "stats": self.stats_now()}

    @api.get(SERVE_STATS_ROUTE)
    def stats(self, request: Request) -> Any:
        if not self._authorised(request):
            return self._refuse(401, UNAUTHORISED)
        return self.stats_now()

    def stats_now(self) -> dict[str, Any]:
        """Requests answered, retried and lost, requests in flight (waiting for a batch or being
        explained), refusals by status, latency percentiles in seconds (the last LATENCY_WINDOW
        requests), and each Explainer replica's counters."""
        latencies = np.asarray(self.latencies, dtype=np.float64)
        percentiles = (
            {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)} if len(latencies) else {}
        )
        replicas = list(self.replicas.values())
        return {
            "requests": self.requests,
            "rows": sum(r["rows"] for r in replicas),
            "batches": sum(r["batches"] for r in replicas),
            "retried": self.retries,
            "lost": self.lost,
            "in_flight": self.in_flight,
            "refused": {str(status): n for status, n in sorted(self.refused.items())},
            "latency_seconds": percentiles,
            "replicas": replicas,
        }

    @api.post(SERVE_EXPLAIN_ROUTE)
    async def explain(self, request: Request) -> Any:
        started = time.perf_counter()
        if not self._authorised(request):
            return self._refuse(401, UNAUTHORISED)
        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as err:
            return self._refuse(400, f"the body is not JSON: {err}")
        self.in_flight += 1
        try:
            return await self._explain(payload, started)
        finally:
            self.in_flight -= 1

    async def _explain(self, payload: Any, started: float) -> Any:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                answer: dict[str, Any] = await self.explainer.explain.remote(payload)
                break
            except REPLICA_LOST as err:
                logger.warning("attempt %d of %d: replica lost (%s)", attempt, ATTEMPTS, type(err).__name__)
                if attempt == ATTEMPTS:
                    self.lost += 1
                    return _error(
                        503,
                        f"the replica explaining this request was lost {ATTEMPTS} times in a row; Serve is "
                        "replacing it: send the request again in a few seconds",
                    )
                self.retries += 1
            except Exception as err:  # a bug in the explainer: one line for the client, the trace in the log
                logger.exception("the explainer failed")
                return _error(500, f"the explainer failed ({type(err).__name__}); see the replica's log")
        counters = answer["counters"]
        self.replicas[counters["replica"]] = counters
        if answer["status"] != 200:
            self.refused[answer["status"]] += 1
            return JSONResponse(answer["body"], status_code=answer["status"])
        self.requests += 1
        self.latencies.append(time.perf_counter() - started)
        return answer["body"]


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application of ``ServeOptions.to_args()``'s dict: one Gateway (the HTTP ingress, no
    CPU, on the head node) and ``replicas`` Explainer replicas of one CPU each, each taking up to
    ``max_batch_size`` requests at once. Raises OptionError on bad args (before anything deploys)."""
    options = ServeOptions.from_args(args)
    explainer: Any = cast(Any, Explainer).options(
        num_replicas=options.replicas, max_ongoing_requests=max(options.max_batch_size, 8)
    )
    gateway: Any = cast(Any, Gateway).options(
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}}
    )
    application: serve.Application = gateway.bind(explainer.bind(options.to_args()), options.to_args())
    return application
