"""The Serve application (app/serve.py) on a real local Ray + Serve instance: values equal to the
batch job's to 1e-9, batching proven from the replica's own counters, each bad request's status
and message, the token, and a killed replica replaced. One Ray and Serve instance for the module."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier

from app import tree_shap
from app.contract import IMAGE_ID_ENV, SERVE_APP_NAME, JobConfig, ServeOptions
from app.serve import build_app
from tests.conftest import WINE_CSV

pytestmark = pytest.mark.ray

TOKEN = "test-token-0123456789"
IMAGE_ID = "sha256:0123456789abcdef"
TREE_APP = "tree"


@dataclass(frozen=True)
class Served:
    url: str  # the kernel application, with a token
    tree_url: str  # the tree application (2 replicas), same token
    frame: pd.DataFrame  # the wine features, as the requests send them
    forest: RandomForestClassifier
    job: dict[str, Any]  # the batch job's summary on the same model, data and background
    job_values: np.ndarray  # (R, M, K) the batch job's values (explanation.npz)
    job_expected: np.ndarray  # (R, K)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a GET (body None) or POST to the application."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not WINE_CSV.exists():
        pytest.skip(f"{WINE_CSV} is absent (the shared data folder lives beside the project)")
    import ray
    from ray import serve

    from app.dag import run_job

    folder = tmp_path_factory.mktemp("serve")
    frame = pd.read_csv(WINE_CSV, sep=";")
    features = frame.drop(columns="quality")
    forest = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0, n_jobs=1)
    forest.fit(features, frame["quality"])
    sio.dump(forest, folder / "wine.skops")
    (folder / "token").write_text(TOKEN + "\n")
    common = {
        "model": str(folder / "wine.skops"),
        "data": str(WINE_CSV),
        "background": 10,
        "trust_model": True,
    }

    with pytest.MonkeyPatch.context() as env:
        env.setenv(IMAGE_ID_ENV, IMAGE_ID)  # the replicas inherit the local instance's environment
        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    try:
        # the batch job first, on the same model, data and background, alone on the instance
        config = JobConfig(**common, rows=3, reference=False, max_tasks=1, output_dir=str(folder / "results"))
        summary = run_job(config)
        run = folder / "results" / summary["run_id"] / "explanation.npz"
        with np.load(run) as saved:
            job_values, job_expected = saved["values"], saved["base_values"]

        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        kernel = ServeOptions(
            **common,
            replicas=1,
            max_batch_size=8,
            batch_wait_ms=500,  # long enough for concurrent requests to meet in one batch
            max_rows_per_request=20,
            token_file=str(folder / "token"),
        )
        serve.run(build_app(kernel.to_args()), name=SERVE_APP_NAME, route_prefix="/")
        tree = ServeOptions(**common, algorithm="tree", replicas=2, token_file=str(folder / "token"))
        serve.run(build_app(tree.to_args()), name=TREE_APP, route_prefix="/tree")
        base = f"http://127.0.0.1:{port}"
        yield Served(base, f"{base}/tree", features, forest, summary, job_values, job_expected)
    finally:
        serve.shutdown()
        ray.shutdown()


def rows_of(served: Served, index: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = served.frame.iloc[index].to_dict(orient="records")
    return records


def served_values(body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, G, K) values, (R, K) expected values and (R, K) model outputs of an /explain answer."""
    classes, players = body["classes"], body["players"]
    values = np.array(
        [[[row[c]["values"][p] for c in classes] for p in players] for row in body["explanations"]]
    )
    expected = np.array([[row[c]["expected_value"] for c in classes] for row in body["explanations"]])
    outputs = np.array([[row[c]["model_output"] for c in classes] for row in body["explanations"]])
    return values, expected, outputs


def test_values_served_equal_the_batch_jobs(served: Served) -> None:
    row_ids = served.job["row_ids"]
    status, body = call(f"{served.url}/explain", {"rows": rows_of(served, row_ids)})
    assert status == 200, body
    values, expected, outputs = served_values(body)
    assert body["classes"] == served.job["classes"] and body["players"] == served.job["feature_names"]
    np.testing.assert_allclose(values, served.job_values, rtol=0, atol=1e-9)
    np.testing.assert_allclose(expected, served.job_expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(outputs, served.forest.predict_proba(served.frame.iloc[row_ids]), atol=1e-12)


def test_the_tree_path_serves_exact_tree_values(served: Served) -> None:
    status, body = call(f"{served.tree_url}/explain", {"rows": rows_of(served, [0, 7])})
    assert status == 200, body
    assert body["algorithm"] == "tree"
    values, expected, outputs = served_values(body)
    # the job's tree function on the same rows and background; then, through the kernel app
    # (exact KernelSHAP), the same values: two algorithms, one quantity
    status, info = call(f"{served.tree_url}/info")
    assert status == 200 and info["algorithm"] == "tree" and info["background"] == 10
    _, kernel_body = call(f"{served.url}/explain", {"rows": rows_of(served, [0, 7])})
    np.testing.assert_allclose(values, served_values(kernel_body)[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(outputs, served.forest.predict_proba(served.frame.iloc[[0, 7]]), atol=1e-12)
    assert np.abs(values.sum(axis=1) + expected - outputs).max() < 1e-9
    assert tree_shap.is_supported(served.forest)


def test_concurrent_requests_are_explained_in_fewer_batches(served: Served) -> None:
    _, before = call(f"{served.url}/stats")
    n = 8
    with ThreadPoolExecutor(n) as pool:
        answers = list(
            pool.map(lambda i: call(f"{served.url}/explain", {"rows": rows_of(served, [i])}), range(n))
        )
    assert [status for status, _ in answers] == [200] * n
    _, after = call(f"{served.url}/stats")
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == n and after["rows"] - before["rows"] == n
    assert batches < requests, after  # the replica's own counters: rows of several requests, one call
    (replica,) = after["replicas"]
    assert max(int(size) for size in replica["batch_sizes"]) > 1


def test_a_request_larger_than_a_batch_is_split_and_matches(served: Served) -> None:
    status, body = call(f"{served.url}/explain", {"rows": rows_of(served, list(range(10)))})
    assert status == 200 and len(body["explanations"]) == 10
    values, expected, outputs = served_values(body)
    assert np.abs(values.sum(axis=1) + expected - outputs).max() < 1e-9
    _, alone = call(f"{served.url}/explain", {"rows": rows_of(served, [9])})
    np.testing.assert_allclose(values[9], served_values(alone)[0][0], rtol=0, atol=1e-12)


def test_each_bad_request_gets_its_status_and_message_and_spoils_no_other(served: Served) -> None:
    good = rows_of(served, [0])[0]
    bad: list[tuple[Any, int, str]] = [
        ({"rows": []}, 422, '"rows" is empty'),
        ({"rows": [good] * 21}, 413, "21 rows in one request; the limit is 20"),
        ({"rows": [{k: v for k, v in good.items() if k != "pH"}]}, 422, "rows[0]: missing column(s) 'pH'"),
        ({"rows": [good | {"colour": "red"}]}, 422, "rows[0]: extra column(s) 'colour'"),
        (
            {"rows": [good, good | {"alcohol": "strong"}]},
            422,
            "rows[1]: column 'alcohol' takes a number, got 'strong'",
        ),
        ({"rows": [good | {"density": None}]}, 422, "column 'density' takes a number, got None"),
        ({"table": [good]}, 422, 'the body must be {"rows"'),
    ]
    with ThreadPoolExecutor(len(bad) + 2) as pool:  # bad requests sent together with good ones
        goods = [pool.submit(call, f"{served.url}/explain", {"rows": rows_of(served, [i])}) for i in (1, 2)]
        answers = list(pool.map(lambda case: call(f"{served.url}/explain", case[0]), bad))
        assert [f.result()[0] for f in goods] == [200, 200]
    for (_, status, message), (got_status, body) in zip(bad, answers, strict=True):
        assert got_status == status and message in body["error"], body
    # a non-finite number: Python's JSON writes NaN, which the service refuses by column
    nan_row = json.dumps({"rows": [good | {"pH": float("nan")}]}).encode()
    status, body = call(f"{served.url}/explain", raw=nan_row)
    assert status == 422 and "column 'pH' takes a finite number" in body["error"]
    status, body = call(f"{served.url}/explain", raw=b"rows=1")
    assert status == 400 and "the body is not JSON" in body["error"]
    status, body = call(f"{served.url}/explain", {"rows": rows_of(served, [3])})
    assert status == 200  # the replica is fine


def test_the_token_is_required_everywhere_but_healthz(served: Served) -> None:
    assert call(f"{served.url}/healthz", token=None) == (200, {"status": "ok"})
    for route, body in (("/explain", {"rows": rows_of(served, [0])}), ("/info", None), ("/stats", None)):
        for token in (None, "wrong-token"):
            status, answer = call(served.url + route, body, token=token)
            assert status == 401 and "Authorization: Bearer <token>" in answer["error"], (route, token)
    status, info = call(f"{served.url}/info")
    assert status == 200
    assert TOKEN not in json.dumps(info)
    assert info["image_id"] == IMAGE_ID and info["features"] == list(served.frame.columns)
    assert info["classes"] == [str(c) for c in served.forest.classes_] and info["background"] == 10
    assert info["algorithm"] == "kernel" and info["versions"]["ray"] and info["versions"]["shap"]
    assert info["stats"]["refused"]["401"] >= 6


def test_a_killed_replica_is_replaced_and_requests_go_on(served: Served) -> None:
    import ray
    from ray import serve

    def replicas() -> set[str]:
        prefix = f"SERVE_REPLICA::{TREE_APP}#Explainer#"
        return {
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)
        }

    before = replicas()
    assert len(before) == 2
    killed = sorted(before)[0]
    ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)
    # sent right after the kill: routed to the lost replica it is retried on another (200), or
    # answered 503 with what to do; never a bare 500
    status, body = call(f"{served.tree_url}/explain", {"rows": rows_of(served, [0, 1, 2])})
    assert status == 200 or (status == 503 and "send the request again" in body["error"]), body

    deadline = time.monotonic() + 90
    while True:
        app = serve.status().applications[TREE_APP]
        states = app.deployments["Explainer"].replica_states
        now = replicas()
        if app.status == "RUNNING" and states == {"RUNNING": 2} and len(now) == 2 and killed not in now:
            break
        assert time.monotonic() < deadline, (app.status, states, now)
        time.sleep(0.2)  # polling Serve's state with a deadline, not synchronising on time
    status, body = call(f"{served.tree_url}/explain", {"rows": rows_of(served, [0])})
    assert status == 200, body
