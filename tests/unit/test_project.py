"""Defaults found from the folder the user runs in (issue 12, fault 8): the config, the build
context and a wheelhouse made once when PyPI is reachable."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from shapcluster import project
from shapcluster.config import load_cluster_config
from shapcluster.errors import InputError


def test_the_config_is_found_in_the_inventory_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "workers.txt").write_text("")
    (tmp_path / "inventory" / "shapcluster.toml").write_text('[head]\nhost = "10.0.0.1"\n')
    monkeypatch.chdir(tmp_path)
    config = load_cluster_config(Path("shapcluster.toml"))
    assert config.path == Path("inventory/shapcluster.toml")
    assert config.inventory.head.address == "10.0.0.1"
    (tmp_path / "shapcluster.toml").write_text(
        '[head]\nhost = "10.0.0.2"\n[workers]\nfile = "inventory/workers.txt"\n'
    )
    assert load_cluster_config(Path("shapcluster.toml")).inventory.head.address == "10.0.0.2"  # ./ first


def test_an_explicit_config_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        load_cluster_config(Path("other.toml"))
    assert caught.value.message == f"config file not found: {tmp_path / 'other.toml'}: not found"  # absolute


def test_the_build_context_is_the_users_docker_folder(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM x\n")
    assert project.find_context(None, cwd=tmp_path) == tmp_path / "docker"
    assert project.find_context(tmp_path / "elsewhere", cwd=tmp_path) == tmp_path / "elsewhere"


def test_without_a_context_the_error_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(project, "CHECKOUT_CONTEXT", tmp_path / "pkg" / "docker")
    with pytest.raises(InputError) as caught:
        project.find_context(None, cwd=tmp_path)
    assert caught.value.message == (
        f"no build context for the image: no Dockerfile in {tmp_path}/docker or {tmp_path}/pkg/docker"
    )
    assert "--context" in (caught.value.hint or "")


class FakePip:
    """Records pip download calls and writes a wheel into the -d folder (or fails)."""

    def __init__(self, ok: bool = True) -> None:
        self.calls: list[list[str]] = []
        self.ok = ok

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        if not self.ok:
            return subprocess.CompletedProcess(
                args, 1, "", "ERROR: Could not find a version (network unreachable)"
            )
        target = Path(args[args.index("-d") + 1])
        (target / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"w")
        return subprocess.CompletedProcess(args, 0, "", "")


@pytest.fixture
def context(tmp_path: Path) -> Path:
    folder = tmp_path / "docker"
    folder.mkdir()
    (folder / "requirements.txt").write_text("ray[default]==2.60.0\n")
    return folder


def test_a_missing_wheelhouse_is_downloaded_once_and_cached(context: Path, tmp_path: Path) -> None:
    pip, lines = FakePip(), []
    cache = tmp_path / "cache"
    made = project.ensure_wheelhouse(context, None, lines.append, download=pip, cache_dir=cache)
    key = project.requirements_hash(context / "requirements.txt")
    assert made == cache / key and list(made.glob("ray-*.whl"))
    assert pip.calls[0][1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in pip.calls[0]
    assert any("downloading the wheels" in line and str(cache / key) in line for line in lines)
    again = project.ensure_wheelhouse(context, None, lines.append, download=pip, cache_dir=cache)
    assert again == made and len(pip.calls) == 1  # cached by the hash of requirements.txt
    (context / "requirements.txt").write_text("ray[default]==2.60.0\nshap==0.51.0\n")
    assert project.ensure_wheelhouse(context, None, lines.append, download=pip, cache_dir=cache) != made


def test_the_air_gapped_wheelhouse_and_context_wheels_win(context: Path, tmp_path: Path) -> None:
    pip = FakePip()
    given = tmp_path / "mine"
    assert project.ensure_wheelhouse(context, given, print, download=pip, cache_dir=tmp_path) == given
    (context / "wheels").mkdir()
    (context / "wheels" / "x.whl").write_bytes(b"w")
    assert (
        project.ensure_wheelhouse(context, None, print, download=pip, cache_dir=tmp_path)
        == context / "wheels"
    )
    assert pip.calls == []


def test_without_the_index_the_error_gives_the_air_gapped_way(context: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        project.ensure_wheelhouse(context, None, print, download=FakePip(ok=False), cache_dir=tmp_path / "c")
    assert caught.value.message.startswith(f"{context}/wheels: no wheelhouse, and pip could not download")
    assert "network unreachable" in caught.value.message
    assert "--wheelhouse DIR: pip download --disable-pip-version-check" in (caught.value.hint or "")
    assert not any((tmp_path / "c").glob("*/*.whl"))  # nothing half-made is left to be reused
