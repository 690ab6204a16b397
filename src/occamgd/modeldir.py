"""Train on a CSV file and keep everything needed to predict in one model directory.

This is what ``occamgd fit``, ``occamgd predict`` and ``occamgd report`` run. A model directory
holds:

- ``model.safetensors`` and ``model.sparse.safetensors``: the network, dense with its masks and
  in the compressed sparse form (see :mod:`occamgd.export`);
- ``preprocessing.json``: how a CSV row becomes the network's input (JSON, not pickle);
- ``report.json``: format version, configuration, per-epoch history, best epoch, density,
  hold-back metrics, the files' sizes and SHA-256 digests, and a model id that the weights
  files record too;
- ``.occamgd-model``: the marker that lets ``occamgd fit --force`` replace the directory (it
  replaces nothing else, and nothing holding files occamgd did not write).

Everything in a model directory is input when it is loaded: the report and preprocessing are
checked field by field, the report's sizes against the weights file's header before a network is
built, the checksums and model id against the files, the weights for finiteness. A directory
written before checksums were recorded loads with a warning.

The directory is built in a temporary directory beside its destination and renamed into place
when complete, so an error or Ctrl-C never leaves a half-written model behind.

How the CSV is read, the task inferred and the columns encoded is
:mod:`occamgd.data.preprocessing`, the same encoding the bench's tables use. Rows whose target
is empty are dropped with a warning (and counted in the report).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .data.preprocessing import TASKS, Preprocessing, encode_target, infer_task, read_csv, where
from .errors import InvalidValueError, MissingFileError, OccamgdError
from .export import FILE_NAMES, load_into, read_header, save
from .fit import NonFiniteLossError
from .io import _inside, atomic_write_text, check_name_lengths, check_writable, file_ancestor, sha256_file
from .schedules import DEFAULT_PRESET

FORMAT_NAME = "occamgd.modeldir"
#: Version of the model directory written here; a larger version is refused on load.
MODELDIR_FORMAT = 1
REPORT_NAME = "report.json"
PREPROCESSING_NAME = "preprocessing.json"
PLOT_NAME = "curves.png"
#: The file that marks a directory as written by :func:`fit_csv`: ``--force`` replaces nothing else.
MARKER_NAME = ".occamgd-model"
MARKER_TEXT = ("occamgd model directory: written by `occamgd fit`, which may replace it (--force) as long as it "
               "holds only occamgd's own files.\n")
#: Files a model directory must hold to predict (the sparse export is a size figure, not needed).
REQUIRED = (REPORT_NAME, PREPROCESSING_NAME, FILE_NAMES["dense"])
#: Every file occamgd writes into a model directory (``occamgd report`` adds the plot).
OWN_FILES = frozenset({*REQUIRED, FILE_NAMES["sparse"], PLOT_NAME, MARKER_NAME})


# The model directory ------------------------------------------------------------------------
def _estimator(task: str, config: dict[str, Any], progress: bool):
    from .integrations.sklearn import OccamMLPClassifier, OccamMLPRegressor

    cls = OccamMLPClassifier if task == "classification" else OccamMLPRegressor
    return cls(hidden_layer_sizes=tuple(config["hidden"]), epochs=config["epochs"],
               batch_size=config["batch_size"], learning_rate=config["learning_rate"],
               holdback=config["holdback"], schedule=config.get("schedule"), r0=config["r0"],
               min_density=config.get("min_density"), max_density=config.get("max_density"),
               random_state=config["seed"], verbose=progress)


def _check_settings(task: str | None, epochs: int, holdback: float, seed: int,
                    hidden: Sequence[int]) -> None:
    if task not in (None, *TASKS):
        raise InvalidValueError(f"task must be one of {TASKS} or None (inferred), got {task!r}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise InvalidValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(holdback, (int, float)) and 0.0 < holdback < 1.0):
        raise InvalidValueError(f"holdback must be a fraction in (0, 1), got {holdback!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise InvalidValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not (len(hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in hidden)):
        raise InvalidValueError(f"hidden must be one or more layer widths >= 1, got {list(hidden)!r}")


# Where the model directory goes --------------------------------------------------------------
def _refuse_out(out, why: str) -> None:
    raise InvalidValueError(f"output directory {out} {why}")


def _check_replaceable(out: Path) -> None:
    """Refuse to replace ``out`` unless occamgd wrote it: its marker, its report, and only its own files."""
    marker = out / MARKER_NAME
    try:
        ours = marker.is_file() and marker.read_text(encoding="utf-8") == MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        _refuse_out(out, f"exists and is not a model directory written by occamgd (it has no {MARKER_NAME} marker; "
                    "an older occamgd wrote none); --force replaces only those: choose a new path, or move the "
                    "directory away yourself")
    try:
        read_report(out)
    except OccamgdError as e:
        _refuse_out(out, f"is not a model directory written by occamgd ({e}); --force replaces only those: choose "
                    "a new path, or move the directory away yourself")
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                     if p.name not in OWN_FILES or (p.is_dir() and not p.is_symlink()))
    if foreign:
        _refuse_out(out, f"holds files occamgd did not write: {', '.join(foreign)}; --force would delete them: "
                    "move them out first, or choose a new path")


def _check_out(out: str | os.PathLike, csv: str | os.PathLike, force: bool) -> Path:
    """The model directory ``out`` as an absolute path in its resolved parent (``..`` and links
    above it resolved), after refusing every destination that would lose a file or cannot be
    written (checked before any training, without writing anything)."""
    if os.fspath(out) == "":
        raise InvalidValueError("the output directory path is empty; accepted: a path such as data-model")
    given = Path(out)
    if os.path.basename(os.path.normpath(os.fspath(given))) in ("", ".", ".."):
        _refuse_out(given, "names the current directory, its parent or the root; accepted: a new directory path "
                    "such as data-model")
    check_name_lengths(given, "output directory")
    try:
        return _check_out_path(given, csv, force)
    except OSError as e:
        raise InvalidValueError(f"output directory {given} cannot be used: {e.strerror or e}") from None


def _check_out_path(given: Path, csv: str | os.PathLike, force: bool) -> Path:
    blocker = file_ancestor(given.absolute())
    if blocker is not None:
        _refuse_out(given, f"cannot be created: {blocker} is a file, not a directory")
    # Every later step works on this path: renaming 'm/../m' away must not lose the way back.
    out = given.absolute().parent.resolve() / given.name
    resolved = out.resolve()
    if _inside(Path.cwd().resolve(), resolved):
        _refuse_out(given, "holds the current directory; accepted: a new directory path")
    if _inside(Path(csv).resolve(), resolved):
        _refuse_out(given, f"is or holds the CSV file {csv} this command reads; accepted: another path")
    if out.is_symlink():
        _refuse_out(given, "is a symbolic link; accepted: a real path (the link's target is never replaced)")
    for parent in out.parents:
        if (parent / MARKER_NAME).is_file():
            _refuse_out(given, f"is inside the model directory {parent}; accepted: a path outside any model "
                        "directory")
    check_writable(out, "output directory")
    if out.exists():
        if not out.is_dir():
            _refuse_out(given, "is a file, not a model directory; accepted: a new path (--force replaces only a "
                        "model directory written by occamgd)")
        if not force:
            _refuse_out(given, "exists; accepted: a new path, or --force to replace it")
        _check_replaceable(out)
    return out


def _reserve(out: Path) -> tuple[Path, list[Path]]:
    """Create the temporary directory the model is written to (beside ``out``), and any missing
    parents: proof that ``out`` can be written, before training. Returns it and the parents made."""
    made = [p for p in out.absolute().parents if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name[:100]}.", suffix=".tmp"))
    except OSError as e:
        _remove_dirs(made)
        raise InvalidValueError(f"output directory {out} cannot be written: {e.strerror or e} ({out.parent}); "
                                "accepted: a path in a directory you can write") from e
    return tmp, made


def _remove_dirs(made: list[Path]) -> None:
    """Remove the parent directories :func:`_reserve` made (nearest first), if still empty."""
    for directory in made:
        try:
            directory.rmdir()
        except OSError:
            break


def fit_csv(
    csv: str | os.PathLike,
    target: str,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    epochs: int = 60,
    holdback: float = 0.15,
    seed: int = 0,
    hidden: Sequence[int] = (256, 256),
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    r0: float = 0.4,
    schedule: str | None = None,
    min_density: float | None = None,
    max_density: float | None = None,
    categorical: Sequence[str] = (),
    drop: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on ``csv`` to predict ``target``; write the model directory ``out``; return its report.

    ``out`` must not exist unless ``force``, and then only a model directory occamgd wrote (its
    marker and report, nothing but its own files) is replaced, once the new one is complete. An
    ``out`` that is or holds the CSV, a file, or cannot be written is refused before training.
    """
    _check_settings(task, epochs, holdback, seed, hidden)
    out = _check_out(out, csv, force)
    frame = read_csv(csv)
    source = f"CSV file {csv}"
    if len(frame) == 0:
        raise InvalidValueError(f"{source} has a header but no data rows; accepted: a header and at least two rows")
    for column in [target, *drop]:
        if column not in frame.columns:
            raise InvalidValueError(f"column {column!r} is not in {source}; columns present: {', '.join(map(str, frame.columns))}")
    if target in drop:
        raise InvalidValueError(f"the target {target!r} cannot also be dropped")
    frame = frame.drop(columns=list(drop))
    empty = frame[target].isna().to_numpy()
    if empty.all():
        raise InvalidValueError(f"{source}: target {target!r} is empty in all {len(frame)} rows")
    if empty.any():
        lines = [int(i) + 2 for i in frame.index[empty][:5]]
        warnings.warn(f"dropped {int(empty.sum())} of {len(frame)} rows whose target {target!r} is empty "
                      f"(lines {', '.join(map(str, lines))}{', ...' if empty.sum() > 5 else ''})", stacklevel=2)
        frame = frame[~empty]
    if len(frame.columns) < 2:
        raise InvalidValueError(f"{source} has no feature columns besides the target {target!r}")
    features = [c for c in frame.columns if c != target]
    if frame[features].isna().all().all():
        raise InvalidValueError(f"{source}: every feature column ({', '.join(map(repr, features[:10]))}"
                                f"{', ...' if len(features) > 10 else ''}) is empty in every row with a target; "
                                "accepted: at least one feature with values")
    held = int(round(max(holdback, 1.0 / len(frame)) * len(frame)))  # what the estimator will hold back
    if len(frame) - held < 1:
        raise InvalidValueError(f"{source}: holdback={holdback} holds back {held} of its {len(frame)} rows with a "
                                "target, leaving none to train on; accepted: a smaller fraction, or more rows "
                                "(at least 2)")
    task = task or infer_task(frame[target], source)
    y, classes = encode_target(frame[target], task, source)
    pre = Preprocessing.learn(frame, target, task, categorical=categorical, classes=classes, source=source)
    # The estimator standardises X with the same rule on the same rows, so its mean_ / scale_ are
    # pre.mean / pre.scale: what load_model_dir gives it back.
    X = pre.encode(frame, source)
    config = {"hidden": list(hidden), "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
              # The preset actually used, so the report says it even when the default changes.
              "holdback": holdback, "schedule": schedule or DEFAULT_PRESET, "r0": r0, "seed": seed,
              "min_density": min_density, "max_density": max_density}
    tmp, made = _reserve(out)
    try:
        estimator = _estimator(task, config, progress)
        t0 = time.perf_counter()
        try:
            estimator.fit(X, y)
        except NonFiniteLossError as e:
            raise InvalidValueError(f"{source}: training diverged: {e}. {_divergence_hint(frame, pre, X)}") from e
        train_time = time.perf_counter() - t0
        report = _report(csv, target, task, frame, empty, pre, X, classes, config, holdback, estimator, train_time)
        _write_directory(out, tmp, csv, estimator, pre, report, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(made)
        raise
    return report


def _divergence_hint(frame, pre: Preprocessing, X: np.ndarray) -> str:
    """Name the most extreme value of the training data, the likeliest cause of a diverging loss."""
    with np.errstate(all="ignore"):
        z = np.abs((X - np.asarray(pre.mean)) / np.asarray(pre.scale))
    if z.size == 0 or not np.isfinite(z).any():
        return "Check the scaling of the columns."
    i, j = np.unravel_index(np.nanargmax(z), z.shape)
    column = pre.feature_columns[j]
    return (f"The most extreme value is {frame[column].iloc[i]!r} in column {column!r} on "
            f"{where(frame.index[i])} ({z[i, j]:.0f} standard deviations from the column's mean): check that "
            "column's scale (other units, a logarithm) or drop it (--drop).")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_text(doc: dict) -> str:
    """Standard JSON (``Infinity`` and ``NaN`` are not JSON: they are refused, never written)."""
    return json.dumps(doc, indent=1, allow_nan=False)


def _report(csv, target, task, frame, empty, pre, X, classes, config, holdback, estimator, train_time) -> dict:
    if task == "regression":
        pre.y_mean, pre.y_scale = float(estimator.y_mean_[0]), float(estimator.y_scale_[0])
    best = estimator.history_[estimator.best_epoch_]
    holdback_metrics = {"loss": best.get("holdback_loss"), "rows": int(max(1, round(holdback * len(frame))))}
    if task == "classification":
        holdback_metrics["accuracy"] = best.get("holdback_acc")
    elif best.get("holdback_loss") is not None:
        holdback_metrics["rmse"] = math.sqrt(best["holdback_loss"]) * pre.y_scale
    report = {
        "format": FORMAT_NAME,
        "format_version": MODELDIR_FORMAT,
        "occamgd_version": __version__,
        # Ties the report to its weights file (which records the same id) and its checksums.
        "model_id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"csv": str(csv), "target": target, "task": task, "rows": len(frame),
                 "rows_dropped_missing_target": int(empty.sum()), "columns": pre.columns,
                 "features": len(pre.features), "classes": classes},
        "config": config,
        "model": {"type": "TabularMLP", "in_features": X.shape[1], "outputs": len(classes) if classes else 1,
                  "hidden": list(config["hidden"])},
        "best_epoch": estimator.best_epoch_,
        "density": estimator.density_,
        "kept_weights": int(sum(int(m.sum()) for m in estimator.masks_.values())),
        "prunable_weights": int(sum(m.numel() for m in estimator.masks_.values())),
        "holdback": holdback_metrics,
        "train_time_s": train_time,
        "history": estimator.history_,
    }
    return _finite(report)


def _write_directory(out: Path, tmp: Path, csv, estimator, pre: Preprocessing, report: dict, force: bool) -> None:
    """Write every file into the temporary directory ``tmp`` beside ``out``, then rename it into place."""
    sizes = save(estimator.model_, estimator.masks_, tmp,
                 metadata={"model": report["model"], "model_id": report["model_id"]})
    atomic_write_text(_json_text(pre.to_dict()), tmp / PREPROCESSING_NAME)
    report["files"] = {s["file"]: s["bytes"] for s in sizes.values()}
    report["files"][PREPROCESSING_NAME] = (tmp / PREPROCESSING_NAME).stat().st_size
    report["sha256"] = {name: sha256_file(tmp / name) for name in CHECKED_FILES}
    atomic_write_text(_json_text(report), tmp / REPORT_NAME)
    atomic_write_text(MARKER_TEXT, tmp / MARKER_NAME)
    # Temporary files and directories are private (0600 / 0700); the result gets the
    # permissions of any file the user creates.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for file in tmp.iterdir():
        os.chmod(file, 0o666 & ~umask)
    if out.exists() or out.is_symlink():
        if not force:
            raise InvalidValueError(f"output directory {out} appeared while training; accepted: --force to replace it")
        _check_out(out, csv, force)  # what is there now, not what was there before training
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name[:100]}.", suffix=".old"))
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)  # the old model goes back where it was
            old.rmdir()
            raise
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


@dataclass
class ModelDir:
    """A loaded model directory: its report, preprocessing and a fitted estimator."""

    path: Path
    report: dict[str, Any]
    preprocessing: Preprocessing
    estimator: Any

    def predict(self, frame, source: str = "the CSV"):
        """Predictions for a DataFrame of strings: the target column (labels as in the training CSV)
        and, for classification, one ``proba_<label>`` column per class.

        Category values not seen in training are encoded as all zeros and counted in a warning; a
        value too far from the training data for the network (beyond float32 once standardised)
        is refused, naming it."""
        import pandas as pd

        pre = self.preprocessing
        X = pre.encode(frame, source)
        _check_inputs(frame, pre, X, source)
        _warn_unseen(frame, pre, source)
        if pre.task == "classification":
            proba = self.estimator.predict_proba(X)
            _check_outputs(proba, frame, pre, X, self.path, source)
            out = {pre.target: np.asarray(pre.classes, dtype=object)[proba.argmax(axis=1)]}
            out.update({f"proba_{c}": proba[:, i] for i, c in enumerate(pre.classes)})
            return pd.DataFrame(out)
        values = self.estimator.predict(X)
        _check_outputs(values, frame, pre, X, self.path, source)
        return pd.DataFrame({pre.target: values})


def _deviations(pre: Preprocessing, X: np.ndarray) -> np.ndarray:
    """How many training standard deviations each encoded value lies from the training mean."""
    with np.errstate(all="ignore"):
        return np.abs((X - np.asarray(pre.mean)) / np.asarray(pre.scale))


def _check_inputs(frame, pre: Preprocessing, X: np.ndarray, source: str) -> None:
    z = _deviations(pre, X)
    beyond = ~(z <= np.finfo(np.float32).max)
    if beyond.any():
        i, j = np.argwhere(beyond)[0]
        column = pre.feature_columns[j]
        raise InvalidValueError(f"{source}: column {column!r} has the value {frame[column].iloc[i]!r} on "
                                f"{where(frame.index[i])}, too far from the training data for the network (beyond "
                                "float32 once standardised); accepted: values of the training data's magnitude")


def _warn_unseen(frame, pre: Preprocessing, source: str) -> None:
    parts, rows = [], np.zeros(len(frame), dtype=bool)
    for column, categories in pre.categorical.items():
        values = frame[column]
        unseen = (values.notna() & ~values.isin(categories)).to_numpy()
        if unseen.any():
            rows |= unseen
            counts = values[unseen].value_counts()
            shown = ", ".join(f"{v!r} ({n} row{'s' if n > 1 else ''})" for v, n in counts.head(3).items())
            parts.append(f"{column!r}: {shown}{', ...' if len(counts) > 3 else ''}")
    if parts:
        warnings.warn(f"{source}: {int(rows.sum())} of {len(frame)} rows hold categories not seen in training, "
                      f"encoded as all zeros: {'; '.join(parts)}", stacklevel=3)


def _check_outputs(values: np.ndarray, frame, pre: Preprocessing, X: np.ndarray, path: Path, source: str) -> None:
    bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    what = (f"the model in {path} gives non-finite outputs for {int(bad.sum())} rows of {source} (the first on "
            f"{where(frame.index[i])})")
    z = _deviations(pre, X[i:i + 1])[0]
    if z.size and np.nanmax(z) > 1e3:
        j = int(np.nanargmax(z))
        column = pre.feature_columns[j]
        raise InvalidValueError(f"{what}: its value {frame[column].iloc[i]!r} in column {column!r} lies {z[j]:.3g} "
                                "standard deviations from the training data; accepted: values of the training "
                                "data's magnitude")
    raise InvalidValueError(f"{what}; its weights are damaged: write the model directory again with occamgd fit")


#: First characters that make a spreadsheet run a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame):
    """``frame`` with every text cell a spreadsheet would run as a formula (starting with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return) prefixed with ``'``; numbers such as ``-1.5`` stay numbers."""
    import pandas as pd

    def escape(value):
        if isinstance(value, str) and value.startswith(FORMULA_STARTS):
            try:
                float(value)
            except ValueError:
                return "'" + value
        return value

    out = frame.copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column].dtype):
            out[column] = out[column].map(escape).astype(object)
    out.columns = pd.Index([escape(str(c)) for c in out.columns])
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise InvalidValueError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); write the model "
                                "directory again with occamgd fit") from None
    if not isinstance(doc, dict):
        raise InvalidValueError(f"{path} holds {type(doc).__name__}, not an object; write it again with occamgd fit")
    return doc


def _count(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_report(report: dict[str, Any], where: Path) -> None:
    """Refuse, by field, a report whose fields the commands would stumble on (it is input too)."""
    def refuse(field: str, accepted: str) -> None:
        raise InvalidValueError(f"{where}: field {field!r} is {_short(report_value(field))}; accepted: {accepted}; "
                                "write the model directory again with occamgd fit")

    def report_value(field: str) -> Any:
        value: Any = report
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    data, model, config, hold = (report.get(k) for k in ("data", "model", "config", "holdback"))
    if not isinstance(data, dict):
        refuse("data", "an object")
    if not isinstance(data.get("target"), str):
        refuse("data.target", "a column name")
    if data.get("task") not in TASKS:
        refuse("data.task", f"one of {TASKS}")
    for field in ("rows", "features"):
        if not _count(data.get(field)):
            refuse(f"data.{field}", "an integer >= 0")
    classes = data.get("classes")
    if not (classes is None or (isinstance(classes, list) and all(isinstance(c, str) for c in classes))):
        refuse("data.classes", "null or a list of labels")
    if not isinstance(model, dict):
        refuse("model", "an object")
    for field in ("in_features", "outputs"):
        if not _count(model.get(field), 1):
            refuse(f"model.{field}", "an integer >= 1")
    hidden = model.get("hidden")
    if not (isinstance(hidden, list) and hidden and all(_count(h, 1) for h in hidden)):
        refuse("model.hidden", "a non-empty list of integers >= 1")
    if not (isinstance(config, dict) and isinstance(config.get("hidden"), list)
            and all(_count(h, 1) for h in config["hidden"])
            and all(_number(config.get(k)) for k in ("epochs", "batch_size", "learning_rate", "holdback", "r0", "seed"))
            and (config.get("schedule") is None or isinstance(config.get("schedule"), str))):
        refuse("config", "an object with hidden, epochs, batch_size, learning_rate, holdback, r0, seed and schedule "
               "as occamgd fit writes them")
    history = report.get("history")
    if not (isinstance(history, list) and history and all(isinstance(r, dict) for r in history)):
        refuse("history", "a non-empty list of per-epoch records")
    for i, record in enumerate(history):
        if not _count(record.get("epoch")):
            refuse("history", f"records whose 'epoch' is an integer (record {i} has {_short(record.get('epoch'))})")
        for key in ("train_loss", "holdback_loss", "holdback_acc", "density", "rate"):
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                refuse("history", f"records whose {key!r} is a number or null (record {i} has "
                       f"{_short(record.get(key))})")
    if not (_count(report.get("best_epoch")) and report["best_epoch"] < len(history)):
        refuse("best_epoch", f"an epoch of the history (0 to {len(history) - 1})")
    if not (_number(report.get("density")) and 0.0 <= report["density"] <= 1.0):
        refuse("density", "a number in [0, 1]")
    for field in ("kept_weights", "prunable_weights"):
        if field in report and not _count(report[field]):
            refuse(field, "an integer >= 0")
    if not (isinstance(hold, dict) and all(v is None or _number(v) for v in hold.values())
            and _count(hold.get("rows"))):
        refuse("holdback", "an object of numbers (or null) with 'rows'")
    files = report.get("files", {})
    if not (isinstance(files, dict) and all(isinstance(k, str) and _count(v) for k, v in files.items())):
        refuse("files", "an object mapping file names to sizes in bytes")
    sha = report.get("sha256", {})
    if not (isinstance(sha, dict) and all(isinstance(v, str) for v in sha.values())):
        refuse("sha256", "an object mapping file names to SHA-256 digests")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """The report of model directory ``path``, after checking it is complete, not too new, and that
    every field the commands use has the type occamgd writes."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidValueError(f"model directory {path} is a file, not a directory; accepted: a directory "
                                "written by occamgd fit")
    if not path.is_dir():
        raise MissingFileError(f"model directory {path} does not exist")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise InvalidValueError(f"model directory {path} is incomplete: missing {', '.join(missing)}; "
                         "write it again with occamgd fit")
    report = _read_json(path / REPORT_NAME)
    version = report.get("format_version")
    if report.get("format") != FORMAT_NAME or not _count(version):
        raise InvalidValueError(f"{path / REPORT_NAME} is not an occamgd model report (format {report.get('format')!r}, "
                         f"version {version!r})")
    if version > MODELDIR_FORMAT:
        raise InvalidValueError(f"model directory {path} has format version {version}, written by a newer occamgd; "
                         f"this one ({__version__}) reads versions up to {MODELDIR_FORMAT}: upgrade occamgd")
    missing = sorted({"data", "config", "model", "history", "best_epoch", "density", "holdback"} - set(report))
    if missing:
        raise InvalidValueError(f"{path / REPORT_NAME} lacks the fields {missing}; write the model directory again "
                         "with occamgd fit")
    _check_report(report, path / REPORT_NAME)
    return report


#: The files whose SHA-256 the report records (and loading verifies, those it reads).
CHECKED_FILES = (FILE_NAMES["dense"], FILE_NAMES["sparse"], PREPROCESSING_NAME)


def _verify(path: Path, report: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Refuse files that are not the ones this report was written with (another model's report, a
    changed or damaged file); warn when an older directory records no checksums."""
    ours, theirs = report.get("model_id"), metadata.get("model_id")
    if ours != theirs:
        raise InvalidValueError(f"{path / REPORT_NAME} is from another model (model id {ours!r}) than "
                                f"{path / FILE_NAMES['dense']} (model id {theirs!r}); accepted: the report written "
                                "with these weights: write the model directory again with occamgd fit")
    sha = report.get("sha256")
    if not sha:
        warnings.warn(f"model directory {path} records no checksums (written by an older occamgd), so its files "
                      "cannot be verified; write it again with occamgd fit to add them", stacklevel=3)
        return
    for name in (FILE_NAMES["dense"], PREPROCESSING_NAME):
        if name not in sha:
            raise InvalidValueError(f"{path / REPORT_NAME} records no checksum of {name}; write the model directory "
                                    "again with occamgd fit")
        if sha256_file(path / name) != sha[name]:
            raise InvalidValueError(f"{path / name} does not match the checksum recorded in {REPORT_NAME}: the file "
                                    "changed or was damaged after occamgd fit wrote it, or the report is from another "
                                    "model; write the model directory again with occamgd fit")


def _architecture(shapes: dict[str, tuple[int, ...]], where: Path) -> dict[str, Any]:
    """The TabularMLP sizes that the weights file holds (its header, checked against its data)."""
    def shape(name: str) -> tuple[int, ...]:
        found = shapes.get(f"weights/{name}")
        if found is None or len(found) != 2:
            raise InvalidValueError(f"{where} holds no 2-dimensional tensor weights/{name}; accepted: the weights of "
                                    "a TabularMLP as occamgd fit writes them")
        return found

    hidden, i = [], 1
    while f"weights/fc{i}.weight" in shapes:
        hidden.append(shape(f"fc{i}.weight")[0])
        i += 1
    return {"in_features": shape("fc1.weight")[1], "outputs": shape("out.weight")[0], "hidden": hidden}


def load_model_dir(path: str | os.PathLike) -> ModelDir:
    """Load a model directory written by :func:`fit_csv`, ready to predict.

    Nothing in it is trusted: the report's sizes are compared with the weights file's (whose
    header is checked against its data) before a network is built; the recorded checksums and
    model id must match the files; the weights must be finite; the preprocessing must fit them.
    """
    from . import models

    path = Path(path)
    report = read_report(path)
    weights = path / FILE_NAMES["dense"]
    metadata, shapes = read_header(weights)
    _verify(path, report, metadata)
    pre = Preprocessing.from_dict(_read_json(path / PREPROCESSING_NAME), str(path / PREPROCESSING_NAME))
    stored = _architecture(shapes, weights)
    claimed = {k: report["model"][k] for k in ("in_features", "outputs", "hidden")}
    if claimed != stored:
        raise InvalidValueError(f"{path / REPORT_NAME} describes a network of {claimed} but {weights} holds one of "
                                f"{stored}: the report is from another model; write the model directory again with "
                                "occamgd fit")
    width = len(pre.features)
    outputs = len(pre.classes) if pre.task == "classification" else 1
    if width != stored["in_features"] or outputs != stored["outputs"]:
        raise InvalidValueError(f"{path / PREPROCESSING_NAME} encodes {width} features and {outputs} outputs but the "
                                f"model takes {stored['in_features']} and gives {stored['outputs']}; write the model "
                                "directory again with occamgd fit")
    if pre.task != report["data"]["task"] or pre.target != report["data"]["target"]:
        raise InvalidValueError(f"{path / PREPROCESSING_NAME} is for the {pre.task} of {pre.target!r} but the report "
                                f"for the {report['data']['task']} of {report['data']['target']!r}; write the model "
                                "directory again with occamgd fit")
    # Sizes now come from the weights file, whose every tensor is backed by its bytes.
    model = models.TabularMLP(stored["in_features"], stored["outputs"], hidden=stored["hidden"])
    masks = load_into(model, weights)
    model.eval()
    estimator = _estimator(pre.task, report["config"], progress=False)
    # A fitted estimator is its parameters plus these attributes (what fit sets).
    estimator.model_, estimator.masks_ = model, masks
    estimator.mean_, estimator.scale_ = np.asarray(pre.mean), np.asarray(pre.scale)
    estimator.n_features_in_ = model.fc1.in_features
    estimator.density_, estimator.best_epoch_ = report["density"], report["best_epoch"]
    estimator.history_ = report["history"]
    if pre.task == "classification":
        estimator.classes_ = np.arange(len(pre.classes))
    else:
        estimator.y_mean_, estimator.y_scale_ = np.array([pre.y_mean]), np.array([pre.y_scale])
        estimator._y_ndim = 1
    return ModelDir(path=path, report=report, preprocessing=pre, estimator=estimator)


# Reporting ----------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def history_table(report: dict[str, Any]) -> str:
    """The per-epoch history as an aligned text table (the kept epoch marked with ``*``)."""
    from .reporting import text_table

    classification = report["data"]["task"] == "classification"
    header = ["epoch", "train loss", "hold-back loss"] + (["hold-back acc"] if classification else []) + [
        "density", "rate", "action"]
    rows = []
    for r in report["history"]:
        mark = "*" if r["epoch"] == report["best_epoch"] else ""
        rows.append([f"{r['epoch']}{mark}", _fmt(r.get("train_loss")), _fmt(r.get("holdback_loss"))]
                    + ([_fmt(r.get("holdback_acc"))] if classification else [])
                    + [_fmt(r.get("density")), _fmt(r.get("rate"), 3), _fmt(r.get("action"))])
    return text_table(header, rows)


def summary(report: dict[str, Any]) -> str:
    """A few lines: the task, the kept epoch, its size and hold-back metrics, the file sizes."""
    data, hold = report["data"], report["holdback"]
    what = (f"classification of {data['target']!r} ({len(data['classes'])} classes)"
            if data["task"] == "classification" else f"regression of {data['target']!r}")
    metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in hold.items() if k != "rows")
    files = ", ".join(f"{name} {size:,} bytes" for name, size in report.get("files", {}).items())
    warning = report["history"][-1].get("warning") if report["history"] else None
    return "\n".join([
        f"{what} on {data['rows']} rows, {data['features']} encoded features",
        f"kept epoch {report['best_epoch']} of {len(report['history'])}: density {report['density']:.4f} "
        f"({report['kept_weights']:,} of {report['prunable_weights']:,} prunable weights)",
        f"hold-back ({hold['rows']} rows): {metrics}",
        f"files: {files}",
    ] + ([f"warning: {warning}"] if warning else []))


def write_plots(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Loss and density per epoch (training and hold-back loss, density) as a PNG."""
    from .reporting import plot_curves

    histories = {"occam": [report["history"]]}
    panels = [("train_loss", "training loss", True), ("holdback_loss", "hold-back loss", True),
              ("density", "density (kept fraction)", True)]
    return plot_curves(histories, panels, path, title=f"{report['data']['target']} ({report['data']['task']})")
