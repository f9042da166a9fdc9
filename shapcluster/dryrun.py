"""`up --dry-run`: the real ``cluster.up`` run over recording runners; the plan is what they record.

The rule: **nothing leaves this machine.** Every command `up` would send to a host is recorded
(as logs show it: a secret command keeps only its program name; stdin is never shown) and none
is run. The commands whose output `up` reads are answered as a *fresh host* would answer:
Docker works (every host the same architecture), the configured CPUs (``<nproc>`` where none
is configured), room on disk, a writable remote directory, and nothing of this cluster yet (no
image, container, token, credentials or synced file). A file `up` copies over SFTP shows as the
upload it is (``remote.base.upload_line``). So the plan is exactly what `up` sends to
fresh hosts; on hosts that hold a running cluster `up` skips what is in place. Work on this
machine runs for real: the config, name resolution (a loopback head is refused here too), the
build context and its hash. The wheelhouse is not downloaded and STS is not asked.

Three parts of `up` do not go through a runner: the build (docker-py over SSH), the image
stream between hosts and STS. Only those are replaced (``PlannedImageSteps``,
``planned_credentials``), recorded as the docker commands they amount to. Any other step added
to `up` shows in the plan without a change here.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from shapcluster import cluster, creds, images, sync
from shapcluster import commands as cmd
from shapcluster.cluster import CredentialSteps, ImageRef, ImageSteps, Node, Progress, SyncSteps
from shapcluster.config import AwsConfig, ClusterConfig
from shapcluster.errors import ShapclusterError
from shapcluster.inventory import Host
from shapcluster.remote.fake import FakeRunner
from shapcluster.steps import DockerImageSteps

UNKNOWN_NPROC = 987654321  # what a fresh host's `nproc` answers where no CPUs are configured
NPROC_SHOWN = "<nproc>"  # ... and how the plan shows it
NEW_IMAGE_ID = "sha256:<built>"  # the ID a build would give, unknown before it runs
FREE_KIB = 1 << 40  # a fresh host's free disk (1 PiB): enough
FRESH = "(dry run)"  # Docker's version and architecture as a fresh host answers them


def fresh_host(config: ClusterConfig, host: Host) -> FakeRunner:
    """A recording runner that answers `up`'s read-only probes as a host with nothing of this
    cluster on it (see the module docstring)."""
    runner = FakeRunner(host.name)
    layout = cmd.RemoteLayout(config.remote_dir_for(host))
    df = f"Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/plan {FREE_KIB} 0 {FREE_KIB} 0% /"
    sections = {
        "docker": (0, FRESH), "info": (0, f"{FRESH} []"), "nproc": (0, str(host.cpus or UNKNOWN_NPROC)),
        "df": (0, df), "writable": (0, layout.root), "envfile": (1, ""),
    }  # fmt: skip
    check_answers(sections)
    runner.respond(
        "^" + re.escape(cmd.preflight_command(layout.root, layout.env_file)) + "$",
        stdout="".join(f"@@{name} {status}\n{out}\n" for name, (status, out) in sections.items()),
    )
    for absent in (layout.token_file, layout.aws_meta_file):
        runner.respond("^" + re.escape(cmd.read_file_command(absent)) + "$", exit_code=1)
    runner.respond("^" + re.escape(cmd.file_exists_command(layout.env_file)) + "$", exit_code=1)
    for remote_dir in (layout.app_dir, layout.data_dir):
        runner.respond("^" + re.escape(sync.probe_command(remote_dir)) + "$", stdout="new\0\0")
    # The image's versions: the same on every host, as for any one image.
    versions = {name: FRESH for name in ("python", *images.VERSIONED_PACKAGES)}
    runner.respond(r"docker run --rm --network none --entrypoint python ", stdout=json.dumps(versions))
    # Unscripted commands succeed with no output: no container (`docker ps`), no image.
    return runner


def check_answers(sections: dict[str, tuple[int, str]]) -> None:
    """Every preflight section has a fresh-host answer, and only those: a section added to
    ``commands.preflight_command`` without one here would make the plan lie. A bug in
    shapcluster, not in the user's input: ShapclusterError (exit 1) naming the section."""
    unanswered = [name for name in cmd.PREFLIGHT_SECTIONS if name not in sections]
    unknown = [name for name in sections if name not in cmd.PREFLIGHT_SECTIONS]
    if unanswered or unknown:
        what = [f"preflight section {name!r} has no fresh-host answer" for name in unanswered]
        what += [f"a fresh-host answer for {name!r}, which the preflight no longer asks" for name in unknown]
        raise ShapclusterError(
            f"internal error in the dry run (shapcluster/dryrun.py, fresh_host): {'; '.join(what)}",
            hint="A bug of this tool (not of your files): please report it; "
            "`shapcluster up` itself is not affected.",
        )


def ray_addresses(config: ClusterConfig) -> dict[str, str]:
    """Host name -> the address Ray advertises for it (``cluster.node_ip``: after the ssh config,
    or its ray_address), head first, for the plan's headings."""
    hosts = [config.inventory.head, *config.inventory.workers]
    return {h.name: cluster.node_ip(h, config.ssh) for h in hosts}


def answer_ray_nodes(config: ClusterConfig, head: FakeRunner, nodes: Sequence[Node]) -> None:
    """The head's Ray answers that every node joined with its CPUs (the last step of `up`)."""
    head_ip = cluster.node_ip(nodes[0].host, config.ssh)
    container = cmd.container_name(config.name, cmd.Role.HEAD, head_ip)
    alive = [[cluster.node_ip(n.host, config.ssh), n.host.cpus or UNKNOWN_NPROC] for n in nodes]
    head.respond("^" + re.escape(f"docker exec {shlex.quote(container)} python -c"), stdout=json.dumps(alive))


def _recorder(node: Node) -> FakeRunner:
    if not isinstance(node.runner, FakeRunner):  # a real host must never see a planned step
        raise TypeError(
            f"{node.name}: planned steps need recording runners, got {type(node.runner).__name__}"
        )
    return node.runner


class PlannedImageSteps(DockerImageSteps):
    """`up`'s own image steps with their three non-runner parts recorded instead of done.
    ``wheelhouse`` None means none exists yet (``project.planned_wheelhouse``): the tag is then
    shown with a placeholder for the hash."""

    def planned(self) -> tuple[str, str]:
        if self.wheelhouse is not None:
            return super().planned()
        # No wheelhouse yet (`up` would download one first): the hash cannot be known.
        name = self.config.image.name
        tag = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:<hash>"
        return tag, "<hash of the context and its wheelhouse>"

    def build(self, head: Node, tag: str, digest: str, progress: Progress) -> ImageRef:
        runner = _recorder(head)
        wheels = self.wheelhouse or self.context_dir / images.WHEELS_DIR
        build = shlex.join(
            ["docker", "build", "--tag", tag, "--label", f"{images.CONTEXT_HASH_LABEL}={digest}"]
        )
        runner.run(f"{build} -  # by docker-py over SSH: context {self.context_dir}, wheels {wheels}")
        runner.respond("^" + re.escape(images.image_id_command(tag)) + "$", stdout=NEW_IMAGE_ID)
        return ImageRef(tag, NEW_IMAGE_ID)

    def transfer(self, nodes: Sequence[Node]) -> images.ImageTransfer:
        by_name = {n.name: n for n in nodes}

        def stream(
            source: str, targets: Sequence[str], image_id: str, size: int | None, progress: Progress
        ) -> dict[str, Exception]:
            _recorder(by_name[source]).run(images.save_command(image_id))
            for name in targets:
                runner = _recorder(by_name[name])
                runner.run(images.load_command())
                runner.respond("^" + re.escape(images.image_id_command(image_id)) + "$", stdout=image_id)
            return {}

        return stream

    def verify(self, nodes: Sequence[Node], image: ImageRef) -> None:
        for node in nodes[1:]:  # `docker tag` on a worker names the shipped image under the tag
            runner = _recorder(node)
            runner.respond("^" + re.escape(images.image_id_command(image.tag)) + "$", stdout=image.image_id)
        super().verify(nodes, image)


def planned_credentials(aws: AwsConfig, role_arn: str) -> creds.RoleCredentials:
    """What STS would return, without asking it (keys are never shown in a plan anyway)."""
    expiration = datetime.now(UTC) + timedelta(seconds=aws.duration_seconds)
    return creds.RoleCredentials(
        role_arn=role_arn, session_name=aws.session_name, region=aws.region or creds.DEFAULT_REGION,
        expiration=expiration, endpoint_url=aws.endpoint_url, access_key_id="<from STS>",
        secret_access_key="<from STS>", session_token="<from STS>",
    )  # fmt: skip


def plan_up(
    config: ClusterConfig,
    image_steps: ImageSteps,
    sync_steps: SyncSteps,
    credential_steps: CredentialSteps | None = None,
) -> dict[str, list[str]]:
    """Run ``cluster.up`` over fresh-host recording runners; the commands each host would get,
    in order, keyed by host name (head first). Raises what `up` would raise before any change."""
    runners: dict[str, FakeRunner] = {}

    def connect(host: Host) -> FakeRunner:
        runners[host.name] = fresh_host(config, host)
        return runners[host.name]

    nodes = cluster.make_nodes(config, connect)
    answer_ray_nodes(config, runners[nodes[0].name], nodes)
    # timeout 0: the answers above say every node joined; anything else fails at once.
    cluster.up(
        config, nodes, image_steps, sync_steps, lambda _: None, timeout=0, credential_steps=credential_steps
    )
    return {
        n.name: [c.replace(str(UNKNOWN_NPROC), NPROC_SHOWN) for c in runners[n.name].shown] for n in nodes
    }


def describe_rule() -> str:
    """One line for the user above the plan."""
    return (
        "Dry run: nothing runs on any host. These are the commands `up` sends to hosts that hold nothing "
        "of this cluster yet; on a running cluster it skips what is in place."
    )
