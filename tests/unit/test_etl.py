"""Loading data: local CSV, s3:// against a real S3-speaking server, http(s), the bundled fallback,
and one clear error per bad input."""

from __future__ import annotations

import http.server
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import etl
from app.errors import DataError
from tests.http_util import serve

HEADER = '"fixed acidity";"pH";"alcohol";"quality"'


def write(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def good_rows(n: int = 12, sep: str = ";") -> str:
    return "\n".join(sep.join(str(v) for v in (7.0 + i, 3.3, 9.5, 5 + i % 2)) for i in range(n))


def test_real_wine_file_loads(wine_csv):
    dataset = etl.load_dataset(str(wine_csv))
    assert dataset.features.shape == (1599, 11)
    assert dataset.label == "quality"
    assert dataset.labels.value_counts().to_dict() == {5: 681, 6: 638, 7: 199, 4: 53, 8: 18, 3: 10}
    assert dataset.features.iloc[0].tolist() == [7.4, 0.7, 0, 1.9, 0.076, 11, 34, 0.9978, 3.51, 0.56, 9.4]
    assert not dataset.bundled and dataset.notice is None


def test_comma_separated_file_loads_too(tmp_path):
    text = HEADER.replace(";", ",") + "\n" + good_rows(sep=",") + "\n"
    dataset = etl.load_dataset(write(tmp_path, text))
    assert list(dataset.features.columns) == ["fixed acidity", "pH", "alcohol"]
    assert len(dataset.features) == 12


def test_default_source_is_data_folder_of_the_working_directory(tmp_path):
    assert etl.resolve_source(None, tmp_path) is None
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "winequality-red.csv").write_text(HEADER + "\n" + good_rows())
    assert etl.resolve_source(None, tmp_path) == str(tmp_path / "data" / "winequality-red.csv")
    assert etl.resolve_source("s3://b/k", tmp_path) == "s3://b/k"


def test_bundled_fallback_says_so():
    dataset = etl.load_dataset(None)
    assert dataset.bundled
    assert dataset.features.shape == (178, 13)
    assert "scikit-learn's bundled wine dataset" in (dataset.notice or "")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"data\.csv: the file is empty"),
        ("\n  \n", r"data\.csv: the file is empty"),
        ("a|b|quality\n1|2|3\n", r"data\.csv: line 1 has no ';', ',' or tab separator \('a\|b\|quality'\)"),
        (
            HEADER + "\n" + good_rows() + "\n7.1;high;9.1;5\n",
            r"column 'pH' is not numeric: 'high' on line 14",
        ),
        (
            HEADER.replace("quality", "grade") + "\n" + good_rows(),
            r"no label column 'quality'; the columns are fixed",
        ),
        (
            HEADER + "\n" + good_rows(3) + "\n7.0;;9.0;5\n" + good_rows(9),
            r"1 missing value, the first in column 'pH' on line 5",
        ),
        (HEADER + "\n" + good_rows(3), r"only 3 data rows; at least 10"),
        ('"only one column"\n1\n2\n', r"line 1 has no ';', ','"),
    ],
    ids=["empty", "blank", "separator", "non-numeric", "no-label", "nan", "too-few", "one-column"],
)
def test_bad_input_gives_one_clear_error(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=message) as caught:
        etl.load_dataset(path)
    assert str(caught.value).startswith(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file\. Pass --data"):
        etl.load_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="is a folder"):
        etl.load_dataset(str(tmp_path))


def test_trailing_blank_lines_are_not_missing_values(tmp_path):
    dataset = etl.load_dataset(write(tmp_path, HEADER + "\n" + good_rows() + "\n\n\n"))
    assert len(dataset.features) == 12


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        yield endpoint
    finally:
        server.stop()


def test_s3_object_loads_through_the_endpoint_override(s3_server, wine_csv):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="wine")
    s3.put_object(Bucket="wine", Key="red/winequality-red.csv", Body=wine_csv.read_bytes())
    from_s3 = etl.load_dataset("s3://wine/red/winequality-red.csv")
    local = etl.load_dataset(str(wine_csv))
    assert from_s3.features.equals(local.features)
    assert from_s3.source == "s3://wine/red/winequality-red.csv"


def test_s3_errors_name_the_uri(s3_server, monkeypatch):
    import boto3

    boto3.client("s3").create_bucket(Bucket="wine")
    with pytest.raises(DataError, match=r"s3://wine/missing\.csv: the object does not exist"):
        etl.load_dataset("s3://wine/missing.csv")
    with pytest.raises(DataError, match=r"s3://nobucket/x\.csv: the bucket does not exist"):
        etl.load_dataset("s3://nobucket/x.csv")
    with pytest.raises(DataError, match="expected s3://bucket/key"):
        etl.load_dataset("s3://wine")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DataError, match="no AWS credentials found"):
        etl.load_dataset("s3://wine/x.csv")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "wine.csv").write_text(HEADER + "\n" + good_rows())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):  # keep test output clean
            pass

    with serve(Handler) as url:
        yield url


def test_url_loads_and_http_errors_are_clear(http_server):
    assert len(etl.load_dataset(f"{http_server}/wine.csv").features) == 12
    with pytest.raises(DataError, match=r"missing\.csv: the server answered HTTP 404"):
        etl.load_dataset(f"{http_server}/missing.csv")
