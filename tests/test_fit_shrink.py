"""fit(structured=True, shrink=True): groups pruned whole, the live model shrinks, keep_best and resume follow it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn
from torch.utils.data import TensorDataset

import occamgd
from occamgd import ConstantRate
from occamgd.errors import InvalidValueError

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n=200, features=10, classes=3, seed=0):
    X, y = make_classification(n_samples=n, n_features=features, n_informative=6, n_classes=classes,
                               random_state=seed)
    return X.astype(np.float32), y


def mlp(seed=0, hidden=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_structured_shrink_removes_units_and_records_the_live_sizes():
    X, y = blobs()
    model = mlp()
    first = model[0].weight
    result = occamgd.fit(model, (X, y), epochs=4, schedule=ConstantRate(0.5), structured=True, shrink=True,
                         keep_best=False, progress=False)
    assert model[0].weight is first  # shrunk in place: the same Parameter
    assert model[0].weight.shape[0] < 32 and model[2].weight.shape[1] == model[0].weight.shape[0]
    live = result.history.column("live")
    assert live[0]["0.weight"] == 320 and live[-1]["0.weight"] < live[1]["0.weight"] < 320
    # density still counts against the original sizes
    assert result.history[-1]["density"] < result.history[1]["density"] < 1.0
    assert model(torch.as_tensor(X[:5])).shape == (5, 3)


def test_structured_without_shrink_masks_whole_units_and_keeps_shapes():
    X, y = blobs()
    model = mlp()
    result = occamgd.fit(model, (X, y), epochs=3, schedule=ConstantRate(0.5), structured=True, keep_best=False,
                         progress=False)
    assert shapes(model) == shapes(mlp())
    rows = result.occam.masks["0.weight"].any(dim=1)  # a unit is pruned whole: its row is all zero
    assert 0 < int(rows.sum()) < 32
    assert torch.equal(result.occam.masks["0.weight"], rows[:, None].expand(-1, 10))
    assert "live" not in result.history[0]


def test_shrinking_fit_equals_a_masked_structured_fit():
    X, y = blobs()
    torch.set_default_dtype(torch.float64)
    try:
        Xd = X.astype(np.float64)
        kwargs = dict(epochs=4, schedule=ConstantRate(0.4), structured=True, keep_best=False, progress=False)
        data = TensorDataset(torch.as_tensor(Xd), torch.as_tensor(y))  # a tuple would train as float32
        masked = occamgd.fit(mlp(), data, **kwargs)
        shrunk = occamgd.fit(mlp(), data, shrink=True, **kwargs)
    finally:
        torch.set_default_dtype(torch.float32)
    for a, b in zip(masked.history, shrunk.history):
        assert a["density"] == pytest.approx(b["density"])
        assert a["holdback_loss"] == pytest.approx(b["holdback_loss"], rel=1e-8)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-8)
    assert sum(p.numel() for p in shrunk.model.parameters()) < sum(p.numel() for p in masked.model.parameters())


@pytest.mark.filterwarnings("ignore:fit with epochs=1")
def test_keep_best_restores_the_best_epoch_with_its_larger_shapes():
    X, y = blobs()
    # A tiny learning rate: training barely moves, halving the units every epoch hurts; epoch 0 is the best.
    kwargs = dict(epochs=4, schedule=ConstantRate(0.5), structured=True, shrink=True, lr=1e-5, seed=3,
                  progress=False)
    model = mlp()
    result = occamgd.fit(model, (X, y), **kwargs)
    best = result.best_epoch
    assert best < 3 and result.history[best + 1]["live"]["0.weight"] < result.history[best]["live"]["0.weight"]
    # The model of that epoch: a run that ends there (its last epoch is not followed by a prune).
    reference = occamgd.fit(mlp(), (X, y), **{**kwargs, "epochs": best + 1, "keep_best": False})
    assert shapes(result.model) == shapes(reference.model)
    for k, v in reference.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[k], v), k
    result.model.eval()
    reference.model.eval()
    with torch.no_grad():
        assert torch.equal(result.model(torch.as_tensor(X[:20])), reference.model(torch.as_tensor(X[:20])))
    assert result.occam.density == pytest.approx(result.history[best]["density"])
    assert result.occam.masks["0.weight"].shape == result.model[0].weight.shape


@pytest.mark.filterwarnings("ignore::occamgd.errors.NotPrunedWarning")  # the guarded one rolls every prune back
# start_by=None: the guarded run prunes at epoch 2, so the interruption there comes after a shrink.
@pytest.mark.parametrize("schedule", [lambda: ConstantRate(0.3),
                                      lambda: occamgd.Guarded(warmup=0, start_tol=0.99, start_by=None)])
def test_resume_after_a_shrink_equals_the_uninterrupted_run(tmp_path, schedule):
    X, y = blobs()
    kwargs = dict(epochs=5, seed=7, structured=True, shrink=True, progress=False)
    uninterrupted = occamgd.fit(mlp(), (X, y), checkpoint_dir=tmp_path / "a", schedule=schedule(), **kwargs)

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        occamgd.fit(mlp(), (X, y), checkpoint_dir=tmp_path / "b", schedule=schedule(), on_epoch_end=interrupt,
                    **kwargs)
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert saved["model"]["0.weight"].shape[0] < 32  # it was interrupted after a shrink
    resumed = occamgd.fit(mlp(), (X, y), checkpoint_dir=tmp_path / "b", schedule=schedule(), **kwargs)
    assert shapes(resumed.model) == shapes(uninterrupted.model)
    for k, v in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    drop = ("time", "train_time")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in uninterrupted.history]


def test_a_checkpoint_of_another_shrink_setting_is_refused(tmp_path):
    X, y = blobs()
    occamgd.fit(mlp(), (X, y), epochs=2, structured=True, schedule=ConstantRate(0.3), checkpoint_dir=tmp_path,
                progress=False)
    with pytest.raises(InvalidValueError, match="shrink=False, this call has shrink=True"):
        occamgd.fit(mlp(), (X, y), epochs=3, structured=True, shrink=True, schedule=ConstantRate(0.3),
                    checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"shrink": True}, "shrink=True .* needs structured pruning, got structured=False"),
    ({"structured": True, "criterion": "global"}, "structured=True chooses the criterion"),
    ({"structured": True, "include": ["0.weight"]}, "structured=True chooses the criterion"),
    ({"structured": 1}, r"structured must be one of \(False, True, .layer., .global.\), got 1"),
    ({"structured": True, "shrink": "yes"}, "shrink must be True or False, got 'yes'"),
])
def test_bad_structured_settings_are_refused_before_training(kwargs, message):
    X, y = blobs()
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidValueError, match=message):
        occamgd.fit(model, (X, y), epochs=2, progress=False, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shrink_with_a_custom_optimizer_is_refused_before_training():
    class Custom(torch.optim.SGD):
        pass

    X, y = blobs()
    with pytest.raises(TypeError, match="accepted: torch.optim.SGD"):
        occamgd.fit(mlp(), (X, y), epochs=2, structured=True, shrink=True, progress=False,
                    optimizer=lambda params: Custom(params, lr=0.1))
