"""Orchestration of up/down/status with fake runners: order, idempotence, failures, clean-up."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from shapcluster import cluster
from shapcluster import commands as cmd
from shapcluster.config import ClusterConfig, load_cluster_config
from shapcluster.errors import DegradedError, ExitStatus, InputError, NoClusterError, RemoteError
from shapcluster.remote.fake import FakeRunner

IPS = {"10.9.0.1": 2, "10.9.0.2": 1, "10.9.0.3": 2}
DF = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 100 1 52428800 1% /\n"


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    (tmp_path / "workers.txt").write_text("10.9.0.2 cpus=1\n10.9.0.3\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "shapcluster.toml").write_text(
        '[cluster]\nname = "lab"\nremote_dir = "/srv/sc"\n[head]\nhost = "root@10.9.0.1"\ncpus = 2\n'
        '[workers]\nfile = "workers.txt"\n[sync]\napp_dir = "app"\n'
    )
    return load_cluster_config(tmp_path / "shapcluster.toml")


def preflight_answers(
    runner: FakeRunner,
    *,
    docker: tuple[int, str] = (0, "20.10.24"),
    info: str = 'x86_64 ["name=seccomp,profile=default"]',
    nproc: str = "2",
    writable: tuple[int, str] = (0, "/srv"),
) -> FakeRunner:
    """Script the one-command preflight (see commands.preflight_command)."""
    sections = {
        "docker": docker, "info": (0, info), "nproc": (0, nproc), "df": (0, DF), "writable": writable,
        "envfile": (1, ""),
    }  # fmt: skip
    text = "".join(f"@@{name} {status}\n{out}\n" for name, (status, out) in sections.items())
    return runner.respond(r"^section\(\)", stdout=text)


def healthy(host: str) -> FakeRunner:
    runner = FakeRunner(host)
    preflight_answers(runner)
    runner.respond(r"^test -f .*env\.list", exit_code=1)
    runner.respond(r"^cat -- .*ray-auth-token", exit_code=1)
    runner.respond(r"^docker exec .* python -c", stdout=json.dumps([[ip, float(c)] for ip, c in IPS.items()]))
    return runner


class Steps:
    """Image and sync steps that only record what they were asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def ensure(self, head: cluster.Node, progress: cluster.Progress) -> cluster.ImageRef:
        self.calls.append(f"ensure {head.name}")
        return cluster.ImageRef("shapcluster-ray:abc", "sha256:0123")

    def ship(self, head, workers: Sequence[cluster.Node], image, progress) -> None:
        self.calls.append(f"ship {head.name} -> {','.join(w.name for w in workers)}")

    def verify(self, nodes: Sequence[cluster.Node], image) -> None:
        self.calls.append(f"verify {len(nodes)}")

    def sync(self, nodes: Sequence[cluster.Node], progress) -> None:
        self.calls.append(f"sync {len(nodes)}")


def nodes_for(config: ClusterConfig, runners: dict[str, FakeRunner]) -> list[cluster.Node]:
    return cluster.make_nodes(config, lambda host: runners[host.address])


def run_up(config, runners, steps=None, timeout=5.0) -> cluster.UpReport:
    steps = steps or Steps()
    return cluster.up(config, nodes_for(config, runners), steps, steps, lambda _: None, timeout=timeout)


def running(runner: FakeRunner, ip: str, earlier: FakeRunner) -> None:
    """Script `docker ps` to show the container the earlier run started on this host."""
    (run,) = docker_runs(earlier)
    role = "head" if ip == "10.9.0.1" else "worker"
    line = f"id|n|{role}|sha256:0123|{cmd.spec_of(run)}|running|Up\n"
    runner.respond(r"^docker ps --all --no-trunc", stdout=line)


def docker_runs(runner: FakeRunner) -> list[str]:
    return [c for c in runner.commands if c.startswith("docker run --detach")]


def test_up_on_fresh_hosts_starts_head_then_workers_and_waits(config):
    runners = {ip: healthy(ip) for ip in IPS}
    steps = Steps()
    report = run_up(config, runners, steps)
    assert steps.calls == ["ensure 10.9.0.1", "ship 10.9.0.1 -> 10.9.0.2,10.9.0.3", "verify 3", "sync 3"]
    assert report.started == ["10.9.0.1", "10.9.0.2", "10.9.0.3"] and report.kept == []
    assert (report.nodes_alive, report.cpus) == (3, 5)
    (head_run,) = docker_runs(runners["10.9.0.1"])
    assert "ray start --head --node-ip-address=10.9.0.1" in head_run and "--num-cpus=2" in head_run
    (worker_run,) = docker_runs(runners["10.9.0.2"])
    assert "--address=10.9.0.1:6379 --node-ip-address=10.9.0.2" in worker_run and "--num-cpus=1" in worker_run
    assert "--mount type=bind,source=/srv/sc/app,target=/shapcluster/app,readonly" in worker_run


def test_one_token_is_written_0600_to_every_host_and_never_in_a_command(config):
    runners = {ip: healthy(ip) for ip in IPS}
    run_up(config, runners)
    tokens = set()
    for runner in runners.values():
        pairs = zip(runner.commands, runner.stdins, strict=True)
        (command, stdin) = next((c, s) for c, s in pairs if "ray-auth-token" in c and s)
        assert "chmod 0600" in command
        tokens.add(stdin)
        assert all(stdin.strip() not in c for c in runner.commands)
    assert len(tokens) == 1 and len(tokens.pop().strip()) == 64


def test_existing_token_on_the_head_is_kept(config):
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.1"].respond(r"^cat -- .*ray-auth-token", stdout="feedc0de" * 8 + "\n")
    run_up(config, runners)
    stdins = [s for r in runners.values() for c, s in zip(r.commands, r.stdins, strict=True) if s]
    assert stdins and all(s.strip() == "feedc0de" * 8 for s in stdins)


def test_second_up_with_nothing_changed_restarts_nothing(config):
    first = {ip: healthy(ip) for ip in IPS}
    run_up(config, first)
    again = {ip: healthy(ip) for ip in IPS}
    for ip, runner in again.items():
        running(runner, ip, first[ip])
    report = run_up(config, again)
    assert report.started == [] and report.kept == list(IPS)
    assert all(docker_runs(r) == [] for r in again.values())


def test_changed_cpus_restart_only_that_worker(config, tmp_path):
    first = {ip: healthy(ip) for ip in IPS}
    run_up(config, first)
    (tmp_path / "workers.txt").write_text("10.9.0.2 cpus=2\n10.9.0.3\n")  # worker 2 gets a CPU more
    changed = load_cluster_config(config.path)
    again = {ip: healthy(ip) for ip in IPS}
    for ip, runner in again.items():
        running(runner, ip, first[ip])
    again["10.9.0.1"].respond(r"^docker exec .* python -c", stdout=json.dumps([[ip, 2.0] for ip in IPS]))
    report = run_up(changed, again)
    assert report.started == ["10.9.0.2"]
    assert any(c.startswith("ids=$(docker ps") and "role=worker" in c for c in again["10.9.0.2"].commands)


def test_unreachable_worker_fails_preflight_and_nothing_is_started(config):
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.3"].fail(r".", "cannot connect: connection refused")
    steps = Steps()
    expected = r"preflight failed on 1 of 3 hosts:\n  - 10\.9\.0\.3: cannot connect"
    with pytest.raises(RemoteError, match=expected):
        run_up(config, runners, steps)
    assert steps.calls == []
    assert all(docker_runs(r) == [] for r in runners.values())


def test_host_without_docker_is_named_with_what_to_do(config):
    runners = {ip: healthy(ip) for ip in IPS}
    preflight_answers(runners["10.9.0.2"], docker=(127, "sh: docker: not found"))
    with pytest.raises(RemoteError) as caught:
        run_up(config, runners)
    assert "10.9.0.2: the Docker daemon is not usable: sh: docker: not found" in caught.value.message
    assert "Install Docker on 10.9.0.2" in (caught.value.hint or "")


def test_too_many_cpus_configured_is_refused_in_preflight(config):
    runners = {ip: healthy(ip) for ip in IPS}
    preflight_answers(runners["10.9.0.3"], nproc="1")
    preflight_answers(runners["10.9.0.1"], nproc="1")  # head asks for 2 of 1
    with pytest.raises(RemoteError, match=r"10\.9\.0\.1"):
        run_up(config, runners)


def test_failed_worker_start_removes_what_this_run_started(config):
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.3"].respond(r"^docker run --detach", exit_code=125, stderr="docker: Error response: boom")
    with pytest.raises(RemoteError, match=r"starting Ray workers failed on 1 of 2 hosts:\n  - 10\.9\.0\.3"):
        run_up(config, runners)
    for ip, role in (("10.9.0.1", cmd.Role.HEAD), ("10.9.0.2", cmd.Role.WORKER)):
        assert runners[ip].commands[-1] == cmd.remove_containers_command("lab", role)
    assert docker_runs(runners["10.9.0.3"])  # tried, failed, nothing of it left to remove


def test_nodes_that_never_join_are_named_with_their_log(config):
    runners = {ip: healthy(ip) for ip in IPS}
    two_alive = json.dumps([["10.9.0.1", 2.0], ["10.9.0.2", 1.0]])
    runners["10.9.0.1"].respond(r"^docker exec .* python -c", stdout=two_alive)
    runners["10.9.0.3"].respond(r"^docker logs", stdout="Failed to connect to GCS at 10.9.0.1:6379\n")
    with pytest.raises(RemoteError) as caught:
        run_up(config, runners, timeout=0.0)
    assert "10.9.0.3: not alive" in caught.value.message
    assert "Failed to connect to GCS" in caught.value.message
    assert "10.9.0.2: not alive" not in caught.value.message


def test_down_cleans_reachable_hosts_and_names_the_unreachable(config):
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.1"].respond(r"^ids=\$\(docker ps", stdout="c1\n")
    runners["10.9.0.2"].fail(r".", "cannot connect")
    result = cluster.down(config, nodes_for(config, runners))
    assert result.successes == {"10.9.0.1": "1 container(s) removed", "10.9.0.3": "0 container(s) removed"}
    with pytest.raises(RemoteError, match=r"down failed on 1 of 3 hosts:\n  - 10\.9\.0\.2: cannot connect"):
        result.raise_for_failures("down")
    for ip in ("10.9.0.1", "10.9.0.3"):
        assert runners[ip].commands[-2:] == [
            cmd.remove_containers_command("lab"),
            "rm -rf -- /srv/sc/secrets/aws /srv/sc/secrets/env.list",  # the AWS credentials go too
        ]
    # Results a job wrote as root are handed to the SSH user while the head container still runs.
    assert runners["10.9.0.1"].commands[0] == (
        'docker exec shapcluster-lab-head-10-9-0-1 chown -R "$(id -u):$(id -g)" /shapcluster/results'
    )


def test_down_purge_removes_images_and_files(config):
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.2"].respond(r"^docker image prune", stdout="Total reclaimed space: 1.67GB\n")
    result = cluster.down(config, nodes_for(config, runners), purge=True).successes
    assert result["10.9.0.2"] == "0 container(s) removed; images purged (1.67GB freed); /srv/sc removed"
    assert runners["10.9.0.2"].commands[-2:] == [
        "rm -rf -- /srv/sc",
        cmd.remove_images_command("shapcluster-ray"),
    ]
    # Issue 12, fault 4: every image labelled for this image name goes, tagged or not (build stage).
    assert cmd.remove_images_command("shapcluster-ray").startswith(
        "docker image prune --all --force --filter label=shapcluster.image=shapcluster-ray |"
    )


def test_purge_removes_root_owned_files_through_a_container(config):
    """Issue 12, fault 1: a non-root SSH user cannot remove what a container wrote as root."""
    runners = {ip: healthy(ip) for ip in IPS}
    head = runners["10.9.0.1"]
    head.respond(
        r"^rm -rf -- /srv/sc$", exit_code=1, stderr="rm: cannot remove ...: Permission denied", times=1
    )
    head.respond(r"head -n 1$", stdout="sha256:0123\n")
    head.respond(r"^docker run --rm --network none", stdout="")
    result = cluster.down(config, nodes_for(config, runners), purge=True)
    assert not result.failures
    assert (
        "docker run --rm --network none --mount type=bind,source=/srv/sc,target=/purge "
        "--entrypoint find sha256:0123 /purge -mindepth 1 -delete"
    ) in head.commands
    removals = [c for c in head.commands if c == "rm -rf -- /srv/sc"]
    assert len(removals) == 2  # tried, then again once root's files are gone


def test_purge_without_any_image_says_how_to_remove_the_files(config):
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.2"].respond(r"^rm -rf -- /srv/sc$", exit_code=1, stderr="Permission denied")
    result = cluster.down(config, nodes_for(config, runners), purge=True)
    error = result.failures["10.9.0.2"]
    assert "cannot remove /srv/sc" in str(error) and "sudo rm -rf /srv/sc" in (error.hint or "")


def test_status_reports_containers_image_match_ray_and_unreachable_hosts(config):
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.1"].respond(r"^docker ps --all --no-trunc", stdout="a|n|head|sha256:0123|s|running|Up\n")
    runners["10.9.0.2"].respond(
        r"^docker ps --all --no-trunc", stdout="b|n|worker|sha256:9999|s|running|Up\n"
    )
    runners["10.9.0.3"].fail(r".", "cannot connect")
    two_alive = json.dumps([["10.9.0.1", 2.0], ["10.9.0.2", 1.0]])
    runners["10.9.0.1"].respond(r"^docker exec .* python -c", stdout=two_alive)
    rows = {r.host: r for r in cluster.status(config, nodes_for(config, runners))}
    head, worker, lost = rows["10.9.0.1"], rows["10.9.0.2"], rows["10.9.0.3"]
    assert (head.container, head.image_matches, head.ray_alive, head.cpus) == ("running", True, True, 2.0)
    assert (worker.image_matches, worker.ray_alive, worker.cpus) == (False, True, 1.0)
    assert (lost.reachable, lost.ray_alive) == (False, False) and "cannot connect" in lost.error
    with pytest.raises(
        DegradedError, match=r"^2 of 3 Ray nodes alive; not alive: 10\.9\.0\.3 \(unreachable\)$"
    ):
        cluster.check_health(list(rows.values()))


def test_status_does_not_count_a_node_whose_container_is_not_running(config):
    """Issue 12, fault 5: Ray still counts a killed worker alive for a while; status must not."""
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.1"].respond(r"^docker ps --all --no-trunc", stdout="a|n|head|sha256:0123|s|running|Up\n")
    runners["10.9.0.2"].respond(
        r"^docker ps --all --no-trunc", stdout="b|n|worker|sha256:0123|s|exited|Exited\n"
    )
    rows = cluster.status(config, nodes_for(config, runners))  # Ray (healthy) still lists all three
    by_host = {r.host: r for r in rows}
    assert (by_host["10.9.0.2"].ray_alive, by_host["10.9.0.2"].cpus) == (False, 0)
    assert by_host["10.9.0.3"].image_matches is None  # no container there: not a mismatch
    assert by_host["10.9.0.3"].ray_alive is False
    with pytest.raises(DegradedError) as caught:
        cluster.check_health(rows)
    assert caught.value.exit_status == ExitStatus.DEGRADED == 10
    assert "10.9.0.2 (container exited)" in caught.value.message
    assert "10.9.0.3 (container none)" in caught.value.message


def test_status_without_a_head_container_is_no_cluster(config):
    runners = {ip: healthy(ip) for ip in IPS}
    rows = cluster.status(config, nodes_for(config, runners))
    assert not any(r.ray_alive for r in rows)  # the head's Ray is not even asked
    assert not any("docker exec" in c for c in runners["10.9.0.1"].commands)
    with pytest.raises(NoClusterError) as caught:
        cluster.check_health(rows)
    assert caught.value.exit_status == 9


def test_status_keeps_the_ssh_hint_of_an_unreachable_head_and_workers(config):
    """Noticed in issue 12: `status` printed an unreachable head's error without its hint."""
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.1"].fail(
        ".", "cannot reach SSH on port 22: refused", hint="This must work: ssh 10.9.0.1 true"
    )
    rows = cluster.status(config, nodes_for(config, runners))
    assert rows[0].hint == "This must work: ssh 10.9.0.1 true"
    with pytest.raises(RemoteError) as caught:
        cluster.check_health(rows)
    assert caught.value.hint == "This must work: ssh 10.9.0.1 true"
    assert caught.value.message == "10.9.0.1: cannot reach SSH on port 22: refused"
    runners = {ip: healthy(ip) for ip in IPS}
    for ip in IPS:
        role = "head" if ip == "10.9.0.1" else "worker"
        runners[ip].respond(r"^docker ps --all --no-trunc", stdout=f"x|n|{role}|sha256:0123|s|running|Up\n")
    runners["10.9.0.3"].fail(
        ".", "cannot reach SSH on port 22: refused", hint="This must work: ssh 10.9.0.3 true"
    )
    with pytest.raises(DegradedError) as degraded:
        cluster.check_health(cluster.status(config, nodes_for(config, runners)))
    assert degraded.value.hint is not None
    assert degraded.value.hint.splitlines() == [
        "This must work: ssh 10.9.0.3 true",
        "`shapcluster up` restarts what is missing (it keeps what runs).",
    ]


def test_status_of_a_whole_cluster_is_healthy(config):
    runners = {ip: healthy(ip) for ip in IPS}
    for ip in IPS:
        role = "head" if ip == "10.9.0.1" else "worker"
        runners[ip].respond(r"^docker ps --all --no-trunc", stdout=f"x|n|{role}|sha256:0123|s|running|Up\n")
    rows = cluster.status(config, nodes_for(config, runners))
    assert all(r.ray_alive and r.image_matches for r in rows)
    cluster.check_health(rows)


@pytest.mark.parametrize("head", ["localhost", "127.0.0.1", "127.0.1.1"])
def test_a_loopback_head_is_refused_before_any_host_is_contacted(tmp_path, head):
    """Issue 12, fault 9: workers would be told to join 127.0.0.1."""
    (tmp_path / "workers.txt").write_text("10.9.0.2\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "c.toml").write_text(f'[head]\nhost = "{head}"\n[sync]\napp_dir = "app"\n')
    config = load_cluster_config(tmp_path / "c.toml")
    runners = {a: healthy(a) for a in (head, "10.9.0.2")}
    with pytest.raises(InputError, match=r"c\.toml:2: .*is a loopback address") as caught:
        cluster.up(config, cluster.make_nodes(config, lambda h: runners[h.address]), Steps(), Steps(), print)
    assert caught.value.exit_status == 3
    assert all(r.commands == [] for r in runners.values())


def test_ray_address_overrides_the_address_ray_advertises(tmp_path):
    (tmp_path / "workers.txt").write_text("w1 ray_address=10.9.0.2\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "c.toml").write_text(
        '[head]\nhost = "headbox"\nray_address = "10.9.0.1"\n[sync]\napp_dir = "app"\n'
    )
    config = load_cluster_config(tmp_path / "c.toml")
    assert cluster.node_ip(config.inventory.head, config.ssh) == "10.9.0.1"
    assert cluster.node_ip(config.inventory.workers[0], config.ssh) == "10.9.0.2"


# ---------------------------------------------------------------- Ray's address after the ssh config

ALIASES = """
Host head.invalid
    HostName 10.1.2.3
Host w1.invalid
    HostName 10.1.2.4
    ProxyJump ops@bastion.invalid
Host w2.invalid
    ProxyJump bastion.invalid
Host w3.invalid
    HostName inner.invalid
    ProxyJump bastion.invalid
Host lo.invalid
    HostName localhost
Host typo.invalid
    HostName nope.invalid
"""


def alias_config(tmp_path: Path, workers: str, *, use: bool = True) -> ClusterConfig:
    """A cluster whose hosts are known only as Host aliases of a temp ssh config file."""
    (tmp_path / "ssh_config").write_text(ALIASES)
    (tmp_path / "workers.txt").write_text(workers)
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "c.toml").write_text(
        '[head]\nhost = "head.invalid"\n[sync]\napp_dir = "app"\n'
        f'[ssh]\nconfig_file = "ssh_config"\nuse_ssh_config = {str(use).lower()}\n'
    )
    return load_cluster_config(tmp_path / "c.toml")


def test_a_host_alias_of_the_ssh_config_gets_its_hostname_as_ray_address(tmp_path):
    """Issue 12: `up` failed with "cannot resolve" for a host known only as a Host alias, which
    ssh (and shapcluster's own SSH) reaches through its HostName."""
    config = alias_config(tmp_path, "w1.invalid\n")
    assert cluster.node_ip(config.inventory.head, config.ssh) == "10.1.2.3"
    # Behind ProxyJump, a literal HostName is the host's address on the hop's side, which the hosts share.
    assert cluster.node_ip(config.inventory.workers[0], config.ssh) == "10.1.2.4"


@pytest.mark.parametrize("worker", ["w2.invalid", "w3.invalid"])
def test_a_name_resolved_by_a_proxyjump_host_is_refused_with_the_ray_address_hint(tmp_path, worker):
    """The jump host resolves it, not this machine: what Ray needs cannot be known here."""
    config = alias_config(tmp_path, f"{worker}\n")
    with pytest.raises(
        InputError, match=rf"workers\.txt:1: {worker}: reached through ProxyJump bastion"
    ) as caught:
        cluster.node_ip(config.inventory.workers[0], config.ssh)
    assert caught.value.exit_status == ExitStatus.INPUT
    assert "resolved on the jump host, not here" in caught.value.message
    assert "ray_address=IP on a workers.txt line" in (caught.value.hint or "")
    # ... and ray_address settles it.
    (tmp_path / "workers.txt").write_text(f"{worker} ray_address=10.1.2.9\n")
    config = load_cluster_config(config.path)
    assert cluster.node_ip(config.inventory.workers[0], config.ssh) == "10.1.2.9"


def test_a_loopback_hostname_in_the_ssh_config_is_refused_naming_it(tmp_path):
    config = alias_config(tmp_path, "lo.invalid\n")
    with pytest.raises(InputError) as caught:
        cluster.node_ip(config.inventory.workers[0], config.ssh)
    assert caught.value.message.startswith(
        f"{tmp_path / 'workers.txt'}:1: lo.invalid: localhost (HostName of lo.invalid in "
        f"{tmp_path / 'ssh_config'}) (it resolves to 127.0.0.1) is a loopback address"
    )


def test_a_hostname_that_does_not_resolve_here_is_named_with_the_alias_and_the_file(tmp_path):
    config = alias_config(tmp_path, "typo.invalid\n")
    with pytest.raises(RemoteError) as caught:
        cluster.node_ip(config.inventory.workers[0], config.ssh)
    assert caught.value.message.startswith(
        f"{tmp_path / 'workers.txt'}:1: typo.invalid: cannot resolve nope.invalid "
        f"(HostName of typo.invalid in {tmp_path / 'ssh_config'}) on this machine"
    )
    assert "ray_address=IP on a workers.txt line" in (caught.value.hint or "")


def test_use_ssh_config_false_resolves_the_bare_name_and_says_the_config_was_not_read(tmp_path):
    config = alias_config(tmp_path, "", use=False)
    with pytest.raises(
        RemoteError, match=r"c\.toml:2: head\.invalid: cannot resolve head\.invalid on"
    ) as caught:
        cluster.node_ip(config.inventory.head, config.ssh)
    assert "(use_ssh_config = false: the ssh config is not read)" in caught.value.message


def test_up_starts_ray_on_the_ssh_configs_hostnames(tmp_path):
    config = alias_config(tmp_path, "w1.invalid cpus=1\n")
    runners = {h: healthy(h) for h in ("head.invalid", "w1.invalid")}
    alive = json.dumps([["10.1.2.3", 2.0], ["10.1.2.4", 1.0]])
    runners["head.invalid"].respond(r"^docker exec .* python -c", stdout=alive)
    report = cluster.up(
        config, cluster.make_nodes(config, lambda h: runners[h.address]), Steps(), Steps(), print, timeout=5
    )
    assert (report.nodes_alive, report.cpus) == (2, 3)
    (worker_run,) = [c for c in runners["w1.invalid"].commands if c.startswith("docker run --detach")]
    assert "--address=10.1.2.3:6379 --node-ip-address=10.1.2.4" in worker_run


def test_cpus_beyond_nproc_is_a_configuration_error(config):
    """Issue 12, fault 7: exit 3 naming workers.txt:line, not 6."""
    runners = {ip: healthy(ip) for ip in IPS}
    preflight_answers(runners["10.9.0.2"], nproc="1")
    preflight_answers(runners["10.9.0.3"], nproc="1")
    (config.workers_file).write_text("10.9.0.2 cpus=1\n10.9.0.3 cpus=64\n")
    config = load_cluster_config(config.path)
    with pytest.raises(RemoteError) as caught:
        cluster.preflight(nodes_for(config, runners))
    assert caught.value.exit_status == ExitStatus.INPUT
    assert "workers.txt:2: 10.9.0.3 is configured with 64 CPUs but has only 1" in caught.value.message


def test_a_worker_of_another_architecture_is_refused_before_any_build(config):
    """Issue 12, fault 9: arm64 beside x86_64 used to fail only after a multi-GB ship."""
    runners = {ip: healthy(ip) for ip in IPS}
    preflight_answers(runners["10.9.0.3"], info='aarch64 ["name=seccomp,profile=default"]')
    steps = Steps()
    with pytest.raises(InputError, match=r"10\.9\.0\.1: x86_64.*10\.9\.0\.3 is aarch64"):
        run_up(config, runners, steps)
    assert steps.calls == []


def test_rootless_docker_is_refused_naming_the_host(config):
    runners = {ip: healthy(ip) for ip in IPS}
    preflight_answers(runners["10.9.0.2"], info='x86_64 ["name=seccomp,profile=default","name=rootless"]')
    steps = Steps()
    with pytest.raises(RemoteError, match=r"10\.9\.0\.2: Docker runs rootless"):
        run_up(config, runners, steps)
    assert steps.calls == []


def test_an_unwritable_remote_dir_is_refused_before_any_build(config):
    runners = {ip: healthy(ip) for ip in IPS}
    preflight_answers(runners["10.9.0.2"], writable=(1, "/srv"))
    steps = Steps()
    with pytest.raises(RemoteError) as caught:
        run_up(config, runners, steps)
    assert caught.value.exit_status == ExitStatus.INPUT
    assert (
        "10.9.0.2: cluster.remote_dir /srv/sc is not writable by the SSH user (/srv is not)"
        in caught.value.message
    )
    assert steps.calls == []


def test_a_role_sts_refuses_stops_up_before_any_build(config):
    """Issue 12, fault 9: STS is asked in preflight, not after the image is built and shipped."""
    from shapcluster.creds import CredentialsError
    from shapcluster.steps import RoleCredentialSteps

    def refuse(aws, role_arn):
        raise CredentialsError(f"AccessDenied: may not assume {role_arn}")

    runners = {ip: healthy(ip) for ip in IPS}
    role = "arn:aws:iam::123456789012:role/shap-reader"
    steps = Steps()
    with pytest.raises(CredentialsError, match="AccessDenied"):
        cluster.up(
            config, nodes_for(config, runners), steps, steps, lambda _: None,
            credential_steps=RoleCredentialSteps(config, role, assume=refuse),
        )  # fmt: skip
    assert steps.calls == []
    assert all(docker_runs(r) == [] for r in runners.values())


def test_a_worker_that_cannot_reach_the_heads_gcs_port_is_named(config):
    """Issue 12, fault 9: checked before the worker starts, so the failure names the port."""
    runners = {ip: healthy(ip) for ip in IPS}
    runners["10.9.0.3"].respond(
        r"^docker run --rm --network host --entrypoint python", exit_code=1, stdout="timed out\n"
    )
    with pytest.raises(RemoteError) as caught:
        run_up(config, runners)
    assert "10.9.0.3: cannot reach the Ray head's GCS port 10.9.0.1:6379 (timed out)" in caught.value.message
    assert "head.ray_address" in (caught.value.hint or "")
    assert not any(c.startswith("docker run --detach") for c in runners["10.9.0.3"].commands)
    reach = [c for c in runners["10.9.0.2"].commands if "--entrypoint python" in c]
    assert reach == [cmd.reach_port_command("sha256:0123", "10.9.0.1", 6379)]


def test_the_reach_check_script_connects_until_its_deadline():
    import shlex
    import socket
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        script = shlex.split(cmd.reach_port_command("img", "127.0.0.1", port, seconds=5))[-1]
        assert subprocess.run([sys.executable, "-c", script], check=False, timeout=30).returncode == 0
    done = subprocess.run(
        [sys.executable, "-c", shlex.split(cmd.reach_port_command("img", "127.0.0.1", port, seconds=0))[-1]],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1 and "refused" in done.stdout.lower()


def test_a_warm_up_sends_only_reads(config):
    """Issue 12, fault 6: with nothing changed, `up` writes nothing and starts nothing: the token
    is where it belongs, the results folder exists, every container runs with its spec."""
    first = {ip: healthy(ip) for ip in IPS}
    run_up(config, first)
    runners = {ip: healthy(ip) for ip in IPS}
    for ip, runner in runners.items():
        running(runner, ip, first[ip])
        runner.respond(r"^cat -- .*ray-auth-token", stdout="t0k3n\n")
    report = run_up(config, runners)
    assert report.started == [] and sorted(report.kept) == sorted(IPS)
    for runner in runners.values():
        sent = [c.split()[0] for c in runner.commands]
        assert not any("mkdir" in c or "mktemp" in c for c in runner.commands), runner.commands
        assert "docker" in sent and not docker_runs(runner)
        assert len(runner.commands) <= 4, runner.commands  # preflight, token, docker ps (+ probe)
