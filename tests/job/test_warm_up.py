"""The warm-up step: every worker process the explainers use has the model before they start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_two_cpus() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def _logging_model(log: Path):
    """A small real linear model that appends its process's PID to ``log`` whenever it is unpickled.

    Defined inside a function so cloudpickle ships the class by value to the Ray workers.
    """

    class LoggingModel:
        def __init__(self) -> None:
            self.coef = np.array([0.5, -1.0, 2.0])
            self.classes_ = np.array([0, 1])

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            p = 1.0 / (1.0 + np.exp(-(np.asarray(x, dtype=np.float64) @ self.coef)))
            return np.stack([1.0 - p, p], axis=1)

        def __getstate__(self) -> dict:
            return dict(self.__dict__)

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state)
            with log.open("a") as stream:
                stream.write(f"{os.getpid()}\n")

    return LoggingModel()


def _unpickled_in(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_warm_up_loads_the_model_into_every_process_before_the_explainer(ray_two_cpus, tmp_path):
    import ray

    from app import dag, model

    log = tmp_path / "unpickled.log"
    rng = np.random.default_rng(0)
    data = model.ExplainData(rng.normal(size=(6, 3)), np.arange(6), rng.normal(size=(20, 3)))
    model_ref = ray.put(_logging_model(log))
    assert _unpickled_in(log) == []  # put pickles; nothing has loaded it yet

    pids = dag.warm_up_workers([model_ref], data, workers=2)

    assert len(set(pids)) == 2  # one process per CPU, held apart by the barrier
    warmed = _unpickled_in(log)
    assert sorted(warmed) == sorted(pids)  # each loaded the model exactly once, in the warm-up
    # Many small tasks over both CPUs: any task in a process the warm-up missed would unpickle
    # the model there and add its PID to the log.
    explanation = dag.run_distributed_shap(model_ref, data, workers=2, batch_size=1)
    assert _unpickled_in(log) == warmed  # the explainer loaded the model nowhere again
    assert np.isfinite(explanation.values).all() and explanation.values.shape == (6, 3, 2)
