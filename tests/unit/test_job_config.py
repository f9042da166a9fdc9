from __future__ import annotations

import pytest

from app.config import JobConfig, parse_args
from app.contract import Link


def test_argv_round_trip_keeps_every_option():
    config = JobConfig(
        data="s3://b/k.csv",
        rows=3,
        background=20,
        nsamples="exact",
        batch_size=2,
        max_tasks=5,
        sweep=(10, 20),
        seed=7,
        tolerance=1e-8,
        link=Link.LOGIT,
        run_id="r1",
        output_dir="out",
        reference=False,
        groups="groups.toml",
        tol=0.004,
        background_weights="w",
    )
    assert parse_args(config.to_argv()) == config


def test_no_reference_switch():
    assert parse_args(["--no-reference"]) == JobConfig(reference=False)
    assert JobConfig(reference=False).to_argv() == ["--no-reference"]
    assert JobConfig().reference is True


def test_defaults_produce_no_arguments():
    assert JobConfig().to_argv() == []
    assert parse_args([]) == JobConfig()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "--rows must be at least 1"),
        ({"nsamples": 0}, "--nsamples must be at least 1"),
        ({"nsamples": "all"}, "whole number or 'exact'"),
        ({"test_size": 1.0}, "--test-size must be between 0 and 1"),
        ({"sweep": (10, 0)}, "--sweep needs positive"),
        ({"tol": 0.0}, "--tol must be a positive standard error"),
    ],
)
def test_invalid_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JobConfig(**kwargs)


def test_command_line_errors_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as caught:
        parse_args(["--nsamples", "lots"])
    assert caught.value.code == 2
    assert "argument --nsamples: must be a whole number or 'exact', got 'lots'" in capsys.readouterr().err
