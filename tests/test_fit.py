"""fit(): hold-back split, signal, best-state selection, checkpoints and exact resume, bad input."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import occamgd
from occamgd.fit import CHECKPOINT_NAME, NonFiniteLossError, _split, evaluate


def blobs(n=240, features=10, classes=3, seed=0):
    X, y = make_classification(n_samples=n, n_features=features, n_informative=6, n_classes=classes,
                               random_state=seed)
    return X.astype(np.float32), y


def mlp(features=10, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, classes))


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_history_records_every_epoch_and_density_falls():
    X, y = blobs()
    result = occamgd.fit(mlp(), (X, y), epochs=5, progress=False, schedule="paper")
    h = result.history
    assert len(h) == 5
    for key in ("train_loss", "train_acc", "holdback_loss", "holdback_acc", "density", "rate", "time"):
        assert all(v is not None for v in h.column(key)), key
    densities = h.column("density")
    assert densities[0] == 1.0
    assert all(b < a for a, b in zip(densities, densities[1:]))
    assert h.column("rate")[:2] == [0.4, 0.4]
    assert h.column("rate")[-1] == 0.0  # no prune after the last epoch


def test_best_state_is_restored_by_holdback_loss():
    X, y = blobs()
    model = mlp()
    result = occamgd.fit(model, (X, y), epochs=6, progress=False)
    best = result.best_epoch
    assert best == int(np.argmin(result.history.column("holdback_loss")))
    # The returned model is the best epoch's model: same density, same hold-back loss.
    assert result.occam.density == pytest.approx(result.history[best]["density"])
    dataset = TensorDataset(torch.tensor(X), torch.tensor(y))
    _, hold = _split(dataset, 0.1, "classification", 0)
    loss, _ = evaluate(model, hold, F.cross_entropy, "classification")
    assert loss == pytest.approx(result.history[best]["holdback_loss"], rel=1e-5)


def test_test_split_is_reported_but_never_used_for_selection():
    X, y = blobs()
    Xt, yt = blobs(n=60, seed=1)
    with_test = occamgd.fit(mlp(), (X, y), test=(Xt, yt), epochs=4, progress=False)
    without = occamgd.fit(mlp(), (X, y), epochs=4, progress=False)
    assert all(v is not None for v in with_test.history.column("test_loss"))
    assert with_test.best_epoch == without.best_epoch
    assert_same_state(state_copy(with_test.model), state_copy(without.model))


def test_signal_train_reads_the_training_loss():
    X, y = blobs()
    result = occamgd.fit(mlp(), (X, y), epochs=4, signal="train", holdback=0.0, progress=False)
    signals = [r["signal"] for r in result.occam.history]
    assert signals == result.history.column("train_loss")[:3]
    assert result.best_epoch is None  # no hold-back: the final model is kept


def test_never_schedule_is_plain_gradient_descent():
    X, y = blobs()
    result = occamgd.fit(mlp(), (X, y), epochs=3, schedule=occamgd.Never(), progress=False)
    assert result.history.column("density") == [1.0, 1.0, 1.0]


def test_holdback_split_is_stratified():
    y = np.array([0] * 80 + [1] * 20)
    dataset = TensorDataset(torch.zeros(100, 2), torch.tensor(y))
    train, hold = _split(dataset, 0.2, "classification", seed=3)
    hold_labels = y[hold.indices]
    assert len(hold_labels) == 20
    assert (hold_labels == 1).sum() == 4
    assert not set(train.indices) & set(hold.indices)


def test_regression_and_dataset_input():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X @ rng.normal(size=5)).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    result = occamgd.fit(model, TensorDataset(torch.tensor(X), torch.tensor(y)), epochs=5, progress=False)
    losses = result.history.column("holdback_loss")
    assert losses[result.best_epoch] < losses[0]  # it learns (the default prunes from epoch 1 of so short a run)
    assert result.history.column("train_acc") == [None] * 5


def early_guarded():
    """Guarded that starts after one step, so that tiny runs prune (and may roll back)."""
    return occamgd.Guarded(warmup=1, start_tol=0.9, tol=0.0)


@pytest.mark.parametrize("make_schedule", [occamgd.OccamRate, early_guarded])
def test_resume_gives_the_same_final_weights_and_masks(tmp_path, make_schedule):
    X, y = blobs()
    uninterrupted = occamgd.fit(mlp(), (X, y), epochs=5, seed=7, checkpoint_dir=tmp_path / "a", progress=False,
                                schedule=make_schedule())

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        occamgd.fit(mlp(), (X, y), epochs=5, seed=7, checkpoint_dir=tmp_path / "b", progress=False,
                    on_epoch_end=interrupt, schedule=make_schedule())
    resumed = occamgd.fit(mlp(), (X, y), epochs=5, seed=7, checkpoint_dir=tmp_path / "b", progress=False,
                          schedule=make_schedule())
    assert_same_state(state_copy(uninterrupted.model), state_copy(resumed.model))
    for name in uninterrupted.occam.masks:
        assert torch.equal(uninterrupted.occam.masks[name], resumed.occam.masks[name])
    assert uninterrupted.history.to_list() == [
        {**r, "time": a["time"], "train_time": a["train_time"]}
        for r, a in zip(resumed.history.to_list(), uninterrupted.history.to_list())
    ]
    # Atomic writes leave exactly one file behind, no temporaries.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [CHECKPOINT_NAME]


def test_guarded_fit_records_every_decision_and_its_rollbacks_restore_the_pre_prune_density():
    X, y = blobs()
    result = occamgd.fit(mlp(), (X, y), epochs=12, seed=0, progress=False, schedule=early_guarded())
    actions = result.history.column("action")
    assert actions[0] == "warmup" and actions[-1] == "last epoch" and "rolled back" in actions
    for before, after in zip(result.history, result.history[1:]):
        if before["action"] == "rolled back":  # back to the state before the prune that preceded it
            earlier = result.history[before["epoch"] - 1]
            assert after["density"] == earlier["density"]
    assert [r["action"] for r in result.occam.history] == actions[:-1]


def test_checkpoint_from_a_different_model_is_refused_and_model_kept(tmp_path):
    X, y = blobs()
    occamgd.fit(mlp(), (X, y), epochs=2, checkpoint_dir=tmp_path, progress=False)
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    before = state_copy(other)
    with pytest.raises(ValueError, match="different model"):
        occamgd.fit(other, (X, y), epochs=2, checkpoint_dir=tmp_path, progress=False)
    assert_same_state(before, state_copy(other))


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    X, y = blobs()
    occamgd.fit(mlp(), (X, y), epochs=2, seed=0, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="seed=0"):
        occamgd.fit(mlp(), (X, y), epochs=2, seed=1, checkpoint_dir=tmp_path, progress=False)


def test_nan_loss_stops_naming_the_epoch_and_restores_the_last_finite_state():
    X, y = blobs()
    model = mlp()
    poison = {"on": False}
    saved = {}

    def loss(out, target):
        value = F.cross_entropy(out, target)
        return value * math.nan if poison["on"] else value

    def after(record):
        if record["epoch"] == 1:
            saved["state"] = state_copy(model)
            poison["on"] = True

    with pytest.raises(NonFiniteLossError, match="epoch 2") as info:
        occamgd.fit(model, (X, y), epochs=5, loss=loss, on_epoch_end=after, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert_same_state(saved["state"], state_copy(model))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_inf_signal_from_holdback_stops_too():
    X, y = blobs()
    poison = {"on": False}

    def loss(out, target):
        value = F.cross_entropy(out, target)
        return value + math.inf if poison["on"] and not torch.is_grad_enabled() else value

    def after(record):
        poison["on"] = True

    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        occamgd.fit(mlp(), (X, y), epochs=3, loss=loss, on_epoch_end=after, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": -1}, "epochs must be an integer >= 0, got -1"),
        ({"holdback": 0.001}, "holdback=0.001 leaves 0 of 240 rows"),
        ({"holdback": 1.0}, "holdback must be a fraction in \\[0, 1\\), got 1.0"),
        ({"holdback": 0.0}, "signal='holdback' needs holdback > 0"),
        ({"signal": "test"}, "signal must be 'holdback' or 'train', got 'test'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"task": "ranking"}, "task must be"),
        ({"schedule": occamgd.OccamRate(r0=0.4)} | {"criterion": "nope"}, "unknown criterion 'nope'"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(kwargs, message):
    X, y = blobs()
    model = mlp()
    before = state_copy(model)
    with pytest.raises(ValueError, match=message):
        occamgd.fit(model, (X, y), progress=False, **kwargs)
    assert_same_state(before, state_copy(model))


def test_bad_schedule_settings_name_the_value():
    with pytest.raises(ValueError, match="r0 must be a number in \\(0, 1\\), got 1.5"):
        occamgd.OccamRate(r0=1.5)
    with pytest.raises(ValueError, match="floor must be a number in \\[0, r0\\]"):
        occamgd.OccamRate(r0=0.4, floor=0.5)


def test_model_without_prunable_tensors_is_refused():
    X, y = blobs()
    model = nn.Sequential(nn.LayerNorm(10))
    with pytest.raises(ValueError, match="Sequential has no prunable tensors"):
        occamgd.fit(model, (X, y), epochs=1, progress=False)


def test_mismatched_lengths_are_refused():
    X, y = blobs()
    with pytest.raises(ValueError, match="X has 240 rows but y has 239"):
        occamgd.fit(mlp(), (X, y[:-1]), epochs=1, progress=False)


def test_a_failed_fit_leaves_no_hook_on_the_callers_optimizer(tmp_path):
    X, y = blobs()
    occamgd.fit(mlp(), (X, y), epochs=1, seed=0, checkpoint_dir=tmp_path, progress=False)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="seed=0"):
        occamgd.fit(model, (X, y), epochs=1, seed=1, optimizer=opt, checkpoint_dir=tmp_path, progress=False)
    assert len(opt._optimizer_step_post_hooks) == 0


def test_initial_masks_are_kept_through_training():
    X, y = blobs()
    model = mlp()
    masks = {"0.weight": torch.rand(32, 10, generator=torch.Generator().manual_seed(0)) > 0.5,
             "3.weight": torch.ones(3, 32, dtype=torch.bool)}
    result = occamgd.fit(model, (X, y), epochs=2, schedule=occamgd.Never(), initial_masks=masks, progress=False)
    assert torch.equal(result.occam.masks["0.weight"], masks["0.weight"])
    assert bool((model[0].weight.detach()[~masks["0.weight"]] == 0).all())


def test_initial_masks_of_another_model_are_refused_before_training():
    X, y = blobs()
    model = mlp()
    before = state_copy(model)
    with pytest.raises(ValueError, match="initial_masks"):
        occamgd.fit(model, (X, y), epochs=1, initial_masks={"0.weight": torch.ones(2, 2, dtype=torch.bool)},
                    progress=False)
    assert_same_state(before, state_copy(model))


def test_atomic_writes_get_the_mode_of_a_plain_open_not_mkstemps_0600(tmp_path):
    import os

    from occamgd.io import atomic_write_text

    umask = os.umask(0o022)
    try:
        path = atomic_write_text("x", tmp_path / "a.txt")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


class _PruneUntilAlarm(occamgd.Schedule):
    """Prunes 0.3 each epoch; rolls the last prune back when the signal exceeds 1000."""

    needs_snapshot = True

    @dataclass(frozen=True)
    class State:
        epoch: int = 0

    def decide(self, signal, density, state):
        new = replace(state, epoch=state.epoch + 1)
        if signal > 1e3:
            return occamgd.Decision("rolled back", 0.0, restore=True), new
        return occamgd.Decision("pruned", 0.3), new


def test_keep_best_gives_back_occam_as_it_was_at_the_best_epoch_so_a_rollback_goes_to_before_it():
    X, y = blobs(n=120)
    scale, epoch = [100.0, 10.0, 1.0, 10.0, 100.0], [0]  # the hold-back loss is lowest at epoch 2

    def loss(out, target):
        return F.cross_entropy(out, target) * scale[epoch[0]]

    def next_epoch(record):
        epoch[0] = record["epoch"] + 1

    result = occamgd.fit(mlp(), (X, y), epochs=5, batch_size=64, loss=loss, schedule=_PruneUntilAlarm(),
                         on_epoch_end=next_epoch, progress=False)
    occam = result.occam
    assert result.best_epoch == 2 and len(result.history) == 5
    # Occam as the best epoch's model was evaluated: two prunes behind it, none after.
    assert [r["epoch"] for r in occam.history] == [0, 1]
    assert occam.schedule_state == _PruneUntilAlarm.State(epoch=2)
    assert occam.density == result.history[2]["density"]
    # Its rollback snapshot is the one taken before the prune after epoch 1, not after epoch 3.
    occam.step(1e6)
    assert occam.history[-1]["action"] == "rolled back"
    assert occam.density == result.history[1]["density"]


def test_the_best_epoch_shares_occams_copy_of_the_model_instead_of_copying_it(monkeypatch):
    """fit holds one copy of the model (its best epoch), as plain training does; Occam's own copy (a
    rollback's snapshot) is referenced from it, never copied a second time."""
    import sys

    fit_module = sys.modules["occamgd.fit"]

    copied, real = [], fit_module._cpu_copy
    monkeypatch.setattr(fit_module, "_cpu_copy", lambda state: copied.append(state) or real(state))
    result = occamgd.fit(mlp(), blobs(), epochs=8, schedule=occamgd.Guarded(warmup=0, start_tol=0.9), progress=False)
    assert any(r["action"] == "pruned" for r in result.occam.history)  # snapshots were taken

    def tensors(state):
        if torch.is_tensor(state):
            yield state
        elif isinstance(state, dict):
            for v in state.values():
                yield from tensors(v)

    snapshot_tensors = {id(t) for t in tensors(result.occam._snapshot or {})}
    assert all("snapshot" not in state for state in copied if isinstance(state, dict))
    assert not snapshot_tensors & {id(t) for state in copied for t in tensors(state)}
