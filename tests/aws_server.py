"""A real S3/STS/IAM HTTP endpoint for tests: moto in server mode, with IAM checks switched on.

Its world: a role ``shap-reader`` that may read S3, a user ``alice`` who may assume it (and read
IAM), a user ``bob`` who may do nothing, and a bucket holding the wine CSV. With authorization
enforced, STS answers AccessDenied / InvalidClientTokenId as AWS would.
"""

from __future__ import annotations

import http.server
import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.http_util import serve

ACCOUNT = "123456789012"  # moto's default account
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/shap-reader"
MISSING_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/no-such-role"
BUCKET = "wine-data"
KEY = "red/winequality-red.csv"
REGION = "eu-west-1"


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}


@dataclass(frozen=True)
class AwsWorld:
    url: str
    alice: Keys  # may assume ROLE_ARN
    bob: Keys  # may not

    def client(self, service: str, keys: Keys | None = None, token: str | None = None):  # type: ignore[no-untyped-def]
        import boto3

        keys = keys or self.alice
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            aws_session_token=token,
        )


def _policy(*grants: tuple[str, str]) -> str:
    statements = [{"Effect": "Allow", "Action": action, "Resource": resource} for action, resource in grants]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@contextmanager
def aws_world(address: str, wine_csv: Path) -> Iterator[AwsWorld]:
    """Start moto on ``address`` (a free port), populate it, enforce IAM; stop and reset after."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=address, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        admin = {"endpoint_url": url, "region_name": REGION, "aws_access_key_id": "AKIAADMIN0000000000X"}
        admin["aws_secret_access_key"] = "admin-secret"
        iam = boto3.client("iam", **admin)
        alice_arn = f"arn:aws:iam::{ACCOUNT}:user/alice"
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": alice_arn}, "Action": "sts:AssumeRole"}
        ]}  # fmt: skip
        iam.create_role(RoleName="shap-reader", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName="shap-reader", PolicyName="s3", PolicyDocument=_policy(("s3:*", "*")))
        users = {}
        for name in ("alice", "bob"):
            iam.create_user(UserName=name)
            key = iam.create_access_key(UserName=name)["AccessKey"]
            users[name] = Keys(key["AccessKeyId"], key["SecretAccessKey"])
        grants = _policy(("sts:AssumeRole", ROLE_ARN), ("iam:GetRole", "*"))
        iam.put_user_policy(UserName="alice", PolicyName="assume-and-read-iam", PolicyDocument=grants)
        s3 = boto3.client("s3", **admin)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=wine_csv.read_bytes())
        _post(f"{url}/moto-api/reset-auth", b"0")  # from now on every request is checked
        yield AwsWorld(url, users["alice"], users["bob"])
    finally:
        try:
            _post(f"{url}/moto-api/reset-auth", b"inf")
            _post(f"{url}/moto-api/reset", b"")
        finally:
            server.stop()


def _post(url: str, body: bytes) -> None:
    # Not form-encoded: moto reads the raw body, which Flask consumes for form posts.
    headers = {"Content-Type": "application/octet-stream"}
    with urllib.request.urlopen(urllib.request.Request(url, body, headers, method="POST"), timeout=30):
        pass


_EXPIRED_BODY = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message>"
    "</Error><RequestId>4fd2-expired</RequestId></ErrorResponse>"
)


@contextmanager
def expired_token_endpoint() -> Iterator[str]:
    """An HTTP endpoint answering every STS call as AWS does for an expired source session
    (moto does not check session expiry)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = _EXPIRED_BODY.encode()
            self.send_response(400)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler) as url:
        yield url
