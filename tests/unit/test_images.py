from __future__ import annotations

import io
import re
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import paramiko
import pytest

from shapcluster import images
from shapcluster.config import ImageConfig, SshConfig
from shapcluster.errors import InputError, RemoteError
from shapcluster.images import (
    BuiltImage,
    ImageInfo,
    StrictSshAdapter,
    check_context,
    context_hash,
    ensure_image,
    image_id_command,
    image_tag,
    parse_versions,
    pinned_ray_version,
    save_command,
    ship_image,
    tag_command,
    verify_identical,
    versions_command,
    wheelhouse_command,
    write_context_tar,
)
from shapcluster.inventory import Host
from shapcluster.remote import stream
from shapcluster.remote.fake import FakeRunner
from shapcluster.remote.group import HostsFailedError

REPO = Path(__file__).resolve().parents[2]
RAY = "2.60.0"
ID = "sha256:" + "a" * 64
OTHER_ID = "sha256:" + "b" * 64
VERSIONS = '{"python": "3.11.2", "ray": "2.60.0", "shap": "0.51.0", "scikit-learn": "1.9.1"}'
HEAD = Host("10.0.0.1", user="root")
SSH = SshConfig(user="root", key=None, known_hosts=Path("/nonexistent/known_hosts"),
                accept_new_host_keys=False, connect_timeout=5)  # fmt: skip


@pytest.fixture
def context(tmp_path: Path) -> tuple[Path, Path]:
    """A minimal build context and wheelhouse."""
    ctx = tmp_path / "docker"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    (ctx / "requirements.txt").write_text(f"# comment\nray[default]=={RAY}\nshap==0.51.*\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / f"ray-{RAY}-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"ray")
    (wheels / "shap-0.51.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"shap")
    return ctx, wheels


# ---------------------------------------------------------------- context and hash


def test_context_hash_is_stable_and_covers_every_input(context: tuple[Path, Path]) -> None:
    ctx, wheels = context
    first = context_hash(ctx, "base:1", RAY, wheels)
    assert first == context_hash(ctx, "base:1", RAY, wheels)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    changed = {
        context_hash(ctx, "base:2", RAY, wheels),
        context_hash(ctx, "base:1", "2.61.0", wheels),
        context_hash(ctx, "base:1", RAY, None),
    }
    (ctx / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nENV X=1\n")
    changed.add(context_hash(ctx, "base:1", RAY, wheels))
    (ctx / "extra.txt").write_text("")
    changed.add(context_hash(ctx, "base:1", RAY, wheels))
    (wheels / "boto3-1.43.0-py3-none-any.whl").write_bytes(b"b")
    changed.add(context_hash(ctx, "base:1", RAY, wheels))
    (wheels / "boto3-1.43.0-py3-none-any.whl").write_bytes(b"bb")
    changed.add(context_hash(ctx, "base:1", RAY, wheels))
    assert first not in changed and len(changed) == 7


def test_context_hash_ignores_a_wheels_folder_inside_the_context(context: tuple[Path, Path]) -> None:
    ctx, wheels = context
    before = context_hash(ctx, "base", RAY, wheels)
    (ctx / "wheels").mkdir()
    (ctx / "wheels" / "old.whl").write_bytes(b"x")
    assert context_hash(ctx, "base", RAY, wheels) == before


def test_context_tar_holds_the_context_and_the_wheels(context: tuple[Path, Path]) -> None:
    ctx, wheels = context
    (ctx / "wheels").mkdir()
    (ctx / "wheels" / "stale.whl").write_bytes(b"x")
    buffer = io.BytesIO()
    write_context_tar(ctx, wheels, buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        assert tar.getnames() == [
            "Dockerfile",
            "requirements.txt",
            f"wheels/ray-{RAY}-cp311-cp311-manylinux2014_x86_64.whl",
            "wheels/shap-0.51.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ray[default]==2.60.0\n", "2.60.0"),
        ("shap\nray == 2.59.1  # why\n", "2.59.1"),
        ("RAY[default,tune]==2.60.0 ; python_version >= '3.11'\n", "2.60.0"),
        ("ray>=2.60\n", None),
        ("raydp==1.0\n", None),
        ("# ray==2.60.0\n", None),
    ],
)
def test_pinned_ray_version(text: str, expected: str | None) -> None:
    assert pinned_ray_version(text) == expected


def test_the_project_image_pins_the_clients_ray() -> None:
    requirements = (REPO / "docker" / "requirements.txt").read_text()
    assert pinned_ray_version(requirements) == images.client_ray_version()


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("shapcluster-ray", "shapcluster-ray:0123456789ab"),
        ("registry:5000/team/shapcluster", "registry:5000/team/shapcluster:0123456789ab"),
        ("shapcluster-ray:v1", "shapcluster-ray:v1"),
    ],
)
def test_image_tag(name: str, tag: str) -> None:
    assert image_tag(name, "0123456789abcdef") == tag


def test_check_context_refuses_another_ray(context: tuple[Path, Path]) -> None:
    ctx, wheels = context
    with pytest.raises(InputError) as caught:
        check_context(ctx, wheels, "2.61.0")
    assert caught.value.message == (
        f"{ctx / 'requirements.txt'}: pins ray==2.60.0, but this client runs Ray 2.61.0; "
        "the cluster and its client must run the same Ray"
    )
    assert caught.value.hint and "ray[default]==2.61.0" in caught.value.hint


def test_check_context_without_a_wheelhouse_says_how_to_make_one(context: tuple[Path, Path]) -> None:
    ctx, _ = context
    with pytest.raises(InputError) as caught:
        check_context(ctx, None, RAY)
    assert caught.value.message.startswith(f"{ctx / 'wheels'}: no wheelhouse")
    assert caught.value.hint == "Make one on a machine that reaches PyPI: " + wheelhouse_command(
        ctx / "requirements.txt", ctx / "wheels"
    )


def test_check_context_finds_the_wheels_folder_and_a_stale_one(context: tuple[Path, Path]) -> None:
    ctx, wheels = context
    wheels.rename(ctx / "wheels")
    assert check_context(ctx, None, RAY) == ctx / "wheels"
    (ctx / "wheels" / f"ray-{RAY}-cp311-cp311-manylinux2014_x86_64.whl").unlink()
    with pytest.raises(InputError, match=r"has no wheel of ray 2\.60\.0"):
        check_context(ctx, None, RAY)


def test_wheelhouse_command() -> None:
    assert wheelhouse_command(Path("docker/requirements.txt"), Path("docker/wheels")) == (
        "pip download --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 "
        "--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 "
        "-d docker/wheels -r docker/requirements.txt"
    )


# ---------------------------------------------------------------- commands


def test_commands_are_exact() -> None:
    assert (
        image_id_command("shapcluster-ray:abc")
        == "docker image inspect --format '{{.Id}}' shapcluster-ray:abc"
    )
    assert save_command(ID) == f"docker save {ID}"
    assert tag_command(ID, "shapcluster-ray:abc") == f"docker tag {ID} shapcluster-ray:abc"
    assert versions_command(ID) == (
        f"docker run --rm --network none --entrypoint python {ID} -c "
        "'import json, platform; from importlib.metadata import version; "
        "print(json.dumps({'\"'\"'python'\"'\"': platform.python_version(), "
        "'\"'\"'ray'\"'\"': version('\"'\"'ray'\"'\"'), "
        "'\"'\"'shap'\"'\"': version('\"'\"'shap'\"'\"'), "
        "'\"'\"'scikit-learn'\"'\"': version('\"'\"'scikit-learn'\"'\"')}))'"
    )


def test_parse_versions() -> None:
    assert parse_versions("h", "noise\n" + VERSIONS + "\n") == {
        "python": "3.11.2", "ray": "2.60.0", "shap": "0.51.0", "scikit-learn": "1.9.1"
    }  # fmt: skip
    with pytest.raises(RemoteError, match=r"^h: unexpected output"):
        parse_versions("h", "Traceback ...")
    with pytest.raises(RemoteError, match=r"^h: unexpected output"):
        parse_versions("h", '{"python": "3.11.2"}')


# ---------------------------------------------------------------- ensure_image


class FakeDocker:
    """A DockerApi with one head's images in memory."""

    def __init__(self, images_by_label: dict[str, list[str]] | None = None,
                 build_log: Sequence[dict[str, Any]] = ()) -> None:  # fmt: skip
        self.by_label = images_by_label or {}
        self.tags: dict[str, str] = {}
        self.build_log = list(build_log)
        self.builds: list[dict[str, Any]] = []
        self.closed = False

    def images_with_label(self, label: str) -> list[str]:
        return self.by_label.get(label, [])

    def image_id(self, ref: str) -> str | None:
        return self.tags.get(ref)

    def image_labels(self, ref: str) -> dict[str, str]:
        return dict(self.builds[-1]["labels"]) if self.builds else {}

    def build(
        self, context: IO[bytes], *, tag: str, buildargs: dict[str, str], labels: dict[str, str]
    ) -> Iterator[dict[str, Any]]:
        with tarfile.open(fileobj=context) as tar:
            names = tar.getnames()
        self.builds.append({"tag": tag, "buildargs": buildargs, "labels": labels, "names": names})
        yield from self.build_log
        if not any("error" in entry for entry in self.build_log):
            self.tags[tag] = ID

    def tag(self, image_id: str, tag: str) -> None:
        self.tags[tag] = image_id

    def close(self) -> None:
        self.closed = True


def _ensure(context: tuple[Path, Path], docker: FakeDocker, lines: list[str]) -> BuiltImage:
    ctx, wheels = context
    return ensure_image(
        HEAD, SSH, ImageConfig("shapcluster-ray", "base:1"), ctx, wheels, lines.append,
        connect=lambda host, ssh: docker, ray_version=RAY,
    )  # fmt: skip


def test_ensure_image_builds_with_labels_and_streams_the_log(context: tuple[Path, Path]) -> None:
    log = [{"stream": "Step 1/9 : ARG BASE_IMAGE\n"}, {"stream": " ---> abc\n\n"}, {"aux": {"ID": ID}}]
    docker, lines = FakeDocker(build_log=log), []
    built = _ensure(context, docker, lines)
    hash_ = context_hash(*context[:1], "base:1", RAY, context[1])
    assert built == BuiltImage(f"shapcluster-ray:{hash_[:12]}", ID, hash_, built=True)
    (build,) = docker.builds
    assert build["buildargs"] == {"BASE_IMAGE": "base:1", "SHAPCLUSTER_IMAGE": "shapcluster-ray"}
    assert build["labels"] == {"shapcluster.context-hash": hash_, "shapcluster.ray-version": RAY}
    assert "wheels/ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl" in build["names"]
    assert "10.0.0.1: Step 1/9 : ARG BASE_IMAGE" in lines and "10.0.0.1:  ---> abc" in lines
    assert docker.closed


def test_ensure_image_skips_the_build_when_the_hash_exists(context: tuple[Path, Path]) -> None:
    hash_ = context_hash(context[0], "base:1", RAY, context[1])
    docker, lines = FakeDocker({f"shapcluster.context-hash={hash_}": [OTHER_ID]}), []
    built = _ensure(context, docker, lines)
    assert built == BuiltImage(f"shapcluster-ray:{hash_[:12]}", OTHER_ID, hash_, built=False)
    assert docker.builds == []
    assert docker.tags == {f"shapcluster-ray:{hash_[:12]}": OTHER_ID}  # the tag is put back
    assert any("no build needed" in line for line in lines)


def test_a_failed_build_names_the_head_shows_the_last_lines_and_tags_nothing(
    context: tuple[Path, Path],
) -> None:
    log = [{"stream": f"line {n}\n"} for n in range(30)] + [
        {"error": "The command '/bin/sh -c pip install' returned a non-zero code: 1",
         "errorDetail": {"message": "The command '/bin/sh -c pip install' returned a non-zero code: 1"}}
    ]  # fmt: skip
    docker = FakeDocker(build_log=log)
    with pytest.raises(RemoteError) as caught:
        _ensure(context, docker, [])
    message = caught.value.message
    assert message.startswith("10.0.0.1: docker build of shapcluster-ray:")
    assert "returned a non-zero code: 1" in message
    assert message.endswith("\n".join(f"line {n}" for n in range(15, 30)))
    assert "line 14\n" not in message
    assert caught.value.hint and "docker image inspect base:1" in caught.value.hint
    assert docker.tags == {} and docker.closed


def test_ensure_image_refuses_bad_input_before_connecting(context: tuple[Path, Path]) -> None:
    ctx, _ = context

    def connect(host: Host, ssh: SshConfig) -> FakeDocker:
        raise AssertionError("must not connect")

    with pytest.raises(InputError, match="no wheelhouse"):
        ensure_image(HEAD, SSH, ImageConfig("x", "b"), ctx, None, print, connect=connect, ray_version=RAY)


# ---------------------------------------------------------------- ship_image


class FakeTransfer:
    def __init__(
        self, failures: dict[str, Exception] | None = None, loads: Sequence[FakeRunner] = ()
    ) -> None:
        self.calls: list[tuple[str, list[str], str, int | None]] = []
        self.failures = failures or {}
        self.loads = list(loads)

    def __call__(
        self, source: str, targets: Sequence[str], image_id: str, size: int | None, progress: Any
    ) -> dict[str, Exception]:
        self.calls.append((source, list(targets), image_id, size))
        for runner in self.loads:  # the image now exists there
            if runner.host in targets and runner.host not in self.failures:
                runner.respond(re.escape(image_id_command(image_id)), stdout=image_id + "\n")
        return dict(self.failures)


def _runner(name: str, image_id: str | None) -> FakeRunner:
    runner = FakeRunner(name)
    if image_id is None:
        runner.respond(r"^docker image inspect", exit_code=1, stderr="Error: No such image: x")
    else:
        runner.respond(r"^docker image inspect --format '\{\{\.Id\}\}'", stdout=image_id + "\n")
    return runner


def test_ship_skips_hosts_that_have_the_image_and_tags_everywhere() -> None:
    head = _runner("head", ID).respond(r"\{\{\.Size\}\}", stdout="1500000000\n")
    w1, w2 = _runner("w1", ID), _runner("w2", None)
    transfer = FakeTransfer(loads=[w2])
    shipped = ship_image(head, [w1, w2], "img:tag", ID, lambda line: None, transfer=transfer)
    assert shipped == ["w2"]
    assert transfer.calls == [("head", ["w2"], ID, 1500000000)]
    assert w2.commands[-1] == f"docker tag {ID} img:tag"
    # w1 has the image under the tag already: one inspect, no `docker tag` (issue 12, warm up).
    assert w1.commands == [image_id_command("img:tag")]
    assert head.commands == [f"docker image inspect --format '{{{{.Size}}}}' {ID}"]


def test_ship_tags_a_host_that_has_the_image_under_another_name() -> None:
    w1 = _runner("w1", ID)
    w1.respond(re.escape(image_id_command("img:t")), exit_code=1, stderr="Error: No such image: img:t")
    transfer = FakeTransfer()
    assert ship_image(_runner("head", ID), [w1], "img:t", ID, lambda line: None, transfer=transfer) == []
    assert transfer.calls == [] and w1.commands[-1] == f"docker tag {ID} img:t"


def test_ship_moves_nothing_when_every_host_has_the_image() -> None:
    transfer, lines = FakeTransfer(), []
    assert (
        ship_image(_runner("head", ID), [_runner("w1", ID)], "img:t", ID, lines.append, transfer=transfer)
        == []
    )
    assert transfer.calls == []
    assert lines == [f"every host already has image {'a' * 12}, nothing to ship"]


def test_ship_failures_are_reported_per_host_and_the_others_are_finished() -> None:
    head = _runner("head", ID)
    w1, w2, w3 = _runner("w1", None), _runner("w2", None), FakeRunner("w3").fail(r"docker image inspect")
    transfer = FakeTransfer({"w2": RemoteError("w2: `docker load` failed (exit 1): no space left on device")},
                            loads=[w1, w2])  # fmt: skip
    with pytest.raises(HostsFailedError) as caught:
        ship_image(head, [w1, w2, w3], "img:t", ID, lambda line: None, transfer=transfer)
    assert transfer.calls[0][1] == ["w1", "w2"]
    assert caught.value.message == (
        "shipping image img:t failed on 2 of 3 hosts:\n"
        "  - w2: `docker load` failed (exit 1): no space left on device\n"
        "  - w3: connection refused"
    )
    assert caught.value.hint and "df -h /var/lib/docker" in caught.value.hint
    assert w1.commands[-1] == f"docker tag {ID} img:t"  # the healthy host got its tag
    assert not any(c.startswith("docker tag") for c in w2.commands)  # no tag without the image


def test_ship_refuses_to_tag_when_the_load_left_no_image() -> None:
    w1 = _runner("w1", None)
    with pytest.raises(HostsFailedError, match=r"w1: `docker load` finished, but image a{12} is absent"):
        ship_image(_runner("head", ID), [w1], "img:t", ID, lambda line: None, transfer=FakeTransfer())
    assert not any(c.startswith("docker tag") for c in w1.commands)


# ---------------------------------------------------------------- verify_identical


def _host(name: str, image_id: str | None, versions: str = VERSIONS) -> FakeRunner:
    return _runner(name, image_id).respond(r"^docker run --rm", stdout=versions + "\n")


def test_verify_identical_passes_and_returns_every_host() -> None:
    runners = [_host("head", ID), _host("w1", ID), _host("w2", ID)]
    infos = verify_identical(runners, "img:t")
    assert list(infos) == ["head", "w1", "w2"]
    assert infos["w2"] == ImageInfo(ID, parse_versions("x", VERSIONS))
    assert runners[1].commands == [image_id_command("img:t"), versions_command(ID)]


def test_verify_reads_the_versions_once_per_host_and_image() -> None:
    """A warm `up` reads the versions a host recorded for this image ID, not a new container."""
    runners = [_host("head", ID), _host("w1", ID)]
    for runner in runners:
        runner.respond(r"^cat -- ", stdout=VERSIONS + "\n")
    verify_identical(runners, "img:t", ID, {"head": "/srv/h", "w1": "/srv/w"})
    cache = f"/srv/w/images/{ID.removeprefix('sha256:')}.versions.json"
    assert runners[1].commands[-1] == versions_command(ID, cache)
    assert versions_command(ID, cache) == (
        f"cat -- {cache} 2>/dev/null || {{ out=$({versions_command(ID)}) && mkdir -p -- /srv/w/images && "
        f"printf '%s\\n' \"$out\" | tee -- {cache}; }}"
    )


def test_the_versions_cache_runs_the_image_only_the_first_time(tmp_path: Path) -> None:
    """The shell of versions_command, with `docker` replaced by a script that counts its runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho run >> {tmp_path}/runs\necho '{VERSIONS}'\n")
    (bin_dir / "docker").chmod(0o755)
    cache = str(tmp_path / "root" / "images" / "x.versions.json")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    for _ in range(2):
        done = subprocess.run(
            ["sh", "-c", versions_command(ID, cache)], capture_output=True, text=True, env=env, check=False
        )
        assert done.returncode == 0, done.stderr
        assert parse_versions("h", done.stdout) == parse_versions("h", VERSIONS)
    assert (tmp_path / "runs").read_text() == "run\n"


def test_verify_identical_names_each_host_that_differs() -> None:
    other_versions = VERSIONS.replace('"ray": "2.60.0"', '"ray": "2.59.0"')
    runners = [
        _host("head", ID),
        _host("w1", ID),
        _host("w2", OTHER_ID),
        _host("w3", None),
        _host("w4", ID, other_versions),
        FakeRunner("w5").fail("docker"),
    ]
    with pytest.raises(RemoteError) as caught:
        verify_identical(runners, "img:t")
    assert caught.value.message == (
        "refusing to start: image img:t is not identical on every host:\n"
        f"  - w2: img:t is image {'b' * 12}, the head's is {'a' * 12}\n"
        "  - w3: image img:t is missing\n"
        "  - w4: the same image ID reports other versions: ray 2.59.0 (head 2.60.0)\n"
        "  - w5: connection refused"
    )
    assert caught.value.hint and "docker rmi img:t" in caught.value.hint
    assert versions_command(OTHER_ID) not in runners[2].commands  # another image is not run


def test_verify_identical_checks_the_expected_id_on_the_head() -> None:
    assert verify_identical([_host("head", ID)], "img:t", ID)["head"].image_id == ID
    with pytest.raises(RemoteError, match=r"^head: img:t is image a{12}, not the b{12} built for this run$"):
        verify_identical([_host("head", ID), _host("w1", ID)], "img:t", OTHER_ID)


def test_verify_identical_without_the_image_on_the_head() -> None:
    with pytest.raises(RemoteError, match=r"^head: image img:t does not exist there$"):
        verify_identical([_host("head", None), _host("w1", ID)], "img:t")


def test_verify_identical_reports_a_broken_image_on_a_host() -> None:
    broken = _runner("w1", ID).respond(r"^docker run", exit_code=127, stderr="exec: python: not found")
    with pytest.raises(
        RemoteError, match=r"  - w1: `docker run .*` exited with status 127:\n    exec: python"
    ):
        verify_identical([_host("head", ID), broken], "img:t")


# ---------------------------------------------------------------- ssh for docker-py


class RecordingClient:
    def __init__(self) -> None:
        self.connects: list[dict[str, Any]] = []

    def connect(self, **kwargs: Any) -> None:
        self.connects.append(kwargs)

    def load_system_host_keys(self) -> None:
        raise AssertionError("~/.ssh/known_hosts must not be read")

    def get_transport(self) -> object:
        return object()

    def close(self) -> None:
        pass


def test_docker_py_ssh_adapter_uses_our_client_and_key(tmp_path: Path) -> None:
    client = RecordingClient()
    params = images.ssh_connect_params(Host("10.0.0.5", user="root", port=2222), SSH)
    assert params == {
        "hostname": "10.0.0.5", "port": 2222, "username": "root", "timeout": 5, "banner_timeout": 5,
        "auth_timeout": 5, "look_for_keys": True, "allow_agent": True,
    }  # fmt: skip
    adapter = StrictSshAdapter("ssh://root@10.0.0.5:2222", client, params, 60)  # type: ignore[arg-type]
    assert adapter.ssh_client is client
    assert client.connects == [params]  # docker-py connected once, with exactly our arguments


def test_ssh_connect_params_load_the_configured_key(tmp_path: Path) -> None:
    key_file = tmp_path / "id_rsa"
    key = paramiko.RSAKey.generate(1024)
    key.write_private_key_file(str(key_file))
    params = images.ssh_connect_params(HEAD, SshConfig("root", key_file, Path("kh"), False, 5))
    assert params["look_for_keys"] is False
    assert params["pkey"].get_base64() == key.get_base64()


# ---------------------------------------------------------------- the byte pump


class FakeChannel:
    def __init__(self, chunks: Sequence[bytes] = (), fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.received = b""
        self.fail_after = fail_after
        self.eof = False
        self.closed = False
        self.status_event = threading.Event()

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def sendall(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.received) >= self.fail_after:
            raise OSError("Socket is closed")
        self.received += data

    def shutdown_write(self) -> None:
        self.eof = True

    def recv_stderr_ready(self) -> bool:
        return False

    def recv_ready(self) -> bool:
        return False

    def recv_exit_status(self) -> int:
        return 1

    def close(self) -> None:
        self.closed = True


def test_pump_fans_out_and_drops_a_failing_target_alone() -> None:
    save = FakeChannel([b"a" * 10, b"b" * 10, b"c" * 10])
    good, bad = FakeChannel(), FakeChannel(fail_after=10)
    bad.status_event.set()
    loads: dict[str, Any] = {"good": good, "bad": bad}
    failures: dict[str, Exception] = {}
    stream._pump(save, loads, failures, 30, lambda line: None)  # type: ignore[arg-type]
    assert good.received == b"a" * 10 + b"b" * 10 + b"c" * 10 and good.eof
    assert bad.received == b"a" * 10 and bad.closed and not bad.eof
    assert list(loads) == ["good"]
    assert str(failures["bad"]) == "bad: `docker load` stopped reading after 0 MB: Socket is closed"


def test_a_warm_up_finds_the_built_image_with_one_command(context: tuple[Path, Path]) -> None:
    """Issue 12, fault 6: no docker-py connection when the head holds the image under its tag."""
    ctx, wheels = context
    config = ImageConfig("shapcluster-ray", "base:1")
    hash_ = context_hash(ctx, "base:1", images.client_ray_version(), wheels)
    tag = image_tag("shapcluster-ray", hash_)
    head = FakeRunner("head").respond(r"^docker images --quiet --no-trunc", stdout=ID + "\n")
    found = images.find_built_image(head, config, ctx, wheels)
    assert found == BuiltImage(tag, ID, hash_, built=False)
    assert head.commands == [images.built_image_command(hash_, tag)]
    assert head.commands[0].endswith(
        f"--filter label=shapcluster.context-hash={hash_} --filter reference={tag}"
    )
    assert images.find_built_image(FakeRunner("head"), config, ctx, wheels) is None  # not there: build
