"""ServeOptions (app/contract.py): what `serve up` hands the Serve application as its `args`."""

from __future__ import annotations

import json

import pytest

from app.contract import Algorithm, ConfigError, JobConfig, Link, OptionError, ServeOptions, serve_options


def test_to_args_is_json_plain_and_round_trips() -> None:
    options = ServeOptions(
        model="m.skops",
        data="d.csv",
        features=("a", "b"),
        algorithm="tree",
        nsamples="exact",
        replicas=3,
        max_batch_size=16,
        batch_wait_ms=2.5,
        max_rows_per_request=50,
        token_file="/run/secrets/ray-auth-token",
    )
    args = options.to_args()
    assert json.loads(json.dumps(args)) == args  # plain JSON: what the Serve REST API carries
    assert args["algorithm"] == "tree" and args["features"] == ["a", "b"]
    back = ServeOptions.from_args(json.loads(json.dumps(args)))
    assert back == options
    assert back.algorithm is Algorithm.TREE and back.link is Link.IDENTITY
    assert back.batch_wait_s == 0.0025


def test_missing_keys_take_defaults_and_unknown_keys_are_named() -> None:
    options = ServeOptions.from_args({"model": "m.skops", "background_data": "bg.csv"})
    assert options.replicas == 1 and options.background == 100
    with pytest.raises(OptionError, match=r"unknown serve option.*replica_count"):
        ServeOptions.from_args({"model": "m.skops", "data": "d.csv", "replica_count": 2})


def test_the_job_options_share_the_jobs_own_definitions() -> None:
    job = {f.name: f for f in JobConfig.__dataclass_fields__.values()}
    for f in serve_options():
        if f.name in job:
            assert f.metadata == job[f.name].metadata and f.default == job[f.name].default
    options = ServeOptions(model="m.skops", data="d.csv", link="logit", seed=3)
    assert options.job_config() == JobConfig(model="m.skops", data="d.csv", link="logit", seed=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"replicas": 0}, "--replicas must be at least 1, got 0"),
        ({"max_batch_size": 0}, "--max-batch-size must be at least 1"),
        ({"max_rows_per_request": -1}, "--max-rows-per-request must be at least 1"),
        ({"batch_wait_ms": float("nan")}, "--batch-wait-ms must be a finite number >= 0"),
        ({"batch_wait_ms": -1.0}, "--batch-wait-ms must be a finite number >= 0"),
        ({"background": 0}, "--background must be at least 1"),
        ({"nsamples": "lots"}, "--nsamples must be a whole number or 'exact'"),
        ({"algorithm": "fast"}, "--algorithm must be one of kernel, tree"),
    ],
)
def test_bad_values_name_the_option(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        ServeOptions(model="m.skops", data="d.csv", **kwargs)  # type: ignore[arg-type]


def test_options_that_cannot_serve_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs --model"):
        ServeOptions(data="d.csv")
    with pytest.raises(ConfigError, match="needs --data or --background-data"):
        ServeOptions(model="m.skops")
    with pytest.raises(ConfigError, match="tree-path-dependent"):
        ServeOptions(model="m.skops", data="d.csv", algorithm="tree-path-dependent")
    with pytest.raises(ConfigError, match="identity link"):  # the job's own check across options
        ServeOptions(model="m.skops", data="d.csv", algorithm="tree", link="logit")
