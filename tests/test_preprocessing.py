"""The one tabular encoding: the bench's tables and `occamgd fit` agree, and its JSON reproduces it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from occamgd.data import load_table, read_csv, table_from_frame
from occamgd.modeldir import fit_csv, load_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def mixed(n: int = 40) -> pd.DataFrame:
    """A numeric column with gaps, a categorical one with gaps, and category codes that look like numbers."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "id": np.arange(n),
        "size": rng.normal(10.0, 3.0, n).round(3),
        "colour": rng.choice(["red", "green", "blue"], n).astype(object),
        "code": rng.choice(["01", "02", "10"], n),
        "label": np.where(np.arange(n) % 3 == 0, "b", "a"),
    })
    frame.loc[[1, 5, 12], "size"] = np.nan
    frame.loc[[2, 7], "colour"] = None
    return frame


def test_the_bench_and_the_cli_encode_the_same_training_rows_alike(tmp_path):
    mixed().to_csv(tmp_path / "mixed.csv", index=False)
    entry = {"file": "mixed.csv", "target": "label", "drop": ["id"], "categorical": ["code"]}
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"mixed": entry}}))
    table = load_table("mixed", tmp_path, test_size=0.3, seed=0)

    # The CLI trained on exactly the bench's training rows (load_table's documented split).
    rows = read_csv(tmp_path / "mixed.csv")
    train, test = train_test_split(np.arange(len(rows)), test_size=0.3, stratify=rows["label"], random_state=0)
    rows.iloc[train].to_csv(tmp_path / "train.csv", index=False)
    fit_csv(tmp_path / "train.csv", "label", tmp_path / "model", drop=["id"], categorical=["code"], epochs=1,
            hidden=(4,), progress=False)
    model = load_model_dir(tmp_path / "model")

    def network_input(part):
        X = model.preprocessing.encode(part)
        return ((X - model.estimator.mean_) / model.estimator.scale_).astype(np.float32)

    np.testing.assert_array_equal(table.X_train, network_input(rows.iloc[train]))
    np.testing.assert_array_equal(table.X_test, network_input(rows.iloc[test]))


def test_a_dataframe_encodes_like_the_csv_written_from_it(tmp_path):
    frame = mixed().astype({"colour": "category"})
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"mixed": {
        "file": "mixed.csv", "target": "label", "drop": ["id"], "categorical": ["code"]}}}))
    from_csv = load_table("mixed", tmp_path, seed=1)
    from_frame = table_from_frame(frame, "label", drop=["id"], categorical=["code"], seed=1)
    np.testing.assert_array_equal(from_frame.X_train, from_csv.X_train)
    np.testing.assert_array_equal(from_frame.X_test, from_csv.X_test)
    assert from_frame.feature_names == from_csv.feature_names == [
        "size", "colour=blue", "colour=green", "colour=red", "code=01", "code=02", "code=10"]


def test_the_stored_json_reproduces_the_encoding_exactly():
    from occamgd.data import Preprocessing, as_text

    text, _ = as_text(mixed().drop(columns="id"))
    pre = Preprocessing.learn(text.iloc[:30], "label", "classification", categorical=["code"], classes=["a", "b"])
    loaded = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())), "preprocessing.json")
    assert loaded == pre
    np.testing.assert_array_equal(loaded.transform(text.iloc[30:]), pre.transform(text.iloc[30:]))
    # Missing: the training median for a number, all zeros for a category.
    encoded = pre.encode(text.iloc[[1, 2]])
    assert encoded[0, 0] == pd.to_numeric(text["size"].iloc[:30]).median()
    assert (encoded[1, 2:5] == 0).all()


def test_a_column_holding_one_value_is_centred_not_blown_up():
    from occamgd.data.preprocessing import standardisation

    X = np.full((7, 2), 0.1)
    X[:, 1] = np.arange(7)
    mean, scale = standardisation(X)  # 0.1's mean is off by an ulp, its deviation ~1e-17
    assert scale[0] == 1.0 and scale[1] == pytest.approx(2.0)
    assert np.abs((X - mean) / scale)[:, 0].max() < 1e-15
