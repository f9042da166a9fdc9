"""The CLI through typer's CliRunner: help, exit statuses, and one clear line per bad input.

None of these start Ray: bad local input is caught before the job starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shapcluster.cli import app
from shapcluster.errors import ExitStatus

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["submit"],
        ["up"],
        ["sync"],
        ["status"],
        ["down"],
        ["creds"],
        ["creds", "refresh"],
        ["jobs"],
        ["logs"],
        ["stop"],
    ],
)
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: shapcluster" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("shapcluster ")


@pytest.mark.parametrize(
    "command",
    [["up"], ["sync"], ["status"], ["down"], ["creds", "refresh"], ["submit"], ["jobs"], ["logs", "x"]],
)
def test_cluster_commands_name_a_missing_config(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*command)
    assert result.exit_code == ExitStatus.INPUT
    assert (
        f"config file not found: looked for {tmp_path}/shapcluster.toml and "
        f"{tmp_path}/inventory/shapcluster.toml"
    ) in result.output.replace("\n", "")
    assert "inventory/shapcluster.toml.example" in result.output


def test_config_path_comes_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "bad.toml").write_text("[head]\nhost = 'a@'\nnonsense = 1\n")
    monkeypatch.setenv("SHAPCLUSTER_CONFIG", str(tmp_path / "bad.toml"))
    result = invoke("status")
    assert result.exit_code == ExitStatus.INPUT
    assert "bad.toml:3" in result.output and "nonsense" in result.output


HEADER = "a;b;quality"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "the file is empty"),
        ("a|b|quality\n1|2|3\n", "has no ';', ',' or tab separator"),
        (
            HEADER + "\n" + "\n".join(f"{i};{'x' if i == 3 else i};5" for i in range(12)),
            "column 'b' is not numeric: 'x' on line 5",  # a column of words would be a text category
        ),
        ("a;b;grade\n" + "\n".join(f"{i};{i};5" for i in range(12)), "no label column 'quality'"),
        (HEADER + "\n" + "\n".join(f"{i};{'' if i == 4 else i};5" for i in range(12)), "missing value"),
    ],
    ids=["missing", "empty", "separator", "non-numeric", "no-label", "nan"],
)
def test_bad_data_exits_3_with_the_file_and_problem(tmp_path: Path, content, message):
    path = tmp_path / "wine.csv"
    if content is not None:
        path.write_text(content)
    result = invoke("submit", "--local", "--data", str(path))
    assert result.exit_code == ExitStatus.INPUT, result.output
    assert str(path) in result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "0"], "--rows"),
        (["--nsamples", "many"], "must be a whole number or 'exact'"),
        (["--sweep", "10,x"], "must be tree counts"),
        (["--link", "probit"], "probit"),
    ],
)
def test_bad_options_exit_2(args, message):
    result = invoke("submit", "--local", *args)
    assert result.exit_code == ExitStatus.USAGE, result.output
    assert message in result.output


def test_bad_test_size_is_a_usage_error_like_every_bad_option_value():
    result = invoke("submit", "--local", "--test-size", "1.5")
    assert result.exit_code == ExitStatus.USAGE
    assert "must be between 0 and 1" in result.output


def test_up_dry_run_prints_a_plan_per_host_and_contacts_none(tmp_path):
    (tmp_path / "workers.txt").write_text("10.9.0.2 cpus=1\n")
    (tmp_path / "app").mkdir()
    config = tmp_path / "shapcluster.toml"
    config.write_text('[head]\nhost = "10.9.0.1"\n[workers]\nfile = "workers.txt"\n[sync]\napp_dir = "app"\n')
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"not really")
    result = invoke("up", "--config", str(config), "--wheelhouse", str(wheels), "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Dry run: nothing runs on any host" in out
    assert "10.9.0.1 (head, " in out and "10.9.0.2 (worker, " in out
    head, worker = out.split("10.9.0.2 (worker, ")
    assert "  $ docker build --tag shapcluster-ray:" in head and "docker build" not in worker
    assert "  $ docker load" in worker
    assert "--address=10.9.0.1:6379 --node-ip-address=10.9.0.2" in worker and "--num-cpus=1" in worker
    assert "--num-cpus=<nproc>" in head  # the head's CPUs are not configured: all of them
    assert "streamed" not in out  # `up`'s progress logs are not shown as if it had run


def test_status_of_an_unreachable_head_prints_the_ssh_hint(tmp_path):
    """A real SSH runner to a closed port on this machine: exit 6, the error and its hint."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "workers.txt").write_text("")
    (tmp_path / "app").mkdir()
    config = tmp_path / "shapcluster.toml"
    config.write_text(
        f'[head]\nhost = "127.0.0.1:{port}"\n[workers]\nfile = "workers.txt"\n[sync]\napp_dir = "app"\n'
        "[ssh]\nconnect_timeout = 3\n"
    )
    result = invoke("status", "--config", str(config))
    assert result.exit_code == ExitStatus.REMOTE, result.output
    assert f"cannot reach SSH on port {port}" in result.output
    assert f"This must work: ssh -p {port} 127.0.0.1 true" in " ".join(result.output.split())


def test_brackets_in_messages_print_literally_and_a_bad_head_is_exit_3(tmp_path: Path):
    """Issue 12, fault 2: user and host text is never rich markup."""
    (tmp_path / "workers.txt").write_text("bad:host:1\n")
    (tmp_path / "c.toml").write_text('[head]\nhost = "10.0.0.1"\n[workers]\ncpu = 3\n')
    result = invoke("status", "--config", str(tmp_path / "c.toml"))
    assert result.exit_code == ExitStatus.INPUT, result.output
    assert "[workers] takes cpus, file" in result.output
    (tmp_path / "c.toml").write_text('[head]\nhost = "10.0.0.1"\n')
    result = invoke("status", "--config", str(tmp_path / "c.toml"))
    assert result.exit_code == ExitStatus.INPUT, result.output
    assert (
        "Each line of" in result.output
        and "is `[user@]host[:port] [cpus=N] [ray_address=IP]`" in result.output
    )
    (tmp_path / "c.toml").write_text('[head]\nhost = "[/x]"\n')
    result = invoke("status", "--config", str(tmp_path / "c.toml"))
    assert result.exit_code == ExitStatus.INPUT, result.output
    assert "'/x' in '[/x]' is not an IPv6 address" in result.output
    assert "Traceback" not in result.output and "MarkupError" not in result.output
