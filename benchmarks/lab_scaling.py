"""The scaling report (benchmarks/scaling.py) on a fresh three-host lab cluster, in one go.

Creates the lab (network namespaces with sshd and dockerd, see tests/lab/lab.py), runs
`shapcluster up` (one CPU per host), then scaling.py against that cluster with the arguments
given here, then `down --purge` and the lab's teardown, even on failure. The hosts share this
machine's cores, so the speed-ups say how well the work spreads over Ray nodes, not what
separate machines would give. Needs root and the lab's tools (.ci/lab-deps.sh); run it alone.

Run: `.venv/bin/python benchmarks/lab_scaling.py --cpus-list 1,2,3 --batch-sizes auto,2 --nruns 3`
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import scaling  # noqa: E402  (beside this file)
from cluster_up import BASE_TAG, bench_lab, shapcluster, write_config  # noqa: E402

from tests.conftest import WINE_CSV  # noqa: E402  (../shared/data, never copied into git)


def main(argv: list[str]) -> int:
    with bench_lab() as (lab, wheelhouse), tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), lab, BASE_TAG)
        data_dir = Path(tmp) / "data"  # the real wine file, synced to every host
        data_dir.mkdir()
        shutil.copy(WINE_CSV, data_dir / WINE_CSV.name)
        with config.open("a") as file:  # [sync] is the config's last table
            file.write(f'data_dir = "{data_dir}"\n')
        shapcluster("up", "--config", str(config), "--wheelhouse", str(wheelhouse))
        try:
            data = ["--data", str(data_dir / WINE_CSV.name)]
            return scaling.main(["--config", str(config), *data, *argv])
        finally:
            shapcluster("down", "--config", str(config), "--purge", "-y")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
