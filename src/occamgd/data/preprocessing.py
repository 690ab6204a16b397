"""How a table becomes numbers: the one encoding used by the bench, ``occamgd fit`` and its model
directory.

A table is read as text (:func:`read_csv`, or :func:`as_text` for a DataFrame), so labels keep
their spelling and a CSV and the DataFrame it came from encode alike. An empty cell, and only
that, is a missing value: ``NA``, ``?`` or ``None`` are values like any other.

:class:`Preprocessing` is learned on the training rows only and stored as JSON:

- a feature column whose every non-empty value is a number is **numeric**: a missing value
  becomes the training median;
- any other column, or one named ``categorical``, is **categorical** and one-hot encoded over
  its training categories; a missing value, like a category unseen in training, is all zeros.
  Missing is not evidence for the most frequent category, and all zeros keeps it apart from
  every category at the cost of no statistic;
- a column that is mostly numbers with a few other values is refused as garbage, naming a bad
  value and its line, unless named ``categorical``;
- every encoded feature (one-hot columns included) is then standardised with the training mean
  and standard deviation (a column holding one value is left unscaled).

Targets: :func:`infer_task` says classification when the target has a value that is not a
number, or when all its values are whole numbers with at most :data:`MAX_INTEGER_CLASSES`
distinct ones, regression otherwise; :func:`encode_target` numbers the classes in numeric order
when every label is a number (``"9"`` before ``"010"``), alphabetically otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidValueError, MissingFileError

#: A numeric target with at most this many distinct whole-number values is taken as classes.
MAX_INTEGER_CLASSES = 20
TASKS = ("classification", "regression")


# Reading ------------------------------------------------------------------------------------
def read_csv(path: str | os.PathLike):
    """A CSV as a DataFrame of strings: the first row is the header, ``NaN`` only for empty cells."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"CSV file {path} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as e:
        raise InvalidValueError(f"CSV file {path} is empty (no header, no rows)") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InvalidValueError(f"CSV file {path} cannot be parsed: {e}") from e


def as_text(frame):
    """A DataFrame as :func:`read_csv` would give it once written to CSV, and the columns it declares
    categorical.

    Every cell becomes its ``str`` (a float's is exact: it parses back to the same number);
    missing cells (``NaN``, ``None``, ``pd.NA``, an empty string) become ``NaN``; column names
    become strings. Columns of pandas ``category`` dtype (OpenML's nominal features) are returned
    as declared categorical, so category codes that look like numbers are not taken for numbers.
    """
    import pandas as pd

    text = {}
    for name, column in frame.items():
        cells = column.to_numpy(dtype=object)
        present = ~pd.isna(cells)
        present[present] = cells[present] != ""
        out = np.full(len(cells), np.nan, dtype=object)
        out[present] = [str(v) for v in cells[present]]
        text[str(name)] = out
    declared = [str(name) for name, column in frame.items() if isinstance(column.dtype, pd.CategoricalDtype)]
    return pd.DataFrame(text, index=frame.index), declared


def _numbers(column) -> tuple[Any, Any]:
    """The column parsed as float64 (NaN where empty) and the mask of non-empty cells that are not numbers."""
    import pandas as pd

    parsed = pd.to_numeric(column, errors="coerce").astype(np.float64)
    # "inf" parses as a number but no network can use it: treat it as the garbage it is.
    infinite = np.isinf(parsed)
    return parsed.mask(infinite), (parsed.isna() & column.notna()) | infinite


def _first_bad(column, bad) -> str:
    """``'VALUE' on line N`` for the first flagged cell (rows keep the CSV's index; the header is line 1)."""
    label = bad[bad].index[0]
    return f"{column.loc[label]!r} on line {int(label) + 2}"


# Targets ------------------------------------------------------------------------------------
def infer_task(labels) -> str:
    """``"classification"`` or ``"regression"`` for a target column of strings (see the module doc)."""
    parsed, bad = _numbers(labels)
    if bad.any():
        return "classification"
    values = parsed.dropna().to_numpy()
    whole = bool(np.all(values == np.round(values)))
    return "classification" if whole and len(np.unique(values)) <= MAX_INTEGER_CLASSES else "regression"


def encode_target(labels, task: str, source: str = "the data") -> tuple[np.ndarray, list[str] | None]:
    """Class codes (int64) and the classes, or the float targets and ``None``, for a target column
    of strings without missing values."""
    parsed, bad = _numbers(labels)
    if task == "regression":
        if bad.any():
            raise InvalidValueError(f"{source}: target {labels.name!r} has the non-numeric value "
                             f"{_first_bad(labels, bad)}; accepted for a regression target: numbers only")
        return parsed.to_numpy(), None
    if task != "classification":
        raise InvalidValueError(f"task must be one of {TASKS}, got {task!r}")
    classes = sorted(labels.unique().tolist(), key=(lambda s: (float(s), s)) if not bad.any() else None)
    if len(classes) < 2:
        raise InvalidValueError(f"{source}: target {labels.name!r} has a single class ({classes[0]!r}); "
                         "accepted: at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64), classes


# Features -----------------------------------------------------------------------------------
def standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of ``X``; a column holding one value gets scale 1
    (it carries no information, and its rounding-error deviation must not be blown up)."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[(X == X[:1]).all(axis=0)] = 1.0
    return mean, scale


@dataclass
class Preprocessing:
    """How rows of text become network inputs, and outputs become predictions; stored as JSON.

    ``columns`` are the feature columns in input order; ``numeric`` maps a column to its training
    median (the value of a missing cell); ``categorical`` maps a column to its sorted training
    categories; ``mean`` / ``scale`` standardise the encoded features; ``classes``
    (classification) are the target's labels as spelled; ``y_mean`` / ``y_scale`` (regression,
    set by the model directory) undo the target scaling.
    """

    target: str | None
    task: str | None
    columns: list[str]
    numeric: dict[str, float]
    categorical: dict[str, list[str]]
    mean: list[float]
    scale: list[float]
    classes: list[str] | None = None
    y_mean: float | None = None
    y_scale: float | None = None

    @property
    def features(self) -> list[str]:
        """Names of the encoded features, in the network's input order (``column=category`` for one-hot)."""
        names = []
        for column in self.columns:
            if column in self.numeric:
                names.append(column)
            else:
                names.extend(f"{column}={c}" for c in self.categorical[column])
        return names

    @classmethod
    def learn(cls, frame, target: str | None = None, task: str | None = None, *, categorical: Sequence[str] = (),
              classes: list[str] | None = None, source: str = "the data") -> "Preprocessing":
        """Learn the encoding from the training rows ``frame`` (text, as :func:`read_csv` gives):
        every column but ``target`` is a feature; ``categorical`` columns are one-hot encoded even
        when their values are numbers. ``task`` and ``classes`` are recorded as given."""
        columns = [c for c in frame.columns if c != target]
        unknown = [c for c in categorical if c not in columns]
        if unknown:
            raise InvalidValueError(f"categorical columns {unknown} are not feature columns of {source}; "
                             f"feature columns: {', '.join(columns)}")
        numeric, cats = {}, {}
        for column in columns:
            parsed, bad = _numbers(frame[column])
            if column not in categorical and not bad.any() and parsed.notna().any():
                numeric[column] = float(parsed.median())
                continue
            if column not in categorical and int(bad.sum()) < int(parsed.notna().sum()):
                raise InvalidValueError(
                    f"{source}: column {column!r} holds numbers but also {int(bad.sum())} other values, such "
                    f"as {_first_bad(frame[column], bad)}; accepted: numbers, or an empty cell for a missing "
                    f"value; or declare it categorical to encode it as categories (occamgd fit --categorical "
                    f"{column}, or the manifest's \"categorical\" list)"
                )
            values = sorted(frame[column].dropna().unique().tolist())
            if len(values) > 50 and len(values) > len(frame) // 2:
                warnings.warn(f"{source}: column {column!r} has {len(values)} distinct values in {len(frame)} "
                              "rows: if it is an identifier, drop it", stacklevel=2)
            cats[column] = values
        pre = cls(target=target, task=task, columns=columns, numeric=numeric, categorical=cats, mean=[], scale=[],
                  classes=classes)
        mean, scale = standardisation(pre.encode(frame, source))
        pre.mean, pre.scale = mean.tolist(), scale.tolist()
        return pre

    def encode(self, frame, source: str = "the data") -> np.ndarray:
        """The imputed and one-hot encoded features (float64, not standardised) of ``frame`` (text);
        extra columns are ignored."""
        import pandas as pd

        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise InvalidValueError(f"{source} lacks the columns {missing} the model was trained with; "
                             f"columns present: {list(frame.columns)}")
        parts = []
        for column in self.columns:
            values = frame[column]
            if column in self.numeric:
                parsed, bad = _numbers(values)
                if bad.any():
                    raise InvalidValueError(f"{source}: numeric column {column!r} has the value "
                                     f"{_first_bad(values, bad)}; accepted: a "
                                     "number, or an empty cell for a missing value")
                parts.append(parsed.fillna(self.numeric[column]).to_numpy()[:, None])
            else:
                # -1 for a missing or unseen value: its row stays all zeros.
                codes = pd.Index(self.categorical[column]).get_indexer(values)
                onehot = np.zeros((len(frame), len(self.categorical[column])))
                rows = np.flatnonzero(codes >= 0)
                onehot[rows, codes[rows]] = 1.0
                parts.append(onehot)
        return np.hstack(parts) if parts else np.zeros((len(frame), 0))

    def transform(self, frame, source: str = "the data") -> np.ndarray:
        """What the network sees: :meth:`encode` standardised with the training ``mean`` / ``scale`` (float64)."""
        return (self.encode(frame, source) - np.asarray(self.mean)) / np.asarray(self.scale)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> "Preprocessing":
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(doc))
        if missing:
            raise InvalidValueError(f"{source} lacks the fields {missing}; write the model directory again with occamgd fit")
        return cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc})
