"""The scikit-learn estimators: the estimator contract, pipelines, search, and Occam's effect."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.compose import make_column_transformer
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils.estimator_checks import parametrize_with_checks

import occamgd
from occamgd.data.tabular import BUNDLED_MANIFEST, load_table
from occamgd.integrations.sklearn import OccamMLPClassifier, OccamMLPRegressor



pytestmark = pytest.mark.usefixtures("one_thread")


def _small(cls, **kw):
    # Small enough for the many fits of check_estimator, large enough to pass its accuracy checks.
    return cls(hidden_layer_sizes=(64,), epochs=8, learning_rate=1e-2, random_state=0, **kw)


@parametrize_with_checks([_small(OccamMLPClassifier), _small(OccamMLPRegressor)])
def test_passes_the_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _blobs(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    return centres[y] + rng.normal(scale=0.7, size=(n, 2)), y


def test_exposes_occam_results_as_learned_attributes():
    X, y = _blobs()
    est = _small(OccamMLPClassifier).fit(X, y)
    assert est.n_features_in_ == 2 and list(est.classes_) == [0, 1, 2]
    assert len(est.history_) == 8 and all("holdback_loss" in r for r in est.history_)
    losses = [r["holdback_loss"] for r in est.history_]
    assert est.best_epoch_ == int(np.argmin(losses))
    assert est.density_ == pytest.approx(est.history_[est.best_epoch_]["density"])
    assert est.density_ < 1.0
    # The masks describe the model: pruned weights are exactly zero and their count matches.
    kept = sum(int(m.sum()) for m in est.masks_.values())
    total = sum(m.numel() for m in est.masks_.values())
    assert kept / total == pytest.approx(est.density_)
    for name, param in est.model_.named_parameters():
        if name in est.masks_:
            assert not param[~est.masks_[name]].any()


def test_standardises_raw_features_inside_the_estimator():
    X, y = _blobs()
    raw = X * np.array([1e4, 1e-3]) + np.array([5e5, -7.0])  # wildly different units and offsets
    a = _small(OccamMLPClassifier).fit(X, y)
    b = _small(OccamMLPClassifier).fit(raw, y)
    assert b.score(raw, y) > 0.9
    np.testing.assert_allclose(b.predict_proba(raw), a.predict_proba(X), atol=1e-4)


def test_seeded_fits_repeat_and_leave_the_global_torch_generator_alone():
    X, y = _blobs()
    before = torch.get_rng_state()
    p1 = _small(OccamMLPClassifier).fit(X, y).predict_proba(X)
    assert torch.equal(torch.get_rng_state(), before)
    p2 = _small(OccamMLPClassifier).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(p1, p2)
    p3 = _small(OccamMLPClassifier).set_params(random_state=1).fit(X, y)
    assert not np.array_equal(p3.predict_proba(X), p1)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"r0": 1.5}, "r0 must be a number in (0, 1), got 1.5"),
        ({"hidden_layer_sizes": (8, 0)}, "hidden_layer_sizes must be"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"holdback": 1.0}, "holdback must be a fraction in [0, 1), got 1.0"),
        ({"learning_rate": -1.0}, "learning_rate must be a number > 0, got -1.0"),
        ({"device": "gpu7"}, "device must be a torch device"),
        ({"schedule": "zeta"}, "schedule must be one of ['guarded', 'paper', 'planned', 'search'] or None, got 'zeta'"),
    ],
)
def test_bad_parameters_are_refused_in_fit_with_the_value(params, message):
    X, y = _blobs(40)
    est = OccamMLPClassifier(**params)
    with pytest.raises(ValueError, match=re.escape(message)):
        est.fit(X, y)
    assert not hasattr(est, "model_")


@pytest.mark.parametrize("schedule, kind", [("paper", "OccamRate"), ("guarded", "Guarded")])
def test_the_schedule_parameter_picks_the_rate_controller(schedule, kind):
    X, y = _blobs(80)
    est = _small(OccamMLPClassifier, schedule=schedule).fit(X, y)
    actions = {r["action"] for r in est.history_}
    # The paper's rule prunes from the first epoch; the guarded one warms up first.
    assert ("warmup" in actions) == (kind == "Guarded")


def test_regressor_answers_in_the_targets_units_and_handles_several_targets():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = np.column_stack([1000.0 + 250.0 * X[:, 0] - 100.0 * X[:, 1], -0.01 * X[:, 2]])
    est = _small(OccamMLPRegressor).fit(X, y)
    pred = est.predict(X)
    assert pred.shape == (300, 2)
    assert est.score(X, y) > 0.8
    single = _small(OccamMLPRegressor).fit(X, y[:, 0])
    assert single.predict(X).shape == (300,)
    assert single.score(X, y[:, 0]) > 0.8


def _mixed_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], n), "size": rng.normal(size=n)})
    # The label depends mostly on the category: an encoder that lost it could not reach 0.9.
    label = np.where((frame["colour"] == "red") ^ (frame["size"] > 1.2), "yes", "no")
    return frame, label


def test_works_in_a_pipeline_with_categorical_columns_encoded():
    frame, label = _mixed_frame()
    model = make_pipeline(
        make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["colour"]), remainder="passthrough"),
        _small(OccamMLPClassifier),
    ).fit(frame, label)
    assert model.score(frame, label) > 0.9
    assert set(model.predict(frame)) <= {"yes", "no"}


def test_grid_search_tries_every_setting_and_refits_the_best():
    X, y = _blobs(150)
    search = GridSearchCV(_small(OccamMLPClassifier, schedule="paper"),
                          {"r0": [0.1, 0.4], "hidden_layer_sizes": [(8,), (32,)]}, cv=2, error_score="raise").fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.r0 == search.best_params_["r0"]
    assert search.best_estimator_.density_ < 1.0
    assert search.score(X, y) > 0.8


def test_dataframes_record_feature_names_and_refuse_renamed_columns():
    X, y = _blobs()
    frame = pd.DataFrame(X, columns=["a", "b"])
    est = _small(OccamMLPClassifier).fit(frame, y)
    assert list(est.feature_names_in_) == ["a", "b"]
    with pytest.raises(ValueError, match="feature names"):
        est.predict(frame.rename(columns={"a": "z"}))


def test_beats_sklearns_mlp_of_the_same_size_on_glass_by_test_log_loss():
    from threadpoolctl import threadpool_limits

    table = load_table("Glass", manifest=BUNDLED_MANIFEST, test_size=0.3, seed=0)
    labels = np.arange(len(table.classes))
    # Both with their defaults (Adam 1e-3, 200 iterations for scikit-learn's; 60 epochs for Occam's).
    occam = OccamMLPClassifier(hidden_layer_sizes=(256, 256), random_state=0).fit(*table.train)
    with threadpool_limits(1):  # numpy's BLAS threads only fight for the shared cores
        plain = MLPClassifier(hidden_layer_sizes=(256, 256), random_state=0).fit(*table.train)
    occam_loss = log_loss(table.y_test, occam.predict_proba(table.X_test), labels=labels)
    plain_loss = log_loss(table.y_test, plain.predict_proba(table.X_test), labels=labels)
    assert occam_loss < plain_loss, (occam_loss, plain_loss)
    assert occam.density_ < 0.5


def test_estimators_are_reachable_from_the_top_level_package():
    assert occamgd.OccamMLPClassifier is OccamMLPClassifier
    assert occamgd.OccamMLPRegressor is OccamMLPRegressor


def test_a_target_whose_scaling_overflows_is_refused_by_name():
    X = np.arange(20, dtype=float).reshape(10, 2)
    y = np.array([1e300, -1e300] * 5)
    with pytest.raises(ValueError, match=r"y column\(s\) \[0\] cannot be standardised"):
        OccamMLPRegressor(epochs=1, hidden_layer_sizes=(4,)).fit(X, y)
    with pytest.raises(ValueError, match=r"X column\(s\) \[1\] cannot be standardised"):
        OccamMLPClassifier(epochs=1, hidden_layer_sizes=(4,)).fit(np.c_[X[:, 0], y], np.arange(10) % 2)
