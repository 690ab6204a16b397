"""occam.py: Occam binds model, optimizer, criterion and schedule; prunes once per epoch; resumes."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from occamgd import GMP, ConstantRate, Guarded, Never, Occam, OccamRate
from occamgd.criteria import prune_count
from occamgd.schedules import Decision, state_to_dict


def train(model, opt, x, y, steps=3):
    """A few full-batch steps; returns the last loss (the 'signal')."""
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def snapshot(occam):
    """Everything Occam.step or load_state_dict may change, as comparable plain values."""
    return {
        "masks": {n: m.clone() for n, m in occam.masks.items()},
        "schedule": state_to_dict(occam.schedule_state),
        "history": [dict(r) for r in occam.history],
        "weights": {k: v.clone() for k, v in occam.model.state_dict().items()},
    }


def assert_snapshot_equal(a, b):
    assert a["masks"].keys() == b["masks"].keys()
    assert all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"])
    assert a["schedule"] == b["schedule"]
    assert a["history"] == b["history"]
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def assert_pruned_zero(occam, opt=None):
    for name, p in occam.masks.params.items():
        pruned = ~occam.masks[name]
        assert bool((p.detach()[pruned] == 0).all()), name
        if opt is not None:
            for key, value in opt.state[p].items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    assert bool((value[pruned] == 0).all()), (name, key)


@pytest.fixture
def setup(tiny_mlp):
    def make(seed=0, schedule=None, criterion="layerwise", **kwargs):
        model = tiny_mlp(seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        occam = Occam(model, opt, criterion, schedule, **kwargs)
        return model, opt, occam

    return make


# End to end ------------------------------------------------------------------------------------
def test_the_default_preset_is_the_guarded_controller(setup):
    _, _, occam = setup()
    assert isinstance(occam.schedule, Guarded) and "Guarded" in repr(occam)


def test_end_to_end_density_falls_per_schedule_and_history_records_each_epoch(setup, tiny_data):
    model, opt, occam = setup(schedule="paper")
    x, y = tiny_data()
    assert isinstance(occam.schedule, OccamRate) and occam.density == 1.0
    reference, reference_state = OccamRate(), OccamRate().init()
    for epoch in range(6):
        signal = train(model, opt, x, y)
        assert_pruned_zero(occam)  # the optimizer hook kept the pruned weights at zero
        kept_before = {n: int(m.sum()) for n, m in occam.masks.items()}
        density_before = occam.density
        rate = occam.step(signal)
        decision, reference_state = reference.decide(signal, density_before, reference_state)
        assert rate == decision.rate and occam.schedule_state == reference_state
        assert reference.floor <= rate <= reference.r0
        for name, mask in occam.masks.items():  # the paper's per-tensor count, tensor by tensor
            assert int(mask.sum()) == kept_before[name] - prune_count(kept_before[name], rate)
        assert occam.density < density_before
        assert_pruned_zero(occam, opt)
        record = occam.history[-1]
        assert record == {
            "epoch": epoch,
            "signal": signal,
            "action": "pruned",
            "rate": rate,
            "density_before": density_before,
            "density": occam.density,
        }
    assert [r["epoch"] for r in occam.history] == list(range(6))
    assert occam.densities == occam.masks.densities()
    assert occam.history[0]["rate"] == occam.history[1]["rate"] == 0.4
    assert occam.density < 0.6**2  # two epochs at r0 alone remove ~64% of each tensor


def test_signal_is_stored_as_a_plain_float(setup):
    _, _, occam = setup()
    occam.step(torch.tensor(0.75))
    assert type(occam.history[0]["signal"]) is float and occam.history[0]["signal"] == 0.75


def test_never_schedule_leaves_masks_full(setup, tiny_data):
    model, opt, occam = setup(schedule=Never())
    x, y = tiny_data()
    for _ in range(3):
        assert occam.step(train(model, opt, x, y, 1)) == 0.0
    assert occam.density == 1.0 and [r["density"] for r in occam.history] == [1.0] * 3


def test_gmp_schedule_prunes_toward_its_target(setup):
    _, _, occam = setup(schedule=GMP(0.25, start=0, end=3))
    for _ in range(5):
        occam.step(None)
    assert occam.density == pytest.approx(0.25, abs=0.03)


def test_detach_stops_enforcement_and_attach_restores_it(setup, tiny_data):
    model, opt, occam = setup(schedule=ConstantRate(0.5))
    x, y = tiny_data()
    train(model, opt, x, y, 2)
    occam.step(1.0)
    occam.detach()
    assert occam.optimizer is None
    train(model, opt, x, y, 3)
    revived = sum(int((p.detach()[~occam.masks[n]] != 0).sum()) for n, p in occam.masks.params.items())
    assert revived > 0, "without hooks Adam must move pruned weights"
    occam.attach(opt)
    assert occam.optimizer is opt
    train(model, opt, x, y, 1)
    assert_pruned_zero(occam)  # the post-step hook re-zeroes them


def test_attaching_a_new_optimizer_removes_the_old_hooks(setup, tiny_data):
    model, old, occam = setup(schedule=ConstantRate(0.5))
    x, y = tiny_data()
    occam.step(1.0)
    new = torch.optim.SGD(model.parameters(), lr=0.1)
    occam.attach(new)
    train(model, old, x, y, 2)  # the old optimizer no longer enforces anything
    assert any(bool((p.detach()[~occam.masks[n]] != 0).any()) for n, p in occam.masks.params.items())
    train(model, new, x, y, 1)
    assert_pruned_zero(occam)


def test_enforce_without_an_optimizer_zeroes_pruned_weights(tiny_mlp, tiny_data):
    model = tiny_mlp()
    x, y = tiny_data()
    occam = Occam(model, schedule=ConstantRate(0.5))
    assert occam.optimizer is None
    occam.step(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # not attached
    train(model, opt, x, y, 2)
    occam.enforce()
    assert_pruned_zero(occam)


def test_a_criterion_can_never_revive_a_pruned_entry(setup):
    calls = []

    def revive_everything(weights, masks, rate):
        calls.append(rate)
        return {n: torch.ones_like(m) for n, m in masks.items()}

    _, _, occam = setup(schedule=ConstantRate(0.5))
    occam.step(1.0)
    density = occam.density
    occam.criterion = revive_everything
    occam.step(1.0)
    assert calls == [0.5] and occam.density == density


def test_include_and_exclude_pass_through(setup):
    _, _, occam = setup(include="0")
    assert list(occam.masks) == ["0.weight"]
    _, _, occam = setup(exclude=nn.Linear, include="*")
    assert list(occam.masks) == ["0.bias", "2.bias"]


# Bad signals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, torch.tensor(float("nan")), None])
def test_non_finite_or_missing_signal_raises_value_error_and_changes_nothing(bad, setup, tiny_data):
    model, opt, occam = setup()
    x, y = tiny_data()
    for _ in range(3):
        occam.step(train(model, opt, x, y, 1))
    before = snapshot(occam)
    with pytest.raises(ValueError, match="signal"):
        occam.step(bad)
    assert_snapshot_equal(snapshot(occam), before)


class Lenient(ConstantRate):
    """A user schedule that does not check its signal itself."""

    def decide(self, signal, density, state):
        return Decision("pruned", self.rate), replace(state, epoch=state.epoch + 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_occam_rejects_non_finite_signals_even_if_the_schedule_would_not(bad, setup):
    _, _, occam = setup(schedule=Lenient(0.3))
    occam.step(1.0)
    before = snapshot(occam)
    with pytest.raises(ValueError, match="signal"):
        occam.step(bad)
    assert_snapshot_equal(snapshot(occam), before)


# Checkpointing -----------------------------------------------------------------------------------
def test_state_dict_round_trip_resumes_exactly(setup, tiny_data):
    model, opt, occam = setup()
    x, y = tiny_data()
    for _ in range(4):
        occam.step(train(model, opt, x, y, 2))
    buffer = io.BytesIO()
    torch.save(occam.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain tensors, numbers and lists only

    model2, opt2, occam2 = setup(seed=1)
    model2.load_state_dict(model.state_dict())
    occam2.load_state_dict(state)
    assert_snapshot_equal(snapshot(occam2), snapshot(occam))
    assert occam2.density == occam.density

    rate, rate2 = occam.step(0.123), occam2.step(0.123)
    assert rate == rate2
    assert_snapshot_equal(snapshot(occam2), snapshot(occam))


def test_loaded_state_is_independent_of_the_source(setup):
    _, _, occam = setup(schedule=ConstantRate(0.3))
    occam.step(1.0)
    state = occam.state_dict()
    _, _, occam2 = setup(schedule=ConstantRate(0.3))
    occam2.load_state_dict(state)
    before = snapshot(occam2)
    occam.step(1.0)
    state["history"].append({"epoch": 99})
    state["masks"]["0.weight"].fill_(False)
    assert_snapshot_equal(snapshot(occam2), before)


def test_load_state_dict_zeroes_pruned_weights_of_the_target(setup):
    _, _, occam = setup(schedule=ConstantRate(0.5))
    occam.step(1.0)
    model2, _, occam2 = setup(seed=3, schedule=ConstantRate(0.5))
    occam2.load_state_dict(occam.state_dict())
    assert_pruned_zero(occam2)


class Renamed(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)


@pytest.mark.parametrize(
    "other",
    [
        lambda: nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3)),  # other shapes
        lambda: Renamed(),  # same shapes, other names
        lambda: nn.Sequential(nn.Linear(6, 8)),  # a subset of the tensors
        lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3)),  # a superset
    ],
)
def test_loading_state_from_a_different_model_raises_and_changes_nothing(other, setup, tiny_data):
    model, opt, occam = setup(schedule=ConstantRate(0.4))
    x, y = tiny_data()
    occam.step(train(model, opt, x, y, 1))
    foreign_model = other()
    foreign = Occam(foreign_model, schedule=ConstantRate(0.4))
    for _ in range(3):  # so that its schedule state and history differ from the target's
        foreign.step(1.0)
    before = snapshot(occam)
    with pytest.raises(ValueError, match="checkpoint masks"):
        occam.load_state_dict(foreign.state_dict())
    assert_snapshot_equal(snapshot(occam), before)


def test_loading_state_of_another_schedule_type_raises_and_changes_nothing(setup):
    _, _, occam = setup(schedule=OccamRate())
    occam.step(1.0)
    before = snapshot(occam)
    _, _, other = setup(schedule=ConstantRate(0.2))
    other.step(1.0)
    with pytest.raises(ValueError, match="ConstantRate.*OccamRate"):
        occam.load_state_dict(other.state_dict())
    assert_snapshot_equal(snapshot(occam), before)


@pytest.mark.parametrize("fmt", [None, 0, 3, "2", True])
def test_loading_state_of_an_unknown_format_raises_and_changes_nothing(fmt, setup):
    _, _, occam = setup()
    occam.step(1.0)
    state = occam.state_dict()
    state["format"] = fmt
    _, _, target = setup()
    before = snapshot(target)
    with pytest.raises(ValueError, match="format"):
        target.load_state_dict(state)
    assert_snapshot_equal(snapshot(target), before)


def test_loading_schedule_state_with_wrong_keys_raises_and_changes_nothing(setup):
    _, _, occam = setup()
    occam.step(1.0)
    state = occam.state_dict()
    state["schedule"]["state"] = {"epoch": 1}
    _, _, target = setup()
    before = snapshot(target)
    with pytest.raises(ValueError, match="accepted"):
        target.load_state_dict(state)
    assert_snapshot_equal(snapshot(target), before)


# Configuration -----------------------------------------------------------------------------------
def test_global_criterion_prunes_across_tensors(setup, tiny_data):
    model, opt, occam = setup(criterion="global", schedule=ConstantRate(0.5))
    x, y = tiny_data()
    for _ in range(3):
        kept = occam.masks.kept
        occam.step(train(model, opt, x, y, 1))
        assert occam.masks.kept == kept - prune_count(kept, 0.5)
        assert_pruned_zero(occam, opt)
    pruned = torch.cat([p.detach()[~occam.masks[n]].abs() for n, p in occam.masks.params.items()])
    assert pruned.numel() > 0


@pytest.mark.parametrize("criterion", ["global_magnitude", "Layerwise", "random"])
def test_unknown_criterion_raises_value_error_listing_accepted(criterion, tiny_mlp):
    with pytest.raises(ValueError, match="layerwise"):
        Occam(tiny_mlp(), criterion=criterion)


@pytest.mark.parametrize("schedule", [0.4, OccamRate, lambda signal, density: 0.1])
def test_non_schedule_raises_type_error(schedule, tiny_mlp):
    with pytest.raises(TypeError, match="Schedule"):
        Occam(tiny_mlp(), schedule=schedule)


@pytest.mark.parametrize("preset", ["occam", "Paper", ""])
def test_unknown_preset_raises_value_error_listing_presets(preset, tiny_mlp):
    with pytest.raises(ValueError, match="paper, guarded"):
        Occam(tiny_mlp(), schedule=preset)


@pytest.mark.parametrize("bad", ["adam", 0.1, lambda p: torch.optim.Adam(p)])
def test_non_optimizer_raises_type_error(bad, tiny_mlp):
    model = tiny_mlp()
    with pytest.raises(TypeError, match="Optimizer"):
        Occam(model, bad)
    with pytest.raises(TypeError, match="Optimizer"):
        Occam(model).attach(list(model.parameters()))


def test_model_without_prunable_tensors_raises_value_error():
    with pytest.raises(ValueError, match="LayerNorm"):
        Occam(nn.LayerNorm(4))


# The user's module is left alone ------------------------------------------------------------------
def _hook_counts(model):
    counts = []
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                     "_load_state_dict_post_hooks"):
            counts.append((name, attr, len(getattr(module, attr, {}) or {})))
    for name, p in model.named_parameters():
        counts.append((name, "_backward_hooks", len(p._backward_hooks or {})))
        counts.append((name, "_post_accumulate_grad_hooks", len(getattr(p, "_post_accumulate_grad_hooks", None) or {})))
    return counts


def test_constructing_occam_does_not_change_the_users_module(tiny_mlp):
    model = tiny_mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    buffers = dict(model.named_buffers())
    hooks = _hook_counts(model)
    opt = torch.optim.Adam(model.parameters())
    occam = Occam(model, opt)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert dict(model.named_parameters()) == params  # the very same Parameter objects
    assert all(occam.masks.params[n] is params[n] for n in occam.masks)
    assert dict(model.named_modules()) == modules
    assert dict(model.named_buffers()) == buffers
    assert _hook_counts(model) == hooks
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.ReLU) for m in model.modules())


def test_pruning_changes_only_weight_values_not_the_module_structure(setup, tiny_data):
    model, opt, occam = setup()
    keys = list(model.state_dict())
    hooks = _hook_counts(model)
    occam.step(1.0)
    assert list(model.state_dict()) == keys
    assert _hook_counts(model) == hooks
    x, _ = tiny_data()
    assert model(x).shape == (32, 3)


def test_repr_mentions_size_and_schedule(setup):
    _, _, occam = setup(schedule="paper")
    text = repr(occam)
    assert "Occam(" in text and "OccamRate" in text and "layerwise" in text


class _BadRate(ConstantRate):
    """A user schedule that decides an impossible rate."""

    def decide(self, signal, density, state):
        return Decision("pruned", 1.5), replace(state, epoch=state.epoch + 1)


class _NotADecision(ConstantRate):
    """A user schedule that answers in the old way, with a bare rate."""

    def decide(self, signal, density, state):
        return self.rate


class _WrongState(ConstantRate):
    """A user schedule that returns another schedule's state."""

    def decide(self, signal, density, state):
        return Decision("pruned", self.rate), Never().init()


@pytest.mark.parametrize("schedule, error, match", [
    (_BadRate(0.1), ValueError, "rate must be a real number in \\[0, 1\\), got 1.5"),
    (_NotADecision(0.1), TypeError, "answered 0.1; accepted: a tuple \\(Decision, new state\\)"),
    (_WrongState(0.1), TypeError, "the new state a ConstantRate.State"),
])
def test_a_schedule_answering_what_cannot_be_done_is_refused_and_changes_nothing(schedule, error, match, tiny_mlp):
    occam = Occam(tiny_mlp(), schedule=schedule)
    before = snapshot(occam)
    with pytest.raises(error, match=match):
        occam.step(1.0)
    assert_snapshot_equal(before, snapshot(occam))


def test_loading_a_state_without_history_is_refused_before_anything_changes(setup):
    _, _, source = setup(schedule=ConstantRate(0.5))
    source.step(1.0)
    _, _, target = setup(schedule=ConstantRate(0.5))
    before = snapshot(target)
    state = source.state_dict()
    del state["history"]
    with pytest.raises(ValueError, match="lacks \\['history'\\]"):
        target.load_state_dict(state)
    assert_snapshot_equal(before, snapshot(target))


# Rollback (schedules that need a snapshot) --------------------------------------------------------
from occamgd.schedules import Schedule  # noqa: E402


class _Script(Schedule):
    """Replays a fixed list of ``(action, rate)`` decisions; asks for snapshots like Guarded."""

    needs_snapshot = True

    @dataclass(frozen=True)
    class State:
        epoch: int = 0

    def __init__(self, decisions):
        self.decisions = [Decision(action, rate, restore=action == "rolled back") for action, rate in decisions]

    def decide(self, signal, density, state):
        return self.decisions[state.epoch], replace(state, epoch=state.epoch + 1)


def test_a_rollback_restores_every_parameter_buffer_and_mask_from_before_the_prune(setup, tiny_data):
    model, opt, occam = setup(schedule=_Script([("pruned", 0.5), ("rolled back", 0.0)]))
    x, y = tiny_data()
    train(model, opt, x, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    occam.step(1.0)
    assert occam.density < 1.0 and occam.snapshot_bytes > 0
    assert all(v.device.type == "cpu" for v in occam._snapshot["model"].values())
    train(model, opt, x, y)  # the epoch after the prune moves every weight
    occam.step(2.0)
    assert occam.density == 1.0 and occam.snapshot_bytes == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [r["action"] for r in occam.history] == ["pruned", "rolled back"]


def test_snapshot_bytes_is_one_copy_of_the_model_plus_one_byte_per_prunable_weight(setup):
    model, _, occam = setup(schedule=_Script([("pruned", 0.5)]))
    occam.step(1.0)
    params = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert occam.snapshot_bytes == params + occam.masks.total


def test_a_rollback_without_a_prune_before_it_is_refused_and_changes_nothing(setup):
    _, _, occam = setup(schedule=_Script([("rolled back", 0.0)]))
    before = snapshot(occam)
    with pytest.raises(ValueError, match="a rollback only after a prune"):
        occam.step(1.0)
    assert_snapshot_equal(before, snapshot(occam))


def test_guarded_resumes_from_state_dict_with_its_snapshot_and_rolls_back_identically(setup, tiny_data):
    x, y = tiny_data()

    def first_half(seed):
        model, opt, occam = setup(seed=seed, schedule=Guarded(warmup=0))
        for signal in (1.0, 1.0):  # warmup, then the first prune
            train(model, opt, x, y)
            occam.step(signal)
        return model, opt, occam

    model, opt, occam = first_half(0)
    buffer = io.BytesIO()
    torch.save({"occam": occam.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2, opt2, occam2 = setup(seed=5, schedule=Guarded(warmup=0))
    model2.load_state_dict(saved["model"])
    occam2.load_state_dict(saved["occam"])
    for m, o in ((model, occam), (model2, occam2)):
        o.step(5.0)  # far worse than the best: roll back
        assert o.history[-1]["action"] == "rolled back" and o.density == 1.0
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


# Automatic interval -------------------------------------------------------------------------------
def test_every_n_optimizer_steps_occam_reads_signal_fn_in_eval_mode_and_steps_itself(tiny_mlp, tiny_data):
    model = tiny_mlp()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = tiny_data()
    seen = []

    def signal_fn():
        seen.append((model.training, torch.is_grad_enabled()))
        return float(F.cross_entropy(model(x), y))

    occam = Occam(model, opt, schedule=ConstantRate(0.2), every=3, signal_fn=signal_fn)
    train(model, opt, x, y, steps=7)
    assert seen == [(False, False), (False, False)]  # after steps 3 and 6
    assert model.training and occam.optimizer_steps == 7 and len(occam.history) == 2
    assert occam.density == pytest.approx(0.8 * 0.8, abs=0.02)
    assert occam.state_dict()["optimizer_steps"] == 7


@pytest.mark.parametrize("kwargs, error, match", [
    ({"every": 10}, ValueError, "go together"),
    ({"signal_fn": lambda: 1.0}, ValueError, "go together"),
    ({"every": 0, "signal_fn": lambda: 1.0}, ValueError, "every must be an integer >= 1"),
    ({"every": 5, "signal_fn": 1.0}, TypeError, "signal_fn must be a callable"),
])
def test_bad_interval_settings_raise_naming_the_value(kwargs, error, match, tiny_mlp):
    with pytest.raises(error, match=match):
        Occam(tiny_mlp(), **kwargs)


# The controller protocol inside Occam --------------------------------------------------------------
def test_state_dict_holds_the_controllers_type_and_its_state_as_plain_data(setup):
    _, _, occam = setup(schedule=OccamRate())
    occam.step(1.0)
    occam.step(0.5)
    state = occam.state_dict()
    assert state["format"] == 2
    assert state["schedule"] == {"type": "OccamRate",
                                 "state": {"epoch": 2, "rate": 0.4, "signals": [1.0, 0.5], "zeta": None}}


def test_a_state_of_the_older_format_is_refused_saying_it_is_not_migrated(setup):
    _, _, occam = setup()
    state = occam.state_dict()
    state["format"] = 1
    before = snapshot(occam)
    with pytest.raises(ValueError, match="made by an older occamgd; pre-1.0 states are not migrated: start the run"):
        occam.load_state_dict(state)
    assert_snapshot_equal(before, snapshot(occam))


@pytest.mark.parametrize("bad", [True, "0.5", [0.5]])
def test_a_signal_that_is_not_a_real_number_raises_type_error_naming_it_and_changes_nothing(bad, setup):
    _, _, occam = setup(schedule=ConstantRate(0.3))
    occam.step(1.0)
    before = snapshot(occam)
    with pytest.raises(TypeError, match=re.escape(repr(bad))):
        occam.step(bad)
    assert_snapshot_equal(before, snapshot(occam))


def test_the_controllers_new_state_is_kept_only_once_the_prune_succeeded(setup):
    _, _, occam = setup(schedule=ConstantRate(0.3))
    occam.step(1.0)

    def broken(weights, masks, rate):
        raise RuntimeError("criterion failed")

    occam.criterion = broken
    before = snapshot(occam)
    with pytest.raises(RuntimeError, match="criterion failed"):
        occam.step(1.0)
    assert_snapshot_equal(before, snapshot(occam))  # the schedule state too: still epoch 1


class _NoSnapshotScript(_Script):
    needs_snapshot = False


def test_a_rollback_by_a_schedule_that_takes_no_snapshot_is_refused(setup):
    _, _, occam = setup(schedule=_NoSnapshotScript([("pruned", 0.5), ("rolled back", 0.0)]))
    occam.step(1.0)
    before = snapshot(occam)
    with pytest.raises(ValueError, match="needs_snapshot is True"):
        occam.step(1.0)
    assert_snapshot_equal(before, snapshot(occam))


# Wrapped optimizers ----------------------------------------------------------------------------------
@pytest.fixture
def accelerator():
    accelerate = pytest.importorskip("accelerate")
    yield accelerate.Accelerator(cpu=True)
    # Accelerate's state is a process-wide singleton: leave none behind for other tests.
    accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)
    accelerate.state.GradientState._reset_state()


def test_occam_hooks_the_torch_optimizer_inside_an_accelerate_prepared_one(accelerator, tiny_mlp, tiny_data):
    model = tiny_mlp()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, wrapped = accelerator.prepare(model, inner)
    assert type(wrapped).__name__ == "AcceleratedOptimizer"
    occam = Occam(model, wrapped, schedule=ConstantRate(0.5))
    assert occam.optimizer is inner
    occam.step(1.0)
    x, y = tiny_data()
    for _ in range(3):
        wrapped.zero_grad()
        accelerator.backward(F.cross_entropy(model(x), y))
        wrapped.step()
    assert_pruned_zero(occam)  # the hook on the inner optimizer re-zeroed them after each step


class _Averaging(torch.optim.Optimizer):
    """A Lookahead-like wrapper: it keeps state of its own and moves the weights after the inner step."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        super().__init__([p for g in optimizer.param_groups for p in g["params"]], {})

    @torch.no_grad()
    def step(self, closure=None):
        self.optimizer.step()
        for group in self.param_groups:
            for p in group["params"]:
                slow = self.state[p].setdefault("slow", p.detach().clone())
                slow.add_(p - slow, alpha=0.5)
                p.copy_(slow)


def test_a_wrapper_with_state_of_its_own_is_hooked_itself_so_its_own_update_cannot_revive_weights(setup, tiny_data):
    model, inner, _ = setup()
    wrapper = _Averaging(inner)
    occam = Occam(model, wrapper, schedule=ConstantRate(0.5))
    assert occam.optimizer is wrapper
    occam.step(1.0)
    train(model, wrapper, *tiny_data(), steps=2)
    assert_pruned_zero(occam)


class _Uninitialised(torch.optim.Optimizer):
    def __init__(self):  # never runs torch.optim.Optimizer.__init__: it takes no hooks
        self.state = {}


def test_an_optimizer_that_takes_no_hooks_is_refused_with_type_error_naming_it(tiny_mlp):
    with pytest.raises(TypeError, match="_Uninitialised takes no step hooks"):
        Occam(tiny_mlp(), _Uninitialised())


# Wrapped models: torch.compile, DataParallel / DDP -----------------------------------------------------
def _plain(model):
    return model


def _compiled(model):
    return torch.compile(model)  # building the OptimizedModule is enough: it is never run here


def _data_parallel(model):
    return nn.DataParallel(model)  # names its parameters "module.*" like DistributedDataParallel


def _compiled_data_parallel(model):
    return torch.compile(nn.DataParallel(model))


@pytest.mark.parametrize("wrap_source, wrap_target", [
    (_compiled, _plain), (_plain, _compiled), (_data_parallel, _compiled), (_compiled_data_parallel, _plain),
])
def test_occam_state_moves_between_compiled_plain_and_wrapped_models(wrap_source, wrap_target, tiny_mlp):
    source = wrap_source(tiny_mlp())
    occam = Occam(source, schedule=Guarded(warmup=0), include="0")  # names as in the plain model
    assert list(occam.masks) == ["0.weight"]
    before_prune = {k: v.clone() for k, v in tiny_mlp().state_dict().items()}
    occam.step(1.0)
    occam.step(1.0)  # the first prune, with a snapshot
    target_model = tiny_mlp(seed=1)
    target = Occam(wrap_target(target_model), schedule=Guarded(warmup=0), include="0")
    target.load_state_dict(occam.state_dict())
    assert torch.equal(target.masks["0.weight"], occam.masks["0.weight"]) and target.density < 1.0
    target.step(5.0)  # roll back, from the snapshot the other model's Occam took
    assert target.history[-1]["action"] == "rolled back" and target.density == 1.0
    assert all(torch.equal(before_prune[k], v) for k, v in target_model.state_dict().items())


def test_a_state_whose_snapshot_is_of_another_model_is_refused_before_anything_changes(setup):
    _, _, source = setup(schedule=Guarded(warmup=0))
    source.step(1.0)
    source.step(1.0)  # pruned: a snapshot is held
    state = source.state_dict()
    state["snapshot"]["model"]["extra.weight"] = torch.zeros(1)
    _, _, target = setup(schedule=Guarded(warmup=0))
    before = snapshot(target)
    with pytest.raises(ValueError, match="snapshot is of another model.*extra.weight"):
        target.load_state_dict(state)
    assert_snapshot_equal(before, snapshot(target))


def test_a_compiled_submodule_is_named_as_if_it_were_not_compiled(tiny_mlp):
    model = tiny_mlp()
    model[2] = torch.compile(model[2])
    assert list(Occam(model, include=[nn.Linear]).masks) == ["0.weight", "2.weight"]
    assert list(Occam(model, include="2").masks) == ["2.weight"]
