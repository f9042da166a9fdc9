"""The README's cluster quick start, run literally in a fresh project folder up to `up --dry-run`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def quick_start_lines() -> list[str]:
    """The bash block under "A cluster of your own machines", up to and including `up --dry-run`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## A cluster of your own machines") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [line for line in lines if line]
    end = next(i for i, line in enumerate(commands) if line == "shapcluster up --dry-run")
    return commands[: end + 1]


def test_readme_cluster_quick_start_runs_literally_to_the_dry_run(tmp_path: Path) -> None:
    checkout = tmp_path / "shapcluster"  # a fresh checkout: what git would give (no wheels)
    for folder in ("app", "docker", "inventory"):
        shutil.copytree(
            REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("wheels", "__pycache__")
        )
    commands = quick_start_lines()
    assert commands[0] == "cd shapcluster" and commands[-1] == "shapcluster up --dry-run"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    env = {k: v for k, v in env.items() if not k.startswith("SHAPCLUSTER_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["HOME"] = str(tmp_path)  # no cached wheelhouse, no ~/.ssh
    script = "set -e\n" + "\n".join(commands) + "\n"
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "wheelhouse missing" in out  # said, and the plan still follows for every host
    for host in ("10.0.0.10 (head", "10.0.0.11 (worker", "10.0.0.12 (worker", "10.0.0.13:2222 (worker"):
        assert f"\n{host}, " in f"\n{out}"
    assert "mkdir -p -- /opt/shapcluster/app && cd -- /opt/shapcluster/app" in out  # the sync's probe
    assert "ray start --head --node-ip-address=10.0.0.10" in out
