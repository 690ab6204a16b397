"""Issue 16, "also make clear": each a message naming the value, or a warning, never a traceback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from occamgd.cli import EXIT_BAD_INPUT, EXIT_OK, main

FAST = ["--epochs", "2", "--hidden", "8", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.normal(10.0, 2.0, n).round(2)
    return pd.DataFrame({"size": size, "colour": rng.choice(["red", "blue"], n),
                         "label": np.where(size > 10, "big", "small")})


def _csv(tmp_path, frame, name: str = "data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _run(args, capsys, code=EXIT_BAD_INPUT):
    got = main(args)
    captured = capsys.readouterr()
    assert got == code, captured.err
    return captured


def _fit(tmp_path, data, capsys, *extra, code=EXIT_BAD_INPUT, target="label"):
    return _run(["fit", str(data), "--target", target, "--out", str(tmp_path / "m"), *FAST, *extra], capsys, code)


def test_a_non_utf8_csv_names_the_byte_offset_and_line(tmp_path, capsys):
    data = tmp_path / "latin1.csv"
    data.write_bytes("size,colour,label\n1,red,big\n2,bl\xe9u,small\n".encode("latin-1"))
    err = _fit(tmp_path, data, capsys).err
    assert "not UTF-8" in err and "0xe9" in err and "byte offset 32" in err and "line 3" in err


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path, capsys):
    data = tmp_path / "bom.csv"
    data.write_bytes(b"\xef\xbb\xbf" + _frame().to_csv(index=False).encode())
    _fit(tmp_path, data, capsys, code=EXIT_OK, target="label")
    assert '"columns": [\n   "size"' in (tmp_path / "m" / "report.json").read_text()


def test_a_directory_given_as_the_csv_is_called_a_directory(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    err = _fit(tmp_path, tmp_path / "folder", capsys).err
    assert "is a directory" in err and "does not exist" not in err
    _csv(tmp_path, _frame())
    _fit(tmp_path, tmp_path / "data.csv", capsys, code=EXIT_OK)
    err = _run(["predict", str(tmp_path / "m"), str(tmp_path / "folder")], capsys).err
    assert "is a directory" in err


def test_a_csv_with_a_header_and_no_rows_gets_our_message(tmp_path, capsys):
    data = tmp_path / "empty.csv"
    data.write_text("size,colour,label\n")
    assert "has a header but no data rows" in _fit(tmp_path, data, capsys).err


def test_all_empty_features_get_our_message(tmp_path, capsys):
    frame = _frame()
    frame["size"], frame["colour"] = np.nan, np.nan
    err = _fit(tmp_path, _csv(tmp_path, frame), capsys).err
    assert "every feature column ('size', 'colour') is empty" in err


def test_a_diverging_loss_is_a_clean_exit_naming_the_epoch_and_the_extreme_column(tmp_path, capsys, monkeypatch):
    from occamgd import NonFiniteLossError
    from occamgd.integrations.sklearn import OccamMLPClassifier

    def diverge(self, X, y):
        raise NonFiniteLossError("training loss is nan at epoch 1; model, optimizer and masks were restored")

    monkeypatch.setattr(OccamMLPClassifier, "fit", diverge)
    frame = _frame()
    frame.loc[5, "size"] = 1e12
    err = _fit(tmp_path, _csv(tmp_path, frame), capsys).err
    assert err.startswith("occamgd: error: ") and "training diverged" in err and "epoch 1" in err
    assert "'size' on line 7" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("spellings", [("1", "1.0"), (" pos", "pos"), ("Yes", "yes")])
def test_labels_that_differ_only_in_spelling_are_warned_about(tmp_path, capsys, spellings):
    frame = _frame()
    frame["label"] = np.where(np.arange(len(frame)) % 3 == 0, spellings[0],
                              np.where(np.arange(len(frame)) % 3 == 1, spellings[1], "other"))
    err = _fit(tmp_path, _csv(tmp_path, frame), capsys, "--task", "classification", code=EXIT_OK).err
    assert "occamgd: warning:" in err and "separate classes" in err
    assert repr(spellings[0]) in err and repr(spellings[1]) in err


def test_an_id_like_column_is_warned_about(tmp_path, capsys):
    frame = _frame()
    frame.insert(0, "row", np.arange(1, len(frame) + 1))
    err = _fit(tmp_path, _csv(tmp_path, frame), capsys, code=EXIT_OK).err
    assert "occamgd: warning:" in err and "'row'" in err and "identifier" in err and "--drop row" in err


def test_a_categorical_id_column_is_warned_about(tmp_path, capsys):
    frame = _frame(120)
    frame.insert(0, "ticket", [f"T{i:04d}" for i in range(len(frame))])
    err = _fit(tmp_path, _csv(tmp_path, frame), capsys, code=EXIT_OK).err
    assert "occamgd: warning:" in err and "'ticket'" in err and "identifier" in err


def test_unseen_categories_at_predict_time_are_counted_and_warned(tmp_path, capsys):
    _fit(tmp_path, _csv(tmp_path, _frame()), capsys, code=EXIT_OK)
    new = _frame(10, seed=1)
    new.loc[[0, 3], "colour"] = "purple"
    new.loc[4, "colour"] = "green"
    err = _run(["predict", str(tmp_path / "m"), str(_csv(tmp_path, new, "new.csv"))], capsys, EXIT_OK).err
    assert "occamgd: warning:" in err and "3 of 10 rows hold categories not seen in training" in err
    assert "'purple' (2 rows)" in err and "'green' (1 row)" in err


def test_predictions_csv_escapes_cells_a_spreadsheet_would_run(tmp_path, capsys):
    frame = _frame()
    frame["label"] = np.where(frame["size"] > 10, "=HYPERLINK(\"http://x\")", "@SUM(1)")
    _fit(tmp_path, _csv(tmp_path, frame), capsys, code=EXIT_OK)
    out = tmp_path / "p.csv"
    _run(["predict", str(tmp_path / "m"), str(tmp_path / "data.csv"), "--out", str(out)], capsys, EXIT_OK)
    pred = pd.read_csv(out, dtype=str)
    assert set(pred["label"]) <= {"'=HYPERLINK(\"http://x\")", "'@SUM(1)"}
    # proba_... starts with a letter: no spreadsheet runs it.
    assert list(pred.columns) == ["label", "proba_=HYPERLINK(\"http://x\")", "proba_@SUM(1)"]


def test_negative_numbers_are_not_escaped(tmp_path, capsys):
    frame = _frame()
    frame["label"] = np.where(frame["size"] > 10, "-1", "1")
    _fit(tmp_path, _csv(tmp_path, frame), capsys, code=EXIT_OK)
    out = tmp_path / "p.csv"
    _run(["predict", str(tmp_path / "m"), str(tmp_path / "data.csv"), "--out", str(out)], capsys, EXIT_OK)
    pred = pd.read_csv(out, dtype=str)
    assert set(pred["label"]) <= {"-1", "1"} and "proba_-1" in pred.columns


def test_a_regression_prediction_stays_a_number(tmp_path, capsys):
    frame = _frame().drop(columns=["label"])
    frame["target"] = -frame["size"] * 3.5
    _fit(tmp_path, _csv(tmp_path, frame), capsys, target="target", code=EXIT_OK)
    out = _run(["predict", str(tmp_path / "m"), str(tmp_path / "data.csv")], capsys, EXIT_OK).out
    assert all(not line.startswith("'") for line in out.splitlines())


def test_a_file_given_as_the_model_directory_is_called_a_file(tmp_path, capsys):
    data = _csv(tmp_path, _frame())
    err = _run(["predict", str(data), str(data)], capsys).err
    assert "is a file, not a directory" in err


def test_a_long_text_field_is_read(tmp_path, capsys):
    frame = _frame()
    frame["note"] = ["x" * 200_000 if i == 0 else "short" for i in range(len(frame))]
    _fit(tmp_path, _csv(tmp_path, frame), capsys, "--drop", "note", code=EXIT_OK)
