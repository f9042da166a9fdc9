"""What explaining through typed columns costs: the decode of synthetic rows into a typed
DataFrame (app/tabular.py) against the model's own prediction on the same rows.

One process, one run, each timing the best of ``--repeat``: a Pipeline (OneHotEncoder on a text
column, StandardScaler on the rest, LogisticRegression) predicting on (a) a DataFrame it is given
directly, (b) ModelFunction.predict_proba on float64 codes (decode + the same prediction), and
(c) the decode alone. Prints JSON with the ratios; figures depend on the machine's load.

    python benchmarks/typed_columns.py --rows 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.tabular import ColumnCodec, ModelFunction


def best_of(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per predict call (a block)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.rows
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue", "black"], n),
            "size": rng.integers(1, 9, n),
            "organic": rng.random(n) < 0.5,
            "weight": rng.normal(size=n),
            "height": rng.normal(size=n),
        }
    )
    label = (frame["colour"] == "red") ^ (frame["weight"] > 0)
    encode = ColumnTransformer([("text", OneHotEncoder(), ["colour"])], remainder=StandardScaler())
    fitted = make_pipeline(encode, LogisticRegression()).fit(frame, label)
    codec = ColumnCodec.fit(frame)
    codes = codec.encode(frame)
    function = ModelFunction(fitted, codec, regression=False)
    assert np.array_equal(function.predict_proba(codes), fitted.predict_proba(frame))  # bit-identical
    direct = best_of(args.repeat, lambda: fitted.predict_proba(frame))
    through = best_of(args.repeat, lambda: function.predict_proba(codes))
    decode = best_of(args.repeat, lambda: codec.decode(codes))
    print(
        json.dumps(
            {
                "rows": n,
                "columns": frame.shape[1],
                "predict_on_dataframe_s": direct,
                "predict_through_codes_s": through,
                "decode_s": decode,
                "through_codes_over_direct": through / direct,
                "decode_share_of_through": decode / through,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
