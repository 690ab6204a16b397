"""`occamgd fit / predict / report` on a user's CSV: the model directory, predictions, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import occamgd.schedules
from occamgd import OccamMLPClassifier, export
from occamgd.cli import EXIT_BAD_INPUT, EXIT_OK, main
from occamgd.data.preprocessing import infer_task, read_csv
from occamgd.modeldir import MODELDIR_FORMAT, REQUIRED, fit_csv, load_model_dir
from occamgd.models import TabularMLP

FAST = ["--epochs", "3", "--hidden", "16", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(10.0, 2.0, n).round(2)
    label = np.where((colour == "red") | (size > 11), "keep", "drop")
    return pd.DataFrame({"size": size, "colour": colour, "weight": rng.normal(5.0, 1.0, n).round(3),
                         "label": label, "price": (3.0 * size + (colour == "red") * 5).round(2)})


def _csv(tmp_path, frame: pd.DataFrame, name: str = "data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _leftovers(directory) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_fit_predict_report_round_trip_for_classification(tmp_path, capsys):
    frame = _frame()
    data = _csv(tmp_path, frame)
    out = tmp_path / "model"
    assert main(["fit", str(data), "--target", "label", "--out", str(out), "--drop", "price", *FAST]) == EXIT_OK
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.sparse.safetensors",
                                               "preprocessing.json", "report.json", ".occamgd-model"}
    report = json.loads((out / "report.json").read_text())
    assert report["format_version"] == MODELDIR_FORMAT
    assert report["data"]["task"] == "classification" and report["data"]["classes"] == ["drop", "keep"]
    assert report["data"]["columns"] == ["size", "colour", "weight"]  # price dropped, target apart
    assert len(report["history"]) == 3 and 0 <= report["best_epoch"] < 3
    assert report["density"] == report["history"][report["best_epoch"]]["density"]
    assert set(report["holdback"]) == {"loss", "accuracy", "rows"} and report["holdback"]["rows"] == 18
    assert report["config"]["hidden"] == [16] and report["config"]["epochs"] == 3
    assert report["config"]["schedule"] == occamgd.schedules.DEFAULT_PRESET  # the preset used, named
    for name, size in report["files"].items():
        assert size == (out / name).stat().st_size
    assert _leftovers(tmp_path) == []

    assert main(["predict", str(out), str(data), "--out", str(tmp_path / "pred.csv")]) == EXIT_OK
    pred = pd.read_csv(tmp_path / "pred.csv", dtype={"label": str})
    assert list(pred.columns) == ["label", "proba_drop", "proba_keep"]
    assert len(pred) == len(frame) and set(pred["label"]) <= {"drop", "keep"}
    np.testing.assert_allclose(pred[["proba_drop", "proba_keep"]].sum(axis=1), 1.0, rtol=1e-9)
    assert (pred["label"] == np.where(pred["proba_keep"] > pred["proba_drop"], "keep", "drop")).all()

    capsys.readouterr()
    assert main(["predict", str(out), str(data)]) == EXIT_OK  # to standard output
    assert capsys.readouterr().out.splitlines()[0] == "label,proba_drop,proba_keep"

    assert main(["report", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "classification of 'label' (2 classes)" in printed
    assert "hold-back loss" in printed and f"{report['best_epoch']}*" in printed
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_option_picks_the_guarded_controller_and_the_report_says_so(tmp_path):
    out = tmp_path / "model"
    data = _csv(tmp_path, _frame())
    assert main(["fit", str(data), "--target", "label", "--out", str(out), "--schedule", "guarded", *FAST]) == EXIT_OK
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["schedule"] == "guarded" and report["history"][0]["action"] == "warmup"


def test_the_sparse_file_of_a_model_directory_predicts_exactly_like_the_dense_one(tmp_path):
    out = tmp_path / "model"
    assert main(["fit", str(_csv(tmp_path, _frame())), "--target", "label", "--out", str(out), *FAST]) == EXIT_OK
    shape = json.loads((out / "report.json").read_text())["model"]
    x = torch.randn(50, shape["in_features"])
    nets = []
    for layout in export.LAYOUTS:
        net = TabularMLP(shape["in_features"], shape["outputs"], hidden=shape["hidden"])
        export.load_into(net, out / export.FILE_NAMES[layout])
        nets.append(net)
    assert torch.equal(nets[0](x), nets[1](x))


def test_regression_is_inferred_for_real_valued_targets_and_predicts_in_their_units(tmp_path):
    frame = _frame(200)
    data = _csv(tmp_path, frame.drop(columns=["label"]))
    out = tmp_path / "model"
    assert main(["fit", str(data), "--target", "price", "--out", str(out), "--epochs", "8", "--hidden", "32",
                 "--quiet"]) == EXIT_OK
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["task"] == "regression" and "rmse" in report["holdback"]
    assert main(["predict", str(out), str(data), "--out", str(tmp_path / "p.csv")]) == EXIT_OK
    pred = pd.read_csv(tmp_path / "p.csv")["price"].to_numpy()
    # In the target's units (mean ≈ 31.7, std ≈ 7), not standardised ones.
    assert abs(pred.mean() - frame["price"].mean()) < 3.0
    assert np.corrcoef(pred, frame["price"])[0, 1] > 0.7


def test_labels_come_back_spelled_as_in_the_csv_in_numeric_order(tmp_path):
    frame = _frame()
    frame["label"] = np.where(frame["label"] == "keep", "010", "9")
    data = tmp_path / "d.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "model"
    assert main(["fit", str(data), "--target", "label", "--out", str(out), *FAST]) == EXIT_OK
    assert json.loads((out / "preprocessing.json").read_text())["classes"] == ["9", "010"]
    assert main(["predict", str(out), str(data), "--out", str(tmp_path / "p.csv")]) == EXIT_OK
    pred = pd.read_csv(tmp_path / "p.csv", dtype=str)
    assert set(pred["label"]) <= {"9", "010"} and list(pred.columns) == ["label", "proba_9", "proba_010"]


@pytest.mark.parametrize(
    "values, task",
    [
        (["a", "b", "a"], "classification"),
        (["1", "2", "3", "2"], "classification"),
        (["0.5", "1.25", "3"], "regression"),
        ([str(i) for i in range(25)], "regression"),  # more than 20 whole numbers: a quantity
        (["1", "2", "x"], "classification"),
    ],
)
def test_task_inference(values, task):
    assert infer_task(pd.Series(values, dtype=object)) == task


def test_an_explicit_task_overrides_inference_and_regression_refuses_text(tmp_path, capsys):
    frame = _frame()
    frame["grade"] = np.arange(len(frame)) % 3  # whole numbers: classes unless told otherwise
    data = _csv(tmp_path, frame.drop(columns=["label"]))
    out = tmp_path / "model"
    assert main(["fit", str(data), "--target", "grade", "--task", "regression", "--out", str(out), *FAST]) == EXIT_OK
    assert json.loads((out / "report.json").read_text())["data"]["task"] == "regression"
    data2 = _csv(tmp_path, frame, "with_label.csv")
    assert main(["fit", str(data2), "--target", "label", "--task", "regression", "--out", str(tmp_path / "m2"),
                 *FAST]) == EXIT_BAD_INPUT
    assert "target 'label' has the non-numeric value" in capsys.readouterr().err


def _fails(args, capsys) -> str:
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    # Warnings about the data may come first; the error is the last line.
    assert err.splitlines()[-1].startswith("occamgd: error: "), err
    return err


def test_unknown_target_names_it_and_lists_the_columns(tmp_path, capsys):
    data = _csv(tmp_path, _frame())
    err = _fails(["fit", str(data), "--target", "Label", "--out", str(tmp_path / "m"), *FAST], capsys)
    assert "column 'Label' is not in" in err and "columns present: size, colour, weight, label, price" in err
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


def test_a_single_class_target_is_refused(tmp_path, capsys):
    frame = _frame()
    frame["label"] = "keep"
    err = _fails(["fit", str(_csv(tmp_path, frame)), "--target", "label", "--out", str(tmp_path / "m"), *FAST],
                 capsys)
    assert "target 'label' has a single class ('keep')" in err
    assert not (tmp_path / "m").exists()


def test_garbage_in_a_numeric_column_names_the_column_value_and_line(tmp_path, capsys):
    frame = _frame().astype({"weight": object})
    frame.loc[7, "weight"] = "n/a"
    data = _csv(tmp_path, frame)
    err = _fails(["fit", str(data), "--target", "label", "--out", str(tmp_path / "m"), *FAST], capsys)
    assert "column 'weight' holds numbers but also 1 other values, such as 'n/a' on line 9" in err
    assert "--categorical weight" in err and not (tmp_path / "m").exists()
    # Told it is categorical, the same file trains.
    assert main(["fit", str(data), "--target", "label", "--out", str(tmp_path / "m"), "--categorical", "weight",
                 *FAST]) == EXIT_OK


def test_rows_with_an_empty_target_are_dropped_with_a_warning_and_counted(tmp_path, capsys):
    frame = _frame()
    frame.loc[[3, 50], "label"] = np.nan
    data = _csv(tmp_path, frame)
    out = tmp_path / "m"
    assert main(["fit", str(data), "--target", "label", "--out", str(out), *FAST]) == EXIT_OK
    err = capsys.readouterr().err
    assert "occamgd: warning: dropped 2 of 120 rows whose target 'label' is empty (lines 5, 52)" in err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["rows"] == 118 and report["data"]["rows_dropped_missing_target"] == 2
    frame["label"] = np.nan
    err = _fails(["fit", str(_csv(tmp_path, frame, "empty.csv")), "--target", "label", "--out",
                  str(tmp_path / "m2"), *FAST], capsys)
    assert "target 'label' is empty in all 120 rows" in err


@pytest.fixture
def model_dir(tmp_path):
    out = tmp_path / "model"
    assert main(["fit", str(_csv(tmp_path, _frame())), "--target", "label", "--out", str(out), *FAST]) == EXIT_OK
    return out


@pytest.mark.parametrize("missing", REQUIRED)
def test_an_incomplete_model_directory_names_the_missing_file(model_dir, tmp_path, capsys, missing):
    (model_dir / missing).unlink()
    err = _fails(["predict", str(model_dir), str(tmp_path / "data.csv")], capsys)
    assert f"model directory {model_dir} is incomplete: missing {missing}" in err


def test_a_newer_model_directory_format_is_refused(model_dir, tmp_path, capsys):
    report = json.loads((model_dir / "report.json").read_text())
    report["format_version"] = MODELDIR_FORMAT + 1
    (model_dir / "report.json").write_text(json.dumps(report))
    for command in (["predict", str(model_dir), str(tmp_path / "data.csv")], ["report", str(model_dir)]):
        err = _fails(command, capsys)
        assert f"format version {MODELDIR_FORMAT + 1}, written by a newer occamgd" in err


def test_a_report_without_its_fields_is_refused_by_name(model_dir, tmp_path, capsys):
    report = json.loads((model_dir / "report.json").read_text())
    del report["model"], report["history"]
    (model_dir / "report.json").write_text(json.dumps(report))
    err = _fails(["predict", str(model_dir), str(tmp_path / "data.csv")], capsys)
    assert "lacks the fields ['history', 'model']" in err


def test_predicting_without_training_columns_names_them_and_writes_nothing(model_dir, tmp_path, capsys):
    data = _csv(tmp_path, _frame(10).drop(columns=["colour", "weight", "label"]), "new.csv")
    err = _fails(["predict", str(model_dir), str(data), "--out", str(tmp_path / "p.csv")], capsys)
    assert "lacks the columns ['colour', 'weight']" in err
    assert not (tmp_path / "p.csv").exists()


def test_predicting_handles_unseen_categories_and_gaps_but_refuses_text_in_numbers(model_dir, tmp_path, capsys):
    frame = _frame(10).astype({"size": object})
    frame.loc[0, "colour"] = "purple"   # unseen: all zeros
    frame.loc[1, "size"] = np.nan      # missing: the training median
    ok = _csv(tmp_path, frame, "ok.csv")
    assert main(["predict", str(model_dir), str(ok), "--out", str(tmp_path / "p.csv")]) == EXIT_OK
    assert len(pd.read_csv(tmp_path / "p.csv")) == 10
    assert "1 of 10 rows hold categories not seen in training" in capsys.readouterr().err
    frame.loc[4, "size"] = "big"
    err = _fails(["predict", str(model_dir), str(_csv(tmp_path, frame, "bad.csv"))], capsys)
    assert "numeric column 'size' has the value 'big' on line 6" in err


def test_loaded_model_directory_predicts_like_the_trained_estimator(tmp_path):
    # The CLI rebuilds the estimator from JSON and safetensors: its outputs must be the trained ones.
    frame = _frame()
    data = _csv(tmp_path, frame)
    fit_csv(data, "label", tmp_path / "m", epochs=3, hidden=(16,), progress=False)
    loaded = load_model_dir(tmp_path / "m")
    X = loaded.preprocessing.encode(read_csv(data))
    y = (frame["label"] == "keep").astype(int).to_numpy()
    est = OccamMLPClassifier(hidden_layer_sizes=(16,), epochs=3, holdback=0.15, random_state=0).fit(X, y)
    np.testing.assert_array_equal(loaded.estimator.predict_proba(X), est.predict_proba(X))


def test_an_existing_output_directory_is_kept_unless_forced(model_dir, tmp_path, capsys):
    before = (model_dir / "report.json").read_bytes()
    data = str(tmp_path / "data.csv")
    err = _fails(["fit", data, "--target", "label", "--out", str(model_dir), "--seed", "1", *FAST], capsys)
    assert f"output directory {model_dir} exists" in err and "--force" in err
    assert (model_dir / "report.json").read_bytes() == before
    assert main(["fit", data, "--target", "label", "--out", str(model_dir), "--seed", "1", "--force", *FAST]) == EXIT_OK
    assert json.loads((model_dir / "report.json").read_text())["config"]["seed"] == 1
    assert _leftovers(tmp_path) == []


def test_an_interruption_while_writing_leaves_no_directory_behind(tmp_path, monkeypatch, capsys):
    import occamgd.modeldir as modeldir

    def interrupted(model, masks, directory, metadata=None):
        export.save_dense(model, masks, os.path.join(directory, "model.safetensors"))
        raise KeyboardInterrupt

    monkeypatch.setattr(modeldir, "save", interrupted)
    code = main(["fit", str(_csv(tmp_path, _frame())), "--target", "label", "--out", str(tmp_path / "m"), *FAST])
    assert code == 130
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []
