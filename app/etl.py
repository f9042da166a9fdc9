"""Load and validate the data: CSV or Parquet, from a local path, an s3:// object or an https:// URL.

Columns keep their types (text categories, booleans, integers, floats; see app/tabular.py);
``Dataset.features`` holds their float64 codes for the kernel and ``Dataset.codec`` the way back.
Every problem becomes one DataError naming the source and the line or column that is wrong.
"""

from __future__ import annotations

import csv
import io
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.contract import Task
from app.errors import DataError
from app.tabular import FLOAT, INT, ColumnCodec

DEFAULT_DATA = Path("data") / "winequality-red.csv"
MIN_ROWS = 10
FLOAT32_MAX = 3.4028234663852886e38  # larger values overflow the float32 input of tree models
_SEPARATORS = (";", ",", "\t")


@dataclass(frozen=True)
class Dataset:
    features: pd.DataFrame  # (N, M) float64 codes of the user's columns, no missing values
    labels: pd.Series | None  # None: no label column (allowed with --model: nothing to score)
    label: str
    source: str  # what the user would recognise: a path or URI
    bundled: bool = False  # True: scikit-learn's wine data stood in for a missing default file
    notice: str | None = None
    weights: pd.Series | None = None  # --background-weights: each row's weight, not a feature
    codec: ColumnCodec | None = None  # None: every column is a float (the codes are the values)
    from_csv: bool = False  # True: rows have CSV lines (data_line = row + 2); False: Parquet, bundled


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
    codec = dataset.codec
    if codec is not None and codec.kinds[codec.names.index(column)] not in (FLOAT, INT):
        raise DataError(f"{dataset.source}: the weights column {column!r} must hold numbers.")
    features = dataset.features.drop(columns=[column])
    weights = dataset.features[column]
    bad = weights[~np.isfinite(weights.to_numpy()) | (weights.to_numpy() < 0)]
    if not bad.empty:
        raise DataError(
            f"{dataset.source}: weight {float(bad.iloc[0]):g} in column {column!r} on "
            f"{_line_of(bad.index[0])} is not a finite, non-negative number."
        )
    if features.shape[1] < 1:
        raise DataError(f"{dataset.source}: no feature columns are left besides the weights {column!r}.")
    codec = None if codec is None else codec.without(column)
    return replace(dataset, features=features, weights=weights, codec=codec)


def resolve_source(data: str | None, cwd: Path | None = None) -> str | None:
    """The source to read: the user's, else ./data/winequality-red.csv, else None (bundled)."""
    if data:
        return data
    default = (cwd or Path.cwd()) / DEFAULT_DATA
    return str(default) if default.exists() else None


def load_dataset(
    source: str | None, label: str = "quality", features: tuple[str, ...] = (), *, label_required: bool = True
) -> Dataset:
    """The data of ``source`` (None: the bundled wine data). ``features``: the columns to keep
    (default all but the label); ``label_required`` False lets the label column be absent."""
    if source is None:
        return load_bundled()
    raw = read_source(source)
    if is_parquet(source, raw):
        keep = {*features, label} if features else None
        frame = read_parquet(raw, source, keep)
        return build_dataset(frame, source, label, features, label_required=label_required)
    return parse_csv(raw, source, label, features, label_required=label_required)


def is_parquet(source: str, raw: bytes) -> bool:
    return source.lower().endswith((".parquet", ".pq")) or raw[:4] == b"PAR1"


def read_parquet(raw: bytes, source: str, keep: set[str] | None = None) -> pd.DataFrame:
    """A Parquet file's table (only the columns in ``keep``, when given). Raises DataError when it
    is unreadable, has no rows, or a kept column has a type the job cannot explain."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{source}: not a readable Parquet file ({err}).") from None
    if table.num_rows == 0:
        raise DataError(f"{source}: the Parquet file has no rows.")
    if keep is not None:
        table = table.select([name for name in table.column_names if name in keep])
    for name, kind in zip(table.column_names, table.schema.types, strict=True):
        supported = (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_dictionary(kind)
        )
        if not supported:
            raise DataError(
                f"{source}: column {name!r} has Parquet type {kind}, which the job cannot explain; "
                "use numbers, booleans or text (or leave it out with --features)."
            )
    frame: pd.DataFrame = table.to_pandas()
    return frame


def load_bundled() -> Dataset:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    labels = frame.pop("target").rename("cultivar")
    notice = (
        f"No --data given and no {DEFAULT_DATA} here: using scikit-learn's bundled wine dataset "
        f"({len(frame)} rows, {frame.shape[1]} features, label 'cultivar') instead."
    )
    return Dataset(frame, labels, "cultivar", "sklearn.datasets.load_wine", bundled=True, notice=notice)


def read_source(source: str, option: str = "--data", what: str = "CSV or Parquet file") -> bytes:
    """The bytes of a local path, s3://bucket/key or http(s):// URL; DataError names the source."""
    if source.startswith("s3://"):
        return _read_s3(source)
    if source.startswith(("https://", "http://")):
        return _read_url(source)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path.absolute()}: no such file. Pass {option} with the path of your {what}.")
    if path.is_dir():
        raise DataError(f"{source}: is a folder, not a {what}.")
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


def parse_csv(
    raw: bytes,
    source: str,
    label: str = "quality",
    features: tuple[str, ...] = (),
    *,
    label_required: bool = True,
) -> Dataset:
    frame = read_csv_frame(raw, source)
    return build_dataset(frame, source, label, features, label_required=label_required, csv_lines=True)


def read_csv_frame(raw: bytes, source: str) -> pd.DataFrame:
    """A CSV's table, its separator guessed from line 1. Raises DataError naming the line whose
    field count differs from the header's, or an empty or malformed file."""
    text = raw.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise DataError(f"{source}: the file is empty.")
    text = text.rstrip() + "\n"  # trailing blank lines are not rows with missing values
    header = text.lstrip().splitlines()[0]
    sep = _guess_separator(header, source)
    trailing = _check_field_counts(text, sep, source)
    try:
        # index_col=False: a separator at the end of every line is an empty last field, not an index
        return pd.read_csv(
            io.StringIO(text), sep=sep, skip_blank_lines=False, index_col=False if trailing else None
        )
    except pd.errors.ParserError as err:
        raise DataError(f"{source}: not a well-formed CSV with separator {sep!r} ({err}).") from None


def load_rows(source: str, like: Dataset, option: str) -> npt.NDArray[np.float64]:
    """(R, M) float64 codes of the rows of another file (``--explain``, ``--background-data``)
    with ``like``'s columns and types. Raises DataError naming the file and the missing column,
    the bad cell or the value the data never had."""
    raw = read_source(source, option)
    names = list(like.features.columns)
    parquet = is_parquet(source, raw)
    frame = read_parquet(raw, source, set(names)) if parquet else read_csv_frame(raw, source)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: {option} lacks the data's columns {', '.join(missing)}.")
    return encode_rows(frame[names].copy(), like.codec, source, option, _row_of if parquet else _line_of)


def encode_rows(
    table: pd.DataFrame, codec: ColumnCodec | None, source: str, option: str, where: Any = None
) -> npt.NDArray[np.float64]:
    """(R, M) float64 codes of ``table`` (the data's columns, in order) after the bad-cell checks;
    ``where`` names a row from its index (default: a CSV line; or a Parquet row). Raises DataError."""
    where = where or _line_of
    _check_numeric(table, source, where)
    _check_complete(table, source, where)
    _check_finite(table, source, where)
    try:
        if codec is None:
            return table.to_numpy(dtype=np.float64)
        return codec.encode(table)
    except (DataError, ValueError, TypeError) as err:
        raise DataError(f"{source}: {option} does not fit the data's column types: {err}.") from None


def is_local_parquet(path: str) -> bool:
    """A local file named .parquet/.pq or starting with Parquet's magic bytes."""
    if path.lower().endswith((".parquet", ".pq")):
        return True
    with open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def count_rows(path: str, option: str = "--explain") -> int:
    """Data rows of a local CSV or Parquet file without holding it: Parquet's footer, or the CSV's
    non-blank lines after the header, counted in 1 MiB chunks. Raises DataError."""
    if not Path(path).is_file():
        raise DataError(f"{Path(path).absolute()}: no such file. Pass {option} with the path of your file.")
    if is_local_parquet(path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err}).") from None
    lines = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                lines += 1
    return max(lines - 1, 0)


def read_row_range(
    path: str, names: list[str], codec: ColumnCodec | None, start: int, stop: int, option: str = "--explain"
) -> npt.NDArray[np.float64]:
    """(stop - start, M) codes of data rows [start, stop) (0-based) of a local CSV or Parquet file,
    read without the rest of it: Parquet reads only the row groups covering the range; a CSV skips
    the lines before it. Errors name the file and the CSV line (or Parquet row) of a bad cell."""
    if is_local_parquet(path):
        frame = _parquet_range(path, names, start, stop)
        where: Any = _row_of
    else:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            header = handle.readline()
        sep = _guess_separator(header, path)
        try:
            frame = pd.read_csv(
                path,
                sep=sep,
                skiprows=range(1, start + 1),
                nrows=stop - start,
                index_col=False,  # a separator at the end of every line is an empty last field
                encoding="utf-8-sig",
            )
        except (pd.errors.ParserError, ValueError) as err:
            raise DataError(f"{path}: not a well-formed CSV with separator {sep!r} ({err}).") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        where = _line_of
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: {option} lacks the data's columns {', '.join(missing)}.")
    if len(frame) != stop - start:
        raise DataError(f"{path}: has fewer than {stop} rows (rows {start}:{stop} were asked for).")
    frame.index = pd.RangeIndex(start, stop)  # line/row numbers of the file in error messages
    return encode_rows(frame[names].copy(), codec, path, option, where)


def _parquet_range(path: str, names: list[str], start: int, stop: int) -> pd.DataFrame:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    groups, first, offset = [], None, 0
    for i in range(parquet.metadata.num_row_groups):
        count = parquet.metadata.row_group(i).num_rows
        if offset < stop and offset + count > start:
            groups.append(i)
            first = offset if first is None else first
        offset += count
    columns = [c for c in names if c in parquet.schema_arrow.names]
    table = (
        parquet.read_row_groups(groups, columns=columns)
        if groups
        else parquet.schema_arrow.empty_table().select(columns)
    )
    lo = start - (first or 0)
    frame: pd.DataFrame = table.slice(lo, stop - start).to_pandas()
    return frame


def _check_field_counts(text: str, sep: str, source: str) -> bool:
    """True when every data line has one extra, empty last field (a separator at the end of every
    line). Raises DataError naming the first line whose field count differs from the header's."""
    lines = list(csv.reader(io.StringIO(text.lstrip()), delimiter=sep))
    width = len(lines[0])
    rows = [(number, fields) for number, fields in enumerate(lines[1:], start=2) if fields]
    if rows and all(len(f) == width + 1 and not f[-1].strip() for _, f in rows):
        return True
    for number, fields in rows:
        if len(fields) != width:
            ends = " (it ends with a separator)" if fields[-1] == "" else ""
            raise DataError(
                f"{source}: line {number} has {len(fields)} fields{ends}, the header has {width}. "
                f"Make every line have {width} fields separated by {sep!r}."
            )
    return False


def build_dataset(
    frame: pd.DataFrame,
    source: str,
    label: str,
    features: tuple[str, ...] = (),
    *,
    label_required: bool = True,
    csv_lines: bool = False,
) -> Dataset:
    """Check a typed table and code it. ``csv_lines``: name CSV lines (else 1-based rows)."""
    where = _line_of if csv_lines else _row_of
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.shape[1] < 2 and label_required:
        raise DataError(f"{source}: found only one column; expected features and a label column.")
    has_label = label in frame.columns
    if not has_label and label_required:
        raise DataError(
            f"{source}: no label column {label!r}; the columns are {', '.join(frame.columns)}. "
            "Pass --label with the right name."
        )
    names = list(features) or [c for c in frame.columns if c != label]
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: --features (default: the columns the --model was fitted on) names columns it "
            f"does not have: {', '.join(missing)}; "
            f"the columns are {', '.join(frame.columns)}."
        )
    if label in names:
        raise DataError(f"{source}: --features includes the label column {label!r}; leave it out.")
    table = frame[names + ([label] if has_label else [])].copy()
    _check_numeric(table, source, where)
    _check_complete(table, source, where)
    _check_finite(table, source, where)
    if len(table) < MIN_ROWS:
        raise DataError(f"{source}: only {len(table)} data rows; at least {MIN_ROWS} are needed.")
    labels = table.pop(label) if has_label else None
    codec = ColumnCodec.fit(table, source)
    coded = pd.DataFrame(codec.encode(table), columns=list(codec.names), index=table.index)
    return Dataset(coded, labels, label, source, codec=None if codec.all_float else codec, from_csv=csv_lines)


def _line_of(index: object) -> str:
    return f"line {int(str(index)) + 2}"  # line 1 is the header


def _row_of(index: object) -> str:
    return f"row {int(str(index)) + 1}"


def _check_numeric(frame: pd.DataFrame, source: str, where: Any = _line_of) -> None:
    """A text column whose values are mostly numbers is a numeric column with bad cells (named);
    a column of words is a text category and stays one."""
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        present = series.dropna()
        converted = pd.to_numeric(present, errors="coerce")
        bad = present[converted.isna()]
        if bad.empty and not present.empty:
            frame[column] = pd.to_numeric(series)
        elif len(bad) < len(present) / 2:
            first = f"{bad.iloc[0]!r} on {where(bad.index[0])}"  # the first bad cell
            raise DataError(f"{source}: column {column!r} is not numeric: {first}. Use numbers only.")


def _check_finite(frame: pd.DataFrame, source: str, where: Any = _line_of) -> None:
    """Infinite cells and cells beyond float32's range (which tree models cast to) are errors."""
    for column in frame.columns:
        series = frame[column]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        values = series.to_numpy(dtype=np.float64)
        bad = ~(np.abs(values) <= FLOAT32_MAX)
        if bad.any():
            index = series.index[bad]
            shown = ", ".join(f"{float(series[i]):g} on {where(i)}" for i in index[:5])
            more = f" and {len(index) - 5} more" if len(index) > 5 else ""
            raise DataError(
                f"{source}: column {column!r} has {len(index)} infinite or too large value"
                f"{'s' if len(index) > 1 else ''} (beyond +-3.4e38, float32's range): {shown}{more}. "
                "Fix or drop those rows."
            )


def _check_complete(frame: pd.DataFrame, source: str, where: Any = _line_of) -> None:
    missing = frame.isna()
    count = int(missing.to_numpy().sum())
    if count:
        row, col = next(zip(*missing.to_numpy().nonzero(), strict=True))
        raise DataError(
            f"{source}: {count} missing value{'s' if count > 1 else ''}, the first in column "
            f"{frame.columns[col]!r} on {where(frame.index[row])}. Fill or drop them first."
        )


def infer_task(dataset: Dataset, task: Task | None) -> Task:
    """The task the label allows: regression for a float label with non-whole values, else
    classification. Raises DataError when ``task`` asks for classes of a continuous label or
    a regression of text labels."""
    labels = dataset.labels
    if labels is None:
        return task or Task.CLASSIFICATION
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    values = labels.to_numpy(dtype=np.float64) if numeric else None
    continuous = values is not None and bool(np.any(values != np.round(values)))
    if task is Task.CLASSIFICATION and continuous:
        assert values is not None
        first = int(np.flatnonzero(values != np.round(values))[0])
        raise DataError(
            f"{dataset.source}: the label {dataset.label!r} is continuous ({labels.iloc[first]} on line "
            f"{first + 2}), not classes: pass --task regression to train a regressor."
        )
    if task is Task.REGRESSION and not numeric:
        raise DataError(
            f"{dataset.source}: the label {dataset.label!r} is not numeric ({labels.iloc[0]!r}); "
            "a regression needs numbers: pass --task classification."
        )
    if task is not None:
        return task
    return Task.REGRESSION if continuous else Task.CLASSIFICATION
