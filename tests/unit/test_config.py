from __future__ import annotations

from pathlib import Path

import pytest

from shapcluster.config import RayPorts, find_key_line, load_cluster_config
from shapcluster.errors import InputError
from shapcluster.inventory import Host

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, config: str, workers: str | None = "") -> Path:
    path = folder / "shapcluster.toml"
    path.write_text(config)
    if workers is not None:
        (folder / "workers.txt").write_text(workers)
    return path


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_cluster_config(write(tmp_path, '[head]\nhost = "10.0.0.1"\n'))
    assert config.name == "shapcluster"
    assert config.remote_dir == "/opt/shapcluster"
    assert config.shm_size == "2g"
    assert config.workers_file == tmp_path / "workers.txt"
    assert config.inventory.head == Host("10.0.0.1", None, 22, None, str(tmp_path / "shapcluster.toml"), 2)
    assert config.inventory.workers == ()
    assert config.ssh.known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert config.ssh.key is None
    assert config.ssh.accept_new_host_keys is False
    assert config.ssh.connect_timeout == 10.0
    assert config.ray == RayPorts(6379, 8265, 10001, 8076, 8077, 10002, 19999)
    assert config.image.name == "shapcluster-ray"
    assert config.sync.app_dir == tmp_path / "app"
    assert config.sync.data_dir is None


def test_full_config_resolves_paths_and_applies_user_and_cpu_defaults(tmp_path: Path) -> None:
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "hosts.txt").write_text("w1\nbob@w2:2222 cpus=2\n")
    text = """
[cluster]
name = "lab-1"
remote_dir = "/srv/sc/{host}"
shm_size = "512m"
[head]
host = "root@h1:2200"
cpus = 3
[workers]
file = "inv/hosts.txt"
cpus = 1
[ssh]
user = "ubuntu"
key = "keys/id"
known_hosts = "/etc/kh"
accept_new_host_keys = true
connect_timeout = 3
[image]
name = "registry.local:5000/team/sc:1.0"
base = "debian:bookworm"
[ray]
port = 7000
[sync]
app_dir = "/src/app"
data_dir = "data"
"""
    config = load_cluster_config(write(tmp_path, text, workers=None))
    head, w1, w2 = config.inventory.hosts
    assert (head.user, head.address, head.port, head.cpus) == ("root", "h1", 2200, 3)
    assert (w1.user, w1.address, w1.port, w1.cpus) == ("ubuntu", "w1", 22, 1)
    assert (w2.user, w2.port, w2.cpus, w2.location) == ("bob", 2222, 2, f"{tmp_path}/inv/hosts.txt:2")
    assert config.ssh.key == tmp_path / "keys" / "id"
    assert config.ssh.known_hosts == Path("/etc/kh")
    assert config.ssh.accept_new_host_keys is True
    assert config.ray.gcs == 7000 and config.ray.dashboard == 8265
    assert config.sync.data_dir == tmp_path / "data"
    assert config.remote_dir_for(w2) == "/srv/sc/w2"


def test_shipped_example_is_valid(tmp_path: Path) -> None:
    example = (REPO / "inventory" / "shapcluster.toml.example").read_text()
    workers = (REPO / "inventory" / "workers.txt.example").read_text()
    config = load_cluster_config(write(tmp_path, example, workers))
    assert config.inventory.head.address == "10.0.0.10"
    assert [w.name for w in config.inventory.workers] == [
        "10.0.0.11",
        "10.0.0.12",
        "10.0.0.13:2222",
        "10.0.0.14",
    ]
    assert config.inventory.workers[-1].ray_address == "192.168.7.14"


def problems_of(tmp_path: Path, text: str, workers: str | None = "") -> list[str]:
    path = write(tmp_path, text, workers)
    with pytest.raises(InputError) as caught:
        load_cluster_config(path)
    return [line.replace(str(path), "CFG") for line in caught.value.message.splitlines()]


def test_unknown_keys_and_tables_are_errors_with_lines(tmp_path: Path) -> None:
    text = '[head]\nhost = "h"\nhots = "x"\n[ssh]\nuser = "u"\nknown_host = "kh"\n[extra]\na = 1\n'
    assert problems_of(tmp_path, text) == [
        "CFG:7: extra: unknown table or key 'extra'; "
        "expected one of cluster, head, workers, ssh, image, ray, sync, aws",
        "CFG:3: head.hots: unknown key; [head] takes cpus, host, ray_address",
        "CFG:6: ssh.known_host: unknown key; [ssh] takes accept_new_host_keys, config_file, "
        "connect_timeout, key, known_hosts, use_ssh_config, user",
    ]


def test_bad_values_name_key_and_line(tmp_path: Path) -> None:
    text = """[cluster]
name = "My Cluster"
shm_size = "lots"
remote_dir = "relative/dir"
[head]
host = "h"
cpus = 0
[ssh]
accept_new_host_keys = "yes"
[ray]
port = 70000
dashboard_port = 8076
"""
    assert problems_of(tmp_path, text) == [
        "CFG:2: cluster.name: 'My Cluster' is invalid: expected lower-case letters, digits and -",
        "CFG:3: cluster.shm_size: 'lots' is invalid: expected a size such as 512m or 2g",
        "CFG:7: head.cpus: 0 is invalid: expected a whole number of 1 or more",
        "CFG:9: ssh.accept_new_host_keys: 'yes' is invalid: expected true or false",
        "CFG:11: ray.port: 70000 is invalid: expected a port number from 1 to 65535",
        "CFG:4: cluster.remote_dir: 'relative/dir' is invalid: expected an absolute path without spaces, "
        "':', ',' or '..' (it may contain {host})",
        "CFG:12: ray.dashboard_port: port 8076 is used by both ray.dashboard_port "
        "and ray.object_manager_port",
    ]


def test_missing_head_and_bad_head_spec(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "[cluster]\n") == [
        "CFG: head.host: missing: expected the head as [user@]host[:port]"
    ]
    assert problems_of(tmp_path, '[head]\nhost = "h:0"\n') == [
        "CFG:2: head.host: port '0' in 'h:0' is not a number from 1 to 65535"
    ]


def test_ports_inside_worker_range_and_inverted_range(tmp_path: Path) -> None:
    text = '[head]\nhost = "h"\n[ray]\nport = 12000\nmin_worker_port = 20000\nmax_worker_port = 10000\n'
    assert problems_of(tmp_path, text) == ["CFG:5: ray.min_worker_port: must be below ray.max_worker_port"]
    text = '[head]\nhost = "h"\n[ray]\nport = 12000\n'
    assert problems_of(tmp_path, text) == ["CFG:4: ray.port: port 12000 lies inside the worker port range"]


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    assert problems_of(tmp_path, '[head]\nhost = "h\n') == [
        "CFG: not valid TOML: Illegal character '\\n' (at line 2, column 10)"
    ]


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config file not found"):
        load_cluster_config(tmp_path / "nope.toml")
    with pytest.raises(
        InputError, match=r"workers.txt: workers file not found \(named by workers.file"
    ) as caught:
        load_cluster_config(write(tmp_path, '[head]\nhost = "h"\n', workers=None))
    assert caught.value.hint is not None and "empty file means a head-only cluster" in caught.value.hint


def test_worker_file_errors_and_head_as_worker(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[head]\nhost = "h"\n', workers="w1 cpus=x\n")
    assert problems == [f"{tmp_path}/workers.txt:1: cpus: 'x' is not a whole number of 1 or more"]
    problems = problems_of(tmp_path, '[head]\nhost = "h"\n', workers="w1\nH\n")
    assert problems == [
        f"{tmp_path}/workers.txt:2: H is the head (declared at CFG:2) and cannot also be a worker"
    ]


def test_find_key_line_handles_tables_quotes_and_dotted_keys() -> None:
    text = 'a = 1\n[ray]\n"port" = 2\n[ssh]\nport = 3\n'
    assert find_key_line(text, "ray", "port") == 3
    assert find_key_line(text, "ssh", "port") == 5
    assert find_key_line(text, None, "a") == 1
    assert find_key_line("ray.port = 1\n", "ray", "port") == 1
    assert find_key_line(text, "image", "name") is None
