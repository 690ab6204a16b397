"""integrations/lightning.py: OccamCallback prunes a LightningModule inside a real Trainer and resumes.

Everything runs on CPU with a 8-16-3 MLP, 64 training rows (4 batches per epoch, in a fixed
order so that runs can be compared bit for bit) and 32 validation rows.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from occamgd import ConstantRate, Guarded, Occam
from occamgd.errors import NotPrunedWarning
from occamgd.integrations.lightning import OccamCallback

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    # Lightning 2.6 calls a pytree API that torch 2.13 deprecates; nothing of ours.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]

BATCHES_PER_EPOCH = 4


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


TRAIN, VAL = _data(16 * BATCHES_PER_EPOCH, seed=1), _data(32, seed=2)


class Tiny(pl.LightningModule):
    def __init__(self, logged: str = "val_loss"):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.logged = logged

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log(self.logged, F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-2)


class Recorder(pl.Callback):
    """What each real validation saw, and whether pruned weights were zero after every step."""

    def __init__(self):
        self.densities, self.val_losses, self.always_zero = [], [], True

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.densities.append(_occam(trainer).density)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_losses.append(float(trainer.callback_metrics["val_loss"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.always_zero &= _pruned_are_zero(_occam(trainer))


class MemoryLogger(Logger):
    """A logger that keeps what it is given."""

    def __init__(self):
        super().__init__()
        self.rows = []

    name, version = "memory", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((dict(metrics), step))


def _occam(trainer) -> Occam:
    return next(c for c in trainer.callbacks if isinstance(c, OccamCallback)).occam


def _pruned_are_zero(occam: Occam) -> bool:
    return all(bool((p.detach()[~occam.masks[n]] == 0).all()) for n, p in occam.masks.params.items())


def _fit(module, callbacks, epochs, ckpt_path=None, **trainer_kwargs):
    options = dict(enable_progress_bar=False, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, num_sanity_val_steps=1)
    options.update(trainer_kwargs)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks, **options)
    train = DataLoader(TRAIN, batch_size=16, shuffle=False)
    trainer.fit(module, train, DataLoader(VAL, batch_size=32), ckpt_path=ckpt_path)
    return trainer


def test_density_drops_across_validations_and_pruned_weights_stay_zero():
    module, callback, recorder, logger = Tiny(), OccamCallback(schedule="paper"), Recorder(), MemoryLogger()
    _fit(module, [callback, recorder], epochs=4, logger=logger)
    # The sanity check is not a validation of the fit: 4 epochs give 4 validations and 3 prunes,
    # each before the training that follows a validation; the last validated model is kept.
    assert recorder.densities[0] == 1.0
    assert all(b < a for a, b in zip(recorder.densities, recorder.densities[1:]))
    assert [round(row["signal"], 6) for row in callback.occam.history] == [
        round(v, 6) for v in recorder.val_losses[:3]]
    assert callback.occam.density == recorder.densities[-1] < 0.5
    assert recorder.always_zero and _pruned_are_zero(callback.occam)
    assert callback.occam.masks.params["net.0.weight"] is module.net[0].weight
    logged = [(row, step) for row, step in logger.rows if "occam/density" in row]
    assert [step for _, step in logged] == [BATCHES_PER_EPOCH * e for e in (1, 2, 3)]
    assert [row["occam/density"] for row, _ in logged] == [r["density"] for r in callback.occam.history]
    assert [row["occam/rate"] for row, _ in logged] == [r["rate"] for r in callback.occam.history]
    # Fitting is over: the optimizer is no longer hooked.
    assert callback.occam.optimizer is None


def test_checkpoint_at_validation_end_holds_the_model_it_scores(tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1, filename="{epoch}")
    _fit(Tiny(), [OccamCallback(schedule="paper"), saver], epochs=3, enable_checkpointing=True)
    for epoch in range(3):
        checkpoint = torch.load(tmp_path / f"epoch={epoch}.ckpt", weights_only=False)
        module = Tiny()
        module.load_state_dict(checkpoint["state_dict"])
        x, y = VAL.tensors
        with torch.no_grad():
            loss = float(F.cross_entropy(module(x), y))
        score = next(s["current_score"] for k, s in checkpoint["callbacks"].items() if "ModelCheckpoint" in k)
        assert loss == pytest.approx(float(score), abs=1e-6), epoch
        masks = checkpoint["callbacks"]["OccamCallback"]["occam"]["masks"]
        assert bool((module.net[0].weight[~masks["net.0.weight"]] == 0).all())


def test_resume_from_checkpoint_continues_as_an_uninterrupted_run(tmp_path):
    whole, whole_cb = Tiny(), OccamCallback(schedule="paper")
    _fit(whole, [whole_cb], epochs=4)

    first_cb = OccamCallback(schedule="paper")
    trainer = _fit(Tiny(), [first_cb], epochs=2)
    trainer.save_checkpoint(tmp_path / "epoch2.ckpt")
    assert len(first_cb.occam.history) == 1 and first_cb.state_dict()["pending_signal"] is not None

    resumed, resumed_cb = Tiny(), OccamCallback(schedule="paper")
    _fit(resumed, [resumed_cb], epochs=4, ckpt_path=tmp_path / "epoch2.ckpt")
    assert len(resumed_cb.occam.history) == 3
    assert resumed_cb.occam.history == whole_cb.occam.history
    assert all(torch.equal(resumed_cb.occam.masks[n], whole_cb.occam.masks[n]) for n in whole_cb.occam.masks)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert resumed_cb.occam.density < first_cb.occam.density


def test_state_loaded_during_fitting_applies_at_once():
    donor = OccamCallback(schedule="paper")
    _fit(Tiny(), [donor], epochs=3)

    class LoadOnTrainStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            callback.load_state_dict(donor.state_dict())
            seen.append({n: m.clone() for n, m in callback.occam.masks.items()})

    callback, seen = OccamCallback(schedule="paper"), []
    _fit(Tiny(), [callback, LoadOnTrainStart()], epochs=1)
    assert all(torch.equal(seen[0][n], donor.occam.masks[n]) for n in seen[0])
    # The donor's pending signal was pruned on before the first batch.
    assert callback.occam.history[:2] == donor.occam.history and len(callback.occam.history) == 3


def test_fitting_the_same_module_again_keeps_its_masks_and_a_new_module_starts_afresh():
    schedule = ConstantRate(0.3)
    module, callback = Tiny(), OccamCallback(schedule=schedule)
    _fit(module, [callback], epochs=2)
    first = callback.occam
    density = first.density
    _fit(module, [callback], epochs=2)
    assert callback.occam is first and first.density < density
    _fit(Tiny(), [callback], epochs=2)
    assert callback.occam is not first and len(callback.occam.history) == 1
    # The new module's run starts from the controller's initial state, not the first run's.
    assert callback.occam.schedule_state == ConstantRate.State(epoch=1)


def test_missing_monitor_names_the_key_and_the_logged_metrics():
    with pytest.raises(ValueError, match=r"'val_loss'.*logged metrics: \['valid_loss'\]"):
        _fit(Tiny(logged="valid_loss"), [OccamCallback(schedule="paper")], epochs=1, num_sanity_val_steps=0)


def test_fit_without_validation_warns_that_nothing_was_pruned():
    callback = OccamCallback(schedule="paper")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(Tiny(), [callback], epochs=2, limit_val_batches=0)
    assert any("no validation ran" in str(w.message) for w in caught)
    assert callback.occam.density == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"monitor": ""}, "monitor"), ({"criterion": "largest"}, "criterion"),
     ({"schedule": "fast"}, "preset"), ({"zero_state": "never"}, "zero_state")],
)
def test_bad_arguments_are_refused_when_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OccamCallback(**kwargs)


def test_sharded_strategies_are_refused_with_the_reason():
    # Lightning's FSDP needs a GPU to run; the refusal comes before anything it would do.
    trainer = SimpleNamespace(strategy=FSDPStrategy(), optimizers=[], world_size=1)
    with pytest.raises(TypeError, match="FSDPStrategy.*only a shard"):
        OccamCallback(schedule="paper").on_fit_start(trainer, Tiny())


class TwoOptimizers(Tiny):
    """Manual optimization: the first layer on one optimizer, the second layer on another."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(F.cross_entropy(self(x), y))
        for optimizer in self.optimizers():
            optimizer.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[2].parameters(), lr=0.1)]


def test_a_prunable_tensor_on_a_second_optimizer_is_refused_and_can_be_excluded():
    callback = OccamCallback(schedule="paper")
    with pytest.raises(ValueError, match=r"\['net.2.weight'\].*other than the first"):
        _fit(TwoOptimizers(), [callback], epochs=1)
    assert callback.occam is None
    callback = OccamCallback(exclude="net.2", schedule="paper")
    _fit(TwoOptimizers(), [callback], epochs=2)
    assert list(callback.occam.masks) == ["net.0.weight"] and callback.occam.density < 1.0
    assert _pruned_are_zero(callback.occam)


def test_a_state_from_elsewhere_is_refused():
    with pytest.raises(ValueError, match="pending_signal"):
        OccamCallback(schedule="paper").load_state_dict({"masks": {}})


def test_a_fit_that_ends_without_pruning_says_why():
    callback = OccamCallback(schedule=Guarded(warmup=100))
    with pytest.warns(NotPrunedWarning, match="still in its warm-up phase"):
        _fit(Tiny(), [callback], epochs=3)
    assert callback.occam.density == 1.0
