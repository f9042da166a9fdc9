"""Shared fixtures: keep every test away from the user's real AWS account and SSH set-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# matplotlib keeps its font cache under HOME: keep the real one, or every test would rebuild it.
_MPLCONFIGDIR = os.environ.get("MPLCONFIGDIR") or str(
    Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
)
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
WINE_CSV = SHARED_DATA / "winequality-red.csv"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may reach a real AWS account or read the user's ssh config, known_hosts or keys:
    HOME is an empty folder (so ~/.ssh/config, which shapcluster reads by default, is absent)."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "SHAPCLUSTER_", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", _MPLCONFIGDIR)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def wine_csv() -> Path:
    if not WINE_CSV.exists():
        pytest.skip(f"{WINE_CSV} is absent (the shared data folder lives beside the project)")
    return WINE_CSV
