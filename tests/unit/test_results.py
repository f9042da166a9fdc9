"""The results a shap user reads: values CSVs with their context, explanation.npz, plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier

from app import etl, kernel_shap, model, results

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, results.ExplainedRows]:
    """A real forest on the real wine file, 3 rows explained exactly with our KernelSHAP."""
    from tests.conftest import WINE_CSV

    if not WINE_CSV.exists():
        pytest.skip(f"{WINE_CSV} is absent")
    dataset = etl.load_dataset(str(WINE_CSV))
    split = model.split_data(dataset, 0.2, 0)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(split.x_train, split.y_train)
    data = model.ExplainData(
        split.x_test[:3], split.test_index[:3], split.x_train[:20], labels=split.y_test[:3]
    )
    explanation = kernel_shap.explain(forest.predict_proba, data.rows, data.background)
    rows = results.ExplainedRows(
        row_ids=data.row_ids,
        data_lines=results.data_lines_of(data.row_ids, from_file=True),
        features=data.rows,
        feature_names=list(dataset.features.columns),
        labels=data.labels,
        outputs=forest.predict_proba(data.rows),
        expected_value=explanation.expected_value,
        class_names=[str(c) for c in forest.classes_],
    )
    out = tmp_path_factory.mktemp("results")
    results.write_csv(
        out / "shap_values.csv", results.values_frame(explanation.values, rows, rows.feature_names)
    )
    results.write_explanation(out / "explanation.npz", explanation.values, rows, rows.feature_names)
    return out, explanation.values, rows


def test_each_line_holds_its_rows_context_and_adds_up(explained, wine_csv: Path) -> None:
    out, _, rows = explained
    frame = pd.read_csv(out / "shap_values.csv")
    names = list(rows.feature_names)
    assert list(frame.columns) == [
        "row", "data_line", "class", "label", "expected_value", "model_output",
        *names, *[f"value:{n}" for n in names],
    ]  # fmt: skip
    assert len(frame) == 3 * len(rows.class_names)
    # Additivity from the file alone: SHAP values + expected value = model output, per line.
    total = frame[names].sum(axis=1) + frame["expected_value"]
    assert np.abs(total - frame["model_output"]).max() <= 1e-9
    # data_line is the 1-based line of the CSV file: that line holds the feature values and label.
    lines = wine_csv.read_text().splitlines()
    for _, line in frame.iterrows():
        cells = [float(v) for v in lines[int(line["data_line"]) - 1].split(";")]
        assert cells[:-1] == pytest.approx(line[[f"value:{n}" for n in names]].to_numpy(dtype=float))
        assert cells[-1] == line["label"]


def test_explanation_loads_into_shap_in_one_line_and_plots(explained, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    import shap

    out, values, rows = explained
    explanation = shap.Explanation(**np.load(out / "explanation.npz"))  # the README's line
    assert explanation.shape == values.shape
    np.testing.assert_array_equal(explanation.values, values)
    np.testing.assert_array_equal(explanation.data, rows.features)
    assert list(explanation.feature_names) == list(rows.feature_names)
    assert list(explanation.output_names) == list(rows.class_names)
    additive = explanation.values.sum(axis=1) + explanation.base_values
    assert np.abs(additive - rows.outputs).max() <= 1e-9
    shap.plots.beeswarm(explanation[:, :, 2], show=False)
    plt.savefig(tmp_path / "b.png")
    plt.close("all")
    shap.plots.waterfall(explanation[0, :, 2], show=False)
    plt.savefig(tmp_path / "w.png")
    plt.close("all")
    assert (tmp_path / "b.png").stat().st_size > 1000 and (tmp_path / "w.png").stat().st_size > 1000


def test_explanation_file_needs_no_pickle(explained) -> None:
    out, _, _ = explained
    with np.load(out / "explanation.npz", allow_pickle=False) as npz:
        assert all(npz[key].dtype != object for key in npz.files)


def test_plots_name_their_rows_and_keep_class_order(explained, tmp_path: Path) -> None:
    _, values, rows = explained
    names = results.write_plots(tmp_path, values, rows, rows.feature_names)
    assert names == [
        "shap_summary.png",
        *[f"beeswarm_class_{c}.png" for c in rows.class_names],
        f"waterfall_row_{rows.row_ids[0]}.png",
    ]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundled_data_has_no_data_line() -> None:
    assert results.data_lines_of([0, 5], from_file=False) is None
    np.testing.assert_array_equal(results.data_lines_of([0, 5], from_file=True), [2, 7])


def test_non_finite_values_are_refused(explained) -> None:
    _, values, rows = explained
    broken = values.copy()
    broken[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        results.values_frame(broken, rows, rows.feature_names)


def test_versions_name_the_libraries() -> None:
    found = results.versions()
    assert json.loads(json.dumps(found)) == found
    assert found["shap"] and found["scikit-learn"] and found["ray"]
