"""Issue 10: the user's own model (--model) on typed data, explained at the level of their columns;
the training path's tasks; Parquet in and out; skops/joblib loading and --trust-model."""

from __future__ import annotations

import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import shap
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app import etl, kernel_shap, model, model_file, results
from app.contract import Task
from app.errors import DataError
from app.tabular import ColumnCodec

RNG = np.random.default_rng(3)


def typed_frame(n: int = 60) -> pd.DataFrame:
    colour = RNG.choice(["red", "green", "blue"], size=n)
    size = RNG.integers(1, 5, size=n)
    organic = RNG.random(n) < 0.5
    weight = RNG.normal(size=n)
    score = (colour == "red") * 1.5 + size * 0.4 - organic * 0.7 + weight + RNG.normal(scale=0.3, size=n)
    label = np.where(score > np.median(score), "good", "bad")
    return pd.DataFrame(
        {"colour": colour, "size": size, "organic": organic, "weight": weight, "grade": label, "price": score}
    )


def pipeline() -> object:
    encode = ColumnTransformer(
        [("text", OneHotEncoder(handle_unknown="ignore"), ["colour"])], remainder=StandardScaler()
    )
    return make_pipeline(encode, LogisticRegression(max_iter=500))


@pytest.fixture
def typed_csv(tmp_path: Path) -> Path:
    path = tmp_path / "shop.csv"
    typed_frame().to_csv(path, index=False)
    return path


def test_columns_keep_their_types_and_codes_decode_exactly(typed_csv: Path) -> None:
    dataset = etl.load_dataset(str(typed_csv), "grade", ("colour", "size", "organic", "weight"))
    assert dataset.codec is not None
    assert dataset.codec.kinds == ("category", "int", "bool", "float")
    table = pd.read_csv(typed_csv)[["colour", "size", "organic", "weight"]]
    decoded = dataset.codec.decode(dataset.features.to_numpy())
    pd.testing.assert_frame_equal(decoded, table, check_exact=True)


def test_a_pipeline_with_text_categories_matches_shap_on_the_raw_columns_to_1e9(typed_csv: Path) -> None:
    columns = ["colour", "size", "organic", "weight"]
    frame = pd.read_csv(typed_csv)
    fitted = pipeline().fit(frame[columns], frame["grade"])
    dataset = etl.load_dataset(str(typed_csv), "grade", tuple(columns))
    function = model.explained_model(fitted, dataset, "shop.skops")
    codes = dataset.features.to_numpy()
    rows, background = codes[:4], codes[10:40]
    # The function is the model on the user's columns: same probabilities as the pipeline itself.
    np.testing.assert_array_equal(function.predict_proba(rows), fitted.predict_proba(frame[columns][:4]))
    ours = kernel_shap.explain(function.predict_proba, rows, background, nsamples=2**4 - 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.KernelExplainer(function.predict_proba, background)
        theirs = np.asarray(explainer.shap_values(rows, l1_reg=False, silent=True))
    assert ours.exact and ours.values.shape == theirs.shape == (4, 4, 2)
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)
    assert np.abs(ours.values[:, 0]).max() > 0.01  # the text column gets its own value


def test_a_regressor_is_explained_on_predict(typed_csv: Path) -> None:
    frame = pd.read_csv(typed_csv)
    fitted = make_pipeline(StandardScaler(), LinearRegression()).fit(
        frame[["size", "weight"]], frame["price"]
    )
    dataset = etl.load_dataset(str(typed_csv), "price", ("size", "weight"))
    function = model.explained_model(fitted, dataset, "m")
    codes = dataset.features.to_numpy()
    out = function.predict_proba(codes[:3])
    assert out.shape == (3, 1) and list(function.classes_) == ["price"]
    explained = kernel_shap.explain(function.predict_proba, codes[:3], codes[10:30])
    coef = fitted[-1].coef_ / fitted[0].scale_  # linear: phi_j = coef_j (x_j - mean_bg x_j)
    expect = coef * (codes[:3] - codes[10:30].mean(axis=0))
    np.testing.assert_allclose(explained.values[:, :, 0], expect, rtol=0, atol=1e-9)


def test_training_infers_text_classes_and_regression(typed_csv: Path) -> None:
    graded = etl.load_dataset(str(typed_csv), "grade", ("size", "weight"))
    split = model.split_data(graded, 0.25, 0)
    assert split.task is Task.CLASSIFICATION
    trained = model.train_forest(split, 5, 0)
    assert sorted(trained.model.classes_) == ["bad", "good"]
    priced = etl.load_dataset(str(typed_csv), "price", ("size", "weight"))
    split = model.split_data(priced, 0.25, 0)
    assert split.task is Task.REGRESSION
    trained = model.train_forest(split, 5, 0, "price")
    assert trained.model.predict_proba(split.x_test[:2]).shape == (2, 1)
    assert list(trained.model.classes_) == ["price"]


def test_a_continuous_label_for_a_classifier_says_so(typed_csv: Path) -> None:
    priced = etl.load_dataset(str(typed_csv), "price", ("size", "weight"))
    with pytest.raises(
        DataError,
        match=r"the label 'price' is continuous .* on line 2\), not classes: pass --task regression",
    ):
        model.split_data(priced, 0.25, 0, Task.CLASSIFICATION)
    graded = etl.load_dataset(str(typed_csv), "grade", ("size",))
    with pytest.raises(DataError, match=r"not numeric.*pass --task classification"):
        etl.infer_task(graded, Task.REGRESSION)


def test_the_models_columns_must_match_the_datas(typed_csv: Path) -> None:
    frame = pd.read_csv(typed_csv)
    fitted = pipeline().fit(frame[["colour", "size", "weight"]], frame["grade"])
    dataset = etl.load_dataset(str(typed_csv), "grade", ("colour", "size", "organic"))
    with pytest.raises(
        DataError, match=r"m\.skops: .*missing weight; extra organic\. Give the data those columns"
    ):
        model.explained_model(fitted, dataset, "m.skops")
    everything = etl.load_dataset(str(typed_csv), "grade", ("colour", "size", "organic", "weight"))
    with pytest.raises(
        DataError, match=r"missing none; extra organic\. Pass --features colour,size,weight\."
    ):
        model.explained_model(fitted, everything, "m.skops")


@pytest.mark.parametrize("package", ["xgboost", "lightgbm"])
def test_xgboost_and_lightgbm_sklearn_models_when_installed(typed_csv: Path, package: str) -> None:
    library = pytest.importorskip(package)
    frame = pd.read_csv(typed_csv)
    columns = ["size", "weight"]
    kind = library.XGBClassifier if package == "xgboost" else library.LGBMClassifier
    fitted = kind(n_estimators=5).fit(frame[columns], frame["grade"] == "good")
    dataset = etl.load_dataset(str(typed_csv), "grade", tuple(columns))
    function = model.explained_model(fitted, dataset, "m")
    codes = dataset.features.to_numpy()
    np.testing.assert_array_equal(function.predict_proba(codes[:3]), fitted.predict_proba(frame[columns][:3]))


def save_skops(estimator: object, path: Path) -> Path:
    sio.dump(estimator, path)
    return path


def test_skops_loads_safely_and_untrusted_types_are_listed(typed_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(typed_csv)
    fitted = pipeline().fit(frame[["colour", "size", "weight"]], frame["grade"])
    path = save_skops(fitted, tmp_path / "m.skops")
    untrusted = sio.get_untrusted_types(file=path)
    if untrusted:  # skops trusts scikit-learn's own types; whatever it does not, we refuse
        with pytest.raises(DataError, match="outside skops' trusted set: " + ", ".join(untrusted)):
            model_file.load_model(str(path))
    else:
        loaded = model_file.load_model(str(path))
        np.testing.assert_array_equal(loaded.predict_proba(frame[:5]), fitted.predict_proba(frame[:5]))
    loaded = model_file.load_model(str(path), trust=True)
    np.testing.assert_array_equal(loaded.predict_proba(frame[:5]), fitted.predict_proba(frame[:5]))


class Doubler(LinearRegression):
    """A type outside skops' trusted set."""


def test_a_skops_file_with_an_untrusted_type_is_refused_with_its_name(tmp_path: Path) -> None:
    x = RNG.normal(size=(20, 2))
    path = save_skops(Doubler().fit(x, x.sum(axis=1)), tmp_path / "d.skops")
    with pytest.raises(DataError, match=r"d\.skops: refused: .*trusted set: .*Doubler.*--trust-model"):
        model_file.load_model(str(path))
    assert model_file.load_model(str(path), trust=True).predict(x[:1]).shape == (1,)


def test_joblib_and_pickle_need_trust_because_they_run_code(tmp_path: Path) -> None:
    x = RNG.normal(size=(30, 3))
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, x[:, 0] > 0)
    for compress in (0, 3):
        path = tmp_path / f"m{compress}.joblib"
        joblib.dump(forest, path, compress=compress)
        with pytest.raises(
            DataError, match=r"refused: joblib and pickle files run code when they are loaded"
        ):
            model_file.load_model(str(path))
        loaded = model_file.load_model(str(path), trust=True)
        np.testing.assert_array_equal(loaded.predict_proba(x), forest.predict_proba(x))


def test_a_file_that_is_not_a_model_or_not_fitted(tmp_path: Path, typed_csv: Path) -> None:
    with pytest.raises(
        DataError, match=r"nope\.skops: no such file\. Pass --model with the path of your model file"
    ):
        model_file.load_model(str(tmp_path / "nope.skops"))
    with pytest.raises(DataError, match=r"shop\.csv: not a model file: expected a skops file"):
        model_file.load_model(str(typed_csv))
    path = save_skops(LogisticRegression(), tmp_path / "raw.skops")
    with pytest.raises(DataError, match="not fitted"):
        model_file.load_model(str(path), trust=True)
    joblib.dump({"a": 1}, tmp_path / "dict.joblib")
    with pytest.raises(DataError, match="not a model with predict"):
        model_file.load_model(str(tmp_path / "dict.joblib"), trust=True)


def test_parquet_in_keeps_types_and_equals_the_csv(typed_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(typed_csv)
    parquet = tmp_path / "shop.parquet"
    frame.to_parquet(parquet)
    from_parquet = etl.load_dataset(str(parquet), "grade")
    from_csv = etl.load_dataset(str(typed_csv), "grade")
    pd.testing.assert_frame_equal(from_parquet.features, from_csv.features, check_exact=True)
    assert from_parquet.codec == from_csv.codec


def test_values_parquet_equals_the_csv_to_the_last_bit(tmp_path: Path) -> None:
    values = RNG.normal(size=(3, 4, 2)) * 10.0 ** RNG.integers(-300, 300, size=(3, 4, 2))
    rows = results.ExplainedRows(
        row_ids=np.array([5, 9, 11]),
        data_lines=results.data_lines_of([5, 9, 11], from_file=True),
        features=RNG.normal(size=(3, 4)),
        feature_names=["a", "b", "c", "d"],
        labels=np.array(["bad", "good", "bad"]),
        outputs=RNG.normal(size=(3, 2)),
        expected_value=RNG.normal(size=2),
        class_names=["bad", "good"],
    )
    frame = results.values_frame(values, rows, ["a", "b", "c", "d"])
    written = results.write_values(tmp_path / "shap_values.csv", frame)
    assert written == ["shap_values.parquet", "shap_values.csv"]
    from_parquet = pd.read_parquet(tmp_path / "shap_values.parquet")
    from_csv = pd.read_csv(tmp_path / "shap_values.csv")
    pd.testing.assert_frame_equal(from_parquet, from_csv, check_exact=True, check_dtype=False)
    assert (
        from_parquet[["a", "b", "c", "d"]].to_numpy().tobytes()
        == from_csv[["a", "b", "c", "d"]].to_numpy().tobytes()
    )
    np.testing.assert_array_equal(from_parquet["a"].to_numpy(), values[:, 0, :].reshape(-1))


def test_codec_round_trip_of_a_parquet_categorical_column() -> None:
    frame = pd.DataFrame({"c": pd.Categorical(["x", "y", "x"]), "n": [1.5, 2.5, 3.5]})
    codec = ColumnCodec.fit(frame)
    pd.testing.assert_frame_equal(codec.decode(codec.encode(frame)), frame, check_exact=True)


def test_model_and_parquet_data_over_https(typed_csv: Path, tmp_path: Path) -> None:
    import http.server

    from tests.http_util import serve

    frame = pd.read_csv(typed_csv)
    fitted = pipeline().fit(frame[["colour", "size", "weight"]], frame["grade"])
    save_skops(fitted, tmp_path / "m.skops")
    frame.to_parquet(tmp_path / "shop.parquet")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler) as url:
        loaded = model_file.load_model(f"{url}/m.skops", trust=True)
        dataset = etl.load_dataset(f"{url}/shop.parquet", "grade", ("colour", "size", "weight"))
        with pytest.raises(DataError, match=r"missing\.skops: the server answered HTTP 404"):
            model_file.load_model(f"{url}/missing.skops")
    function = model.explained_model(loaded, dataset, "m")
    codes = dataset.features.to_numpy()
    np.testing.assert_array_equal(function.predict_proba(codes[:5]), fitted.predict_proba(frame[:5]))


def test_rows_of_another_file_get_the_datas_codes(typed_csv: Path, tmp_path: Path) -> None:
    columns = ("colour", "size", "organic", "weight")
    dataset = etl.load_dataset(str(typed_csv), "grade", columns)
    frame = pd.read_csv(typed_csv)
    frame[list(columns)][5:9].to_parquet(tmp_path / "explain.parquet")
    codes = etl.load_rows(str(tmp_path / "explain.parquet"), dataset, "--explain")
    np.testing.assert_array_equal(codes, dataset.features.to_numpy()[5:9])
    unknown = frame[list(columns)][:3].assign(colour=["red", "purple", "red"])
    unknown.to_csv(tmp_path / "unknown.csv", index=False)
    with pytest.raises(DataError, match=r"unknown\.csv: --explain does not fit .*'colour': value 'purple'"):
        etl.load_rows(str(tmp_path / "unknown.csv"), dataset, "--explain")
    frame[["colour", "size"]].to_csv(tmp_path / "narrow.csv", index=False)
    lacks = r"narrow\.csv: --background-data lacks the data's columns organic, weight"
    with pytest.raises(DataError, match=lacks):
        etl.load_rows(str(tmp_path / "narrow.csv"), dataset, "--background-data")


def test_rows_n_all_and_start_stop_of_the_test_split(typed_csv: Path) -> None:
    split = model.split_data(etl.load_dataset(str(typed_csv), "grade", ("size", "weight")), 0.25, 0)
    assert len(split.x_test) == 15
    first = model.get_data_to_explain(split, 4, 10)
    np.testing.assert_array_equal(first.rows, split.x_test[:4])
    every = model.get_data_to_explain(split, "all", 10)
    np.testing.assert_array_equal(every.row_ids, split.test_index)
    some = model.get_data_to_explain(split, "3:7", 10)
    np.testing.assert_array_equal(some.rows, split.x_test[3:7])
    np.testing.assert_array_equal(some.row_ids, split.test_index[3:7])
    with pytest.raises(DataError, match=r"--rows 10:20 goes beyond the 15 rows there are \(the test split\)"):
        model.get_data_to_explain(split, "10:20", 10)
