"""Temporary AWS credentials for the cluster: the role, STS assume-role, and the files hosts get.

The only boto3 importer on the control side. Every secret is registered for masking the moment
it is known, kept out of reprs, and never put into an error message.

What each host receives (written by ``write_credentials``), all mode 0600. No key is
ever in a container's environment: the AWS SDKs read environment keys first and a container's
environment is fixed at start, so keys there would outlive every refresh. Instead:
- ``env.list`` for ``docker run --env-file``: the region, the endpoint, AWS_PROFILE and the
  paths of the two files below (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE). So any SDK call
  with the default chain (a plain ``boto3.client("s3")``, pyarrow, s3fs, Ray Data) finds
- ``aws/credentials`` and ``aws/config``: the profile, whose ``credential_process`` prints
- ``aws/process.json``: the keys and their expiry in the SDKs' credential-process format. The
  ``aws`` folder is mounted read-only into the containers and a refresh renames new files into
  place, so every new session reads the new keys at once, and a long-lived session, whose
  process credentials are refreshable, reads them again before its old keys expire.
- ``aws/meta.json``: role, session and expiry, not secret, for `status` and `submit`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from shapcluster import commands as cmd
from shapcluster.commands import CONTAINER_AWS_CONFIG, CONTAINER_AWS_CREDENTIALS, CONTAINER_AWS_PROCESS
from shapcluster.config import ROLE_ARN_EXAMPLE, ROLE_ARN_RE, AwsConfig
from shapcluster.errors import InputError, ShapclusterError
from shapcluster.remote.group import run_on_nodes
from shapcluster.secrets import register_secret

if TYPE_CHECKING:
    from shapcluster.cluster import Node

log = logging.getLogger(__name__)

CONTAINER_PROFILE = "shapcluster"  # the profile name inside the containers' credentials file
DEFAULT_REGION = "us-east-1"  # STS is global; only used when neither config nor profile names one


class CredentialsError(ShapclusterError):
    """STS refused or could not be asked; the message names the role and what to fix."""

    exit_status = InputError.exit_status


@dataclass(frozen=True)
class RoleCredentials:
    role_arn: str
    session_name: str
    region: str
    expiration: datetime  # timezone-aware, UTC
    endpoint_url: str | None = None
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class CredentialsMeta:
    """What a host says about its credentials (from aws/meta.json): nothing secret."""

    role_arn: str
    session_name: str
    expiration: datetime
    refreshed_at: datetime

    def seconds_left(self, now: datetime) -> float:
        return (self.expiration - now).total_seconds()


def resolve_role_arn(aws: AwsConfig, *, required: bool) -> str | None:
    """The role to assume: aws.role_arn in the config, else the one ARN in the roles file.

    Without ``required``, a roles file that is absent (and not named in the config) means the
    cluster gets no AWS credentials; with it, that is an error saying where to put the ARN."""
    if aws.role_arn is not None:
        return aws.role_arn
    path = aws.roles_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required and not aws.roles_file_explicit:
            return None
        raise InputError(
            f"{path.absolute()}: roles file not found, so there is no IAM role to assume",
            hint=f"Write the role's ARN ({ROLE_ARN_EXAMPLE}) on one line of {path}, "
            "or set role_arn in the [aws] table of the config.",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the roles file: {err}") from None
    return parse_roles_file(text, str(path))


def parse_roles_file(text: str, source: str) -> str:
    """Exactly one role ARN; blank lines and ``#`` comments are ignored."""
    found: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not ROLE_ARN_RE.match(line):
            raise InputError(
                f"{source}:{number}: {line!r} is not an IAM role ARN",
                hint=f"Expected arn:aws:iam::<12-digit account>:role/<name>, e.g. {ROLE_ARN_EXAMPLE}",
            )
        found.append((number, line))
    if not found:
        raise InputError(
            f"{source}: no role ARN in the file (only blank lines or comments)",
            hint=f"Add the role's ARN on its own line, e.g. {ROLE_ARN_EXAMPLE}",
        )
    if len(found) > 1:
        lines = ", ".join(str(number) for number, _ in found)
        raise InputError(
            f"{source}: {len(found)} role ARNs (lines {lines}); the cluster assumes exactly one",
            hint="Keep one ARN and comment the others out with #.",
        )
    return found[0][1]


class SessionFactory(Protocol):
    def __call__(self, *, profile_name: str | None, region_name: str | None) -> Any: ...


def _boto3_session(*, profile_name: str | None, region_name: str | None) -> Any:
    import boto3

    return boto3.session.Session(profile_name=profile_name, region_name=region_name)


def assume_role(
    aws: AwsConfig, role_arn: str, *, session_factory: SessionFactory = _boto3_session
) -> RoleCredentials:
    """Assume ``role_arn`` with the user's own AWS configuration (aws.profile or the default chain)."""
    import botocore.exceptions

    where = f"profile {aws.profile!r}" if aws.profile else "your AWS environment"
    try:
        session = session_factory(profile_name=aws.profile, region_name=aws.region)
        region = aws.region or session.region_name or DEFAULT_REGION
        sts = session.client("sts", region_name=region, endpoint_url=aws.endpoint_url)
        answer = sts.assume_role(
            RoleArn=role_arn, RoleSessionName=aws.session_name, DurationSeconds=aws.duration_seconds
        )
    except botocore.exceptions.ProfileNotFound:
        raise CredentialsError(
            f"AWS profile {aws.profile!r} (aws.profile in the config) does not exist.",
            hint="List yours with `aws configure list-profiles`; fix aws.profile or remove it.",
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise CredentialsError(
            f"No AWS credentials in {where} to assume {role_arn} with.",
            hint="Log in first (e.g. `aws sso login`, or set AWS_PROFILE / AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY), or set aws.profile in the config.",
        ) from None
    except botocore.exceptions.ClientError as err:
        raise _explain_client_error(err, aws, role_arn, where, session) from None
    except botocore.exceptions.BotoCoreError as err:
        # BotoCoreError messages name endpoints and files, never keys.
        raise CredentialsError(
            f"Cannot ask AWS STS for {role_arn}: {err}",
            hint="Check your network and aws.endpoint_url / aws.region in the config.",
        ) from None
    raw = answer["Credentials"]
    for secret in (raw["AccessKeyId"], raw["SecretAccessKey"], raw["SessionToken"]):
        register_secret(secret)
    expiration = raw["Expiration"]
    return RoleCredentials(
        role_arn=role_arn,
        session_name=aws.session_name,
        region=region,
        expiration=(expiration if expiration.tzinfo else expiration.replace(tzinfo=UTC)).astimezone(UTC),
        endpoint_url=aws.endpoint_url,
        access_key_id=raw["AccessKeyId"],
        secret_access_key=raw["SecretAccessKey"],
        session_token=raw["SessionToken"],
    )


_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_INVALID = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "AuthFailure"}


def _explain_client_error(err: Any, aws: AwsConfig, role_arn: str, where: str, session: Any) -> Exception:
    code = err.response.get("Error", {}).get("Code", "")
    text = err.response.get("Error", {}).get("Message", "")
    if code in _EXPIRED:
        return CredentialsError(
            f"The AWS session in {where} has expired, so STS refused to let it assume {role_arn}.",
            hint="Renew it (e.g. `aws sso login"
            + (f" --profile {aws.profile}" if aws.profile else "")
            + "` or new keys from your identity provider), then run `shapcluster creds refresh` again.",
        )
    if code in _INVALID:
        return CredentialsError(
            f"The AWS access key in {where} is not valid ({code}); STS did not get as far as {role_arn}.",
            hint="Check the key and secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile), "
            "or whether they were deactivated.",
        )
    if code == "AccessDenied":
        if _role_missing(session, role_arn, aws):
            return CredentialsError(
                f"The IAM role {role_arn} does not exist.",
                hint="Check the account number and role name in the ARN (aws.role_arn or the roles file).",
            )
        caller = _caller_arn(session, aws) or "your identity"
        return CredentialsError(
            f"AccessDenied: {caller} may not assume {role_arn} (or the role does not exist).",
            hint=f"Allow sts:AssumeRole on {role_arn} in the policy of {caller}, and trust it in the "
            "role's trust policy; or check the ARN.",
        )
    if code == "ValidationError":
        return CredentialsError(
            f"STS rejected the request for {role_arn}: {text}",
            hint="aws.duration_seconds may exceed the role's maximum session duration; lower it.",
        )
    return CredentialsError(f"STS refused to let {where} assume {role_arn}: {code}: {text}")


def _role_missing(session: Any, role_arn: str, aws: AwsConfig) -> bool:
    """True only if IAM positively says the role does not exist (needs iam:GetRole; best effort)."""
    import botocore.exceptions

    name = role_arn.rsplit("/", 1)[-1]
    try:
        session.client("iam", endpoint_url=aws.endpoint_url).get_role(RoleName=name)
    except botocore.exceptions.ClientError as err:
        return bool(err.response.get("Error", {}).get("Code") == "NoSuchEntity")
    except botocore.exceptions.BotoCoreError:
        return False
    return False


def _caller_arn(session: Any, aws: AwsConfig) -> str | None:
    import botocore.exceptions

    try:
        sts = session.client("sts", endpoint_url=aws.endpoint_url)
        return str(sts.get_caller_identity()["Arn"])
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, KeyError):
        return None


def env_list_text(creds: RoleCredentials) -> str:
    """``docker run --env-file`` lines (values are taken literally, so nothing is quoted): where
    the SDKs find the profile, never the keys themselves (see the module docstring)."""
    values = {
        "AWS_DEFAULT_REGION": creds.region,
        "AWS_REGION": creds.region,
        "AWS_PROFILE": CONTAINER_PROFILE,
        "AWS_SHARED_CREDENTIALS_FILE": CONTAINER_AWS_CREDENTIALS,
        "AWS_CONFIG_FILE": CONTAINER_AWS_CONFIG,
    }
    if creds.endpoint_url:
        values["AWS_ENDPOINT_URL"] = creds.endpoint_url
    for name, value in values.items():
        if "\n" in value or not value:
            raise CredentialsError(f"STS returned an unusable value for {name}; nothing was written.")
    return "".join(f"{name}={value}\n" for name, value in values.items())


# The SDKs run this without a shell; `cat` exists in every image.
CREDENTIAL_PROCESS = f"cat {CONTAINER_AWS_PROCESS}"


def credentials_file_text(creds: RoleCredentials) -> str:
    """The credentials-file profile: no keys, only the process that prints them (botocore merges
    this file into its profiles; a profile with keys here would be static and never refresh)."""
    return f"[{CONTAINER_PROFILE}]\ncredential_process = {CREDENTIAL_PROCESS}\n"


def config_file_text(creds: RoleCredentials) -> str:
    """The config-file profile, for SDKs that read credential_process only there (C++: pyarrow)."""
    return (
        f"[profile {CONTAINER_PROFILE}]\ncredential_process = {CREDENTIAL_PROCESS}\nregion = {creds.region}\n"
    )


def process_output_text(creds: RoleCredentials) -> str:
    """What ``credential_process`` prints: the AWS SDKs' process-credentials JSON, version 1."""
    for value in (creds.access_key_id, creds.secret_access_key, creds.session_token):
        if "\n" in value or not value:
            raise CredentialsError("STS returned an unusable key; nothing was written.")
    return json.dumps(
        {
            "Version": 1,
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": creds.secret_access_key,
            "SessionToken": creds.session_token,
            "Expiration": creds.expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )


def meta_text(creds: RoleCredentials, now: datetime) -> str:
    meta = {
        "role_arn": creds.role_arn,
        "session_name": creds.session_name,
        "expiration": creds.expiration.isoformat(),
        "refreshed_at": now.astimezone(UTC).isoformat(),
    }
    return json.dumps(meta, indent=1) + "\n"


def parse_meta(text: str) -> CredentialsMeta | None:
    """None when the text is not a meta file we wrote (missing, truncated, hand-edited)."""
    try:
        data = json.loads(text)
        return CredentialsMeta(
            role_arn=str(data["role_arn"]),
            session_name=str(data["session_name"]),
            expiration=datetime.fromisoformat(data["expiration"]).astimezone(UTC),
            refreshed_at=datetime.fromisoformat(data["refreshed_at"]).astimezone(UTC),
        )
    except (ValueError, KeyError, TypeError):
        return None


def describe_expiry(expiration: datetime, now: datetime) -> str:
    """'18:42 UTC (in 57 min)' or '... (expired 3 min ago)'."""
    minutes = round((expiration - now).total_seconds() / 60)
    when = expiration.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{when} (in {minutes} min)" if minutes >= 0 else f"{when} (expired {-minutes} min ago)"


# --- on the hosts -----------------------------------------------------------------------------


def write_credentials(nodes: Sequence[Node], credentials: RoleCredentials, now: datetime) -> None:
    """The keys (process.json), the profile files, env.list, then meta.json on every host: each
    written atomically, 0600 (see the module docstring for why no key is in env.list). Raises
    HostsFailedError naming every host that failed."""
    texts = (  # RemoteLayout attribute -> content; the keys first, the meta that vouches for them last
        ("aws_process_file", process_output_text(credentials)),
        ("aws_credentials_file", credentials_file_text(credentials)),
        ("aws_config_file", config_file_text(credentials)),
        ("env_file", env_list_text(credentials)),
        ("aws_meta_file", meta_text(credentials, now)),
    )

    def place(node: Node) -> None:
        layout = node.layout
        node.runner.run(cmd.make_dirs_command(layout.secrets_dir, layout.aws_dir, mode=0o700))
        for attribute, text in texts:
            path = getattr(layout, attribute)
            node.runner.run(cmd.write_file_command(path, 0o600), stdin=text, secret=True)

    run_on_nodes(nodes, place, what="writing AWS credentials")


def read_credentials(node: Node) -> CredentialsMeta | None:
    """What the host's meta.json says about its credentials; None if it has none."""
    found = node.runner.run(cmd.read_file_command(node.layout.aws_meta_file), check=False)
    return parse_meta(found.stdout) if found.ok else None
