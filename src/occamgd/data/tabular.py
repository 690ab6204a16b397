"""Tabular classification data: CSV files described by a manifest, OpenML, or a DataFrame.

A manifest (``manifest.json``) names each table's CSV ``file`` (inside the manifest's
directory), its ``target`` column, the columns to ``drop``, optionally the columns to treat as
``categorical`` although their values are numbers, and the expected ``rows`` and ``classes``; in
the CSV the first row is the header and an empty cell is a missing value. Every loader returns a
:class:`Table`: a stratified train/test split (and, on request, a hold-out split carved from the
training part), encoded by :class:`~occamgd.data.preprocessing.Preprocessing` learned on the
training rows only: the same encoding ``occamgd fit`` stores in its model directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional, Union

import numpy as np

from ..errors import InvalidValueError, MissingFileError
from .preprocessing import Preprocessing, as_text, encode_target, read_csv

PathLike = Union[str, os.PathLike]
MANIFEST_NAME = "manifest.json"


# Manifest -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    """One manifest entry; ``path`` is the CSV file, resolved against the manifest's directory."""

    name: str
    path: Path
    target: str
    drop: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    rows: Optional[int] = None
    classes: Optional[int] = None


#: The development suite shipped with the package (12 tables, sources in its manifest).
BUNDLED_MANIFEST = Path(__file__).resolve().parent / "tables" / MANIFEST_NAME


def default_manifest() -> Path:
    """``$OCCAMGD_TABULAR`` if set, else the suite bundled with occamgd (:data:`BUNDLED_MANIFEST`)."""
    if os.environ.get("OCCAMGD_TABULAR"):
        return Path(os.environ["OCCAMGD_TABULAR"]).expanduser()
    return BUNDLED_MANIFEST


def _inside(value: str, what: str, manifest: Path, single: bool = False) -> None:
    """Refuse a manifest path that could leave the manifest's directory (checked on the text, in
    both path flavours, so a manifest is judged the same on every system)."""
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(value)
        if (not value or path.is_absolute() or path.drive or path.root or ".." in path.parts
                or (single and len(path.parts) != 1)):
            accepted = "a plain name (no '/', '\\' or '..')" if single else "a relative path without '..'"
            raise InvalidValueError(f"manifest {manifest}: {what} {value!r} is outside the manifest's directory; "
                             f"accepted: {accepted}")


def read_manifest(path: PathLike | None = None) -> dict[str, TableSpec]:
    """Read a manifest (the JSON file or its directory; :func:`default_manifest` when ``None``)."""
    path = Path(path).expanduser() if path is not None else default_manifest()
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise MissingFileError(f"manifest {path} does not exist; accepted: a {MANIFEST_NAME} file or its directory")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise InvalidValueError(f"manifest {path} is not valid JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("datasets"), dict)):
        raise InvalidValueError(f'manifest {path}: expected an object with "datasets": {{name: {{"file", "target", ...}}}}')
    if doc.get("task", "classification") != "classification":
        raise InvalidValueError(f"manifest {path}: task {doc['task']!r} is not supported; accepted: 'classification'")
    specs = {}
    for name, entry in doc["datasets"].items():
        lists = [entry.get(key, []) for key in ("drop", "categorical")] if isinstance(entry, dict) else [None]
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("target"), str)
                and all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in lists)):
            raise InvalidValueError(f'manifest {path}: dataset {name!r} needs "file" and "target" strings and optional '
                             f'"drop" and "categorical" lists of column names, got {entry!r}')
        # Names become file names in the bench's output, files are opened: neither may leave the suite.
        _inside(name, "dataset name", path, single=True)
        _inside(entry["file"], f"dataset {name!r}: file", path)
        specs[name] = TableSpec(name=name, path=path.parent / entry["file"], target=entry["target"],
                                drop=tuple(lists[0]), categorical=tuple(lists[1]), rows=entry.get("rows"),
                                classes=entry.get("classes"))
    return specs


# The result ---------------------------------------------------------------------------------
@dataclass
class Table:
    """A preprocessed split. ``X_*`` are float32 numpy arrays, ``y_*`` int64 numpy arrays of
    indices into ``classes`` (the labels as text, in numeric order when all are numbers).
    ``preprocessor`` is the :class:`Preprocessing` learned on the training rows (JSON-storable
    with ``to_dict``); :meth:`transform` applies it to new rows."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: list
    feature_names: list[str]
    preprocessor: Preprocessing = field(repr=False)
    X_holdout: Optional[np.ndarray] = None
    y_holdout: Optional[np.ndarray] = None

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X_test, self.y_test

    @property
    def holdout(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.X_holdout is None else (self.X_holdout, self.y_holdout)

    def transform(self, frame) -> np.ndarray:
        """Preprocess new rows (a DataFrame with the original feature columns) as float32."""
        return self.preprocessor.transform(as_text(frame)[0]).astype(np.float32)


# Splitting and encoding ---------------------------------------------------------------------
def _check_fraction(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, float) and 0.0 < value < 1.0):
        raise InvalidValueError(f"{name} must be a float in (0, 1){' or None' if allow_none else ''}, got {value!r}")


def table_from_frame(
    frame,
    target: str,
    *,
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
    name: str = "frame",
    test_size: float = 0.3,
    seed: int = 0,
    holdout: float | None = None,
    source: str = "the frame",
) -> Table:
    """Split and preprocess a pandas DataFrame holding the features and the ``target`` column.

    Dropped columns and the target are removed; the rest is encoded by :class:`Preprocessing`
    (see :mod:`occamgd.data.preprocessing`) learned on the training rows only: the frame is read
    as text as if written to CSV (:func:`as_text`), ``categorical`` columns and those of
    ``category`` dtype are one-hot encoded whatever their values. The split is stratified on the
    target with ``random_state=seed``; ``holdout`` (a fraction of the training split, stratified
    too) is kept apart from the learning as well. ``source`` names the data in error messages.
    """
    from sklearn.model_selection import train_test_split

    # Validate everything before learning anything.
    _check_fraction("test_size", test_size)
    _check_fraction("holdout", holdout, allow_none=True)
    present = [str(c) for c in frame.columns]
    for column in [target, *drop]:
        if column not in frame.columns:
            raise InvalidValueError(f"column {column!r} is not in {source}; columns present: {', '.join(present)}")
    if len(frame) == 0:
        raise InvalidValueError(f"{source} has no rows")
    text, declared = as_text(frame)
    target, drop = str(target), {str(c) for c in drop}
    features = text.drop(columns=list(drop | {target}))
    if features.shape[1] == 0:
        raise InvalidValueError(f"{source}: no feature columns left after removing the target {target!r} "
                         f"and drop {sorted(drop)}")
    labels = text[target]
    if labels.isna().any():
        rows = np.flatnonzero(labels.isna().to_numpy())[:10].tolist()
        raise InvalidValueError(f"{source}: target {target!r} is missing in {int(labels.isna().sum())} rows "
                         f"(first data rows, 0-based: {rows}); accepted: a label in every row")
    # Classes come from every row: a label is not a statistic of the features.
    y, classes = encode_target(labels, "classification", source)
    counts = np.bincount(y)
    if counts.min() < 2:
        rare = [c for c, n in zip(classes, counts) if n < 2]
        raise InvalidValueError(f"{source}: classes {rare} of target {target!r} have a single row; a stratified "
                         "split needs at least two rows per class")

    idx = np.arange(len(frame))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    hold_idx = None
    if holdout is not None:
        train_idx, hold_idx = train_test_split(train_idx, test_size=holdout, stratify=y[train_idx],
                                               random_state=seed)

    declared = [c for c in declared if c in features.columns]
    pre = Preprocessing.learn(features.iloc[train_idx], target, "classification",
                              categorical=list(dict.fromkeys([*declared, *map(str, categorical)])),
                              classes=classes, source=source)

    def part(rows):
        return pre.transform(features.iloc[rows], source).astype(np.float32), y[rows]

    (X_train, y_train), (X_test, y_test) = part(train_idx), part(test_idx)
    X_hold, y_hold = part(hold_idx) if hold_idx is not None else (None, None)
    return Table(name=name, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, classes=classes,
                 feature_names=pre.features, preprocessor=pre, X_holdout=X_hold, y_holdout=y_hold)


# Loaders ------------------------------------------------------------------------------------
def load_table(
    name: str,
    manifest: PathLike | None = None,
    *,
    test_size: float = 0.3,
    seed: int = 0,
    holdout: float | None = None,
) -> Table:
    """Load table ``name`` of ``manifest`` (file or directory; :func:`default_manifest` when
    ``None``) as a preprocessed :class:`Table`; see :func:`table_from_frame` for the splits."""
    specs = read_manifest(manifest)
    if name not in specs:
        raise InvalidValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(specs))}")
    spec = specs[name]
    frame = read_csv(spec.path)
    # The manifest's counts guard against a truncated or swapped file.
    if spec.rows is not None and len(frame) != spec.rows:
        raise InvalidValueError(f"{spec.path} has {len(frame)} rows but the manifest says {spec.rows}")
    if spec.classes is not None and spec.target in frame.columns:
        found = frame[spec.target].nunique()
        if found != spec.classes:
            raise InvalidValueError(f"{spec.path}: target {spec.target!r} has {found} classes but the manifest "
                             f"says {spec.classes}")
    return table_from_frame(frame, spec.target, drop=spec.drop, categorical=spec.categorical, name=name,
                            test_size=test_size, seed=seed, holdout=holdout, source=f"CSV file {spec.path}")


def load_openml(
    name_or_id: str | int,
    *,
    version: str | int = "active",
    target: str | None = None,
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
    test_size: float = 0.3,
    seed: int = 0,
    holdout: float | None = None,
    data_home: PathLike | None = None,
) -> Table:
    """Fetch an OpenML classification dataset (by name or id; needs a network the first time,
    then scikit-learn's cache in ``data_home``) and preprocess it like :func:`load_table`.

    ``target`` overrides the dataset's default target column. OpenML's nominal features arrive
    as ``category`` columns and are one-hot encoded like ``categorical`` ones.
    """
    from sklearn.datasets import fetch_openml

    by = {"data_id": name_or_id} if isinstance(name_or_id, int) else {"name": name_or_id, "version": version}
    bunch = fetch_openml(**by, as_frame=True, target_column=target or "default-target",
                         data_home=None if data_home is None else str(data_home))
    source = f"OpenML dataset {name_or_id!r}"
    y = bunch.target
    if y is None or getattr(y, "ndim", 1) != 1:
        raise InvalidValueError(f"{source}: expected one target column, got "
                         f"{None if y is None else list(y.columns)}; pass target=COLUMN")
    frame = bunch.data.copy()
    label = str(y.name) if y.name is not None else "target"
    frame[label] = y.to_numpy()
    return table_from_frame(frame, label, drop=drop, categorical=categorical, name=str(name_or_id),
                            test_size=test_size, seed=seed, holdout=holdout, source=source)
