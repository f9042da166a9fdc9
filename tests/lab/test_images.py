"""shapcluster.images on the lab: build once on the head over SSH, skip the second build, ship
to both workers, prove identity, and name the host whose image differs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shapcluster.config import ImageConfig
from shapcluster.errors import RemoteError
from shapcluster.images import (
    CONTEXT_HASH_LABEL,
    BuiltImage,
    SshImageTransfer,
    client_ray_version,
    context_hash,
    ensure_image,
    image_tag,
    ship_image,
    verify_identical,
)
from shapcluster.remote.ssh import SshRunner
from tests.lab.conftest import DOCKER_DIR, IMAGE_NAME, ensure_lab_image, hosts, ssh_options
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab
log = logging.getLogger(__name__)


@pytest.fixture
def runners(lab: Lab) -> Iterator[list[SshRunner]]:
    made = [SshRunner(host, ssh_options(lab)) for host in hosts(lab)]
    yield made
    for runner in made:
        runner.close()


def test_build_is_labelled_and_skipped_the_second_time(
    lab: Lab, lab_base_image: str, wheelhouse: Path, built_image: BuiltImage
) -> None:
    assert built_image.built
    label = lab.head.docker(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{CONTEXT_HASH_LABEL}"}}}}',
        built_image.tag,
    )
    assert label == built_image.context_hash
    assert lab.head.docker("image", "inspect", "--format", "{{.Id}}", built_image.tag) == built_image.image_id

    lines: list[str] = []
    again = ensure_lab_image(lab, lab_base_image, wheelhouse, lines)
    assert again == BuiltImage(built_image.tag, built_image.image_id, built_image.context_hash, built=False)
    assert any("up to date" in line for line in lines), lines


def test_shipped_image_is_identical_everywhere(
    lab: Lab, shipped_image: BuiltImage, runners: list[SshRunner]
) -> None:
    for host in lab.workers:
        assert (
            host.docker("image", "inspect", "--format", "{{.Id}}", shipped_image.tag)
            == shipped_image.image_id
        )
    infos = verify_identical(runners, shipped_image.tag)
    assert list(infos) == [h.ip for h in lab.hosts]
    assert {info.image_id for info in infos.values()} == {shipped_image.image_id}
    versions = infos[lab.head.ip].versions
    assert versions["python"].startswith("3.11.")
    assert versions["ray"] == "2.60.0"
    assert versions["shap"].startswith("0.51.")
    assert versions["scikit-learn"].startswith("1.9.")
    assert all(info.versions == versions for info in infos.values())

    # A second ship finds the image everywhere and moves no byte.
    lines: list[str] = []
    shipped = ship_image(
        runners[0], runners[1:], shipped_image.tag, shipped_image.image_id, lines.append,
        transfer=SshImageTransfer(hosts(lab), ssh_options(lab)),
    )  # fmt: skip
    assert shipped == []
    assert any("nothing to ship" in line for line in lines), lines


def test_a_worker_with_another_image_under_the_tag_is_named(
    lab: Lab, lab_base_image: str, shipped_image: BuiltImage, runners: list[SshRunner]
) -> None:
    worker2 = lab.workers[1]
    worker2.docker("tag", lab_base_image, shipped_image.tag)
    try:
        with pytest.raises(RemoteError) as caught:
            verify_identical(runners, shipped_image.tag)
        message = caught.value.message
        assert f"{worker2.ip}: {shipped_image.tag} is image" in message
        assert lab.workers[0].ip not in message and f"{lab.head.ip}:" not in message
        assert caught.value.hint and "docker rmi" in caught.value.hint
    finally:
        worker2.docker("tag", shipped_image.image_id, shipped_image.tag)
    verify_identical(runners, shipped_image.tag)


def test_a_missing_image_on_a_worker_is_named(
    lab: Lab, shipped_image: BuiltImage, runners: list[SshRunner]
) -> None:
    worker1 = lab.workers[0]
    other_tag = f"{IMAGE_NAME}:only-on-head"
    lab.head.docker("tag", shipped_image.image_id, other_tag)
    try:
        with pytest.raises(RemoteError, match=rf"{worker1.ip}: image {other_tag} is missing"):
            verify_identical(runners, other_tag)
    finally:
        lab.head.docker("rmi", other_tag)


def test_unknown_host_key_is_refused_with_the_host_and_the_fix(
    lab: Lab, lab_base_image: str, wheelhouse: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(RemoteError) as caught:
        ensure_image(
            hosts(lab)[0], ssh_options(lab, empty), ImageConfig(IMAGE_NAME, lab_base_image), DOCKER_DIR,
            wheelhouse, lambda line: None,
        )  # fmt: skip
    assert caught.value.message.startswith(f"{lab.head.ip}: unknown host key")
    assert caught.value.hint and "ssh-keyscan" in caught.value.hint and str(empty) in caught.value.hint
    assert empty.read_text() == ""  # nothing was trusted behind the user's back


def test_a_failed_build_names_the_head_and_leaves_no_tag(lab: Lab, wheelhouse: Path) -> None:
    missing_base = "sclab/no-such-base:1"  # no registry is reachable from the lab: FROM fails
    config = ImageConfig(IMAGE_NAME, missing_base)
    with pytest.raises(RemoteError) as caught:
        ensure_image(hosts(lab)[0], ssh_options(lab), config, DOCKER_DIR, wheelhouse, lambda line: None)
    assert caught.value.message.startswith(f"{lab.head.ip}: docker build of {IMAGE_NAME}:")
    assert caught.value.hint and f"docker image inspect {missing_base}" in caught.value.hint
    tag = image_tag(IMAGE_NAME, context_hash(DOCKER_DIR, missing_base, client_ray_version(), wheelhouse))
    assert caught.value.message.startswith(f"{lab.head.ip}: docker build of {tag} failed: ")
    assert lab.head.run(["docker", "image", "inspect", tag], check=False).returncode != 0
