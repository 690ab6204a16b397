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

Nothing is guessed around damage: a row with too few or too many fields, a header naming a
column twice or leaving one unnamed, a non-UTF-8 byte, a non-finite number (``inf``, ``nan``,
``1e999``) in a numeric column or target, and a value whose standardisation overflows are all
refused, naming the line (and the column) and what is accepted.

Targets: :func:`infer_task` says classification when the target has a value that is not a
number, or when all its values are whole numbers with at most :data:`MAX_INTEGER_CLASSES`
distinct ones, regression otherwise (never from a non-finite value: that is refused);
:func:`encode_target` numbers the classes in numeric order when every label is a number
(``"9"`` before ``"010"``), alphabetically otherwise, and warns about labels that differ only in
spelling (``1`` and ``1.0``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
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
def _refuse_names(names: list[str], source: str, where: str = "of the header") -> None:
    """Refuse empty and duplicated column names (pandas would rename them, and train on the copies)."""
    for i, name in enumerate(names):
        if name == "":
            raise InvalidValueError(f"{source}: column {i + 1} {where} has no name; accepted: a name for every "
                                    "column (a trailing comma on every line makes an extra, unnamed column)")
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(name, []).append(i + 1)
    twice = {name: at for name, at in seen.items() if len(at) > 1}
    if twice:
        which = "; ".join(f"{name!r} (columns {' and '.join(map(str, at))})" for name, at in twice.items())
        raise InvalidValueError(f"{source}: the header names a column more than once: {which}; accepted: "
                                "distinct names (rename or remove the copies)")


def _decode(data: bytes, path: Path) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InvalidValueError(f"CSV file {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset "
                                f"{e.start} (line {line}, byte {column} of that line) is not valid UTF-8; accepted: "
                                "UTF-8; convert the file (for example iconv -f latin1 -t utf-8)") from None
    return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark is not part of the header


def read_csv(path: str | os.PathLike):
    """A CSV as a DataFrame of strings: the first row is the header, ``NaN`` only for empty cells.

    The frame's index is the file's line number minus 2 (0 for the first row after a one-line
    header), so ``index + 2`` names the line of a row even after blank lines or quoted newlines.
    Refused, naming the line or the names: a row whose field count differs from the header's, an
    empty or duplicated header name, a byte that is not UTF-8.
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        raise InvalidValueError(f"CSV file {path} is a directory; accepted: a CSV file")
    if not path.exists():
        raise MissingFileError(f"CSV file {path} does not exist")
    if not (path.is_file() or path.is_fifo()):  # a pipe (/dev/stdin) streams a file; a device never ends
        raise InvalidValueError(f"CSV file {path} is not a regular file (a device or socket); accepted: a CSV file")
    text = _decode(path.read_bytes(), path)
    source = f"CSV file {path}"
    # pandas has no limit on a field's length; the csv module's default (128 KiB) would refuse long texts.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    header, rows, lines, done = None, [], [], 0
    try:
        for record in reader:
            start, done = done + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if header is None:
                header = record
                _refuse_names(header, source)
                continue
            if len(record) != len(header):
                raise InvalidValueError(f"{source}: line {start} has {len(record)} fields but the header has "
                                        f"{len(header)}; accepted: one field per column on every line (an empty "
                                        "field for a missing value)")
            rows.append(record)
            lines.append(start)
    except csv.Error as e:
        raise InvalidValueError(f"{source} cannot be parsed near line {reader.line_num}: {e}") from None
    if header is None:
        raise InvalidValueError(f"{source} is empty (no header, no rows)")
    cells = np.array(rows, dtype=object).reshape(len(rows), len(header))
    cells[cells == ""] = np.nan
    return pd.DataFrame({name: cells[:, i] for i, name in enumerate(header)},
                        index=pd.Index(np.asarray(lines, dtype=np.int64) - 2), dtype=object)


def as_text(frame):
    """A DataFrame as :func:`read_csv` would give it once written to CSV, and the columns it declares
    categorical.

    Every cell becomes its ``str`` (a float's is exact: it parses back to the same number);
    missing cells (``NaN``, ``None``, ``pd.NA``, an empty string) become ``NaN``; column names
    become strings. Columns of pandas ``category`` dtype (OpenML's nominal features) are returned
    as declared categorical, so category codes that look like numbers are not taken for numbers.
    """
    import pandas as pd

    _refuse_names([str(name) for name in frame.columns], "the frame", "of the frame")
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


#: Spellings that parse as a non-finite number (besides the infinities pandas parses, and 1e999).
_NAN_SPELLINGS = ("nan", "+nan", "-nan")


def _numbers(column) -> tuple[Any, Any]:
    """The column parsed as float64 (NaN where empty or not a finite number) and the mask of non-empty
    cells that are not finite numbers."""
    parsed, bad, _ = _parse(column)
    return parsed, bad


def _parse(column) -> tuple[Any, Any, Any]:
    """:func:`_numbers` and the mask of cells that are non-finite numbers (``inf``, ``nan``, ``1e999``)."""
    import pandas as pd

    parsed = pd.to_numeric(column, errors="coerce").astype(np.float64)
    infinite = np.isinf(parsed)
    present = column.notna()
    text = column.where(present, "").astype(str).str.strip().str.lower()
    nonfinite = infinite | (parsed.isna() & present & text.isin(_NAN_SPELLINGS))
    # No network can use a non-finite number: it is refused, never a value or a category.
    return parsed.mask(infinite), (parsed.isna() & present) | infinite, nonfinite


def where(label) -> str:
    """Where a row is: ``line N`` of its CSV (:func:`read_csv` indexes rows by line - 2), or ``row
    LABEL`` for a DataFrame whose index is not numbers."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return f"line {int(label) + 2}"
    return f"row {label!r}"


def _first_bad(column, bad) -> str:
    """``'VALUE' on line N`` for the first flagged cell (rows keep the CSV's index; the header is line 1)."""
    label = bad[bad].index[0]
    return f"{column.loc[label]!r} on {where(label)}"


def _refuse_nonfinite(column, nonfinite, what: str, source: str, categorical_hint: bool) -> None:
    hint = (f"; or declare it categorical to take the values as categories (occamgd fit --categorical "
            f"{column.name})" if categorical_hint else "")
    raise InvalidValueError(f"{source}: {what} {column.name!r} has the non-finite value "
                            f"{_first_bad(column, nonfinite)}; accepted: finite numbers, or an empty cell for a "
                            f"missing value{hint}")


def _refuse_overflow(column, parsed, what: str, source: str) -> None:
    label = parsed.abs().idxmax()
    raise InvalidValueError(
        f"{source}: {what} {column.name!r} has the value {column.loc[label]!r} on {where(label)}, too large to "
        "standardise (its squared deviation overflows float64); accepted: magnitudes up to about 1e150: rescale "
        "the column (other units, or a logarithm)")


# Targets ------------------------------------------------------------------------------------
def infer_task(labels, source: str = "the data") -> str:
    """``"classification"`` or ``"regression"`` for a target column of strings (see the module doc).

    A target of numbers with a non-finite value (``inf``, ``nan``) is refused: the task is not
    inferred from it (pass the task to take every value as a label)."""
    parsed, bad, nonfinite = _parse(labels)
    if (bad & ~nonfinite).any():
        return "classification"
    if nonfinite.any():
        raise InvalidValueError(
            f"{source}: target {labels.name!r} has the non-finite value {_first_bad(labels, nonfinite)}, so its "
            "task is not inferred; accepted: finite numbers (an empty cell drops the row), or --task classification "
            "to take every value as a label")
    values = parsed.dropna().to_numpy()
    whole = bool(np.all(values == np.round(values)))
    return "classification" if whole and len(np.unique(values)) <= MAX_INTEGER_CLASSES else "regression"


def encode_target(labels, task: str, source: str = "the data") -> tuple[np.ndarray, list[str] | None]:
    """Class codes (int64) and the classes, or the float targets and ``None``, for a target column
    of strings without missing values."""
    parsed, bad, nonfinite = _parse(labels)
    if task == "regression":
        if nonfinite.any():
            _refuse_nonfinite(labels, nonfinite, "target", source, categorical_hint=False)
        if bad.any():
            raise InvalidValueError(f"{source}: target {labels.name!r} has the non-numeric value "
                             f"{_first_bad(labels, bad)}; accepted for a regression target: numbers only")
        values = parsed.to_numpy()
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(values.mean()) and np.isfinite(values.std())
        if not finite:
            _refuse_overflow(labels, parsed, "target", source)
        return values, None
    if task != "classification":
        raise InvalidValueError(f"task must be one of {TASKS}, got {task!r}")
    classes = sorted(labels.unique().tolist(), key=(lambda s: (float(s), s)) if not bad.any() else None)
    _warn_spellings(labels.name, classes, source)
    if len(classes) < 2:
        raise InvalidValueError(f"{source}: target {labels.name!r} has a single class ({classes[0]!r}); "
                         "accepted: at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64), classes


def _spelling(label: str) -> tuple:
    """What a label means to a reader: its number, or its text without case and surrounding spaces."""
    try:
        value = float(label)
    except ValueError:
        value = math.nan
    return ("number", value) if math.isfinite(value) else ("text", label.strip().casefold())


def _warn_spellings(name, classes: list[str], source: str) -> None:
    """Warn about labels that differ only in spelling (``1`` / ``1.0``, `` pos`` / ``pos``): separate classes."""
    groups: dict[tuple, list[str]] = {}
    for c in classes:
        groups.setdefault(_spelling(c), []).append(c)
    same = [g for g in groups.values() if len(g) > 1]
    if same:
        shown = "; ".join(" and ".join(map(repr, g)) for g in same[:5])
        warnings.warn(f"{source}: target {name!r} has labels that differ only in spelling and are taken as separate "
                      f"classes: {shown}{'; ...' if len(same) > 5 else ''}; if they are one class, spell them alike "
                      "in the CSV", stacklevel=3)


#: A column name that says "identifier".
_ID_NAME = re.compile(r"(^|[^a-z])(id|ids|index|key|uuid)$|^(id|row|rownum|row_?number)([^a-z]|$)", re.IGNORECASE)


def _warn_identifier(column, parsed, source: str) -> None:
    """Warn about a numeric column that looks like a row identifier: distinct whole numbers, one per
    row, in file order or under an identifier's name."""
    values = parsed.dropna()
    if len(values) < 20 or len(values) < len(parsed) or not values.is_unique:
        return
    if not bool(np.all(values.to_numpy() == np.round(values.to_numpy()))):
        return
    ordered = values.sort_index().is_monotonic_increasing
    if ordered or _ID_NAME.search(str(column.name)):
        warnings.warn(f"{source}: column {column.name!r} looks like an identifier ({len(values)} distinct whole "
                      f"numbers, one per row{', increasing' if ordered else ''}): if it is, drop it "
                      f"(occamgd fit --drop {column.name}, or the manifest's \"drop\" list)", stacklevel=3)


# Features -----------------------------------------------------------------------------------
def standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of ``X``; a column holding one value gets scale 1
    (it carries no information, and its rounding-error deviation must not be blown up)."""
    with np.errstate(over="ignore", invalid="ignore"):
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

    @property
    def feature_columns(self) -> list[str]:
        """For each encoded feature, the column it comes from."""
        return [c for c in self.columns for _ in ([c] if c in self.numeric else self.categorical[c])]

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
            parsed, bad, nonfinite = _parse(frame[column])
            if column not in categorical and not bad.any() and parsed.notna().any():
                numeric[column] = float(parsed.median())
                _warn_identifier(frame[column], parsed, source)
                continue
            if column not in categorical and nonfinite.any() and not (bad & ~nonfinite).any():
                _refuse_nonfinite(frame[column], nonfinite, "column", source, categorical_hint=True)
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
                              f"rows: if it is an identifier, drop it (occamgd fit --drop {column}, or the "
                              "manifest's \"drop\" list)", stacklevel=2)
            cats[column] = values
        pre = cls(target=target, task=task, columns=columns, numeric=numeric, categorical=cats, mean=[], scale=[],
                  classes=classes)
        X = pre.encode(frame, source)
        mean, scale = standardisation(X)
        for j in np.flatnonzero(~(np.isfinite(mean) & np.isfinite(scale) & (scale > 0))):
            column = pre.feature_columns[j]  # one-hot columns never overflow: a numeric column
            if not (np.isfinite(mean[j]) and np.isfinite(scale[j])):
                _refuse_overflow(frame[column], _numbers(frame[column])[0], "column", source)
            raise InvalidValueError(f"{source}: column {column!r} holds values too close together to standardise "
                                    "(their deviation underflows to zero); accepted: values that differ by more than "
                                    "about 1e-300: rescale the column")
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
                parsed, bad, nonfinite = _parse(values)
                if nonfinite.any():
                    _refuse_nonfinite(values, nonfinite, "numeric column", source, categorical_hint=False)
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
        """The encoding stored by :meth:`to_dict`, after checking every field's type and consistency
        (the file is input like any other: a wrong field is refused by name, never a traceback)."""
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(doc))
        if missing:
            raise InvalidValueError(f"{source} lacks the fields {missing}; write the model directory again with occamgd fit")
        pre = cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc})
        pre._validate(source)
        return pre

    def _validate(self, source: str) -> None:
        def refuse(field: str, problem: str) -> None:
            raise InvalidValueError(f"{source}: field {field!r} {problem}; write the model directory again with "
                                    "occamgd fit")

        def real(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def texts(v) -> bool:
            return isinstance(v, list) and all(isinstance(c, str) for c in v) and len(set(v)) == len(v)

        if not (self.target is None or isinstance(self.target, str)):
            refuse("target", f"is {self.target!r}; accepted: a column name")
        if self.task not in (None, *TASKS):
            refuse("task", f"is {self.task!r}; accepted: one of {TASKS}")
        if not texts(self.columns):
            refuse("columns", "is not a list of distinct column names")
        if not (isinstance(self.numeric, dict) and all(real(v) for v in self.numeric.values())):
            refuse("numeric", "is not an object mapping columns to finite numbers (their medians)")
        if not (isinstance(self.categorical, dict) and all(texts(v) for v in self.categorical.values())):
            refuse("categorical", "is not an object mapping columns to lists of distinct categories")
        if set(self.numeric) & set(self.categorical) or set(self.numeric) | set(self.categorical) != set(self.columns):
            refuse("columns", "does not list exactly the columns of 'numeric' and 'categorical', each once")
        width = len(self.features)
        for field in ("mean", "scale"):
            values = getattr(self, field)
            if not (isinstance(values, list) and len(values) == width and all(real(v) for v in values)):
                refuse(field, f"is not a list of {width} finite numbers (one per encoded feature)")
        if any(v <= 0 for v in self.scale):
            refuse("scale", "holds a value <= 0; accepted: positive numbers")
        if self.task == "classification" and not (texts(self.classes) and len(self.classes) >= 2):
            refuse("classes", "is not a list of at least two distinct labels")
        if self.task == "regression":
            for field in ("y_mean", "y_scale"):
                if not real(getattr(self, field)):
                    refuse(field, f"is {getattr(self, field)!r}; accepted: a finite number")
            if self.y_scale <= 0:
                refuse("y_scale", f"is {self.y_scale!r}; accepted: a positive number")
