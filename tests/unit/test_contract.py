"""One definition of the job's options (app/contract.py) behind both parsers; the toolkit's
imports of app; bad option values exit 2 in one style on both command lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app import contract
from app.config import build_parser, parse_args
from app.contract import Algorithm, JobConfig, Link, Task
from shapcluster import jobs
from shapcluster.cli import app

REPO = Path(__file__).resolve().parents[2]


def _app_imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "app":
                names += [f"app.{alias.name}" for alias in node.names]
    return [n for n in names if n == "app" or n.startswith("app.")]


def test_the_toolkit_imports_nothing_from_app_but_the_contract() -> None:
    offending = {
        str(path.relative_to(REPO)): bad
        for path in sorted((REPO / "shapcluster").rglob("*.py"))
        if (bad := [n for n in _app_imports(path) if n not in {"app", "app.contract"}])
    }
    assert offending == {}
    # The scan itself sees imports (it would pass vacuously otherwise).
    assert "app.contract" in _app_imports(REPO / "shapcluster" / "cli" / "job.py")


def test_the_contract_imports_only_the_standard_library() -> None:
    """At import time: Link.apply imports numpy inside, when a link is applied (in the job)."""
    tree = ast.parse((REPO / "app" / "contract.py").read_text(encoding="utf-8"))
    modules = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}
    code = "import sys, app.contract; print(sorted(m for m in ('numpy', 'pandas') if m in sys.modules))"
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert imported.stdout.strip() == "[]"


def test_help_imports_no_numpy_pandas_or_ray() -> None:
    code = (
        "import sys\n"
        "from shapcluster.cli import app\n"
        "try:\n"
        "    app(['submit', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('numpy', 'pandas', 'ray', 'sklearn', 'shap')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert "--max-tasks" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_both_parsers_offer_every_option_of_the_contract() -> None:
    app_help = build_parser().format_help()
    submit_help = CliRunner().invoke(app, ["submit", "--help"], env={"COLUMNS": "200"}).output
    for f in contract.job_options():
        spelling = contract.flag(f.name) if f.default is not True else "--no-" + f.name.replace("_", "-")
        assert spelling in app_help
        if f.metadata["toolkit"]:
            assert spelling in submit_help, spelling
    switches = [line for line in submit_help.splitlines() if "--help" not in line]
    assert not [line for line in switches if "<bool>" in line or "BOOLEAN" in line]
    assert "<int|exact>" in submit_help and "<int|exact>" in app_help
    assert "--workers" not in submit_help and "--workers" not in app_help  # deprecated: hidden


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[JobConfig]:
    seen: list[JobConfig] = []

    def fake_run_local(job: JobConfig) -> dict[str, Any]:
        seen.append(job)
        return {}

    monkeypatch.setattr(jobs, "run_local", fake_run_local)
    return seen


ARGVS = [
    [],
    ["--rows", "3", "--nsamples", "exact", "--link", "logit", "--sweep", "10,20", "--no-reference"],
    [
        "--rows",
        "2:9",
        "--max-tasks",
        "5",
        "--batch-size",
        "2",
        "--test-size",
        "0.5",
        "--tolerance",
        "1e-8",
        "--tol",
        "0.01",
    ],
    ["--algorithm", "tree", "--seed", "7", "--run-id", "r1", "--output-dir", "out"],
    ["--algorithm", "auto", "--groups", "g.json", "--background-weights", "w"],
    ["--model", "m.skops", "--trust-model", "--label", "y", "--features", "a,b", "--task", "regression"],
]


@pytest.mark.parametrize("argv", ARGVS)
def test_both_parsers_build_the_same_config(argv: list[str], captured: list[JobConfig]) -> None:
    result = CliRunner().invoke(app, ["submit", "--local", *argv])
    assert result.exit_code == 0, result.output
    assert captured == [parse_args(argv)]
    assert parse_args(captured[0].to_argv()) == captured[0]


def test_values_are_typed() -> None:
    config = parse_args(
        ["--link", "logit", "--algorithm", "auto", "--task", "regression", "--features", "a, b"]
    )
    assert config.link is Link.LOGIT and config.algorithm is Algorithm.AUTO and config.task is Task.REGRESSION
    assert config.features == ("a", "b")
    assert parse_args(["--rows", "all"]).rows == "all" and parse_args(["--rows", "2:5"]).rows == "2:5"
    assert parse_args(["--rows", "7"]).rows == 7
    assert JobConfig(link="logit").link is Link.LOGIT  # type: ignore[arg-type]


BAD = [
    (["--nsamples", "0"], "--nsamples", "must be at least 1 (or 'exact'), got 0"),
    (["--nsamples", "abc"], "--nsamples", "must be a whole number or 'exact', got 'abc'"),
    (["--test-size", "2"], "--test-size", "must be between 0 and 1 (exclusive), got 2.0"),
    (["--run-id", "a/b"], "--run-id", "must be a plain folder name (no '/'), got 'a/b'"),
    (["--rows", "0"], "--rows", "must be at least 1, got 0"),
    (["--rows", "5:2"], "--rows", "START:STOP needs 0 <= START < STOP, got '5:2'"),
    (["--rows", "some"], "--rows", "must be N, 'all' or START:STOP, got 'some'"),
    (["--tolerance", "nan"], "--tolerance", "must be a finite number, got nan"),
    (["--link", "probit"], "--link", "must be one of identity, logit, got 'probit'"),
    (["--sweep", "10,0"], "--sweep", "needs positive tree counts"),
    (["--algorithm", "tree", "--link", "logit"], "--algorithm", "drop --link logit"),
    (["--trust-model"], "--trust-model", "only applies with --model"),
]


@pytest.mark.parametrize(("argv", "option", "message"), BAD)
def test_a_bad_option_value_exits_2_in_one_style_on_both_command_lines(
    argv: list[str], option: str, message: str, captured: list[JobConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    result = CliRunner().invoke(app, ["submit", "--local", *argv], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output or f"Invalid value for {option}" in result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert captured == []
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and message in err


def test_workers_is_a_deprecated_alias_of_max_tasks(
    captured: list[JobConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    result = CliRunner().invoke(app, ["submit", "--local", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert captured[0].max_tasks == 3
    assert "--workers is deprecated; use --max-tasks" in result.output
    assert parse_args(["--workers", "3"]).max_tasks == 3
    assert "--workers is deprecated; use --max-tasks" in capsys.readouterr().err


def test_local_run_starts_the_job_as_the_cluster_does() -> None:
    command = jobs.local_command(JobConfig(rows=3, max_tasks=2))
    assert command == [sys.executable, "-m", "app", "--rows", "3", "--max-tasks", "2"]
