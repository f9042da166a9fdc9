"""Load and validate the training data: a local CSV, an s3:// object or an https:// URL.

Every problem becomes one DataError naming the source and what is wrong with it.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from app.errors import DataError

DEFAULT_DATA = Path("data") / "winequality-red.csv"
MIN_ROWS = 10
_SEPARATORS = (";", ",", "\t")


@dataclass(frozen=True)
class Dataset:
    features: pd.DataFrame  # numeric, no missing values
    labels: pd.Series
    label: str
    source: str  # what the user would recognise: a path or URI
    bundled: bool = False  # True: scikit-learn's wine data stood in for a missing default file
    notice: str | None = None
    weights: pd.Series | None = None  # --background-weights: each row's weight, not a feature


def with_weights(dataset: Dataset, column: str | None) -> Dataset:
    """The dataset with ``column`` taken out of the features as the rows' background weights.
    Raises DataError naming the file, the column and the line of the first bad weight."""
    if column is None:
        return dataset
    if column not in dataset.features.columns:
        raise DataError(
            f"{dataset.source}: no weights column {column!r}; the feature columns are "
            f"{', '.join(map(str, dataset.features.columns))}. Pass --background-weights with one of them."
        )
    features = dataset.features.drop(columns=[column])
    weights = dataset.features[column]
    bad = weights[~np.isfinite(weights.to_numpy()) | (weights.to_numpy() < 0)]
    if not bad.empty:
        raise DataError(
            f"{dataset.source}: weight {float(bad.iloc[0]):g} in column {column!r} on line "
            f"{_line_of(bad.index[0])} is not a finite, non-negative number."
        )
    if features.shape[1] < 1:
        raise DataError(f"{dataset.source}: no feature columns are left besides the weights {column!r}.")
    return replace(dataset, features=features, weights=weights)


def resolve_source(data: str | None, cwd: Path | None = None) -> str | None:
    """The source to read: the user's, else ./data/winequality-red.csv, else None (bundled)."""
    if data:
        return data
    default = (cwd or Path.cwd()) / DEFAULT_DATA
    return str(default) if default.exists() else None


def load_dataset(source: str | None, label: str = "quality") -> Dataset:
    if source is None:
        return load_bundled()
    return parse_csv(read_source(source), source, label)


def load_bundled() -> Dataset:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    labels = frame.pop("target").rename("cultivar")
    notice = (
        f"No --data given and no {DEFAULT_DATA} here: using scikit-learn's bundled wine dataset "
        f"({len(frame)} rows, {frame.shape[1]} features, label 'cultivar') instead."
    )
    return Dataset(frame, labels, "cultivar", "sklearn.datasets.load_wine", bundled=True, notice=notice)


def read_source(source: str) -> bytes:
    if source.startswith("s3://"):
        return _read_s3(source)
    if source.startswith(("https://", "http://")):
        return _read_url(source)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file. Pass --data with the path of your CSV.")
    if path.is_dir():
        raise DataError(f"{source}: is a folder, not a CSV file.")
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{source}: cannot be read ({err.strerror}).") from None


def _read_s3(uri: str) -> bytes:
    import boto3
    import botocore.exceptions

    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise DataError(f"{uri}: expected s3://bucket/key.")
    try:
        # A new session each time: credentials refreshed on disk are picked up by a running job.
        # Naming AWS_PROFILE explicitly makes boto3 read that profile's (refreshable) credentials
        # file instead of static AWS_ACCESS_KEY_ID/... in the environment, which a running
        # container cannot update; shapcluster's env.list sets both. boto3 honours the rest of
        # the standard AWS environment, AWS_ENDPOINT_URL(_S3) included.
        session = boto3.session.Session(profile_name=os.environ.get("AWS_PROFILE") or None)
        body = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
        return bytes(body.read())
    except botocore.exceptions.ProfileNotFound as err:
        raise DataError(f"{uri}: {err}. Check AWS_PROFILE and your AWS credentials file.") from None
    except botocore.exceptions.NoCredentialsError:
        raise DataError(
            f"{uri}: no AWS credentials found. Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or run `shapcluster creds refresh` for a cluster."
        ) from None
    except botocore.exceptions.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        reasons = {
            "NoSuchKey": "the object does not exist",
            "NoSuchBucket": "the bucket does not exist",
            "AccessDenied": "access denied: the credentials may not read this object (s3:GetObject)",
            "ExpiredToken": "the credentials have expired: refresh them",
            "InvalidAccessKeyId": "the access key is not known to S3",
        }
        raise DataError(f"{uri}: {reasons.get(code, code)}.") from None
    except botocore.exceptions.BotoCoreError as err:
        raise DataError(f"{uri}: cannot reach S3 ({type(err).__name__}).") from None


def _read_url(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as err:
        raise DataError(f"{url}: the server answered HTTP {err.code} {err.reason}.") from None
    except (urllib.error.URLError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"{url}: cannot download ({reason}).") from None


def _guess_separator(header: str, source: str) -> str:
    counts = {sep: header.count(sep) for sep in _SEPARATORS}
    sep, count = max(counts.items(), key=lambda item: item[1])
    if count == 0:
        shown = header if len(header) <= 80 else header[:77] + "..."
        raise DataError(
            f"{source}: line 1 has no ';', ',' or tab separator ({shown!r}). "
            "Expected a CSV like the UCI wine-quality file (';'-separated, header on line 1)."
        )
    return sep


def parse_csv(raw: bytes, source: str, label: str = "quality") -> Dataset:
    text = raw.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise DataError(f"{source}: the file is empty.")
    text = text.rstrip() + "\n"  # trailing blank lines are not rows with missing values
    header = text.lstrip().splitlines()[0]
    sep = _guess_separator(header, source)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, skip_blank_lines=False)
    except pd.errors.ParserError as err:
        raise DataError(f"{source}: not a well-formed CSV with separator {sep!r} ({err}).") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.shape[1] < 2:
        raise DataError(f"{source}: found only one column; expected features and a label column.")
    if label not in frame.columns:
        raise DataError(
            f"{source}: no label column {label!r}; the columns are {', '.join(frame.columns)}. "
            "Pass --label with the right name."
        )
    _check_numeric(frame, source)
    _check_complete(frame, source)
    if len(frame) < MIN_ROWS:
        raise DataError(f"{source}: only {len(frame)} data rows; at least {MIN_ROWS} are needed.")
    labels = frame.pop(label)
    return Dataset(frame.astype("float64"), labels, label, source)


def _line_of(index: object) -> int:
    return int(str(index)) + 2  # line 1 is the header


def _check_numeric(frame: pd.DataFrame, source: str) -> None:
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series):
            continue
        converted = pd.to_numeric(series, errors="coerce")
        bad = series[converted.isna() & series.notna()]
        if not bad.empty:
            where = f"{bad.iloc[0]!r} on line {_line_of(bad.index[0])}"  # the first bad cell
            raise DataError(f"{source}: column {column!r} is not numeric: {where}. Use numbers only.")
        frame[column] = converted


def _check_complete(frame: pd.DataFrame, source: str) -> None:
    missing = frame.isna()
    count = int(missing.to_numpy().sum())
    if count:
        row, col = next(zip(*missing.to_numpy().nonzero(), strict=True))
        raise DataError(
            f"{source}: {count} missing value{'s' if count > 1 else ''}, the first in column "
            f"{frame.columns[col]!r} on line {_line_of(frame.index[row])}. Fill or drop them first."
        )
