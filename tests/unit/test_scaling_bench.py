"""benchmarks/scaling.py without Ray: list parsing, commands, aggregation, files, and main's wiring."""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("scaling_bench", REPO / "benchmarks" / "scaling.py")
assert _spec and _spec.loader
scaling = importlib.util.module_from_spec(_spec)
sys.modules["scaling_bench"] = scaling  # dataclasses look their module up while building
_spec.loader.exec_module(scaling)


def synthetic_runs():
    """batch 2: 1 CPU 10/11/12 s, 2 CPUs 5.5/6/7 s; auto: 2 CPUs 8/8 s, 4 CPUs 3/5 s."""
    Run = scaling.Run
    walls = {
        (1, 2): [10.0, 12.0, 11.0],
        (2, 2): [6.0, 5.5, 7.0],
        (2, None): [8.0, 8.0],
        (4, None): [5.0, 3.0],
    }
    return [
        Run(cpus, batch, i + 1, wall, wall + 20.0, cpus * wall * 0.9, tasks=4, run_id=f"r-{cpus}-{batch}-{i}")
        for (cpus, batch), values in walls.items()
        for i, wall in enumerate(values)
    ]


# ---- lists ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("1,2,4", (1, 2, 4)), (" 4, 1 ,2", (1, 2, 4)), ("3", (3,))])
def test_parse_int_list(text, expected):
    assert scaling.parse_int_list(text) == expected


def test_parse_batch_sizes_with_auto_first():
    assert scaling.parse_int_list("8,auto,2", allow_auto=True) == (None, 2, 8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a comma-separated list"),
        ("1,,2", "not a comma-separated list"),
        ("1,", "not a comma-separated list"),
        ("1,x", "'x' in '1,x' is not a whole number"),
        ("1.5", "is not a whole number"),
        ("auto", "is not a whole number"),  # only batch sizes may be auto
        ("0,1", "0 in '0,1' must be at least 1"),
        ("-2", "must be at least 1"),
        ("2,1,2", "repeats a value"),
    ],
)
def test_parse_int_list_errors(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace(".", r"\.")):
        scaling.parse_int_list(text)


def test_bad_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(["--local", "--cpus-list", "1,two"])
    assert exit_info.value.code == 2
    assert "argument --cpus-list: 'two' in '1,two' is not a whole number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--cpus-list", "1"], ["--local"], ["--local", "--cpus-list", "1", "--nruns", "0"]]
)
def test_usage_errors(argv):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(argv)
    assert exit_info.value.code == 2


# ---- commands and summaries ------------------------------------------------------------------


def test_submit_command_is_exact(tmp_path):
    options = {"rows": 4, "background": 20, "nsamples": None, "data": "d.csv", "trees": None, "seed": 1}
    command = scaling.submit_command(
        ["--local", "--cpus", "4"], 2, 8, "s-c2-b8-r1", tmp_path, options, no_reference=True
    )
    assert command == [
        sys.executable, "-m", "shapcluster", "submit", "--local", "--cpus", "4", "--max-tasks", "2",
        "--batch-size", "8", "--rows", "4", "--background", "20", "--data", "d.csv", "--seed", "1",
        "--no-reference", "--run-id", "s-c2-b8-r1", "--output-dir", str(tmp_path),
    ]  # fmt: skip


def test_submit_command_auto_batch_on_a_cluster_with_reference(tmp_path):
    command = scaling.submit_command(
        ["-c", "/x/shapcluster.toml"], 3, None, "r", tmp_path, {}, no_reference=False
    )
    assert command[3:] == [
        "submit",
        "-c",
        "/x/shapcluster.toml",
        "--max-tasks",
        "3",
        "--run-id",
        "r",
        "--output-dir",
        str(tmp_path),
    ]


def test_ours_step_is_the_dags_name_for_our_explainer():
    tree = ast.parse((REPO / "app" / "dag.py").read_text())
    names = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    assert names["OURS"] == scaling.OURS_STEP


def test_run_from_summary_takes_our_step_and_totals_every_step():
    summary = {
        "wall_seconds": {"etl": 0.5, "create_model": 1.5, scaling.OURS_STEP: 3.0, "write_results": 0.25},
        "tasks": {"ours": 7, "reference": 2},
        "cpu_seconds": {"ours": 5.5, "reference": 9.0},
        "cpus": 4,
        "workers": 2,
    }
    run = scaling.run_from_summary(summary, 2, 4, 1, "rid")
    assert (run.wall_seconds, run.total_seconds, run.cpu_seconds) == (3.0, 5.25, 5.5)
    assert (run.tasks, run.run_id) == (7, "rid")


def test_run_from_summary_without_our_step_names_what_is_there():
    with pytest.raises(scaling.BenchmarkError, match=r"no 'distributed KernelSHAP'.*\['etl'\]"):
        scaling.run_from_summary({"wall_seconds": {"etl": 1.0}}, 1, None, 1, "rid")


# ---- aggregation ------------------------------------------------------------------------------


def test_aggregate_medians_and_speedups():
    points = {(p.cpus, p.batch_size): p for p in scaling.aggregate(synthetic_runs())}
    assert list(points) == [(2, None), (4, None), (1, 2), (2, 2)]  # auto first, then by CPUs

    one, two = points[(1, 2)], points[(2, 2)]
    assert (one.runs, one.median_wall_seconds, one.min_wall_seconds, one.max_wall_seconds) == (3, 11, 10, 12)
    assert (one.speedup, one.ideal_speedup, one.efficiency) == (1.0, 1.0, 1.0)
    assert (one.median_total_seconds, one.median_cpu_seconds) == (31.0, pytest.approx(9.9))
    assert two.median_wall_seconds == 6.0
    assert two.speedup == pytest.approx(11 / 6)
    assert (two.speedup_min, two.speedup_max) == (pytest.approx(11 / 7), pytest.approx(11 / 5.5))
    assert two.ideal_speedup == 2.0 and two.efficiency == pytest.approx(11 / 12)

    # The baseline is the smallest CPU count run for that batch size, here 2: ideal is 4 / 2.
    four = points[(4, None)]
    assert four.median_wall_seconds == 4.0  # even count: the mean of the middle two
    assert (four.speedup, four.ideal_speedup, four.efficiency) == (2.0, 2.0, 1.0)
    assert (four.speedup_min, four.speedup_max) == (pytest.approx(8 / 5), pytest.approx(8 / 3))


def test_aggregate_ceiling_efficiency_against_its_own_baseline():
    """--ceiling: the plain-process wall times get their own speed-up and efficiency."""
    ceilings = {(1, 2): [9.0, 10.0, 11.0], (2, 2): [5.0, 5.5, 6.0]}
    runs = [
        scaling.dataclasses.replace(r, ceiling_wall_seconds=ceilings[(r.cpus, r.batch_size)][r.run - 1])
        if (r.cpus, r.batch_size) in ceilings
        else r
        for r in synthetic_runs()
    ]
    points = {(p.cpus, p.batch_size): p for p in scaling.aggregate(runs)}
    assert points[(1, 2)].ceiling_median_wall_seconds == 10.0 and points[(1, 2)].ceiling_efficiency == 1.0
    assert points[(2, 2)].ceiling_efficiency == pytest.approx(10.0 / 5.5 / 2)
    assert points[(2, 2)].efficiency == pytest.approx(11 / 12)  # the Ray runs' own, unchanged
    no_ceiling = points[(4, None)]
    assert no_ceiling.ceiling_median_wall_seconds is None and no_ceiling.ceiling_efficiency is None
    rows = {(r["cpus"], r["batch_size"], r["run"]): r for r in scaling.run_rows(runs)}
    assert rows[(2, "2", 2)]["ceiling_wall_seconds"] == 5.5
    assert rows[(4, "auto", 1)]["ceiling_wall_seconds"] is None


def test_ceiling_with_bad_data_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    made = []
    monkeypatch.setattr(scaling.tempfile, "mkdtemp", lambda **kw: made.append(kw) or str(tmp_path / "ray"))
    argv = ["--local", "--cpus-list", "1", "--ceiling", "--data", str(tmp_path / "absent.csv")]
    assert scaling.main([*argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "scaling benchmark aborted: --ceiling could not build the job's work: " in err
    assert "absent.csv: no such file" in err and "Traceback" not in err
    assert made == []  # no private Ray folder was made for runs that never started


def test_ceiling_needs_local(capsys):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(["--config", "c.toml", "--cpus-list", "1", "--ceiling"])
    assert exit_info.value.code == 2
    assert "--ceiling needs --local" in capsys.readouterr().err


def test_run_rows_speedup_against_the_baseline_median():
    rows = scaling.run_rows(synthetic_runs())
    by_key = {(r["cpus"], r["batch_size"], r["run"]): r for r in rows}
    assert by_key[(1, "2", 2)]["speedup"] == round(11 / 12, 4)
    assert by_key[(2, "2", 2)]["speedup"] == 2.0
    assert by_key[(4, "auto", 2)]["speedup"] == round(8 / 3, 4)
    assert statistics.median(r["speedup"] for r in rows if r["cpus"] == 1) == 1.0


# ---- files ------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_csv_columns(tmp_path):
    runs = synthetic_runs()
    scaling.write_csv(tmp_path / "scaling.csv", scaling.RUN_COLUMNS, scaling.run_rows(runs))
    scaling.write_csv(
        tmp_path / "summary.csv", scaling.SUMMARY_COLUMNS, scaling.point_rows(scaling.aggregate(runs))
    )
    header = (tmp_path / "scaling.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["cpus", "batch_size", "run", "wall_seconds", "total_seconds", "speedup"]
    lines = read_csv(tmp_path / "scaling.csv")
    assert len(lines) == len(runs)
    assert lines[0] == {
        "cpus": "1", "batch_size": "2", "run": "1", "wall_seconds": "10.0", "total_seconds": "30.0",
        "speedup": "1.1", "cpu_seconds": "9.0", "tasks": "4", "run_id": "r-1-2-0",
        "ceiling_wall_seconds": "", "ceiling_cpu_seconds": "",
    }  # fmt: skip

    summary = read_csv(tmp_path / "summary.csv")
    assert list(summary[0]) == list(scaling.SUMMARY_COLUMNS)
    assert [(s["cpus"], s["batch_size"]) for s in summary] == [
        ("2", "auto"),
        ("4", "auto"),
        ("1", "2"),
        ("2", "2"),
    ]
    assert summary[-1]["median_wall_seconds"] == "6.0" and summary[-1]["speedup"] == "1.8333"


def test_plot_with_the_ceiling_is_a_png(tmp_path):
    replace = scaling.dataclasses.replace
    runs = [replace(r, ceiling_wall_seconds=r.wall_seconds * 0.9) for r in synthetic_runs()]
    path = tmp_path / "ceiling.png"
    scaling.write_plot(path, scaling.aggregate(runs), "title")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_is_a_png(tmp_path):
    path = tmp_path / "nested" / "scaling.png"
    scaling.write_plot(path, scaling.aggregate(synthetic_runs()), "title")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


# ---- running -----------------------------------------------------------------------------------


def test_failed_run_names_command_status_and_tail(tmp_path):
    script = (
        "import sys; print('\\n'.join(f'line {i}' for i in range(40))); "
        "print('boom', file=sys.stderr); sys.exit(3)"
    )
    command = [sys.executable, "-c", script]
    with pytest.raises(scaling.BenchmarkError) as error:
        scaling.run_once(command, "rid", tmp_path / "runs", timeout=60)
    message = str(error.value)
    assert f"`{sys.executable} -c" in message and "failed with exit status 3" in message
    assert "line 39" in message and "boom" in message and "line 5\n" not in message
    assert "boom" in (tmp_path / "runs" / "rid.log").read_text()


def test_run_past_its_timeout_is_stopped_with_its_children(tmp_path):
    """Like Ray's processes under a local job, the run's child goes too."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('started', flush=True); time.sleep(60)"
    )
    with pytest.raises(scaling.BenchmarkError, match=r"did not finish within 3 s .*\n.*started"):
        scaling.run_once([sys.executable, "-c", script], "rid", tmp_path, timeout=3)
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild is reaped by init, shortly
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the run's child {child} outlived the timeout")


def test_run_gets_the_given_environment(tmp_path):
    command = [sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['CODE']))"]
    with pytest.raises(scaling.BenchmarkError, match="exit status 7"):
        scaling.run_once(command, "rid", tmp_path, timeout=60, env=dict(os.environ, CODE="7"))


def test_local_env_is_a_ray_instance_of_its_own():
    env = scaling.local_env({"PATH": "/bin", "RAY_ADDRESS": "10.0.0.1:6379", "RAY_TMPDIR": "/x"}, "/tmp/s")
    assert env == {"PATH": "/bin", "RAY_TMPDIR": "/tmp/s"}


def test_local_runs_share_one_private_ray_dir_removed_after(tmp_path, monkeypatch, fake_job, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert scaling.main(["--local", "--cpus-list", "1,2", "--nruns", "1", "--out", str(tmp_path)]) == 0
    dirs = {env["RAY_TMPDIR"] for env in fake_job.envs}
    assert len(dirs) == 1 and not Path(dirs.pop()).exists()
    assert all("RAY_ADDRESS" not in env for env in fake_job.envs)


def test_run_without_summary_fails(tmp_path):
    with pytest.raises(scaling.BenchmarkError, match="exited 0 but wrote no"):
        scaling.run_once([sys.executable, "-c", "pass"], "rid", tmp_path, timeout=60)


def test_summary_found_under_another_folder_name(tmp_path):
    """A cluster run may name its folder after the job id: the one new summary.json is taken."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    before = set(tmp_path.glob("*/summary.json"))
    (tmp_path / "raysubmit_123").mkdir()
    (tmp_path / "raysubmit_123" / "summary.json").write_text("{}")
    assert scaling.find_summary(tmp_path, "rid", before) == tmp_path / "raysubmit_123" / "summary.json"


# ---- main, with the job replaced -------------------------------------------------------------


@dataclass
class FakeJob:
    commands: list[list[str]] = field(default_factory=list)
    envs: list[dict[str, str] | None] = field(default_factory=list)


@pytest.fixture
def fake_job(monkeypatch):
    """main() with fake runs (wall = 12 / cpus) that record their commands and environments."""
    job = FakeJob()

    def run_once(command, run_id, runs_dir, timeout, env=None):
        job.commands.append(command)
        job.envs.append(env)
        cpus = int(command[command.index("--max-tasks") + 1])
        walls = {"etl": 1.0, scaling.OURS_STEP: 12.0 / cpus}
        return {"wall_seconds": walls, "tasks": {"ours": 6}, "cpus": 4, "workers": cpus}

    monkeypatch.setattr(scaling, "run_once", run_once)
    return job


@pytest.mark.parametrize(
    ("switch", "reference"), [([], False), (["--with-reference"], True)], ids=["default", "with-reference"]
)
def test_main_writes_everything_and_prints_json(tmp_path, capsys, fake_job, switch, reference):
    argv = ["--local", "--cpus-list", "1,2,4", "--batch-sizes", "auto,4", "--nruns", "2", *switch]
    assert scaling.main([*argv, "--rows", "4", "--out", str(tmp_path / "out")]) == 0

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["reference_explainer"] is reference
    commands = fake_job.commands
    assert len(commands) == 12 and all(("--no-reference" in c) is not reference for c in commands)
    assert all(c[c.index("--cpus") + 1] == "4" and c[c.index("--rows") + 1] == "4" for c in commands)
    assert len({c[c.index("--run-id") + 1] for c in commands}) == 12  # unique run ids
    # Repeats are interleaved: every combination once before any runs twice.
    assert [c[c.index("--run-id") + 1].rsplit("-", 1)[1] for c in commands] == ["r1"] * 6 + ["r2"] * 6

    medians = {(m["cpus"], m["batch_size"]): m for m in report["medians"]}
    assert medians[(4, "4")]["speedup"] == 4.0 and medians[(2, "auto")]["median_wall_seconds"] == 6.0
    for name in ("runs_csv", "summary_csv", "plot"):  # runs/ holds the real jobs' output
        assert Path(report["files"][name]).stat().st_size > 0
    assert len(read_csv(tmp_path / "out" / "scaling.csv")) == 12


def test_main_aborts_on_a_failed_run(tmp_path, monkeypatch, capsys):

    def run_once(command, run_id, runs_dir, timeout, env=None):
        raise scaling.BenchmarkError("`shapcluster submit ...` failed with exit status 3")

    monkeypatch.setattr(scaling, "run_once", run_once)
    assert scaling.main(["--local", "--cpus-list", "1", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "scaling benchmark aborted: `shapcluster submit ...` failed with exit status 3" in captured.err


def test_cluster_target(tmp_path, monkeypatch, fake_job, capsys):
    config = tmp_path / "shapcluster.toml"
    assert scaling.main(["-c", str(config), "--cpus-list", "2", "--nruns", "1", "--out", str(tmp_path)]) == 0
    assert fake_job.commands[0][4:7] == ["-c", str(config), "--max-tasks"]
    assert fake_job.envs == [None]  # a cluster run keeps the caller's environment
    assert json.loads(capsys.readouterr().out)["target"] == str(config)
