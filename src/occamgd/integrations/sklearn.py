"""scikit-learn estimators that train a dense network with Occam Gradient Descent.

``OccamMLPClassifier`` and ``OccamMLPRegressor`` follow scikit-learn's contract (``__init__``
only stores parameters, ``fit`` returns ``self``, learned attributes end in ``_``) and pass
``sklearn.utils.estimator_checks.check_estimator``, so they work inside ``Pipeline``,
``GridSearchCV``, ``cross_val_score`` and friends. Training goes through :func:`occamgd.fit`:
a hold-back split (stratified for classification) gives the signal for the rate controller
(``schedule``: the default guarded controller, the paper's rule or another preset) and chooses the epoch whose weights are kept.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import InvalidValueError
from ..data.preprocessing import standardisation
from ..fit import fit
from ..models import TabularMLP
from ..schedules import DEFAULT_PRESET, PRESETS

__all__ = ["OccamMLPClassifier", "OccamMLPRegressor"]

_PARAMETERS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(256, 256)
        Width of each hidden layer (ReLU); the paper's tabular network is 256-256.
    epochs : int, default=60
        Training epochs; the network is pruned after every epoch but the last.
    batch_size : int, default=32
        Rows per gradient step (Adam).
    learning_rate : float, default=1e-3
        Adam's learning rate.
    holdback : float in [0, 1), default=0.15
        Fraction of the training rows held back (at least one row): their loss drives the
        pruning rate and selects the epoch whose weights are kept. ``0`` reads the training
        loss instead (the paper's reference) and keeps the last epoch.
    schedule : {"paper", "guarded", "planned", "search"} or None, default=None
        The rate controller: ``"paper"`` is the paper's rule (:class:`occamgd.OccamRate`),
        ``"guarded"`` the guarded controller (:class:`occamgd.Guarded`), ``"search"`` the one that
        searches the size within the epochs and returns to its best model
        (:class:`occamgd.Search`), ``"planned"`` the one that plans its descent
        (:class:`occamgd.schedules.Planned`); ``None`` is the library's default preset (``"guarded"``).
    r0 : float in (0, 1), default=0.4
        The largest pruning rate (the paper's initial rate), passed to the controller.
    min_density, max_density : float in (0, 1] or None, default=None
        Bounds on the kept fraction of the prunable weights, combined with the controller's
        choice: ``max_density=0.2`` is "as small as the data allows, at most 0.2" (reached by
        three quarters of the epochs; the kept epoch is chosen within it).
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, the hold-back split and the batch order. The global
        torch random state is left as it was.
    device : str, default="cpu"
        torch device to train and predict on (``"cuda"``, ``"cuda:1"``, ``"mps"``...).
    verbose : bool, default=False
        Show a progress bar while training.
"""

_ATTRIBUTES_DOC = """
    model_ : torch.nn.Module
        The trained :class:`occamgd.models.TabularMLP` (pruned weights are exactly zero).
    masks_ : dict of str to bool tensor
        One mask per prunable weight (``True`` = kept), e.g. for :mod:`occamgd.export`.
    density_ : float
        Kept fraction of the prunable weights in ``model_``.
    best_epoch_ : int
        The epoch whose weights ``model_`` holds.
    history_ : list of dict
        Per epoch: training and hold-back loss, density, rate, time.
    mean_, scale_ : ndarray of shape (n_features_in_,)
        The input standardisation learned in ``fit`` (a column holding one value has scale 1).
    n_features_in_ : int
        Number of input columns.
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame whose column names are all strings.
"""


def _hidden_sizes(value) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) >= 1
        and all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in value)
    ):
        raise InvalidValueError(
            f"hidden_layer_sizes must be an integer >= 1 or a non-empty sequence of them, got {value!r}"
        )
    return tuple(int(h) for h in value)



def _finite_standardisation(values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`standardisation`, refusing columns whose mean or spread overflows (values near 1e300)."""
    mean, scale = standardisation(values)
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(scale)))
    if bad.size:
        raise InvalidValueError(
            f"{name} column(s) {bad[:5].tolist()} cannot be standardised: their mean or spread overflows float64 "
            f"(largest magnitude {np.abs(values[:, bad[0]]).max():.3g}); accepted: values whose spread is finite, "
            "e.g. rescaled to a smaller unit"
        )
    return mean, scale

class _OccamMLP(BaseEstimator):
    """Shared parameters, training and forward pass of the two estimators."""

    _task: str

    def __init__(
        self,
        hidden_layer_sizes=(256, 256),
        epochs=60,
        batch_size=32,
        learning_rate=1e-3,
        holdback=0.15,
        schedule=None,
        r0=0.4,
        min_density=None,
        max_density=None,
        random_state=None,
        device="cpu",
        verbose=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.holdback = holdback
        self.schedule = schedule
        self.r0 = r0
        self.min_density = min_density
        self.max_density = max_density
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _check_params(self) -> tuple[tuple[int, ...], torch.device]:
        """Validate every parameter before anything is fitted; scikit-learn checks nothing in __init__."""
        hidden = _hidden_sizes(self.hidden_layer_sizes)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
                raise InvalidValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.learning_rate, numbers.Real) and self.learning_rate > 0):
            raise InvalidValueError(f"learning_rate must be a number > 0, got {self.learning_rate!r}")
        if not (isinstance(self.holdback, numbers.Real) and 0.0 <= self.holdback < 1.0):
            raise InvalidValueError(f"holdback must be a fraction in [0, 1), got {self.holdback!r}")
        if not (isinstance(self.r0, numbers.Real) and 0.0 < self.r0 < 1.0):
            raise InvalidValueError(f"r0 must be a number in (0, 1), got {self.r0!r}")
        for name in ("min_density", "max_density"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                          and 0.0 < value <= 1.0):
                raise InvalidValueError(f"{name} must be a fraction of the prunable weights in (0, 1] or None, "
                                        f"got {value!r}")
        if self.min_density is not None and self.max_density is not None and self.min_density > self.max_density:
            raise InvalidValueError(f"min_density {self.min_density!r} is above max_density {self.max_density!r}; "
                                    "accepted: min_density <= max_density")
        if self.schedule is not None and self.schedule not in PRESETS:
            raise InvalidValueError(f"schedule must be one of {sorted(PRESETS)} or None, got {self.schedule!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise InvalidValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {self.device!r}") from e
        return hidden, device

    def _train(self, X: np.ndarray, y: torch.Tensor, outputs: int, hidden: tuple[int, ...],
               device: torch.device) -> None:
        """Standardise ``X``, train a fresh network with Occam and set the learned attributes."""
        n = len(X)
        if n < 2 and self.holdback > 0:
            raise InvalidValueError(f"{type(self).__name__} needs at least 2 samples (one held back), got {n} sample")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        # The rule the bench's tables and occamgd fit's preprocessing.json use too.
        mean, scale = _finite_standardisation(X, "X")
        x = torch.as_tensor(((X - mean) / scale).astype(np.float32))
        # At least one row is held back, so small data sets (and cross-validation folds) still work.
        holdback = max(float(self.holdback), 1.0 / n) if self.holdback > 0 else 0.0
        # Seeding the global generator is how the weights get a reproducible start; the
        # caller's random state is restored afterwards.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            model = TabularMLP(X.shape[1], outputs, hidden=hidden).to(device)
            result = fit(
                model, (x, y), epochs=int(self.epochs), batch_size=int(self.batch_size),
                lr=float(self.learning_rate), schedule=PRESETS[self.schedule or DEFAULT_PRESET](r0=float(self.r0)), holdback=holdback,
                signal="holdback" if holdback > 0 else "train", task=self._task, seed=seed,
                progress=bool(self.verbose), min_density=self.min_density, max_density=self.max_density,
            )
        result.occam.detach()  # a fitted estimator must pickle: no hooks left on the optimizer
        model.eval()
        self.model_ = model
        self.masks_ = {name: mask.detach().cpu().clone() for name, mask in result.occam.masks.items()}
        self.density_ = float(result.occam.density)
        self.best_epoch_ = result.best_epoch if result.best_epoch is not None else int(self.epochs) - 1
        self.history_ = result.history.to_list()
        self.mean_, self.scale_ = mean, scale

    @torch.no_grad()
    def _forward(self, X) -> np.ndarray:
        """The network's outputs for ``X`` (validated against the fitted columns) as float64."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        x = torch.as_tensor(((X - self.mean_) / self.scale_).astype(np.float32))
        device = next(self.model_.parameters()).device
        return self.model_(x.to(device)).double().cpu().numpy()


class OccamMLPClassifier(ClassifierMixin, _OccamMLP):
    __doc__ = (
        """A dense network classifier trained with Occam Gradient Descent.

    The network (``hidden_layer_sizes`` ReLU layers, one output per class, cross-entropy)
    is pruned after every epoch at the paper's adaptive rate, driven by the hold-back loss,
    and the epoch with the lowest hold-back loss is kept. Inputs are standardised inside the
    estimator, so raw numeric features work.

    Categorical (non-numeric) columns must be encoded first, for example with a
    ``ColumnTransformer`` in a ``Pipeline``::

        from sklearn.compose import make_column_transformer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder
        from occamgd import OccamMLPClassifier

        model = make_pipeline(
            make_column_transformer(
                (OneHotEncoder(handle_unknown="ignore"), ["colour", "shape"]),
                remainder="passthrough",
            ),
            OccamMLPClassifier(epochs=30),
        ).fit(frame[["colour", "shape", "size"]], frame["label"])

    Missing values are refused; impute them in the pipeline (``SimpleImputer``).
    """
        + _PARAMETERS_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted."""
        + _ATTRIBUTES_DOC
        + """
    Notes
    -----
    Passes ``check_estimator`` with no expected failures. ``sample_weight`` is not supported.
    """
    )

    _task = "classification"

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and labels ``y``; return ``self``."""
        hidden, device = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise InvalidValueError(
                f"{type(self).__name__} needs at least 2 classes in y, got one class: {classes.tolist()}"
            )
        self._train(X, torch.as_tensor(encoded.astype(np.int64)), len(classes), hidden, device)
        self.classes_ = classes
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``."""
        logits = self._forward(X)
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class label of each row."""
        scores = self._forward(X)
        return self.classes_[np.argmax(scores, axis=1)]


class OccamMLPRegressor(RegressorMixin, _OccamMLP):
    __doc__ = (
        """A dense network regressor trained with Occam Gradient Descent.

    The network (``hidden_layer_sizes`` ReLU layers, one linear output per target, squared
    error) is pruned after every epoch at the paper's adaptive rate, driven by the hold-back
    loss, and the epoch with the lowest hold-back loss is kept. Inputs and targets are
    standardised inside the estimator (predictions come back in the target's units), so raw
    numeric features work. ``y`` may have several columns (multi-output).

    Categorical (non-numeric) columns must be encoded first, for example with
    ``make_column_transformer((OneHotEncoder(handle_unknown="ignore"), columns),
    remainder="passthrough")`` in a ``Pipeline`` before the regressor; see
    :class:`OccamMLPClassifier` and ``docs/sklearn.md``.
    """
        + _PARAMETERS_DOC
        + """
    Attributes
    ----------
    y_mean_, y_scale_ : ndarray of shape (n_targets,)
        The target standardisation learned in ``fit``."""
        + _ATTRIBUTES_DOC
        + """
    Notes
    -----
    Passes ``check_estimator`` with no expected failures. ``sample_weight`` is not supported.
    """
    )

    _task = "regression"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and targets ``y`` (n_samples[, n_targets]); return ``self``."""
        hidden, device = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        targets = y.reshape(len(y), -1)
        y_mean, y_scale = _finite_standardisation(targets, "y")
        standard = ((targets - y_mean) / y_scale).astype(np.float32)
        self._train(X, torch.as_tensor(standard.reshape(y.shape)), targets.shape[1], hidden, device)
        self.y_mean_, self.y_scale_ = y_mean, y_scale
        self._y_ndim = y.ndim
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted targets, shape (n_samples,) or (n_samples, n_targets) as ``y`` was in ``fit``."""
        out = self._forward(X) * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._y_ndim == 1 else out
