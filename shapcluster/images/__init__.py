"""One image everywhere: build it on the head, ship it to the workers, prove it is identical.

- ``context``: the build context, its wheelhouse and the hash that names the image (local);
- ``build``: docker-py over SSH on the head, the only importer of docker-py;
- ``transfer``: ``docker save`` on the head streamed into ``docker load`` on each worker;
- ``verify``: the same image ID and the same Python/Ray/shap/scikit-learn on every host.

The names below are the package's interface; import from here.
"""

from typing import TYPE_CHECKING

from shapcluster.images.context import (
    CONTEXT_HASH_LABEL,
    RAY_VERSION_LABEL,
    WHEELS_DIR,
    BuiltImage,
    check_context,
    client_ray_version,
    context_files,
    context_hash,
    image_tag,
    pinned_ray_version,
    wheel_files,
    wheelhouse_command,
    write_context_tar,
)
from shapcluster.images.transfer import (
    ImageTransfer,
    SshImageTransfer,
    built_image_command,
    built_image_id,
    find_built_image,
    image_id_command,
    image_id_on,
    image_size_command,
    load_command,
    save_command,
    ship_image,
    short_id,
    tag_command,
)
from shapcluster.images.verify import (
    VERSIONED_PACKAGES,
    ImageInfo,
    parse_versions,
    read_versions,
    verify_identical,
    versions_cache_file,
    versions_command,
)
from shapcluster.remote.ssh import ssh_connect_params

if TYPE_CHECKING:  # imported for real on first use, see __getattr__
    from shapcluster.images.build import (
        BUILD_TIMEOUT_SECONDS,
        DockerApi,
        HeadDocker,
        StrictSshAdapter,
        connect_docker,
        ensure_image,
    )

# docker-py takes a noticeable part of a second to import: only a build needs it.
_BUILD_NAMES = frozenset(
    {"BUILD_TIMEOUT_SECONDS", "DockerApi", "HeadDocker", "StrictSshAdapter", "connect_docker", "ensure_image"}
)


def __getattr__(name: str) -> object:
    if name in _BUILD_NAMES:
        from shapcluster.images import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILD_TIMEOUT_SECONDS", "CONTEXT_HASH_LABEL", "RAY_VERSION_LABEL", "VERSIONED_PACKAGES", "WHEELS_DIR",
    "BuiltImage", "DockerApi", "HeadDocker", "ImageInfo", "ImageTransfer", "SshImageTransfer",
    "StrictSshAdapter", "built_image_command", "built_image_id", "check_context", "client_ray_version",
    "connect_docker",
    "context_files", "context_hash", "ensure_image", "find_built_image", "image_id_command", "image_id_on",
    "image_size_command", "image_tag", "load_command", "parse_versions", "pinned_ray_version",
    "read_versions", "save_command", "ship_image", "short_id", "ssh_connect_params", "tag_command",
    "verify_identical", "versions_cache_file", "versions_command", "wheel_files", "wheelhouse_command",
    "write_context_tar",
]  # fmt: skip
