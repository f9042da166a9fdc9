from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shapcluster import commands as c
from shapcluster.config import RayPorts
from shapcluster.errors import RemoteError

LAYOUT = c.RemoteLayout("/opt/sc")


def node(role: c.Role, ip: str, **changes: object) -> c.RayNode:
    values: dict[str, object] = {
        "cluster": "lab",
        "role": role,
        "image": "shapcluster-ray:abc",
        "image_id": "sha256:0123",
        "node_ip": ip,
        "cpus": 2,
        "shm_size": "2g",
        "token_file": LAYOUT.token_file,
        "mounts": c.synced_mounts(LAYOUT, with_data=True),
        "env_file": LAYOUT.env_file,
    }
    values.update(changes)
    return c.RayNode(**values)  # type: ignore[arg-type]


DOCKER_COMMON = (
    "--network host --shm-size 2g --label shapcluster.cluster=lab --label shapcluster.role={role} "
    "--label shapcluster.image-id=sha256:0123 --env-file /opt/sc/secrets/env.list "
    "--env RAY_AUTH_MODE=token --env RAY_AUTH_TOKEN_PATH=/run/secrets/ray-auth-token "
    "--env RAY_USAGE_STATS_ENABLED=0 "
    "--mount type=bind,source=/opt/sc/secrets/ray-auth-token,target=/run/secrets/ray-auth-token,readonly "
    "--mount type=bind,source=/opt/sc/app,target=/shapcluster/app,readonly "
    "--mount type=bind,source=/opt/sc/data,target=/shapcluster/data,readonly "
    "shapcluster-ray:abc"
)
RAY_NODE_ARGS = (
    "--object-manager-port=8076 --node-manager-port=8077 --min-worker-port=10002 "
    "--max-worker-port=19999 --num-cpus=2 --temp-dir=/tmp/ray-lab-{slug} --block"
)


def without_spec(command: str) -> str:
    spec = c.spec_of(command)
    assert len(spec) == 16 and int(spec, 16) >= 0
    return command.replace(f"--label shapcluster.spec={spec} ", "", 1)


def test_start_head_command() -> None:
    assert without_spec(c.start_head_command(node(c.Role.HEAD, "10.77.0.11"), RayPorts())) == (
        "docker run --detach --init --name shapcluster-lab-head-10-77-0-11 "
        + DOCKER_COMMON.format(role="head")
        + " ray start --head --node-ip-address=10.77.0.11 --port=6379 --dashboard-host=127.0.0.1 "
        "--dashboard-port=8265 --ray-client-server-port=10001 " + RAY_NODE_ARGS.format(slug="10-77-0-11")
    )


def test_start_worker_command_without_env_file_or_mounts() -> None:
    worker = node(c.Role.WORKER, "10.77.0.12", env_file=None, mounts=(), cpus=1, shm_size="512m")
    command = c.start_worker_command(worker, "10.77.0.11", RayPorts(gcs=7000, min_worker=11000))
    assert "--shm-size 512m --label shapcluster.spec=" in command  # first of the labels
    assert without_spec(command) == (
        "docker run --detach --init --name shapcluster-lab-worker-10-77-0-12 --network host "
        "--shm-size 512m --label shapcluster.cluster=lab --label shapcluster.role=worker "
        "--label shapcluster.image-id=sha256:0123 --env RAY_AUTH_MODE=token "
        "--env RAY_AUTH_TOKEN_PATH=/run/secrets/ray-auth-token --env RAY_USAGE_STATS_ENABLED=0 "
        "--mount type=bind,source=/opt/sc/secrets/ray-auth-token,target=/run/secrets/ray-auth-token,readonly "
        "shapcluster-ray:abc ray start --address=10.77.0.11:7000 --node-ip-address=10.77.0.12 "
        "--object-manager-port=8076 --node-manager-port=8077 --min-worker-port=11000 "
        "--max-worker-port=19999 --num-cpus=1 --temp-dir=/tmp/ray-lab-10-77-0-12 --block"
    )


def test_spec_changes_exactly_when_the_container_would_differ() -> None:
    head = node(c.Role.HEAD, "10.77.0.11")
    spec = c.spec_of(c.start_head_command(head, RayPorts()))
    assert spec == c.spec_of(c.start_head_command(node(c.Role.HEAD, "10.77.0.11"), RayPorts()))
    for changed in ({"cpus": 3}, {"image_id": "sha256:4567"}, {"env_file": None}, {"shm_size": "1g"}):
        assert c.spec_of(c.start_head_command(node(c.Role.HEAD, "10.77.0.11", **changed), RayPorts())) != spec
    assert c.spec_of(c.start_head_command(head, RayPorts(dashboard=9000))) != spec
    with pytest.raises(ValueError, match="not a start command"):
        c.spec_of("docker ps")


def test_values_are_shell_quoted() -> None:
    command = c.start_worker_command(
        node(c.Role.WORKER, "10.0.0.2", image="img;rm -rf /", mounts=()), "h", RayPorts()
    )
    assert " 'img;rm -rf /' ray start " in command


def test_mount_paths_with_commas_are_refused() -> None:
    with pytest.raises(ValueError, match="commas"):
        c.start_head_command(node(c.Role.HEAD, "1.2.3.4", token_file="/a,b"), RayPorts())


def test_list_and_parse_containers() -> None:
    assert c.list_containers_command("lab") == (
        "docker ps --all --no-trunc --filter label=shapcluster.cluster=lab --format "
        '\'{{.ID}}|{{.Names}}|{{.Label "shapcluster.role"}}|{{.Label "shapcluster.image-id"}}'
        '|{{.Label "shapcluster.spec"}}|{{.State}}|{{.Status}}\''
    )
    output = "abc|shapcluster-lab-head-1|head|sha256:0123|5eed|running|Up 3 minutes\n\n"
    assert c.parse_containers(output) == [
        c.ContainerInfo(
            "abc", "shapcluster-lab-head-1", "head", "sha256:0123", "5eed", "running", "Up 3 minutes"
        )
    ]
    with pytest.raises(RemoteError, match="unexpected `docker ps` output line"):
        c.parse_containers("abc|def\n")


def test_remove_containers_command() -> None:
    assert c.remove_containers_command("lab") == (
        "ids=$(docker ps --all --quiet --filter label=shapcluster.cluster=lab) && "
        'if [ -n "$ids" ]; then docker stop --time 35 $ids >/dev/null && docker rm $ids; fi'
    )
    assert c.remove_containers_command("lab", c.Role.WORKER) == (
        "ids=$(docker ps --all --quiet --filter label=shapcluster.cluster=lab "
        "--filter label=shapcluster.role=worker) && "
        'if [ -n "$ids" ]; then docker stop --time 35 $ids >/dev/null && docker rm $ids; fi'
    )


def test_small_commands() -> None:
    assert c.count_cpus_command() == "nproc"
    assert c.disk_free_command("/opt/my dir") == "df -P -k -- '/opt/my dir'"
    assert c.make_dirs_command("/a", "/b c") == "mkdir -p -- /a '/b c'"
    assert c.make_dirs_command("/s", mode=0o700) == "mkdir -p -m 0700 -- /s"
    assert (
        c.install_file_command("/d/.f.part", "/d/f", 0o644)
        == "chmod 0644 -- /d/.f.part && mv -f -- /d/.f.part /d/f"
    )


def test_write_file_command() -> None:
    assert c.write_file_command("/opt/sc/secrets/env list") == (
        "mkdir -p -- /opt/sc/secrets && tmp=$(mktemp '/opt/sc/secrets/.env list.XXXXXX') && "
        '{ chmod 0600 "$tmp" && cat > "$tmp" && mv -f "$tmp" \'/opt/sc/secrets/env list\' '
        '|| { rm -f "$tmp"; exit 1; }; }'
    )


def test_write_file_command_really_writes_atomically_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "token"
    command = c.write_file_command(str(target), 0o600)
    subprocess.run(["sh", "-c", command], input=b"s3cret\n", check=True)
    assert target.read_bytes() == b"s3cret\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["token"]  # no temp file left behind


def test_write_file_command_cleans_up_when_the_rename_fails(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mv").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "mv").chmod(0o755)
    target = tmp_path / "out" / "token"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(["sh", "-c", c.write_file_command(str(target))], input=b"x", env=env, check=False)
    assert done.returncode == 1
    assert list(target.parent.iterdir()) == []  # neither the target nor a temp file


def test_parse_disk_free() -> None:
    output = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 40 60 40% /\n"
    assert c.parse_disk_free(output) == 60 * 1024
    with pytest.raises(RemoteError, match="unexpected `df` output"):
        c.parse_disk_free("df: /nope: No such file or directory\n")


def test_names_and_layout() -> None:
    assert c.container_name("lab", c.Role.WORKER, "fe80::1") == "shapcluster-lab-worker-fe80-1"
    assert c.ray_temp_dir("lab", "10.0.0.1") == "/tmp/ray-lab-10-0-0-1"
    assert (LAYOUT.app_dir, LAYOUT.data_dir, LAYOUT.token_file, LAYOUT.env_file) == (
        "/opt/sc/app",
        "/opt/sc/data",
        "/opt/sc/secrets/ray-auth-token",
        "/opt/sc/secrets/env.list",
    )
    assert c.synced_mounts(LAYOUT, with_data=False) == (c.Mount("/opt/sc/app", "/shapcluster/app"),)


def test_preflight_is_one_command_whose_sections_parse():
    command = c.preflight_command("/opt/my dir", "/opt/my dir/secrets/env.list")
    assert "docker info --format '{{.Architecture}} {{json .SecurityOptions}}'" in command
    assert "'/opt/my dir'" in command and command.count("section ") == 6
    assert "section envfile test -f '/opt/my dir/secrets/env.list'" in command
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    found = c.parse_preflight(done.stdout)
    assert set(found) == set(c.PREFLIGHT_SECTIONS)
    assert found["nproc"][0] == 0 and int(found["nproc"][1]) >= 1
    assert c.parse_disk_free(found["df"][1]) > 0
    assert found["writable"][1] == "/opt" or found["writable"][1] == "/"
    with pytest.raises(RemoteError, match="no writable"):
        c.parse_preflight("@@docker 0\n1\n@@info 0\n@@nproc 0\n2\n@@df 0\n@@envfile 1\n")


def test_docker_stop_outwaits_rays_drain():
    """Issue 12, fault 10: docker stop waited 15 s while `ray start --block` drains up to 30 s."""
    assert c.STOP_TIMEOUT_SECONDS > c.RAY_DRAIN_SECONDS
    assert f"docker stop --time {c.STOP_TIMEOUT_SECONDS} " in c.remove_containers_command("x")


def test_the_node_probe_asks_the_state_api_with_the_token_and_falls_back_to_a_driver(tmp_path):
    """Issue 12, fault 6: a warm `up` need not start a Ray driver to count the nodes."""
    import http.server
    import json
    import shlex
    import sys

    from tests.http_util import serve

    seen: list[tuple[str, str | None]] = []
    nodes = [
        {"node_ip": "10.0.0.1", "state": "ALIVE", "resources_total": {"CPU": 2.0}},
        {"node_ip": "10.0.0.2", "state": "DEAD", "resources_total": {"CPU": 1.0}},
        {"node_ip": "10.0.0.3", "state": "ALIVE", "resources_total": {"memory": 1}},
    ]

    class StateApi(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"result": True, "data": {"result": {"total": 3, "result": nodes}}}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with serve(StateApi) as url:
        port = int(url.rsplit(":", 1)[1])
        command = c.ray_nodes_command("head-c", "10.0.0.1", 6379, port)
        fast, _, driver = command.partition(" 2>/dev/null || ")
        assert driver == c.ray_nodes_command("head-c", "10.0.0.1", 6379)
        script = shlex.split(fast)[-1]
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60,
            env={"RAY_AUTH_TOKEN_PATH": str(token), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["10.0.0.1", 2.0], ["10.0.0.3", 0]]
    assert seen == [("/api/v0/nodes?limit=10000", "Bearer s3cret")]
