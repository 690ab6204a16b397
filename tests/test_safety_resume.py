"""Resume that is what it says: a fit() checkpoint stores every setting that shapes the result.

A changed setting is refused by name, extending a finished run is exact (the same weights, masks
and history as one uninterrupted longer run), fewer epochs than the checkpoint holds are
refused, and a damaged checkpoint is named with what to do, the file left as it was.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

import occamgd
from occamgd.fit import CHECKPOINT_NAME

pytestmark = pytest.mark.usefixtures("one_thread")


def _data():
    X, y = make_classification(n_samples=200, n_features=8, n_informative=5, n_classes=3, random_state=0)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def _fit(epochs, directory, **kwargs):
    kwargs.setdefault("schedule", "paper")  # prunes every epoch: the pending prune matters
    return occamgd.fit(_mlp(), _data(), epochs=epochs, seed=3, checkpoint_dir=directory, progress=False, **kwargs)


def _comparable(history):
    return [{k: v for k, v in r.items() if k not in ("time", "train_time")} for r in history]


def test_extending_a_finished_run_equals_the_uninterrupted_longer_run(tmp_path):
    longer = _fit(10, tmp_path / "a")
    _fit(8, tmp_path / "b")
    extended = _fit(10, tmp_path / "b")
    assert _comparable(extended.history) == _comparable(longer.history)
    assert extended.occam.density == longer.occam.density
    for name, mask in longer.occam.masks.items():
        assert torch.equal(mask, extended.occam.masks[name])
    for (name, a), b in zip(longer.model.state_dict().items(), extended.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_fewer_epochs_than_the_checkpoint_holds_are_refused(tmp_path):
    _fit(6, tmp_path)
    with pytest.raises(ValueError, match=r"holds 6 finished epochs, more than epochs=4; accepted: epochs >= 6"):
        _fit(4, tmp_path)
    assert len(_fit(6, tmp_path).history) == 6  # the same length returns the finished run


@pytest.mark.parametrize("changed, name", [
    ({"lr": 1e-2}, "optimizer"),
    ({"schedule": occamgd.OccamRate(r0=0.3)}, "schedule"),
    ({"schedule": "guarded"}, "schedule"),
    ({"criterion": "global"}, "criterion"),
    ({"batch_size": 16}, "batch_size"),
])
def test_a_changed_setting_is_refused_by_name(tmp_path, changed, name):
    _fit(3, tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ValueError, match=rf"written with {name}=.*accepted: the same {name}"):
        _fit(5, tmp_path, **changed)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not a checkpoint", lambda b: b""])
def test_a_damaged_checkpoint_is_named_and_left_alone(tmp_path, damage):
    _fit(2, tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(damage(path.read_bytes()))
    damaged = path.read_bytes()
    with pytest.raises(occamgd.errors.InvalidValueError, match=rf"checkpoint {path} cannot be read .* move it away"):
        _fit(3, tmp_path)
    assert path.read_bytes() == damaged


def test_a_checkpoint_that_unpickles_code_is_refused_not_run(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("ran code from a checkpoint",))

    path = tmp_path / CHECKPOINT_NAME
    with open(path, "wb") as f:
        torch.save({"format": 1, "x": Boom()}, f, pickle_module=pickle)
    with pytest.raises(occamgd.errors.InvalidValueError, match="cannot be read"):
        _fit(2, tmp_path)
