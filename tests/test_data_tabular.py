"""Tabular loaders: manifest + CSV, preprocessing fitted on training rows only, splits, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils import Bunch

import occamgd
from occamgd.data import (
    Table,
    default_manifest,
    load_openml,
    load_table,
    read_csv,
    read_manifest,
    table_from_frame,
)
from occamgd.data.tabular import BUNDLED_MANIFEST

COLORS = ["red", "green", "blue"]

# ``key`` (and the OpenML frame's ``id``) are kept on purpose: their identifier warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*looks like an identifier:UserWarning")


def frame(n=30, seed=0) -> pd.DataFrame:
    """20 'yes' and 10 'no' rows; ``key`` is unique so a row can be found after preprocessing."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "id": np.arange(1000, 1000 + n),
        "key": np.arange(n, dtype=float),
        "size": rng.normal(10, 3, n).round(2),
        "color": [COLORS[i % 3] for i in range(n)],
        "label": ["yes" if i % 3 else "no" for i in range(n)],
    })
    df.loc[[1, 4, 7, 11], "size"] = np.nan
    df.loc[[2, 9], "color"] = None
    return df


def write(tmp_path: Path, df: pd.DataFrame, entry=None, name="toy") -> Path:
    df.to_csv(tmp_path / f"{name}.csv", index=False)  # NaN / None are written as empty cells
    entry = {"target": "label", "drop": ["id"], "file": f"{name}.csv", **(entry or {})}
    (tmp_path / "manifest.json").write_text(json.dumps({"task": "classification", "datasets": {name: entry}}))
    return tmp_path


def raw(table: Table, X: np.ndarray) -> np.ndarray:
    """``X`` before the learned standardisation: imputed numbers and 0/1 one-hot columns."""
    return X * np.array(table.preprocessor.scale) + np.array(table.preprocessor.mean)


def keys(table: Table, X: np.ndarray) -> np.ndarray:
    """The original ``key`` of each preprocessed row."""
    return np.rint(raw(table, X)[:, table.feature_names.index("key")]).astype(int)


def test_table_is_encoded_with_the_manifest_columns(tmp_path):
    t = load_table("toy", write(tmp_path, frame()))
    assert t.feature_names == ["key", "size", "color=blue", "color=green", "color=red"]  # id dropped
    assert t.X_train.dtype == np.float32 and t.y_train.dtype == np.int64
    assert t.X_train.shape == (21, 5) and t.X_test.shape == (9, 5)
    assert t.classes == ["no", "yes"]
    assert not np.isnan(t.X_train).any() and not np.isnan(t.X_test).any()
    # Every encoded column is standardised on the training rows, one-hot ones included.
    assert np.abs(t.X_train.mean(0)).max() < 1e-5 and np.allclose(t.X_train.std(0), 1.0, atol=1e-5)
    X = np.concatenate([t.X_train, t.X_test])
    one_hot = np.rint(raw(t, X)[:, 2:])
    assert np.allclose(raw(t, X)[:, 2:], one_hot, atol=1e-5) and set(np.unique(one_hot)) == {0.0, 1.0}
    gaps = frame()["color"].isna().to_numpy()[keys(t, X)]
    assert (one_hot[~gaps].sum(1) == 1).all() and (one_hot[gaps] == 0).all()  # missing -> all zeros
    # Labels map back to the original strings.
    df = frame()
    for X, y in (t.train, t.test):
        assert (df.label.to_numpy()[keys(t, X)] == np.array(t.classes)[y]).all()


def test_statistics_come_from_the_training_rows_only(tmp_path):
    df = frame()
    t = load_table("toy", write(tmp_path, df))
    train_rows, test_rows = keys(t, t.X_train), keys(t, t.X_test)
    train = df.iloc[train_rows]
    pre = t.preprocessor
    imputed = train["size"].fillna(train["size"].median())
    assert pre.numeric["size"] == pytest.approx(train["size"].median())
    assert pre.mean[1] == pytest.approx(imputed.mean())
    assert pre.scale[1] == pytest.approx(imputed.std(ddof=0))
    assert np.abs(t.X_train.mean(0)).max() < 1e-5
    # Missing sizes take the training median.
    j = t.feature_names.index("size")
    for X, rows in ((t.X_train, train_rows), (t.X_test, test_rows)):
        gaps = df["size"].isna().to_numpy()[rows]
        assert np.allclose(X[gaps, j], (train["size"].median() - pre.mean[1]) / pre.scale[1])

    # Extreme values and a new category in the test rows change nothing learned from training.
    wild = df.copy()
    wild["size"] = wild["size"].astype(float)
    wild.loc[test_rows, "size"] = 1e6
    wild.loc[test_rows, "color"] = "purple"
    w = load_table("toy", write(tmp_path, wild))
    np.testing.assert_array_equal(w.X_train, t.X_train)
    assert w.preprocessor == pre
    assert w.feature_names == t.feature_names  # no column for 'purple'
    assert np.allclose(raw(w, w.X_test)[:, 2:], 0.0, atol=1e-5)  # unknown category -> all zeros
    assert (w.X_test[:, 1] > 1e4).all()


def test_split_is_stratified_and_deterministic_per_seed(tmp_path):
    root = write(tmp_path, frame())
    for seed in range(5):
        t = load_table("toy", root, seed=seed)
        assert np.bincount(t.y_test).tolist() == [3, 6] and np.bincount(t.y_train).tolist() == [7, 14]
    a, b, c = (load_table("toy", root, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert set(keys(a, a.X_test)) != set(keys(c, c.X_test))


def test_holdout_is_carved_from_training_and_kept_out_of_the_fitting(tmp_path):
    t = load_table("toy", write(tmp_path, frame()), holdout=0.2, test_size=0.3)
    n_train, n_hold, n_test = len(t.y_train), len(t.y_holdout), len(t.y_test)
    assert (n_train, n_hold, n_test) == (16, 5, 9)
    assert t.holdout == (t.X_holdout, t.y_holdout)
    all_keys = np.concatenate([keys(t, t.X_train), keys(t, t.X_holdout), keys(t, t.X_test)])
    assert sorted(all_keys) == list(range(30))
    assert np.bincount(t.y_holdout).tolist() == [2, 3]
    assert abs(t.X_train[:, 0].mean()) < 1e-5 and abs(t.X_holdout[:, 0].mean()) > 1e-3
    assert load_table("toy", tmp_path).holdout is None


def test_number_labels_keep_their_spelling_in_numeric_order_and_the_table_trains(tmp_path):
    df = frame().assign(label=["10" if i % 3 else "9" for i in range(30)])
    t = load_table("toy", write(tmp_path, df))
    assert t.classes == ["9", "10"]
    assert (np.array(t.classes)[t.y_train] == df.label.to_numpy()[keys(t, t.X_train)]).all()
    X_new = t.transform(df.drop(columns=["id", "label"]).head(2))
    assert X_new.shape == (2, 5) and X_new.dtype == np.float32
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    result = occamgd.fit(model, t.train, test=t.test, epochs=1, progress=False)
    assert len(result.history) == 1


# Bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("entry, column", [({"target": "Label"}, "Label"), ({"drop": ["id", "ID"]}, "ID")])
def test_a_manifest_column_absent_from_the_csv_is_named(tmp_path, entry, column):
    root = write(tmp_path, frame(), entry)
    with pytest.raises(ValueError, match=f"column '{column}' is not in CSV file") as info:
        load_table("toy", root)
    message = str(info.value)
    assert str(root / "toy.csv") in message and "id, key, size, color, label" in message


def test_a_target_with_one_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="target 'label' has a single class \\('yes'\\)"):
        load_table("toy", write(tmp_path, frame().assign(label="yes")))


def test_a_class_with_a_single_row_is_refused(tmp_path):
    df = frame()
    df.loc[0, "label"] = "maybe"
    with pytest.raises(ValueError, match="classes \\['maybe'\\].*single row"):
        load_table("toy", write(tmp_path, df))


def test_a_missing_target_cell_is_refused(tmp_path):
    df = frame()
    df.loc[5, "label"] = None
    with pytest.raises(ValueError, match="target 'label' is missing in 1 rows.*\\[5\\]"):
        load_table("toy", write(tmp_path, df))


def test_a_csv_without_rows_is_refused(tmp_path):
    root = write(tmp_path, frame().head(0))
    with pytest.raises(ValueError, match="toy.csv has no rows"):
        load_table("toy", root)
    (tmp_path / "toy.csv").write_text("")
    with pytest.raises(ValueError, match="toy.csv is empty"):
        load_table("toy", root)


def test_an_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'Toy'; known: toy"):
        load_table("Toy", write(tmp_path, frame()))


def test_missing_manifest_and_csv_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "manifest.json")):
        load_table("toy", tmp_path / "nowhere" / "manifest.json")
    root = write(tmp_path, frame())
    (root / "toy.csv").unlink()
    with pytest.raises(FileNotFoundError, match=str(root / "toy.csv")):
        load_table("toy", root)


def test_a_malformed_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"toy": {"file": "toy.csv"}}}))
    with pytest.raises(ValueError, match="dataset 'toy' needs \"file\" and \"target\""):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_manifest_counts_that_disagree_with_the_csv_are_refused(tmp_path):
    with pytest.raises(ValueError, match="has 30 rows but the manifest says 31"):
        load_table("toy", write(tmp_path, frame(), {"rows": 31}))
    with pytest.raises(ValueError, match="2 classes but the manifest says 3"):
        load_table("toy", write(tmp_path, frame(), {"rows": 30, "classes": 3}))


@pytest.mark.parametrize("kw", [{"test_size": 0}, {"test_size": 1.0}, {"holdout": 1.5}, {"test_size": "0.3"}])
def test_bad_split_fractions_are_refused(tmp_path, kw):
    with pytest.raises(ValueError, match="must be a float in \\(0, 1\\)"):
        load_table("toy", write(tmp_path, frame()), **kw)


@pytest.mark.parametrize("name, file, what", [
    ("toy", "../toy.csv", "dataset 'toy': file '../toy.csv'"),
    ("toy", "/tmp/toy.csv", "dataset 'toy': file '/tmp/toy.csv'"),
    ("toy", "C:\\toy.csv", "dataset 'toy': file 'C:\\\\toy.csv'"),
    ("toy", "sub/../../toy.csv", "dataset 'toy': file 'sub/../../toy.csv'"),
    ("../toy", "toy.csv", "dataset name '../toy'"),
    ("sub/toy", "toy.csv", "dataset name 'sub/toy'"),
])
def test_a_manifest_entry_outside_its_directory_is_refused(tmp_path, name, file, what):
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {name: {"file": file, "target": "label"}}}))
    with pytest.raises(ValueError, match=re.escape(f"{what} is outside the manifest's directory; accepted: a")):
        read_manifest(tmp_path)


def test_a_manifest_file_in_a_subdirectory_is_accepted(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", frame())
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"toy": {
        "file": "sub/toy.csv", "target": "label", "drop": ["id"]}}}))
    assert len(load_table("toy", tmp_path).y_test) == 9


def test_default_manifest_is_the_env_var_then_the_bundled_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCAMGD_TABULAR", str(write(tmp_path, frame())))
    assert default_manifest() == tmp_path
    assert len(load_table("toy").y_test) == 9
    monkeypatch.delenv("OCCAMGD_TABULAR")
    assert default_manifest() == BUNDLED_MANIFEST
    assert len(read_manifest()) == 15  # 12 UCI / carData tables and scikit-learn's wine, breast cancer, digits


# OpenML (fetch_openml faked: no network) ------------------------------------------------------
def test_load_openml_feeds_the_same_preprocessing(monkeypatch):
    df = frame()
    calls = []

    def fake_fetch_openml(**kw):
        calls.append(kw)
        data = df.drop(columns=["label"]).astype({"color": "category"})
        return Bunch(data=data, target=df["label"].astype("category").rename("class"), frame=None)

    monkeypatch.setattr("sklearn.datasets.fetch_openml", fake_fetch_openml)
    t = load_openml("toy", drop=["id"], seed=3)
    assert calls[0]["name"] == "toy" and calls[0]["as_frame"] is True
    assert t.feature_names == ["key", "size", "color=blue", "color=green", "color=red"]
    assert t.classes == ["no", "yes"]
    expected = table_from_frame(df, "label", drop=["id"], seed=3)
    np.testing.assert_array_equal(t.X_train, expected.X_train)
    np.testing.assert_array_equal(t.y_test, expected.y_test)
    load_openml(40945, target="class")
    assert calls[1]["data_id"] == 40945 and calls[1]["target_column"] == "class" and "name" not in calls[1]


# The bundled development suite ---------------------------------------------------------------
def test_every_bundled_table_loads_with_the_manifest_counts():
    manifest = json.loads(BUNDLED_MANIFEST.read_text())["datasets"]
    assert set(read_manifest(BUNDLED_MANIFEST)) == set(manifest)
    for name, entry in manifest.items():
        path = BUNDLED_MANIFEST.parent / entry["file"]
        assert int(read_csv(path).isna().to_numpy().sum()) == entry["missing_cells"], name
        t = load_table(name, BUNDLED_MANIFEST)
        assert len(t.y_train) + len(t.y_test) == entry["rows"], name
        assert len(t.classes) == entry["classes"] == len(np.unique(t.y_test)), name
        assert not any(f.split("=")[0] in [entry["target"], *entry["drop"]] for f in t.feature_names), name
        assert np.isfinite(t.X_train).all() and np.isfinite(t.X_test).all(), name
