"""A worker node dies while the explainers run: the job still finishes, with the same values.

A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): a head without
CPUs, where the driver runs as on a cluster submitted to through the Jobs API, and two worker
nodes of one CPU each. One worker node is killed (SIGKILL, like its container being killed) as
soon as the first of our coalition tasks has finished, so the other tasks are in flight.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from app.config import JobConfig
from app.report import Advance, Reporter

pytestmark = pytest.mark.ray

# Ray declares a node dead after ~15 s of failed health checks by default, and the job waits for
# that at its end to name the node; the GCS here gives up after three checks 300 ms apart.
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_failure_threshold": 3,
}
DEADLINE_SECONDS = 120.0


class WatchingReporter(Reporter):
    """Prints into a buffer and tells a waiting thread when our first coalition task is done."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        super().__init__(Console(file=self.buffer, width=200, highlight=False))
        self.first_block_done = threading.Event()
        self.explainers_done = threading.Event()
        self.pending: dict[str, int] = {}

    @contextmanager
    def progress(self, totals: dict[str, int]) -> Iterator[Advance]:
        from app.dag import OURS

        self.pending = dict(totals)
        with super().progress(totals) as advance:

            def watched(name: str, amount: int) -> None:
                advance(name, amount)
                self.pending[name] -= amount
                if name == OURS:
                    self.first_block_done.set()

            yield watched
        self.explainers_done.set()

    @property
    def output(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Head (0 CPUs) + two 1-CPU worker nodes; the test process is the driver, connected once."""
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    # Token auth: the nodes inherit this process's RAY_AUTH_MODE, so they and the driver agree
    # whether an earlier local ray.init() here switched token auth on (it sets the variable and
    # caches the mode in-process, where changing the variable now would not reach) or not.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # A private temp dir: Cluster records its address in <tmp>/ray/ray_current_cluster, where a
    # plain ray.init() in any other process on this machine would find it and join it.
    # (Short: Ray's unix socket paths live under it.)
    temp_dir = tempfile.mkdtemp(prefix="rayft-")
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "no_monitor": True,
            "_system_config": FAST_NODE_DEATH,
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, wait=False)
        cluster.wait_for_nodes(timeout=DEADLINE_SECONDS)
        # One driver for both runs: run_job joins it and leaves it up, and the workers stay warm.
        ray.init(address=cluster.address, logging_level="ERROR")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def kill_after_first_block(
    cluster: Any, node: Any, reporter: WatchingReporter, killed: dict[str, Any]
) -> None:
    """SIGKILL every process of ``node`` once our first coalition task has finished."""
    if not reporter.first_block_done.wait(timeout=DEADLINE_SECONDS):
        return
    killed["pending"] = dict(reporter.pending)
    killed["explainers_done"] = reporter.explainers_done.is_set()
    cluster.remove_node(node, allow_graceful=False)


def test_job_survives_a_worker_node_lost_while_the_explainers_run(cluster, wine_csv: Path, tmp_path: Path):
    from app.dag import run_job

    config = JobConfig(
        data=str(wine_csv),
        rows=4,
        background=40,
        trees=15,
        batch_size=1,  # 4 one-row tasks and 2 reference chunks: plenty left after the first
        tolerance=1e-9,
        output_dir=str(tmp_path),
    )
    # The run without failure explains with ours alone (--no-reference) to save time; the run
    # with the failure is checked against it and, by its verdict, against shap to 1e-9.
    baseline = run_job(replace(config, run_id="baseline", reference=False), WatchingReporter())
    assert len(baseline["nodes"]) == 3 and baseline["nodes_lost"] == []
    assert sorted(node["cpus"] for node in baseline["nodes"]) == [0, 1, 1]
    assert baseline["cpus"] == 2

    victim = next(iter(cluster.worker_nodes))
    reporter = WatchingReporter()
    killed: dict[str, Any] = {}
    killer = threading.Thread(target=kill_after_first_block, args=(cluster, victim, reporter, killed))
    killer.start()
    try:
        summary = run_job(replace(config, run_id="lost"), reporter)
    finally:
        reporter.first_block_done.set()  # a job that failed early must not leave the thread waiting
        killer.join(timeout=DEADLINE_SECONDS)
    assert killed, "the worker node was never killed"
    assert not killed["explainers_done"] and sum(killed["pending"].values()) > 0, killed

    assert summary["nodes_lost"] == [{"id": victim.node_id, "ip": victim.node_ip_address}]
    assert [n["id"] for n in summary["nodes"]] == [n["id"] for n in baseline["nodes"]]
    assert "1 node lost during the run" in reporter.output
    assert "its tasks were retried" in reporter.output
    assert summary["comparison"]["verdict"] == "match", summary["comparison"]
    expected = pd.read_csv(tmp_path / "baseline" / "shap_values.csv")
    actual = pd.read_csv(tmp_path / "lost" / "shap_values.csv")
    assert list(actual.columns) == list(expected.columns)
    assert actual[["row", "class"]].equals(expected[["row", "class"]])
    features = baseline["feature_names"]
    assert (actual[features] - expected[features]).abs().to_numpy().max() <= 1e-9
