"""The scaling report (benchmarks/scaling.py) on a fresh three-host lab cluster, in one go.

Creates the lab (network namespaces with sshd and dockerd, see tests/lab/lab.py), runs
`shapcluster up` (one CPU per host), then scaling.py against that cluster with the arguments
given here, then `down --purge` and the lab's teardown, even on failure. The hosts share this
machine's cores, so the speed-ups say how well the work spreads over Ray nodes, not what
separate machines would give. Needs root and the lab's tools (.ci/lab-deps.sh); run it alone.

Run: `.venv/bin/python benchmarks/lab_scaling.py --cpus-list 1,2,3 --batch-sizes auto,2 --nruns 3`
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import scaling  # noqa: E402  (beside this file)
from cluster_up import shapcluster, write_config  # noqa: E402

from tests.conftest import WINE_CSV  # noqa: E402  (../shared/data, never copied into git)
from tests.lab import base_image  # noqa: E402  (the lab library lives with the tests)
from tests.lab.lab import Lab  # noqa: E402


def main(argv: list[str]) -> int:
    wheelhouse = base_image.make_wheelhouse(REPO / "docker" / "requirements.txt")
    tarball = base_image.make_base_image()
    home = os.environ.get("HOME", "")
    lab = Lab.create()
    try:
        base = "bench/base:1"
        lab.import_image(lab.head, tarball, base)
        lab.ship_image(base, lab.head, lab.workers)
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config(Path(tmp), lab, base)
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
                shapcluster("down", "--config", str(config), "--purge")
    finally:
        os.environ["HOME"] = home
        lab.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
