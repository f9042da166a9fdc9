"""`up --dry-run` is `up` itself over recording runners: the plan is what `up` sends, nothing runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shapcluster import cluster, dryrun
from shapcluster.config import ClusterConfig, load_cluster_config
from shapcluster.errors import InputError
from shapcluster.remote.group import run_on_nodes
from tests.unit.test_cluster import IPS, Steps, healthy, nodes_for


def write_config(
    tmp_path: Path, workers: str, head: str = 'host = "root@10.9.0.1"\ncpus = 2'
) -> ClusterConfig:
    (tmp_path / "workers.txt").write_text(workers)
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "job.py").write_text("print('hi')\n")
    (tmp_path / "shapcluster.toml").write_text(
        f'[cluster]\nname = "lab"\nremote_dir = "/srv/sc"\n[head]\n{head}\n'
        '[workers]\nfile = "workers.txt"\n[sync]\napp_dir = "app"\n'
    )
    return load_cluster_config(tmp_path / "shapcluster.toml")


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    # Every host's CPUs configured, as the fakes' `nproc` (IPS) says: the commands are then equal.
    return write_config(tmp_path, "10.9.0.2 cpus=1\n10.9.0.3 cpus=2\n")


def test_the_plan_is_exactly_what_up_sends_to_fresh_hosts(config: ClusterConfig) -> None:
    """The same `up` over fakes scripted by the tests (fresh hosts) and over the dry run's own
    recording runners: host by host, the same commands in the same order. The sync is the real
    one in both runs, so its SFTP uploads are compared too (each run packs them in its own local
    scratch folder, which is all that may differ)."""
    from shapcluster import sync
    from shapcluster.steps import FileSyncSteps

    runners = {ip: healthy(ip) for ip in IPS}
    for runner in runners.values():  # nothing synced there yet
        runner.respond("^" + re.escape(sync.probe_command("/srv/sc/app")) + "$", stdout="new\0\0")
    cluster.up(config, nodes_for(config, runners), Steps(), FileSyncSteps(config), lambda _: None, timeout=5)
    plan = dryrun.plan_up(config, Steps(), FileSyncSteps(config))
    assert list(plan) == list(IPS)  # head first

    def without_scratch(commands: list[str]) -> list[str]:
        return [re.sub(r"^# upload /\S+/", "# upload <scratch>/", c) for c in commands]

    for ip, runner in runners.items():
        assert without_scratch(plan[ip]) == without_scratch(runner.shown), ip
        uploads = [c for c in without_scratch(plan[ip]) if c.startswith("# upload ")]
        state = "/srv/sc/app/.shapcluster-sync"
        assert uploads == [
            f"# upload <scratch>/incoming.tar -> {state}/incoming.tar (sftp, mode 0600)",
            f"# upload <scratch>/manifest.json -> {state}/manifest.json (sftp, mode 0644)",
        ], ip
    head = plan["10.9.0.1"]
    assert head[0].startswith("section() {")  # the preflight first
    assert any(c.startswith("docker run --detach") and "ray start --head" in c for c in head)
    assert any("--address=10.9.0.1:6379 --node-ip-address=10.9.0.2" in c for c in plan["10.9.0.2"])


def test_a_step_added_to_up_shows_in_the_plan_without_touching_dry_run_code(
    config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = cluster.preflight

    def preflight_and_a_new_check(nodes):
        facts = original(nodes)
        run_on_nodes(nodes, lambda n: n.runner.run("sysctl -n vm.max_map_count"), what="a new check")
        return facts

    monkeypatch.setattr(cluster, "preflight", preflight_and_a_new_check)
    plan = dryrun.plan_up(config, Steps(), Steps())
    for commands in plan.values():
        assert commands[1] == "sysctl -n vm.max_map_count"  # right after the preflight, on every host


def test_the_real_image_and_sync_steps_are_planned_without_docker_py_or_a_stream(
    config: ClusterConfig, tmp_path: Path
) -> None:
    from shapcluster import images
    from shapcluster.steps import FileSyncSteps

    context = tmp_path / "docker"
    (context / "wheels").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM python:3.11-slim\n")
    ray = images.client_ray_version()
    (context / "requirements.txt").write_text(f"ray[default]=={ray}\n")
    (context / "wheels" / f"ray-{ray}-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"x")
    steps = dryrun.PlannedImageSteps(config, context, context / "wheels")
    tag, digest = steps.planned()
    plan = dryrun.plan_up(config, steps, FileSyncSteps(config))
    head, worker = plan["10.9.0.1"], plan["10.9.0.2"]
    assert head[1] == images.built_image_command(digest, tag)  # looked for first, as `up` does
    assert head[2].startswith(f"docker build --tag {tag} --label shapcluster.context-hash={digest} -")
    assert "docker save 'sha256:<built>'" in head and "docker load" in worker
    assert not any(c.startswith("docker build") for c in worker)
    assert f"docker tag 'sha256:<built>' {tag}" in worker
    # the app folder is synced as into an empty folder: its one file goes in one batch
    # ... uploaded over SFTP, which the plan shows as such (not as a shell command)
    (upload,) = [c for c in worker if "/.shapcluster-sync/incoming.tar" in c and "upload" in c]
    assert upload.startswith("# upload /") and upload.endswith(
        " -> /srv/sc/app/.shapcluster-sync/incoming.tar (sftp, mode 0600)"
    )


def test_unconfigured_cpus_show_as_nproc_and_ray_address_is_used(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "w1 ray_address=10.9.0.2\n", head='host = "headbox"\nray_address = "10.9.0.1"'
    )
    plan = dryrun.plan_up(config, Steps(), Steps())
    (head_run,) = [c for c in plan["headbox"] if c.startswith("docker run --detach")]
    assert "ray start --head --node-ip-address=10.9.0.1" in head_run and "--num-cpus=<nproc>" in head_run
    (worker_run,) = [c for c in plan["w1"] if c.startswith("docker run --detach")]
    assert "--address=10.9.0.1:6379 --node-ip-address=10.9.0.2" in worker_run


def test_a_head_only_cluster_is_planned_too(tmp_path: Path) -> None:
    from shapcluster.steps import FileSyncSteps

    config = write_config(tmp_path, "")
    steps = dryrun.PlannedImageSteps(config, tmp_path / "docker", None)  # no wheelhouse yet
    (only,) = dryrun.plan_up(config, steps, FileSyncSteps(config)).values()
    assert any(c.startswith("docker build --tag 'shapcluster-ray:<hash>'") for c in only)
    assert not any(c.startswith(("docker save", "docker load")) for c in only)
    assert any("ray start --head --node-ip-address=10.9.0.1" in c for c in only)


def test_a_name_that_does_not_resolve_here_fails_the_dry_run_as_it_fails_up(tmp_path: Path) -> None:
    """The old hand-written plan resolved only the head; `up` resolves every host (for Ray)."""
    from shapcluster.errors import RemoteError

    config = write_config(tmp_path, "10.9.0.2\nbox.invalid\n")
    with pytest.raises(
        RemoteError, match=r"workers\.txt:2: box\.invalid: cannot resolve box\.invalid"
    ) as caught:
        dryrun.plan_up(config, Steps(), Steps())
    assert "ray_address=IP" in (caught.value.hint or "")


@pytest.mark.parametrize("head", ["localhost", "127.0.0.1"])
def test_a_loopback_head_is_refused_by_the_dry_run_too(tmp_path: Path, head: str) -> None:
    config = write_config(tmp_path, "10.9.0.2\n", head=f'host = "{head}"')
    with pytest.raises(InputError, match=r"shapcluster\.toml:5: .*is a loopback address") as caught:
        dryrun.plan_up(config, Steps(), Steps())
    assert caught.value.exit_status == 3


def test_planned_steps_refuse_a_real_runner(config: ClusterConfig, tmp_path: Path) -> None:
    from shapcluster.remote.local import LocalRunner

    head = cluster.make_nodes(config, lambda h: LocalRunner(h.name))[0]
    with pytest.raises(
        TypeError, match=r"10\.9\.0\.1: planned steps need recording runners, got LocalRunner"
    ):
        dryrun.PlannedImageSteps(config, tmp_path, None).build(head, "t", "h", lambda _: None)


ROLE_ARN = "arn:aws:iam::123456789012:role/shap-reader"


def test_with_a_role_the_plan_writes_credentials_without_asking_sts(config: ClusterConfig) -> None:
    """The same credential steps `up` uses, with the one non-runner part (STS) planned."""
    from dataclasses import replace

    from shapcluster.steps import RoleCredentialSteps

    with_role = replace(config, aws=replace(config.aws, role_arn=ROLE_ARN))
    asked: list[str] = []

    def sts(aws, role_arn):
        asked.append(role_arn)
        return dryrun.planned_credentials(aws, role_arn)

    runners = {ip: healthy(ip) for ip in IPS}
    for runner in runners.values():  # a fresh host has no credentials: `cat` of meta.json fails
        runner.respond(r"^cat -- /srv/sc/secrets/aws/meta\.json$", exit_code=1)
    cluster.up(
        with_role, nodes_for(with_role, runners), Steps(), Steps(), lambda _: None, timeout=5,
        credential_steps=RoleCredentialSteps(with_role, ROLE_ARN, assume=sts),
    )  # fmt: skip
    assert asked == [ROLE_ARN]  # `up` asked STS once
    plan = dryrun.plan_up(
        with_role,
        Steps(),
        Steps(),
        RoleCredentialSteps(with_role, ROLE_ARN, assume=dryrun.planned_credentials),
    )
    for ip, runner in runners.items():
        assert plan[ip] == runner.shown, ip
    worker = plan["10.9.0.2"]
    assert "cat -- /srv/sc/secrets/aws/meta.json" in worker
    assert "mkdir -p -m 0700 -- /srv/sc/secrets /srv/sc/secrets/aws" in worker
    assert worker.count("mkdir ****") == 6  # the token and five credential files, written masked
    (run,) = [c for c in worker if c.startswith("docker run --detach")]
    assert "--env-file /srv/sc/secrets/env.list" in run


def test_cli_dry_run_with_a_role_contacts_neither_hosts_nor_sts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shapcluster.cli import app

    config = write_config(tmp_path, "10.9.0.2 cpus=1\n")
    with config.path.open("a") as toml:
        toml.write(f'[aws]\nrole_arn = "{ROLE_ARN}"\nendpoint_url = "http://127.0.0.1:9"\n')
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"x")
    result = CliRunner().invoke(
        app, ["up", "--config", str(config.path), "--wheelhouse", str(wheels), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "--env-file /srv/sc/secrets/env.list" in result.output  # STS (port 9: nothing) never asked


def test_a_preflight_section_without_a_fresh_host_answer_is_a_named_internal_error(
    config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a bare AssertionError: one line naming the section, exit 1 (a bug), and that `up` is fine."""
    from shapcluster import commands as cmd
    from shapcluster.errors import ExitStatus, ShapclusterError

    monkeypatch.setattr(cmd, "PREFLIGHT_SECTIONS", (*cmd.PREFLIGHT_SECTIONS, "swap"))
    with pytest.raises(ShapclusterError) as caught:
        dryrun.plan_up(config, Steps(), Steps())
    assert caught.value.exit_status == ExitStatus.ERROR
    assert caught.value.message == (
        "internal error in the dry run (shapcluster/dryrun.py, fresh_host): "
        "preflight section 'swap' has no fresh-host answer"
    )
    assert "`shapcluster up` itself is not affected" in (caught.value.hint or "")


def test_the_dry_run_shows_the_ray_address_taken_from_the_ssh_config(tmp_path: Path) -> None:
    """Hosts known only as Host aliases of the ssh config ([ssh] config_file): the plan's
    headings and its `ray start` lines carry their HostName."""
    from tests.unit.test_cli import invoke

    (tmp_path / "ssh_config").write_text(
        "Host head.invalid\n    HostName 10.1.2.3\nHost w1.invalid\n    HostName 10.1.2.4\n"
    )
    config = write_config(tmp_path, "w1.invalid cpus=1\n", head='host = "head.invalid"')
    config.path.write_text(config.path.read_text() + '[ssh]\nconfig_file = "ssh_config"\n')
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"not really")
    result = invoke("up", "--config", str(config.path), "--wheelhouse", str(wheels), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "head.invalid (head, Ray address 10.1.2.3, " in result.output
    head, worker = result.output.split("w1.invalid (worker, Ray address 10.1.2.4, ")
    assert "ray start --head --node-ip-address=10.1.2.3" in head
    assert "--address=10.1.2.3:6379 --node-ip-address=10.1.2.4" in worker
