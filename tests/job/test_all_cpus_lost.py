"""Every worker node dies while the head has no CPUs: the job fails naming the lost nodes
instead of waiting forever (issue 12, fault 10). Same real multi-node cluster as
test_fault_tolerance.py: a 0-CPU head (the driver's node) and two 1-CPU workers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.config import JobConfig
from app.errors import JobError
from tests.job.test_fault_tolerance import DEADLINE_SECONDS, WatchingReporter, cluster

pytestmark = pytest.mark.ray
__all__ = ["cluster"]  # the fixture, shared


def test_a_job_without_any_cpu_left_fails_naming_the_lost_nodes(
    cluster, wine_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from app import dag

    monkeypatch.setattr(dag, "STALL_CHECK_SECONDS", 0.5)
    config = JobConfig(
        data=str(wine_csv), rows=4, background=40, trees=15, batch_size=1, tolerance=1e-9,
        output_dir=str(tmp_path), run_id="all-lost", reference=False,
    )  # fmt: skip
    workers = list(cluster.worker_nodes)
    reporter = WatchingReporter()

    def kill_all() -> None:
        if reporter.first_block_done.wait(timeout=DEADLINE_SECONDS):
            for node in workers:
                cluster.remove_node(node, allow_graceful=False)

    killer = threading.Thread(target=kill_all)
    killer.start()
    try:
        with pytest.raises(JobError) as caught:
            dag.run_job(config, reporter)
    finally:
        reporter.first_block_done.set()
        killer.join(timeout=DEADLINE_SECONDS)
    message = str(caught.value)
    assert message.startswith("no Ray node with CPUs is left to run the remaining tasks; lost: ")
    for node in workers:
        assert node.node_ip_address in message and node.node_id[:12] in message
