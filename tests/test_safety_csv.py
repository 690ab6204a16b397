"""Class 2 of issue 16: the training data is never silently corrupted.

Ragged rows and duplicate (or empty) header names are refused naming the line or the names;
non-finite values and values whose standardisation overflows are refused before training with the
column, the line and what is accepted; the task is never inferred from a non-finite value; every
JSON file written is standard JSON.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import occamgd.modeldir as modeldir
from occamgd.cli import EXIT_BAD_INPUT, EXIT_OK, main
from occamgd.data.preprocessing import Preprocessing, as_text, infer_task, read_csv
from occamgd.errors import InvalidValueError

FAST = ["--epochs", "2", "--hidden", "8", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _lines(n: int = 30, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, n).round(3)
    y = (2 * x + rng.normal(0, 0.1, n)).round(3)
    return ["x,colour,y"] + [f"{a},{'red' if i % 2 else 'blue'},{b}" for i, (a, b) in enumerate(zip(x, y))]


def _write(tmp_path, lines, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started on data that should have been refused")

    monkeypatch.setattr(modeldir, "_estimator", refuse)


def _refused(tmp_path, lines, capsys, *says: str, target: str = "y", extra=()) -> str:
    data = lines if not isinstance(lines, list) else _write(tmp_path, lines)
    code = main(["fit", str(data), "--target", target, "--out", str(tmp_path / "m"), *FAST, *extra])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert err.startswith("occamgd: error: ") or "occamgd: warning" in err, err
    for s in says:
        assert s in err, err
    assert not (tmp_path / "m").exists()
    return err


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path} holds the non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


# Ragged rows and header names -----------------------------------------------------------------
def test_a_row_with_too_few_fields_is_refused_naming_the_line(tmp_path, capsys, no_training):
    lines = _lines()
    lines[4] = "0.5,red"  # line 5 of the file
    _refused(tmp_path, lines, capsys, "line 5 has 2 fields but the header has 3")


def test_a_row_with_too_many_fields_is_refused_alike(tmp_path, capsys, no_training):
    lines = _lines()
    lines[6] = "0.5,red,1.0,extra"
    _refused(tmp_path, lines, capsys, "line 7 has 4 fields but the header has 3")


def test_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    lines = _lines(5)
    lines[1] = '0.1,"two\nlines",1.0'  # one record over lines 2-3
    lines.insert(3, "")  # a blank line is skipped
    lines[5] = "0.2,red"
    path = _write(tmp_path, lines)
    with pytest.raises(InvalidValueError, match="line 7 has 2 fields"):
        read_csv(path)


def test_a_duplicated_header_name_is_refused_naming_it(tmp_path, capsys, no_training):
    lines = _lines()
    lines[0] = "x,y,y"  # pandas would rename the second to y.1 and train on a copy of the target
    _refused(tmp_path, lines, capsys, "'y'", "more than once", "columns 2 and 3")


def test_an_empty_header_name_is_refused_naming_its_position(tmp_path, capsys, no_training):
    lines = [line + "," for line in _lines()]  # a trailing comma on every line: an unnamed 4th column
    _refused(tmp_path, lines, capsys, "column 4 of the header has no name")


def test_a_dataframe_with_duplicated_names_is_refused():
    frame = pd.DataFrame([[1, 2, 3]], columns=["a", "b", "a"])
    with pytest.raises(InvalidValueError, match="'a'"):
        as_text(frame)


# Non-finite values and overflow ----------------------------------------------------------------
def test_inf_in_a_regression_target_is_refused_not_made_a_classification(tmp_path, capsys, no_training):
    lines = _lines(300)
    lines[10] = lines[10].rsplit(",", 1)[0] + ",inf"
    err = _refused(tmp_path, lines, capsys, "'y'", "'inf' on line 11", "finite")
    assert "class" not in err.split("accepted")[0]


@pytest.mark.parametrize("token", ["inf", "-inf", "nan", "NaN", "Infinity", "1e999"])
def test_the_task_is_never_inferred_from_a_non_finite_value(token):
    labels = pd.Series(["1.5", "2.25", token, "3"], dtype=object, name="y")
    with pytest.raises(InvalidValueError, match=f"{token!r} on line 4"):
        infer_task(labels)
    assert infer_task(pd.Series(["cat", "dog", token], dtype=object)) == "classification"  # text labels


def test_an_explicit_classification_takes_non_finite_spellings_as_labels(tmp_path):
    lines = _lines()
    for i in range(1, len(lines)):
        lines[i] = lines[i].rsplit(",", 1)[0] + ("," + ("inf" if i % 2 else "1"))
    data = _write(tmp_path, lines)
    assert main(["fit", str(data), "--target", "y", "--task", "classification", "--out", str(tmp_path / "m"),
                 *FAST]) == EXIT_OK


def test_a_huge_regression_target_is_refused_before_it_overflows_the_scaling(tmp_path, capsys, no_training):
    lines = _lines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",1e300"
    _refused(tmp_path, lines, capsys, "'y'", "'1e300' on line 4", "too large")


@pytest.mark.parametrize("value, says", [("1e300", "too large"), ("inf", "finite"), ("nan", "finite"),
                                         ("-Infinity", "finite")])
def test_a_huge_or_non_finite_feature_is_refused_naming_column_and_line(tmp_path, capsys, no_training, value,
                                                                         says):
    lines = _lines()
    lines[8] = value + "," + lines[8].split(",", 1)[1]
    _refused(tmp_path, lines, capsys, "'x'", f"{value!r} on line 9", says)


def test_a_column_of_mostly_non_finite_tokens_is_not_taken_as_categories(tmp_path, capsys, no_training):
    lines = ["x,colour,y"] + [f"{'nan' if i % 3 else i},red,{i % 2}" for i in range(30)]
    _refused(tmp_path, lines, capsys, "'x'", "finite")


def test_values_too_close_to_standardise_are_refused(tmp_path, capsys, no_training):
    lines = ["x,colour,y"] + [f"{(i % 3) * 1e-320!r},red,{i % 2}" for i in range(30)]
    _refused(tmp_path, lines, capsys, "'x'")


def test_huge_values_are_refused_in_the_library_too():
    frame = pd.DataFrame({"x": ["1", "2", "1e300", "3"], "y": ["a", "b", "a", "b"]}, dtype=object)
    with pytest.raises(InvalidValueError, match="'x'.*'1e300' on line 4"):
        Preprocessing.learn(frame, "y", "classification")


def test_every_json_written_is_standard_json(tmp_path):
    data = _write(tmp_path, _lines(60))
    out = tmp_path / "m"
    assert main(["fit", str(data), "--target", "y", "--out", str(out), *FAST]) == EXIT_OK
    for name in ("report.json", "preprocessing.json"):
        _strict_json(out / name)


def test_a_non_finite_metric_is_written_as_null(tmp_path, monkeypatch):
    from occamgd.integrations.sklearn import OccamMLPRegressor

    fit = OccamMLPRegressor.fit

    def with_a_nan(self, X, y):
        fit(self, X, y)
        self.history_[0]["train_loss"] = float("nan")
        return self

    monkeypatch.setattr(OccamMLPRegressor, "fit", with_a_nan)
    out = tmp_path / "m"
    assert main(["fit", str(_write(tmp_path, _lines(60))), "--target", "y", "--out", str(out), *FAST]) == EXIT_OK
    assert _strict_json(out / "report.json")["history"][0]["train_loss"] is None


def test_predicting_a_value_beyond_float32_is_refused_naming_it(tmp_path, capsys):
    data = _write(tmp_path, _lines(60))
    out = tmp_path / "m"
    assert main(["fit", str(data), "--target", "y", "--out", str(out), *FAST]) == EXIT_OK
    lines = _lines(5)
    lines[2] = "1e100," + lines[2].split(",", 1)[1]
    new = _write(tmp_path, lines, "new.csv")
    assert main(["predict", str(out), str(new)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "'x'" in err and "'1e100' on line 3" in err


def test_a_value_that_overflows_the_network_names_the_value_not_the_weights(tmp_path, capsys, monkeypatch):
    from occamgd.integrations.sklearn import OccamMLPRegressor

    data = _write(tmp_path, _lines(60))
    out = tmp_path / "m"
    assert main(["fit", str(data), "--target", "y", "--out", str(out), *FAST]) == EXIT_OK
    lines = _lines(5)
    lines[2] = "3e30," + lines[2].split(",", 1)[1]  # finite in float32 once standardised
    new = _write(tmp_path, lines, "new.csv")
    predict = OccamMLPRegressor.predict

    def overflowing(self, X):  # what a wide layer does with such a value
        y = predict(self, X)
        y[np.abs(X[:, 0]) > 1e20] = np.inf
        return y

    monkeypatch.setattr(OccamMLPRegressor, "predict", overflowing)
    assert main(["predict", str(out), str(new)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "'3e30' in column 'x'" in err and "line 3" in err and "damaged" not in err
    monkeypatch.setattr(OccamMLPRegressor, "predict", lambda self, X: np.full(len(X), np.nan))
    assert main(["predict", str(out), str(data)]) == EXIT_BAD_INPUT
    assert "damaged" in capsys.readouterr().err


def test_a_device_is_not_read_as_a_csv(tmp_path, capsys):
    assert main(["fit", "/dev/zero", "--target", "y", "--out", str(tmp_path / "m"), *FAST]) == EXIT_BAD_INPUT
    assert "not a regular file" in capsys.readouterr().err
