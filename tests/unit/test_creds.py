"""AWS credentials: the role's source, STS against a real HTTP endpoint (moto server), the files
hosts get, when `up` refreshes, and that no secret reaches any output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shapcluster import cluster, creds
from shapcluster import commands as cmd
from shapcluster.config import AwsConfig, ClusterConfig, load_cluster_config
from shapcluster.errors import InputError
from shapcluster.remote.fake import FakeRunner
from shapcluster.steps import RoleCredentialSteps
from tests import aws_server
from tests.aws_server import MISSING_ROLE_ARN, ROLE_ARN, AwsWorld

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    (tmp_path / "workers.txt").write_text("10.9.0.2\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "shapcluster.toml").write_text(
        '[cluster]\nname = "lab"\nremote_dir = "/srv/sc"\n[head]\nhost = "root@10.9.0.1"\n'
        '[workers]\nfile = "workers.txt"\n[sync]\napp_dir = "app"\n'
        f'[aws]\nrole_arn = "{ROLE_ARN}"\nregion = "eu-west-1"\n'
    )
    return load_cluster_config(tmp_path / "shapcluster.toml")


@pytest.fixture(scope="module")
def world() -> Iterator[AwsWorld]:
    from tests.conftest import WINE_CSV

    if not WINE_CSV.exists():
        pytest.skip(f"{WINE_CSV} is absent")
    with aws_server.aws_world("127.0.0.1", WINE_CSV) as running:
        yield running


def aws_for(config: ClusterConfig, world_url: str, **changes: object) -> AwsConfig:
    return replace(config.aws, endpoint_url=world_url, **changes)  # type: ignore[arg-type]


def use_keys(monkeypatch: pytest.MonkeyPatch, keys: aws_server.Keys) -> None:
    for name, value in keys.env().items():
        monkeypatch.setenv(name, value)


def fake_credentials(key: str = "ASIAFAKEKEY000000001", hours: float = 1.0) -> creds.RoleCredentials:
    return creds.RoleCredentials(
        role_arn=ROLE_ARN,
        session_name="shapcluster-lab",
        region="eu-west-1",
        expiration=NOW + timedelta(hours=hours),
        access_key_id=key,
        secret_access_key="s3cr3t/secret+value",
        session_token="token-" + "x" * 40,
    )


# -- where the role comes from -------------------------------------------------------------


def test_roles_file_takes_one_arn_and_ignores_comments():
    text = f"# the role the cluster assumes\n\n  {ROLE_ARN}   # prod reader\n"
    assert creds.parse_roles_file(text, "inventory/iamroles.txt") == ROLE_ARN


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# nothing here\n\n", r"inventory/iamroles.txt: no role ARN in the file"),
        (
            "arn:aws:iam::12345:role/x\n",
            r"iamroles.txt:1: 'arn:aws:iam::12345:role/x' is not an IAM role ARN",
        ),
        ("# c\narn:aws:s3:::bucket\n", r"iamroles.txt:2: .* is not an IAM role ARN"),
        (f"{ROLE_ARN}\n{MISSING_ROLE_ARN}\n", r"2 role ARNs \(lines 1, 2\); the cluster assumes exactly one"),
    ],
)
def test_bad_roles_files_are_named_with_their_line(text, message):
    with pytest.raises(InputError, match=message):
        creds.parse_roles_file(text, "inventory/iamroles.txt")


def test_role_source_config_wins_then_roles_file(tmp_path, config):
    assert creds.resolve_role_arn(config.aws, required=True) == ROLE_ARN
    no_role = replace(config.aws, role_arn=None, roles_file=tmp_path / "iamroles.txt")
    assert creds.resolve_role_arn(no_role, required=False) is None  # no file: no credentials for `up`
    with pytest.raises(InputError, match=r"iamroles\.txt: roles file not found") as err:
        creds.resolve_role_arn(no_role, required=True)
    assert "role_arn in the [aws] table" in (err.value.hint or "")
    with pytest.raises(InputError, match="roles file not found"):  # named in the config: must exist
        creds.resolve_role_arn(replace(no_role, roles_file_explicit=True), required=False)
    (tmp_path / "iamroles.txt").write_text("")
    with pytest.raises(InputError, match="no role ARN in the file"):
        creds.resolve_role_arn(no_role, required=False)
    (tmp_path / "iamroles.txt").write_text(f"{MISSING_ROLE_ARN}\n")
    assert creds.resolve_role_arn(no_role, required=False) == MISSING_ROLE_ARN


def test_default_roles_file_sits_beside_the_workers_file(tmp_path):
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "workers.txt").write_text("")
    (tmp_path / "app").mkdir()
    (tmp_path / "shapcluster.toml").write_text(
        '[head]\nhost = "10.9.0.1"\n[workers]\nfile = "inventory/workers.txt"\n'
    )
    aws = load_cluster_config(tmp_path / "shapcluster.toml").aws
    assert aws.roles_file == tmp_path / "inventory" / "iamroles.txt"
    assert (aws.session_name, aws.duration_seconds) == ("shapcluster-shapcluster", 3600)
    assert aws.refresh_margin_seconds == 900


def test_aws_config_errors_name_file_line_and_key(tmp_path):
    (tmp_path / "workers.txt").write_text("")
    (tmp_path / "shapcluster.toml").write_text(
        '[head]\nhost = "10.9.0.1"\n[aws]\nrole_arn = "arn:aws:iam::1:role/x"\nduration_seconds = 60\n'
        'region = "Europe"\nsession_name = "has space"\nrol_arn = "typo"\n'
    )
    with pytest.raises(InputError) as err:
        load_cluster_config(tmp_path / "shapcluster.toml")
    text = err.value.message
    assert "shapcluster.toml:4: aws.role_arn: 'arn:aws:iam::1:role/x' is invalid: expected an ARN" in text
    assert "shapcluster.toml:5: aws.duration_seconds: 60 is invalid: expected 900 to 43200" in text
    assert "shapcluster.toml:6: aws.region" in text and "shapcluster.toml:7: aws.session_name" in text
    assert "shapcluster.toml:8: aws.rol_arn: unknown key" in text


# -- what hosts receive ----------------------------------------------------------------------


def test_secrets_stay_out_of_reprs_and_the_meta_file():
    fresh = fake_credentials()
    assert "ASIAFAKE" not in repr(fresh) and "s3cr3t" not in repr(fresh) and "token-" not in repr(fresh)
    meta = creds.meta_text(fresh, NOW)
    assert "ASIAFAKE" not in meta and "s3cr3t" not in meta and "token-" not in meta
    parsed = creds.parse_meta(meta)
    assert parsed is not None and parsed.expiration == fresh.expiration and parsed.role_arn == ROLE_ARN
    assert creds.parse_meta("{not json") is None and creds.parse_meta('{"role_arn": 1}') is None


def test_env_list_has_no_keys_only_where_the_refreshable_profile_is():
    """Issue 12, fault 9: keys in the environment would beat every refreshed file."""
    lines = creds.env_list_text(
        replace(fake_credentials(), endpoint_url="http://10.77.0.1:5000")
    ).splitlines()
    assert lines == [
        "AWS_DEFAULT_REGION=eu-west-1",
        "AWS_REGION=eu-west-1",
        "AWS_PROFILE=shapcluster",
        f"AWS_SHARED_CREDENTIALS_FILE={cmd.CONTAINER_AWS_CREDENTIALS}",
        f"AWS_CONFIG_FILE={cmd.CONTAINER_AWS_CONFIG}",
        "AWS_ENDPOINT_URL=http://10.77.0.1:5000",
    ]
    profile = creds.credentials_file_text(fake_credentials())
    assert profile == f"[shapcluster]\ncredential_process = cat {cmd.CONTAINER_AWS_PROCESS}\n"
    process = json.loads(creds.process_output_text(fake_credentials()))
    assert process["Version"] == 1 and process["AccessKeyId"] == "ASIAFAKEKEY000000001"


def test_credentials_are_written_0600_atomically_to_every_host_and_never_in_a_command(config):
    runners = {ip: FakeRunner(ip) for ip in ("10.9.0.1", "10.9.0.2")}
    nodes = cluster.make_nodes(config, lambda host: runners[host.address])
    creds.write_credentials(nodes, fake_credentials(), NOW)
    for runner in runners.values():
        writes = [(c, s) for c, s in zip(runner.commands, runner.stdins, strict=True) if s is not None]
        targets = [re.search(r'mv -f "\$tmp" (\S+)', c)[1] for c, _ in writes]  # type: ignore[index]
        assert [t.split("/sc/")[1] for t in targets] == [
            "secrets/aws/process.json", "secrets/aws/credentials", "secrets/aws/config",
            "secrets/env.list", "secrets/aws/meta.json",
        ]  # fmt: skip
        assert all("chmod 0600" in c and "mv -f" in c for c, _ in writes)
        assert not any("ASIAFAKE" in c or "s3cr3t" in c for c in runner.commands)
        assert "mkdir -p -m 0700 -- /srv/sc/secrets /srv/sc/secrets/aws" in runner.commands


def test_containers_get_the_env_file_and_the_aws_folder_read_only(config):
    runner = FakeRunner("10.9.0.2")
    (_, worker) = cluster.make_nodes(config, lambda host: runner)
    image = cluster.ImageRef("img:1", "sha256:1")
    command = cluster.start_command(config, worker, image, 1, "10.9.0.1", aws=True)
    assert "--env-file /srv/sc/secrets/env.list" in command
    assert "--mount type=bind,source=/srv/sc/secrets/aws,target=/run/secrets/aws,readonly" in command
    assert "results" not in command  # only the head writes results
    head = cluster.make_nodes(config, lambda host: runner)[0]
    head_command = cluster.start_command(config, head, image, 1, "10.9.0.1", aws=False)
    assert "source=/srv/sc/results,target=/shapcluster/results " in head_command + " "
    assert "/run/secrets/aws" not in head_command


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def test_up_refreshes_only_when_a_host_lacks_credentials_or_they_expire_soon(config):
    runners = {ip: FakeRunner(ip) for ip in ("10.9.0.1", "10.9.0.2")}
    nodes = cluster.make_nodes(config, lambda host: runners[host.address])
    issued: list[creds.RoleCredentials] = []

    def assume(aws: AwsConfig, role: str) -> creds.RoleCredentials:
        issued.append(fake_credentials(key=f"ASIAFAKEKEY00000000{len(issued)}"))
        return issued[-1]

    clock = Clock()
    steps = RoleCredentialSteps(config, ROLE_ARN, assume=assume, clock=clock)
    for runner in runners.values():
        runner.respond(r"^cat -- .*meta\.json", exit_code=1)
    steps.ensure(nodes, lambda _: None)
    assert len(issued) == 1  # none anywhere: assumed once, written to both

    meta = creds.meta_text(issued[0], NOW)
    for runner in runners.values():
        runner.respond(r"^cat -- .*meta\.json", stdout=meta)
    steps.ensure(nodes, lambda _: None)
    assert len(issued) == 1  # fresh everywhere: nothing to do

    clock.now = NOW + timedelta(minutes=50)  # 10 min left < 15 min margin
    steps.ensure(nodes, lambda _: None)
    assert len(issued) == 2

    clock.now = NOW
    other = creds.meta_text(replace(issued[0], role_arn=MISSING_ROLE_ARN), NOW)
    runners["10.9.0.2"].respond(r"^cat -- .*meta\.json", stdout=other)
    steps.ensure(nodes, lambda _: None)
    assert len(issued) == 3  # a host holding another role's keys


# -- STS for real (moto server) ------------------------------------------------------------------


def test_assume_role_returns_working_short_lived_credentials(world, config, monkeypatch):
    use_keys(monkeypatch, world.alice)
    fresh = creds.assume_role(aws_for(config, world.url), ROLE_ARN)
    assert fresh.access_key_id.startswith("ASIA") and fresh.region == "eu-west-1"
    assert timedelta(minutes=50) < fresh.expiration - datetime.now(UTC) <= timedelta(hours=1, minutes=1)
    keys = aws_server.Keys(fresh.access_key_id, fresh.secret_access_key)
    s3 = world.client("s3", keys, fresh.session_token)
    body = s3.get_object(Bucket=aws_server.BUCKET, Key=aws_server.KEY)["Body"].read()
    assert body.startswith(b'"fixed acidity"')


def test_debug_logs_never_show_the_new_credentials(world, config, monkeypatch, capsys):
    from shapcluster import console

    use_keys(monkeypatch, world.alice)
    monkeypatch.setattr(console.err_console, "width", 100_000)  # no wrapping inside a secret
    console.setup_logging(debug=True)
    try:
        fresh = creds.assume_role(aws_for(config, world.url), ROLE_ARN)
    finally:
        console.setup_logging(debug=False)
    logged = capsys.readouterr().err
    assert fresh.secret_access_key not in logged and fresh.session_token not in logged
    assert world.alice.secret_access_key not in logged


def test_access_denied_names_the_caller_the_role_and_the_fix(world, config, monkeypatch):
    use_keys(monkeypatch, world.bob)
    with pytest.raises(creds.CredentialsError) as err:
        creds.assume_role(aws_for(config, world.url), ROLE_ARN)
    bob = "arn:aws:iam::123456789012:user/bob"
    assert err.value.message == f"AccessDenied: {bob} may not assume {ROLE_ARN} (or the role does not exist)."
    assert f"Allow sts:AssumeRole on {ROLE_ARN}" in (err.value.hint or "")
    assert err.value.exit_status == 3


def test_unknown_role_is_named_as_missing(world, config, monkeypatch):
    use_keys(monkeypatch, world.alice)  # alice may read IAM, so the role's absence can be proven
    with pytest.raises(creds.CredentialsError, match=f"The IAM role {MISSING_ROLE_ARN} does not exist"):
        creds.assume_role(aws_for(config, world.url), MISSING_ROLE_ARN)


def test_invalid_source_keys_and_missing_credentials_are_explained(world, config, monkeypatch):
    use_keys(monkeypatch, aws_server.Keys(world.alice.access_key_id, "not-the-secret"))
    with pytest.raises(creds.CredentialsError, match=r"access key in your AWS environment is not valid"):
        creds.assume_role(aws_for(config, world.url), ROLE_ARN)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    no_keys = f"No AWS credentials in your AWS environment to assume {ROLE_ARN}"
    with pytest.raises(creds.CredentialsError, match=no_keys):
        creds.assume_role(aws_for(config, world.url), ROLE_ARN)
    with pytest.raises(creds.CredentialsError, match=r"AWS profile 'nobody' \(aws.profile in the config\)"):
        creds.assume_role(aws_for(config, world.url, profile="nobody"), ROLE_ARN)


def test_expired_source_session_says_to_log_in_again(config, monkeypatch):
    use_keys(monkeypatch, aws_server.Keys("ASIAEXPIRED000000001", "secret"))
    monkeypatch.setenv("AWS_SESSION_TOKEN", "old-session")
    with aws_server.expired_token_endpoint() as url, pytest.raises(creds.CredentialsError) as err:
        creds.assume_role(aws_for(config, url), ROLE_ARN)
    assert err.value.message == (
        f"The AWS session in your AWS environment has expired, so STS refused to let it assume {ROLE_ARN}."
    )
    assert "aws sso login" in (err.value.hint or "")


def test_a_plain_default_client_follows_a_refresh(world, config, monkeypatch, tmp_path):
    """How a refresh reaches a running container: its environment (env.list) holds no keys, so
    a plain default-chain client reads the rewritten files; the job's profile session too."""
    import boto3

    from app import etl

    use_keys(monkeypatch, world.alice)
    first = creds.assume_role(aws_for(config, world.url), ROLE_ARN)
    second = creds.assume_role(aws_for(config, world.url), ROLE_ARN)
    assert first.access_key_id != second.access_key_id
    process = tmp_path / "process.json"

    def place(fresh: creds.RoleCredentials) -> None:  # what write_credentials puts in aws/
        for name, text in (
            ("process.json", creds.process_output_text(fresh)),
            ("credentials", creds.credentials_file_text(fresh)),
            ("config", creds.config_file_text(fresh)),
        ):
            (tmp_path / name).write_text(text.replace(cmd.CONTAINER_AWS_PROCESS, str(process)))

    place(first)
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for line in creds.env_list_text(replace(first, endpoint_url=world.url)).splitlines():
        name, value = line.split("=", 1)
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))

    def plain_key() -> str:
        return boto3.session.Session().get_credentials().get_frozen_credentials().access_key

    assert plain_key() == first.access_key_id
    place(second)  # `creds refresh`
    assert plain_key() == second.access_key_id
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # as in a new process
    s3 = boto3.client("s3")
    assert s3.head_object(Bucket=aws_server.BUCKET, Key=aws_server.KEY)["ContentLength"] > 0
    dataset = etl.load_dataset(f"s3://{aws_server.BUCKET}/{aws_server.KEY}")
    assert len(dataset.features) == 1599


# -- nothing secret in any output ----------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shapcluster", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env, "COLUMNS": "200"}, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("debug", [False, True])
def test_failing_refresh_prints_one_clear_error_and_no_secret(world, config, debug):
    """The refused refresh stops before any host is contacted (the hosts here do not exist)."""
    env = {**world.bob.env(), "AWS_ENDPOINT_URL": world.url}
    args = (["--debug"] if debug else []) + ["creds", "refresh", "-c", str(config.path)]
    done = run_cli(args, env)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert f"AccessDenied: arn:aws:iam::123456789012:user/bob may not assume {ROLE_ARN}" in output
    assert world.bob.secret_access_key not in output
    assert world.alice.secret_access_key not in output
    assert "10.9.0." not in output  # no host was contacted


def test_refresh_without_a_role_says_where_to_put_it(tmp_path):
    (tmp_path / "workers.txt").write_text("")
    (tmp_path / "shapcluster.toml").write_text('[head]\nhost = "10.9.0.1"\n')
    done = run_cli(["creds", "refresh", "-c", str(tmp_path / "shapcluster.toml")], {})
    assert done.returncode == 3
    assert f"{tmp_path / 'iamroles.txt'}: roles file not found" in done.stderr.replace("\n", "")


def test_shipped_roles_example_is_valid():
    example = Path(__file__).resolve().parents[2] / "inventory" / "iamroles.txt.example"
    assert creds.parse_roles_file(example.read_text(), str(example)) == ROLE_ARN
