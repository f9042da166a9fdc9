"""The one definition of the job's options, exit codes and summary keys, shared by the job and shapcluster.

This module imports nothing but the standard library: shapcluster imports it (and nothing else
from ``app``) to build its ``submit`` options, and the job builds its argparse parser from it,
so both parsers come from the fields of ``JobConfig`` below and cannot drift apart.

Each field's ``metadata`` (see ``option``) holds its help text, metavar, deprecated aliases,
environment fallback and whether shapcluster's ``submit`` shows it. ``parse_option`` turns the
text of one option into its value and checks it, raising ``OptionError`` with one message style
for both parsers (they exit 2 on it); ``check_config`` holds the checks across options.
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Final

EXACT: Final = "exact"
ALL_ROWS: Final = "all"
DEFAULT_LABEL: Final = "quality"  # the wine data's label, used when --label is not given
ERROR_FILE_ENV: Final = "SHAPCLUSTER_JOB_ERROR_FILE"  # the job writes its one-line error there


def new_run_id() -> str:
    """A results folder name (and job id): local time, then 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class ExitCode(enum.IntEnum):
    """Exit status of ``python -m app``; the same numbers as shapcluster's ExitStatus."""

    OK = 0
    ERROR = 1  # a bug: rerun with --debug and report it
    USAGE = 2  # a bad option value
    INPUT = 3  # bad input data, model or configuration, found before any Ray work
    MISMATCH = 4  # the explainers disagree beyond --tolerance


LOGIT_EPSILON: Final = 1e-15  # shap's LogitLink clips probabilities to [eps, 1 - eps]


class Link(enum.StrEnum):
    """The link the explanation is in (shap's ``link``); numpy is imported only to apply it."""

    IDENTITY = "identity"
    LOGIT = "logit"

    def apply(self, values: Any) -> Any:
        """The link of values of any shape (array-like in, float64 ndarray out); logit clips to
        [1e-15, 1 - 1e-15] first, like shap, so probabilities of exactly 0 or 1 stay finite.
        numpy is imported here, not at the top: the contract imports the standard library only."""
        import numpy as np

        array = np.asarray(values, dtype=np.float64)
        if self is Link.IDENTITY:
            return array
        clipped = np.clip(array, LOGIT_EPSILON, 1.0 - LOGIT_EPSILON)
        return np.asarray(np.log(clipped / (1.0 - clipped)))


class Algorithm(enum.StrEnum):
    """How the job explains: exact/sampled KernelSHAP, the exact tree path, shap's path-dependent
    TreeSHAP (a different quantity: no background), or auto (tree for supported models)."""

    KERNEL = "kernel"
    TREE = "tree"
    TREE_PATH_DEPENDENT = "tree-path-dependent"
    AUTO = "auto"


class Task(enum.StrEnum):
    """What the trained model predicts (--task); inferred from the label when not given."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"


# Keys every summary.json has, whichever algorithm ran (the job may add more; shapcluster adds
# "cluster" to a cluster run's). Tested against the summaries the job writes.
SUMMARY_KEYS: Final = (
    "run_id",
    "data",
    "label",
    "rows",
    "row_ids",
    "features",
    "feature_names",
    "classes",
    "background",
    "link",
    "model",
    "expected_value",
    "cpus",
    "wall_seconds",
    "ray_version",
    "python",
)
CLUSTER_KEY: Final = "cluster"


class OptionError(ValueError):
    """A bad option value; the message names the option and says what it takes."""


def option(
    default: Any,
    help: str,
    *,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
    envvar: str | None = None,
    toolkit: bool = True,
) -> Any:
    """A JobConfig field with its command-line description.

    ``aliases`` are deprecated spellings that still work and warn; ``toolkit`` False keeps the
    option off shapcluster's ``submit`` (the toolkit sets it itself, e.g. the Ray address).
    """
    meta = {"help": help, "metavar": metavar, "aliases": aliases, "envvar": envvar, "toolkit": toolkit}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class JobConfig:
    """The job's options: one frozen value, built by either parser and passed to the job.
    Field order is the order of ``to_argv``'s arguments and of the help."""

    data: str | None = option(
        None,
        "Data to train on or explain: CSV or Parquet, a path, s3://bucket/key or https:// URL "
        "(default: data/winequality-red.csv, else scikit-learn's bundled wine data).",
        metavar="PATH",
        envvar="SHAPCLUSTER_DATA",
    )
    label: str | None = option(
        None,
        "Label column (default: quality for the wine data; with --model only used to score).",
        metavar="COLUMN",
    )
    rows: int | str = option(
        16,
        "Rows to explain: the first N, 'all', or START:STOP (0-based, STOP excluded) of the test "
        "split (or of --explain's file).",
        metavar="<N|all|START:STOP>",
    )
    background: int = option(100, "Background rows (seeded sample of training rows).", metavar="N")
    nsamples: int | str | None = option(
        None,
        "Coalitions per row; 'exact' enumerates all 2^M-2 (default: exact when affordable, else "
        "shap's 2M+2048 with standard errors).",
        metavar="<int|exact>",
    )
    batch_size: int | None = option(None, "Rows per Ray task (default: balanced).", metavar="N")
    max_tasks: int | None = option(
        None, "Ray tasks at once (default: all CPUs).", metavar="N", aliases=("--workers",)
    )
    trees: int = option(100, "Trees in the forest.", metavar="N")
    sweep: tuple[int, ...] = option(
        (), "Train these forest sizes in parallel, e.g. 50,100,200; keep the best.", metavar="N,N,..."
    )
    test_size: float = option(0.2, "Held-out fraction, between 0 and 1.", metavar="FRACTION")
    seed: int = option(0, "Seed for split, forest, background, sampling.", metavar="N")
    tolerance: float = option(1e-6, "Largest allowed |ours - shap| and additivity error.", metavar="X")
    link: Link = option(Link.IDENTITY, "Link function of the explanation.")
    output_dir: str = option(
        "results",
        "Results go to OUTPUT_DIR/<run-id>/ (from a cluster: copied there when the job ends).",
        metavar="DIR",
        envvar="SHAPCLUSTER_OUTPUT_DIR",
    )
    run_id: str | None = option(
        None, "Results folder name, and the job id on a cluster (default: time-based).", metavar="NAME"
    )
    cpus: int | None = option(
        None, "CPUs of the local Ray instance (default: all); only with --local.", metavar="N"
    )
    ray_address: str | None = option(
        None, "Ray cluster to join (default: RAY_ADDRESS or a local instance).", toolkit=False
    )
    reference: bool = option(
        True, "Also run shap.KernelExplainer and compare (--no-reference: ours only, for benchmarks)."
    )
    groups: str | None = option(
        None,
        "JSON or TOML file: group name -> list of columns; each group is one player "
        "(columns in no group stay players of their own). A path the job can read.",
        metavar="PATH",
    )
    tol: float | None = option(
        None,
        "Sampling mode: double the coalitions (seeded) until every standard error is below TOL.",
        metavar="TOL",
    )
    background_weights: str | None = option(
        None,
        "Column of the data with each row's weight as a background row (not a feature); shap's "
        "weighted background. Duplicate background rows are merged into weights anyway.",
        metavar="COLUMN",
    )
    algorithm: Algorithm = option(
        Algorithm.KERNEL,
        "kernel: exact KernelSHAP beside shap.KernelExplainer; tree: exact interventional TreeSHAP, "
        "checked against exact KernelSHAP on a seeded sample; tree-path-dependent: shap's "
        "path-dependent TreeSHAP (a different quantity, not checked); auto: tree when the model is "
        "a supported tree ensemble, else kernel.",
        envvar="SHAPCLUSTER_ALGORITHM",
    )
    model: str | None = option(
        None,
        "A fitted scikit-learn estimator or Pipeline to explain instead of training one: a skops "
        "file (.skops, safe loading) or, with --trust-model, joblib/pickle; path, s3:// or https://.",
        metavar="PATH",
    )
    trust_model: bool = option(
        False,
        "Load --model even if it needs types outside skops' trusted set, or is joblib/pickle "
        "(which runs code when loaded): only for a model file you made yourself.",
    )
    explain: str | None = option(
        None,
        "Rows to explain as their own CSV or Parquet file with the data's columns (the first --rows "
        "of it; default: rows of the data's test split); path, s3:// or https://.",
        metavar="PATH",
    )
    background_data: str | None = option(
        None,
        "Background rows as their own CSV or Parquet file with the data's columns (a seeded sample "
        "of --background of them; default: a sample of the data's training split).",
        metavar="PATH",
    )
    features: tuple[str, ...] = option(
        (), "Columns to use, comma-separated (default: every column but the label).", metavar="A,B,..."
    )
    task: Task | None = option(
        None, "What to train: classification or regression (default: inferred from the label and printed)."
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, bool):
                try:
                    _check_value(f.name, value)
                except ValueError as err:
                    raise OptionError(f"{flag(f.name)} {err}") from None
                if f.name in _ENUMS:  # JobConfig(link="logit") holds Link.LOGIT
                    object.__setattr__(self, f.name, _ENUMS[f.name](value))
        check_config(self)

    def to_argv(self) -> list[str]:
        """Arguments for ``python -m app`` that reproduce this config (defaults omitted)."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default or value is None:
                continue
            if isinstance(value, bool):
                argv.append(flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
            elif isinstance(value, tuple):
                argv += [flag(f.name), ",".join(str(v) for v in value)]
            else:
                argv += [flag(f.name), str(value)]
        return argv


def flag(name: str) -> str:
    """The command-line spelling of a field: max_tasks -> --max-tasks."""
    return "--" + name.replace("_", "-")


def job_options() -> tuple[Field[Any], ...]:
    """JobConfig's fields in declaration order: what both parsers are generated from."""
    return fields(JobConfig)


def default_of(f: Field[Any]) -> Any:
    return None if f.default is MISSING else f.default


_ENUMS: dict[str, type[enum.StrEnum]] = {"link": Link, "algorithm": Algorithm, "task": Task}
_AT_LEAST_ONE = ("background", "trees", "batch_size", "max_tasks", "cpus")
_INTS = (*_AT_LEAST_ONE, "seed")
_FLOATS = ("test_size", "tolerance", "tol")


def choices(name: str) -> tuple[str, ...]:
    """The closed set of values of an option (empty when it takes any value of its type)."""
    return tuple(_ENUMS[name]) if name in _ENUMS else ()


def parse_option(name: str, text: str) -> Any:
    """The value of option ``name`` (a JobConfig field) from its command-line text, checked.

    Raises OptionError with a message of the form "must be ..., got '...'" (the parser adds
    the option's name) when the text is not a valid value for that option.
    """
    if name in _ENUMS:
        choices = _ENUMS[name]
        try:
            return choices(text)
        except ValueError:
            raise OptionError(f"must be one of {', '.join(choices)}, got {text!r}") from None
    if name == "rows":
        value: Any = text if text == ALL_ROWS or ":" in text else _number(int, text, "N, 'all' or START:STOP")
    elif name == "nsamples":
        value = EXACT if text == EXACT else _number(int, text, "a whole number or 'exact'")
    elif name == "sweep":
        parts = [part for part in text.split(",") if part.strip()]
        value = tuple(_number(int, part, "tree counts like 50,100,200") for part in parts)
    elif name == "features":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    elif name in _INTS:
        value = _number(int, text, "a whole number")
    elif name in _FLOATS:
        value = _number(float, text, "a number")
    else:
        value = text
    _check_value(name, value)
    return value


def _number(kind: type[int] | type[float], text: str, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise OptionError(f"must be {what}, got {text!r}") from None


def _check_value(name: str, value: Any) -> None:
    """One option's own range; OptionError says what it takes and what it got."""
    if name == "sweep" and any(n < 1 for n in value):
        raise OptionError(f"needs positive tree counts like 50,100,200, got {value}")
    if name == "rows":
        row_range(value, None)
    if name in _AT_LEAST_ONE and value < 1:
        raise OptionError(f"must be at least 1, got {value}")
    if name == "nsamples":
        if isinstance(value, str) and value != EXACT:
            raise OptionError(f"must be a whole number or 'exact', got {value!r}")
        if isinstance(value, int) and value < 1:
            raise OptionError(f"must be at least 1 (or 'exact'), got {value}")
    if name in _FLOATS and not math.isfinite(value):
        raise OptionError(f"must be a finite number, got {value}")
    if name == "test_size" and not 0.0 < value < 1.0:
        raise OptionError(f"must be between 0 and 1 (exclusive), got {value}")
    if name == "tolerance" and value < 0:
        raise OptionError(f"must be >= 0, got {value}")
    if name == "tol" and not value > 0:
        raise OptionError(f"must be a positive standard error, got {value}")
    if name == "run_id" and ("/" in value or "\\" in value or value in {"", ".", ".."}):
        raise OptionError(f"must be a plain folder name (no '/'), got {value!r}")
    if name in _ENUMS and value not in set(_ENUMS[name]):
        raise OptionError(f"must be one of {', '.join(_ENUMS[name])}, got {value!r}")


def row_range(rows: int | str, available: int | None) -> tuple[int, int]:
    """(start, stop) of ``--rows`` over ``available`` rows (None: unknown, only the syntax is
    checked). Raises OptionError for a bad value, or a START:STOP beyond the available rows."""
    if isinstance(rows, int) and not isinstance(rows, bool):
        if rows < 1:
            raise OptionError(f"must be at least 1, got {rows}")
        return 0, rows if available is None else min(rows, available)
    if rows == ALL_ROWS:
        return 0, -1 if available is None else available
    start_text, _, stop_text = str(rows).partition(":")
    try:
        start, stop = int(start_text), int(stop_text)
    except ValueError:
        raise OptionError(f"must be N, 'all' or START:STOP, got {rows!r}") from None
    if not 0 <= start < stop:
        raise OptionError(f"START:STOP needs 0 <= START < STOP, got {rows!r}")
    if available is not None and stop > available:
        raise OptionError(f"{rows} goes beyond the {available} rows there are")
    return start, stop


class ConfigError(OptionError):
    """Two options that cannot go together; ``option`` is the one the message is about."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def check_config(config: JobConfig) -> None:
    """Checks across options; raises ConfigError naming the option to change."""
    tree_paths = (Algorithm.TREE, Algorithm.TREE_PATH_DEPENDENT)
    if config.algorithm in tree_paths and config.link != Link.IDENTITY:
        raise ConfigError(
            "--algorithm",
            f"--algorithm {config.algorithm} explains the model's own output (identity link); "
            "drop --link logit or use --algorithm kernel",
        )
    if config.algorithm in tree_paths and (config.groups or config.background_weights):
        raise ConfigError(
            "--algorithm",
            f"--algorithm {config.algorithm} explains one value per column over an unweighted "
            "background; drop --groups/--background-weights or use --algorithm kernel",
        )
    if config.trust_model and config.model is None:
        raise ConfigError("--trust-model", "--trust-model only applies with --model PATH")


# ------------------------------------------------------------------ serving (issue 13)
# `shapcluster serve up` deploys app/serve.py's application with these settings. The toolkit
# imports them from here (stdlib only), app/serve.py reads them back from Serve's `args`.
SERVE_APP_NAME: Final = "shapcluster"  # the Serve application's name (serve status/down use it)
SERVE_IMPORT_PATH: Final = "app.serve:build_app"  # Serve's import_path of the application builder
SERVE_ROUTE_PREFIX: Final = "/"  # the application's HTTP route prefix
SERVE_EXPLAIN_ROUTE: Final = "/explain"  # POST {"rows": [{column: value, ...}, ...]}
SERVE_HEALTH_ROUTE: Final = "/healthz"  # GET, never needs the token
SERVE_INFO_ROUTE: Final = "/info"  # GET: model, features, classes, background, versions, image ID
SERVE_STATS_ROUTE: Final = "/stats"  # GET: every replica's counters and latency percentiles
SERVE_TOKEN_HEADER: Final = "Authorization"  # the token comes as "Authorization: Bearer <token>"
SERVE_TOKEN_SCHEME: Final = "Bearer"
SERVE_TOKEN_ENV: Final = "SHAPCLUSTER_SERVE_TOKEN"  # the token itself, in the replicas' environment
RAY_TOKEN_PATH_ENV: Final = "RAY_AUTH_TOKEN_PATH"  # Ray's own token file (the cluster's containers set it)
IMAGE_ID_ENV: Final = "SHAPCLUSTER_IMAGE_ID"  # the cluster image's ID, shown by GET /info


def _as_job(name: str, default: Any = MISSING) -> Any:
    """A ServeOptions field with JobConfig's field ``name``'s description (and default)."""
    job_field = {f.name: f for f in fields(JobConfig)}[name]
    return field(default=job_field.default if default is MISSING else default, metadata=job_field.metadata)


# The job's options that matter for serving, in the order of ServeOptions' fields.
SERVE_JOB_OPTIONS: Final = (
    "model",
    "trust_model",
    "data",
    "label",
    "features",
    "background_data",
    "background",
    "test_size",
    "seed",
    "algorithm",
    "nsamples",
    "link",
    "groups",
)
_SERVE_AT_LEAST_ONE = ("replicas", "max_batch_size", "max_rows_per_request")


@dataclass(frozen=True)
class ServeOptions:
    """What ``serve up`` deploys: the explainer (the job's own options, same names, help and
    checks) and how it is served. Built from ``to_args()``'s dict inside the application.

    The background: a seeded sample (``seed``) of ``background`` rows of ``background_data``
    when given (all of them when it has fewer), else of ``data``'s training split (``test_size``,
    ``seed``), exactly as the job draws it. ``data`` (else ``background_data``) also defines the
    columns and their types a request's rows must have. Paths are read where the replicas run.
    Raises OptionError (a ConfigError for two options that cannot go together) on a bad value.
    """

    model: str | None = _as_job("model")
    trust_model: bool = _as_job("trust_model")
    data: str | None = _as_job("data")
    label: str | None = _as_job("label")
    features: tuple[str, ...] = _as_job("features")
    background_data: str | None = _as_job("background_data")
    background: int = _as_job("background")
    test_size: float = _as_job("test_size")
    seed: int = _as_job("seed")
    algorithm: Algorithm = _as_job("algorithm")
    nsamples: int | str | None = _as_job("nsamples")
    link: Link = _as_job("link")
    groups: str | None = _as_job("groups")
    replicas: int = option(1, "Serve replicas (each loads the model and background once).", metavar="N")
    max_batch_size: int = option(
        64, "Rows one replica explains in one explainer call (concurrent requests merged).", metavar="N"
    )
    batch_wait_ms: float = option(
        10.0, "Milliseconds a replica waits for more rows before explaining a partial batch.", metavar="MS"
    )
    max_rows_per_request: int = option(
        1000, "Largest number of rows one request may send (more: HTTP 413).", metavar="N"
    )
    token_file: str | None = option(
        None,
        "File holding the bearer token every route but /healthz requires (a path on the replicas' "
        f"hosts; default: ${SERVE_TOKEN_ENV}, else Ray's own token at ${RAY_TOKEN_PATH_ENV} when Ray "
        "runs with token auth, else no token).",
        metavar="PATH",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, bool):
                continue
            try:
                if f.name in _SERVE_AT_LEAST_ONE and value < 1:
                    raise OptionError(f"must be at least 1, got {value}")
                if f.name == "batch_wait_ms" and not (math.isfinite(value) and value >= 0):
                    raise OptionError(f"must be a finite number >= 0, got {value}")
                if f.name in SERVE_JOB_OPTIONS:
                    _check_value(f.name, value)
            except ValueError as err:
                raise OptionError(f"{flag(f.name)} {err}") from None
            if f.name in _ENUMS:
                object.__setattr__(self, f.name, _ENUMS[f.name](value))
        if self.model is None:
            raise ConfigError("--model", "serving needs --model PATH: a fitted model saved with skops")
        if self.data is None and self.background_data is None:
            raise ConfigError(
                "--data",
                "serving needs --data or --background-data: the background and the columns come from it",
            )
        if self.algorithm == Algorithm.TREE_PATH_DEPENDENT:
            raise ConfigError(
                "--algorithm",
                "serving explains with --algorithm kernel, tree or auto (tree-path-dependent is "
                "shap's, a different quantity the job does not check); choose one of those",
            )
        self.job_config()  # the job's own checks across options (e.g. --algorithm tree with --link logit)

    def job_config(self) -> JobConfig:
        """The job's options of this service (what a batch job with the same explainer takes)."""
        return JobConfig(**{name: getattr(self, name) for name in SERVE_JOB_OPTIONS})

    @property
    def batch_wait_s(self) -> float:
        return self.batch_wait_ms / 1000.0

    def to_args(self) -> dict[str, Any]:
        """Serve's ``args`` for ``build_app``: JSON-plain (str, int, float, bool, list, None)."""
        args: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            args[f.name] = value
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeOptions:
        """The options of ``to_args()``'s dict (missing keys take their defaults). Raises
        OptionError naming unknown keys or a bad value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise OptionError(
                f"unknown serve option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        return cls(**values)


def serve_options() -> tuple[Field[Any], ...]:
    """ServeOptions' fields in declaration order (the CLI can generate ``serve up``'s options)."""
    return fields(ServeOptions)
