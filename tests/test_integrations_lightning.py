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


# Structured pruning and shrinking --------------------------------------------------------------
class Wide(Tiny):
    """Two hidden layers to shrink, an example input to trace, clipping and an LR schedule to keep working."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))
        self.example_input_array = torch.zeros(2, 8)
        self.losses, self.sizes = [], []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss))
        self.sizes.append(sum(p.numel() for p in self.parameters()))
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=2e-2)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)]


def _held_by_optimizer(trainer, module) -> bool:
    optimizer = trainer.optimizers[0]
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return all(id(p) in held for p in module.parameters()) and all(
        v.dim() == 0 or v.shape == p.shape for p in module.parameters() for v in optimizer.state[p].values())


def test_shrinking_matches_a_masked_structured_fit_and_trains_a_smaller_module():
    runs = {}
    for shrink in (False, True):
        module, callback, recorder = Wide(), OccamCallback(schedule=ConstantRate(0.3), structured=True,
                                                           shrink=shrink), Recorder()
        params = list(module.parameters())
        trainer = _fit(module, [callback, recorder], epochs=4, gradient_clip_val=0.5)
        runs[shrink] = (module, callback, recorder, params, trainer)
    (masked, masked_cb, masked_rec, *_), (shrunk, shrunk_cb, shrunk_rec, params, trainer) = runs[False], runs[True]
    assert len(shrunk_cb.occam.history) == 3 and shrunk_cb.occam.density == pytest.approx(masked_cb.occam.density)
    # A prune before the first batch of each epoch after the first: the module shrinks then.
    sizes = shrunk.sizes
    assert sizes[:BATCHES_PER_EPOCH] == [masked.sizes[0]] * BATCHES_PER_EPOCH
    assert sizes[BATCHES_PER_EPOCH] < sizes[0] and sizes[-1] < 0.6 * sizes[0] and set(masked.sizes) == {sizes[0]}
    assert shrunk.net[0].out_features < 24 and shrunk.net[2].in_features == shrunk.net[0].out_features
    assert all(a is b for a, b in zip(shrunk.parameters(), params)) and _held_by_optimizer(trainer, shrunk)
    assert all(torch.isfinite(torch.tensor(shrunk.losses)))
    assert shrunk.losses == pytest.approx(masked.losses, rel=1e-5, abs=1e-6)
    assert shrunk_rec.val_losses == pytest.approx(masked_rec.val_losses, rel=1e-5, abs=1e-6)
    assert _pruned_are_zero(shrunk_cb.occam)


def test_a_shrunk_fit_resumes_from_its_checkpoint_like_an_uninterrupted_fit(tmp_path):
    whole, whole_cb = Wide(), OccamCallback(schedule=ConstantRate(0.3), shrink=True)
    _fit(whole, [whole_cb], epochs=4)

    first, first_cb = Wide(), OccamCallback(schedule=ConstantRate(0.3), shrink=True)
    trainer = _fit(first, [first_cb], epochs=2)
    trainer.save_checkpoint(tmp_path / "epoch2.ckpt")
    assert len(first_cb.occam.history) == 1 and first.net[0].out_features < 24  # shrunk after epoch 1

    resumed, resumed_cb = Wide(), OccamCallback(schedule=ConstantRate(0.3), shrink=True)  # a fresh, dense module
    _fit(resumed, [resumed_cb], epochs=4, ckpt_path=tmp_path / "epoch2.ckpt")
    assert resumed_cb.occam.history == whole_cb.occam.history
    assert resumed.losses == pytest.approx(whole.losses[2 * BATCHES_PER_EPOCH:], rel=1e-5, abs=1e-6)
    final, expected = resumed.state_dict(), whole.state_dict()
    assert all(final[k].shape == v.shape and torch.allclose(final[k], v, rtol=1e-5, atol=1e-6)
               for k, v in expected.items())
    assert resumed_cb.occam.density == pytest.approx(whole_cb.occam.density)


def test_a_shrunk_checkpoint_without_the_callbacks_state_is_refused(tmp_path):
    trainer = _fit(Wide(), [OccamCallback(schedule=ConstantRate(0.3), shrink=True)], epochs=2)
    trainer.save_checkpoint(tmp_path / "epoch2.ckpt")
    checkpoint = torch.load(tmp_path / "epoch2.ckpt", weights_only=False)
    del checkpoint["callbacks"]["OccamCallback"]
    torch.save(checkpoint, tmp_path / "stripped.ckpt")
    module = Wide()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=r"other shapes.*no state of this callback"):
        _fit(module, [OccamCallback(schedule=ConstantRate(0.3), shrink=True)], epochs=4,
             ckpt_path=tmp_path / "stripped.ckpt")
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"shrink": True, "structured": False}, "shrink=True removes whole groups"),
    ({"structured": True, "include": ["net.0.weight"]}, "chooses the prunable tensors"),
    ({"example_input": torch.zeros(1, 8)}, "only read by structured"),
    ({"shrink": 1}, "shrink must be True or False"),
])
def test_bad_structured_settings_are_refused_when_made(kwargs, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        OccamCallback(**kwargs)


def test_shrinking_under_ddp_is_refused_before_anything_is_hooked():
    from lightning.pytorch.strategies import DDPStrategy

    callback, module = OccamCallback(shrink=True), Wide()
    trainer = SimpleNamespace(strategy=DDPStrategy(), world_size=2)
    with pytest.raises(ValueError, match=r"DDPStrategy \(world_size=2\).*accepted: a single-device strategy"):
        callback.setup(trainer, module, "fit")
    assert callback._hook is None and callback.occam is None


def test_shrinking_a_compiled_module_is_refused():
    module = Wide()
    with pytest.raises(TypeError, match=r"torch.compile.*accepted: fit the plain module"):
        _fit(torch.compile(module), [OccamCallback(shrink=True)], epochs=1)


def test_shrinking_with_two_optimizers_or_without_an_example_input_is_refused():
    class Two(Wide):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def configure_optimizers(self):
            return [torch.optim.SGD(self.net[:2].parameters(), lr=0.1), torch.optim.SGD(self.net[2:].parameters(), lr=0.1)]

        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(ValueError, match="returned 2; accepted: one optimizer"):
        _fit(Two(), [OccamCallback(shrink=True)], epochs=1)
    module = Wide()
    module.example_input_array = None
    with pytest.raises(ValueError, match="example_input=.*example_input_array"):
        _fit(module, [OccamCallback(shrink=True)], epochs=1)
    callback = OccamCallback(shrink=True, example_input=torch.zeros(2, 8), schedule=ConstantRate(0.3))
    _fit(module, [callback], epochs=2)
    assert module.net[0].out_features < 24


# The fit's budget ------------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "budget"), [
    ({"epochs": 4}, 3),                                                       # 4 validations, the last at the end
    ({"epochs": 5, "check_val_every_n_epoch": 2}, 2),                         # after epochs 2 and 4
    ({"epochs": 4, "check_val_every_n_epoch": 2}, 1),                         # after 2 (and 4, the end)
    ({"epochs": 2, "val_check_interval": 0.5}, 3),                            # every 2 batches
    ({"epochs": 10, "max_steps": 6}, 1),                                      # after epoch 1; stops in epoch 2
    ({"epochs": 10, "max_steps": 6, "accumulate_grad_batches": 2}, 2),        # 2 steps an epoch: 3 epochs
    ({"epochs": 3, "val_check_interval": 3, "check_val_every_n_epoch": None}, 3),  # every 3 of 12 batches
    ({"epochs": 3, "limit_train_batches": 2}, 2),
    ({"epochs": 1}, None),                                                    # one validation, at the end
])
def test_the_occam_gets_the_fits_budget_and_steps_that_many_times(settings, budget):
    callback = OccamCallback(schedule=ConstantRate(0.1))
    settings = dict(settings)
    _fit(Tiny(), [callback], settings.pop("epochs"), **settings)
    assert callback.occam.budget == budget
    assert len(callback.occam.history) == (budget or 0)


def test_an_unbounded_fit_has_no_budget():
    from occamgd.integrations.lightning import run_budget

    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert run_budget(trainer) is None
