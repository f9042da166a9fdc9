"""The real steps of ``cluster.up``: docker-py over SSH, file sync, and STS credentials."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from shapcluster import creds, images, sync
from shapcluster.cluster import ImageRef, Node, Progress
from shapcluster.config import AwsConfig, ClusterConfig
from shapcluster.remote.group import run_on_nodes


class DockerImageSteps:
    """The image steps of `up`: look for the image over the head's runner, else build it with
    docker-py over SSH; ship it with ``docker save | docker load`` streams; verify over runners.

    ``planned``, ``build`` and ``transfer`` are the only parts that do not go through a runner
    (local files, docker-py, the streams): a dry run (``dryrun.PlannedImageSteps``) replaces
    exactly these, so everything else it shows is what `up` runs."""

    def __init__(self, config: ClusterConfig, context_dir: Path, wheelhouse: Path | None) -> None:
        self.config = config
        self.context_dir = context_dir
        self.wheelhouse = wheelhouse

    def planned(self) -> tuple[str, str]:
        """The tag and context hash `ensure` wants, from local files only (checks the context)."""
        ray_version = images.client_ray_version()
        wheels = images.check_context(self.context_dir, self.wheelhouse, ray_version)
        digest = images.context_hash(self.context_dir, self.config.image.base, ray_version, wheels)
        return images.image_tag(self.config.image.name, digest), digest

    def ensure(self, head: Node, progress: Progress) -> ImageRef:
        tag, digest = self.planned()
        image_id = images.built_image_id(head.runner, tag, digest)
        if image_id is not None:
            progress(f"{head.name}: image {tag} is up to date, no build needed")
            return ImageRef(tag, image_id)
        return self.build(head, tag, digest, progress)

    def build(self, head: Node, tag: str, digest: str, progress: Progress) -> ImageRef:
        """Build on the head with docker-py over SSH (it finds the tag and hash again itself)."""
        built = images.ensure_image(
            head.host, self.config.ssh, self.config.image, self.context_dir, self.wheelhouse, progress
        )
        return ImageRef(built.tag, built.image_id)

    def transfer(self, nodes: Sequence[Node]) -> images.ImageTransfer:
        return images.SshImageTransfer([n.host for n in nodes], self.config.ssh)

    def ship(self, head: Node, workers: Sequence[Node], image: ImageRef, progress: Progress) -> None:
        images.ship_image(
            head.runner, [w.runner for w in workers], image.tag, image.image_id, progress,
            transfer=self.transfer([head, *workers]),
        )  # fmt: skip

    def verify(self, nodes: Sequence[Node], image: ImageRef) -> None:
        roots = {n.name: n.layout.root for n in nodes}
        images.verify_identical([n.runner for n in nodes], image.tag, image.image_id, roots)


class FileSyncSteps:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config

    def sync(self, nodes: Sequence[Node], progress: Progress) -> None:
        reported: set[tuple[str, str]] = set()

        def on_progress(event: sync.SyncProgress) -> None:
            # One line per host and folder when it finishes; the file count is what matters.
            if event.files_done == event.files_total and (event.host, event.remote_dir) not in reported:
                reported.add((event.host, event.remote_dir))
                progress(f"{event.host}: {event.remote_dir} in sync ({event.files_total} file(s) sent)")

        sync.sync_project(
            [n.runner for n in nodes],
            {n.name: n.layout for n in nodes},
            self.config.sync,
            progress=on_progress,
        )


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RoleCredentialSteps:
    """STS credentials for the role on every host: `up` refreshes them when any host lacks them,
    holds another role's, or they expire within aws.refresh_margin_seconds; `creds refresh`
    always does."""

    def __init__(
        self,
        config: ClusterConfig,
        role_arn: str,
        *,
        assume: Callable[[AwsConfig, str], creds.RoleCredentials] = creds.assume_role,
        clock: Clock = utc_now,
    ) -> None:
        self.config = config
        self.role_arn = role_arn
        self.assume = assume
        self.clock = clock
        self._pending: creds.RoleCredentials | None = None  # assumed by prepare, written by ensure
        self._prepared = False

    def stale_hosts(self, nodes: Sequence[Node]) -> list[str]:
        now, margin = self.clock(), self.config.aws.refresh_margin_seconds
        metas = run_on_nodes(nodes, creds.read_credentials, what="reading AWS credentials")
        return [
            host
            for host, meta in metas.items()
            if meta is None or meta.role_arn != self.role_arn or meta.seconds_left(now) < margin
        ]

    def prepare(self, nodes: Sequence[Node], progress: Progress) -> None:
        """Part of preflight, before any build: if any host needs credentials, ask STS now, so
        a refused role stops `up` before the image is built and shipped."""
        stale = self.stale_hosts(nodes)
        if stale:
            progress(f"AWS credentials missing or expiring on {', '.join(stale)}: assuming {self.role_arn}")
            self._pending = self.assume_role()
        self._prepared = True

    def ensure(self, nodes: Sequence[Node], progress: Progress) -> None:
        """Write what ``prepare`` obtained (or check again, if it was not called)."""
        if self._pending is None and not self._prepared:
            self.prepare(nodes, progress)
        pending, self._pending, self._prepared = self._pending, None, False  # the next `up` asks again
        if pending is not None:
            self.refresh(nodes, progress, pending)

    def assume_role(self) -> creds.RoleCredentials:
        return self.assume(self.config.aws, self.role_arn)

    def refresh(
        self, nodes: Sequence[Node], progress: Progress, credentials: creds.RoleCredentials | None = None
    ) -> creds.RoleCredentials:
        """Write fresh credentials to every host (assumed here unless given)."""
        fresh = credentials or self.assume_role()
        progress(f"Writing credentials to {len(nodes)} host(s)")
        creds.write_credentials(nodes, fresh, self.clock())
        return fresh
