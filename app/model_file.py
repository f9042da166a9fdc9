"""Load the user's fitted model (--model): a skops file safely, joblib/pickle only when trusted.

skops (https://skops.readthedocs.io, "Secure persistence") stores a model as a zip of a JSON
schema plus arrays and loads only types it trusts unless told otherwise; joblib and pickle run
arbitrary code while loading, so the job refuses them unless --trust-model is given. Sources
are read like the data: a local path, s3://bucket/key or https:// URL.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

from app.errors import DataError
from app.etl import read_source

_PICKLE_RUNS_CODE = (
    "joblib and pickle files run code when they are loaded; pass --trust-model only for a file you "
    "made yourself, or save the model with skops (skops.io.dump(model, 'model.skops'))"
)


def load_model(source: str, trust: bool = False) -> Any:
    """The fitted estimator in ``source``.

    Raises DataError when the file is not a model (names the formats it takes), when it is
    joblib/pickle without ``trust``, when a skops file holds types outside skops' trusted set
    without ``trust`` (the message lists them), or when the object cannot predict or is unfitted.
    """
    raw = read_source(source, "--model", "model file")
    if zipfile.is_zipfile(io.BytesIO(raw)):
        estimator = _load_skops(raw, source, trust)
    elif _looks_pickled(raw):
        if not trust:
            raise DataError(f"{source}: refused: {_PICKLE_RUNS_CODE}.")
        estimator = _load_pickle(raw, source)
    else:
        raise DataError(
            f"{source}: not a model file: expected a skops file (.skops) or, with --trust-model, "
            "a joblib/pickle file of a fitted scikit-learn estimator."
        )
    check_fitted(estimator, source)
    return estimator


def _looks_pickled(raw: bytes) -> bool:
    """pickle (protocol 2+ starts with PROTO, 0x80) or joblib, plain or compressed (zlib, gzip,
    bz2, xz/lzma, lz4 magics)."""
    zlib = len(raw) > 1 and raw[0] == 0x78 and (raw[0] * 256 + raw[1]) % 31 == 0
    magics = (b"\x80", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"\x04\x22\x4d\x18", b"ZF")
    return zlib or raw.startswith(magics)


def _load_skops(raw: bytes, source: str, trust: bool) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(data=raw)
        if untrusted and not trust:
            raise DataError(
                f"{source}: refused: the skops file holds types outside skops' trusted set: "
                f"{', '.join(untrusted)}. Pass --trust-model if you made this file yourself."
            )
        return sio.loads(raw, trusted=untrusted or None)
    except DataError:
        raise
    except Exception as err:  # skops raises many kinds for a damaged or foreign zip
        raise DataError(f"{source}: not a readable skops model file ({type(err).__name__}: {err}).") from None


def _load_pickle(raw: bytes, source: str) -> Any:
    import joblib

    try:
        return joblib.load(io.BytesIO(raw))
    except (pickle.UnpicklingError, EOFError, ValueError, ImportError, AttributeError) as err:
        raise DataError(
            f"{source}: not a readable joblib/pickle model file ({type(err).__name__}: {err})."
        ) from None


def check_fitted(estimator: Any, source: str) -> None:
    """Raises DataError unless ``estimator`` predicts and is fitted."""
    if not hasattr(estimator, "predict"):
        raise DataError(f"{source}: holds a {type(estimator).__name__}, not a model with predict().")
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise DataError(
            f"{source}: the {type(estimator).__name__} in it is not fitted; fit it first."
        ) from None
    except TypeError:  # not a scikit-learn estimator: trust its predict
        pass
