"""benchmarks/ceiling.py rebuilds the job's own explainer work: same model, rows, background and
blocks as a real local run; and runs those blocks in plain processes."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.ray

sys.path.insert(0, str(REPO / "benchmarks"))  # the ceiling's worker processes import it by name
_spec = importlib.util.spec_from_file_location("ceiling", REPO / "benchmarks" / "ceiling.py")
assert _spec and _spec.loader
ceiling = importlib.util.module_from_spec(_spec)
sys.modules["ceiling"] = ceiling
_spec.loader.exec_module(ceiling)

OPTIONS = {"rows": 3, "background": 20, "trees": 5, "seed": 0}


def test_the_ceiling_rebuilds_the_jobs_work(local_ray, wine_csv: Path, tmp_path: Path):
    from app.__main__ import main

    argv = [f"--{name}={value}" for name, value in OPTIONS.items()]
    argv += [f"--data={wine_csv}", "--max-tasks=2", "--no-reference", f"--output-dir={tmp_path}"]
    argv.append("--run-id=r")
    status = main(argv)
    assert status == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    values = pd.read_csv(tmp_path / "r" / "shap_values.csv")

    workload = ceiling.build_workload({**OPTIONS, "data": str(wine_csv)})
    assert len(workload.blocks(2, None)) == summary["tasks"]["ours"]
    assert sum(len(masks) for _, masks in workload.plans) // len(workload.plans) == summary["nsamples"]
    # The same forest on the same rows, and the same background: f(x) and E[f] as the job wrote them.
    proba = workload.fitted.predict_proba(workload.rows)  # (R, K)
    by_row = values.pivot(index="row", columns="class", values="model_output")
    job_fx = by_row.loc[values["row"].drop_duplicates()].to_numpy()  # in the file's (the rows') order
    np.testing.assert_allclose(proba, job_fx, rtol=0, atol=1e-12)
    expected = workload.weights @ workload.fitted.predict_proba(workload.background)
    job_expected = values.groupby("class")["expected_value"].first().to_numpy()
    np.testing.assert_allclose(expected, job_expected, atol=1e-12)


def test_run_ceiling_runs_every_block_in_warm_processes(wine_csv: Path):
    workload = ceiling.build_workload({**OPTIONS, "data": str(wine_csv)})
    blocks = workload.blocks(2, 1)
    run = ceiling.run_ceiling(workload, 2, 1)
    assert run.tasks == len(blocks) == 3
    assert run.wall_seconds > 0 and run.cpu_seconds > 0
    assert multiprocessing.active_children() == []  # the pool and its manager are gone
