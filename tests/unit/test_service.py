"""The serving explainer without Ray (app/service.py): loaded like the job, rows checked per
request with a 4xx naming the row and column, values equal to the job's own functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app import etl, kernel_shap, model, model_file, service, tree_shap
from app.contract import ServeOptions
from app.serve import resolve_token

RNG = np.random.default_rng(5)
COLUMNS = ["colour", "size", "organic", "weight"]


def shop_frame(n: int = 80) -> pd.DataFrame:
    colour = RNG.choice(["red", "green", "blue"], size=n)
    size = RNG.integers(1, 5, size=n)
    organic = RNG.random(n) < 0.5
    weight = RNG.normal(size=n)
    score = (colour == "red") * 1.5 + size * 0.4 - organic * 0.7 + weight + RNG.normal(scale=0.3, size=n)
    grade = np.where(score > np.median(score), "good", "bad")
    return pd.DataFrame(
        {"colour": colour, "size": size, "organic": organic, "weight": weight, "grade": grade}
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> ServeOptions:
    folder = tmp_path_factory.mktemp("shop")
    frame = shop_frame()
    frame.to_csv(folder / "shop.csv", index=False)
    encode = ColumnTransformer(
        [("text", OneHotEncoder(handle_unknown="ignore"), ["colour"])], remainder=StandardScaler()
    )
    fitted = make_pipeline(encode, LogisticRegression(max_iter=500)).fit(frame[COLUMNS], frame["grade"])
    sio.dump(fitted, folder / "shop.skops")
    return ServeOptions(
        model=str(folder / "shop.skops"),
        data=str(folder / "shop.csv"),
        label="grade",
        background=15,
        trust_model=True,
        algorithm="auto",
        max_batch_size=8,
    )


GOOD_ROW: dict[str, Any] = {"colour": "red", "size": 3, "organic": True, "weight": 0.25}


def test_a_pipeline_is_served_on_its_raw_columns_equal_to_the_jobs_kernel(shop: ServeOptions) -> None:
    explainer = service.load_explainer(shop)
    assert explainer.algorithm == "kernel"  # auto: the model reads text and booleans
    assert explainer.names == tuple(COLUMNS) and explainer.classes == ("bad", "good")
    rows = [GOOD_ROW, {"colour": "blue", "size": 1, "organic": False, "weight": -1.5}]
    codes = service.parse_rows({"rows": rows}, explainer, 10)
    served = service.explain_codes(explainer, codes)

    # the job's own path, step by step: the data, its split, the background sample, the model
    dataset = etl.load_dataset(shop.data, "grade", shop.features)
    split = model.split_data(dataset, shop.test_size, shop.seed)
    background = model.get_data_to_explain(split, 1, shop.background, shop.seed).background
    assert shop.model is not None
    fitted = model.explained_model(model_file.load_model(shop.model, True), dataset, shop.model)
    job_codes = dataset.codec.encode(pd.DataFrame(rows)) if dataset.codec else None
    assert job_codes is not None
    np.testing.assert_array_equal(codes, job_codes)
    reference = kernel_shap.explain(fitted.predict_proba, job_codes, background, nsamples=explainer.nsamples)
    np.testing.assert_allclose(served.values, reference.values, rtol=0, atol=1e-9)
    np.testing.assert_allclose(served.expected_value, reference.expected_value, rtol=0, atol=1e-12)
    additivity = served.values.sum(axis=1) + served.expected_value - served.model_output
    assert np.abs(additivity).max() < 1e-9
    response = service.row_response(explainer, served, 1)
    assert set(response) == {"bad", "good"}
    assert set(response["good"]["values"]) == set(COLUMNS) and "standard_errors" not in response["good"]


def test_a_rows_values_do_not_depend_on_its_batch(shop: ServeOptions) -> None:
    explainer = service.load_explainer(shop)
    alone = service.explain_codes(explainer, service.parse_rows({"rows": [GOOD_ROW]}, explainer, 10))
    others = [
        {"colour": c, "size": s, "organic": s % 2 == 0, "weight": s / 3}
        for c in ("red", "blue")
        for s in (1, 4)
    ]
    batch = service.explain_codes(explainer, service.parse_rows({"rows": [*others, GOOD_ROW]}, explainer, 10))
    np.testing.assert_allclose(batch.values[-1], alone.values[0], rtol=0, atol=1e-12)


def test_sampling_mode_serves_standard_errors(shop: ServeOptions) -> None:
    options = ServeOptions.from_args(shop.to_args() | {"nsamples": 8})  # < 2^4 - 2: sampled
    explainer = service.load_explainer(options)
    served = service.explain_codes(explainer, service.parse_rows({"rows": [GOOD_ROW]}, explainer, 10))
    assert not served.exact and served.standard_errors is not None
    assert "standard_errors" in service.row_response(explainer, served, 0)["good"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ([GOOD_ROW], 422, r'the body must be \{"rows"'),
        ({"rows": [GOOD_ROW], "more": 1}, 422, r"the body must be .*got \['more', 'rows'\]"),
        ({"rows": "colour=red"}, 422, '"rows" must be a list of objects'),
        ({"rows": []}, 422, '"rows" is empty'),
        ({"rows": [GOOD_ROW] * 11}, 413, r"11 rows in one request; the limit is 10 \(max_rows_per_request\)"),
        ({"rows": [GOOD_ROW, 5]}, 422, r"rows\[1\] must be an object"),
        (
            {"rows": [{k: v for k, v in GOOD_ROW.items() if k != "size"}]},
            422,
            r"rows\[0\]: missing column\(s\) 'size'",
        ),
        ({"rows": [GOOD_ROW | {"price": 2}]}, 422, r"rows\[0\]: extra column\(s\) 'price'"),
        (
            {"rows": [GOOD_ROW | {"weight": "heavy"}]},
            422,
            r"rows\[0\]: column 'weight' takes a number, got 'heavy'",
        ),
        ({"rows": [GOOD_ROW | {"weight": float("nan")}]}, 422, r"column 'weight' takes a finite number"),
        ({"rows": [GOOD_ROW | {"weight": float("inf")}]}, 422, r"column 'weight' takes a finite number"),
        ({"rows": [GOOD_ROW | {"weight": 1e39}]}, 422, r"column 'weight' takes a finite number within"),
        ({"rows": [GOOD_ROW | {"weight": True}]}, 422, r"column 'weight' takes a number, got True"),
        ({"rows": [GOOD_ROW | {"size": 2.5}]}, 422, r"column 'size' takes a whole number, got 2.5"),
        ({"rows": [GOOD_ROW | {"organic": "yes"}]}, 422, r"column 'organic' takes true or false"),
        ({"rows": [GOOD_ROW | {"colour": 3}]}, 422, r"column 'colour' takes text, got 3"),
        ({"rows": [GOOD_ROW | {"colour": "pink"}]}, 422, r"column 'colour' has no value 'pink' in the data"),
        (
            {"rows": [GOOD_ROW, GOOD_ROW | {"weight": None}]},
            422,
            r"rows\[1\]: column 'weight' takes a number, got None",
        ),
    ],
)
def test_each_bad_request_gets_its_status_and_message(
    shop: ServeOptions, body: Any, status: int, message: str
) -> None:
    explainer = service.load_explainer(shop)
    with pytest.raises(service.RequestError, match=message) as caught:
        service.parse_rows(body, explainer, 10)
    assert caught.value.status == status


def test_the_tree_path_serves_the_jobs_tree_values(wine_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(wine_csv, sep=";")
    features = frame.drop(columns="quality")
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0, n_jobs=1)
    sio.dump(forest.fit(features, frame["quality"]), tmp_path / "wine.skops")
    options = ServeOptions(
        model=str(tmp_path / "wine.skops"),
        data=str(wine_csv),
        background=10,
        trust_model=True,
        algorithm="auto",
    )
    explainer = service.load_explainer(options)
    assert explainer.algorithm == "tree" and "supported tree ensemble" in explainer.algorithm_reason
    rows = features.iloc[:3].to_dict(orient="records")
    served = service.explain_codes(explainer, service.parse_rows({"rows": rows}, explainer, 10))
    reference = tree_shap.explain(forest, features.iloc[:3].to_numpy(), explainer.background)
    np.testing.assert_allclose(served.values, reference.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        served.model_output, forest.predict_proba(features.iloc[:3]), rtol=0, atol=1e-12
    )


def test_the_token_comes_from_the_file_the_env_or_rays_own(tmp_path: Path) -> None:
    options = ServeOptions(model="m.skops", data="d.csv")
    assert resolve_token(options, {})[0] is None
    assert resolve_token(options, {"SHAPCLUSTER_SERVE_TOKEN": " s3cret\n"}) == (
        "s3cret",
        "$SHAPCLUSTER_SERVE_TOKEN",
    )
    ray_file = tmp_path / "ray-auth-token"
    ray_file.write_text("raytoken\n")
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_file)}
    token, source = resolve_token(options, ray_env)
    assert token == "raytoken" and "raytoken" not in source
    assert resolve_token(options, {"RAY_AUTH_TOKEN_PATH": str(ray_file)})[0] is None  # auth off: no token
    own = tmp_path / "serve-token"
    own.write_text("mine\n")
    with_file = ServeOptions(model="m.skops", data="d.csv", token_file=str(own))
    assert resolve_token(with_file, ray_env | {"SHAPCLUSTER_SERVE_TOKEN": "x"})[0] == "mine"
    own.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        resolve_token(with_file, {})
