"""The search controller, :class:`occamgd.schedules.Search`: it descends, keeps its best model, returns to it.

What is checked here with scripted signals (the measured behaviour is in benchmarks and docs/results.md):
the start by ``start_by`` of the budget, the one copy it keeps being the best model (also across
several shrinks of a structured run, whose restore regrows the best's shapes), the finer step after a
return, the settle at ``end`` of the budget, the floor, its state and settings.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import occamgd
from occamgd import Occam
from occamgd.compaction import structured_pruning
from occamgd.errors import InvalidValueError
from occamgd.schedules import DEFAULT_PRESET, Decision, Guarded, Search, get_schedule, state_from_dict, state_to_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))


def _data(n=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).long()


def _nudge(model):
    """Stands in for an epoch of training: every weight changes, so a restored model is told apart."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)


def _run(occam, signals, snapshots=None):
    for s in signals:
        _nudge(occam.model)
        if snapshots is not None:  # the model as the signal measured it, before this step acts
            snapshots.append({k: v.clone() for k, v in occam.model.state_dict().items()})
        occam.step(s)
    return [r["action"] for r in occam.history]


def test_search_is_a_preset_beside_the_default():
    assert isinstance(get_schedule("search"), Search) and DEFAULT_PRESET == "guarded"
    assert isinstance(Occam(_net(), schedule="search").schedule, Search)


def test_it_starts_by_start_by_of_the_budget_even_while_the_signal_still_falls():
    signals = [10.0 - k for k in range(8)]  # the same gain every step: it never "slows"
    actions = _run(Occam(_net(), schedule=Search(start_by=0.25), budget=8), signals)
    assert actions[:2] == ["warmup", "pruned"]  # due after 0.25 * 8 = 2 steps
    assert set(_run(Occam(_net(), schedule=Search(start_by=0.25)), signals)) == {"warmup"}  # no budget: waits


def test_it_starts_when_the_gains_slow_and_grows_the_rate_after_a_new_best():
    occam = Occam(_net(), schedule=Search(warmup=0, start_tol=0.5, r_start=0.2, grow=1.5, r0=0.4))
    _run(occam, [2.0, 1.5, 1.4, 1.3, 1.2])
    h = occam.history
    assert [r["action"] for r in h] == ["warmup", "warmup", "pruned", "pruned", "pruned"]
    assert [round(r["rate"], 3) for r in h[2:]] == [0.2, 0.3, 0.4]  # every step a new best: 0.2, x1.5, capped


def test_it_returns_to_its_best_model_after_patience_worse_steps_and_goes_on_with_a_finer_step():
    occam = Occam(_net(), schedule=Search(warmup=0, start_tol=0.5, r_start=0.2, grow=1.0, tol=0.05, patience=2,
                                                    max_restores=1))
    seen = []
    # start at step 2 (signal 1.4); best at step 3 (1.3); within tol at 4; two rises beyond tol: back to step 3.
    actions = _run(occam, [2.0, 1.5, 1.4, 1.3, 1.33, 1.5, 1.6], seen)
    assert actions == ["warmup", "warmup", "pruned", "pruned", "pruned", "pruned", "rolled back"]
    best = seen[3]  # the model at step 3, as its signal measured it (before that step's prune)
    # Restored to it, then pruned from it at half the rate.
    assert occam.history[-1]["rate"] == pytest.approx(0.1)
    assert occam.history[-1]["density_before"] < occam.history[3]["density_before"]  # it had gone lower
    kept = occam.masks.kept / occam.masks.total
    assert kept == pytest.approx(occam.history[3]["density_before"] * 0.9, abs=0.01)
    state = occam.model.state_dict()
    for name in best:
        if name not in occam.masks:
            assert torch.equal(state[name], best[name]), name  # unpruned tensors: exactly the best model's
        else:
            assert torch.equal(state[name][occam.masks[name]], best[name][occam.masks[name]]), name


def test_it_settles_after_max_restores_and_on_the_best_model_at_the_end_of_the_budget():
    occam = Occam(_net(), schedule=Search(warmup=0, start_tol=0.9, patience=1, tol=0.0, max_restores=1), budget=40)
    actions = _run(occam, [1.0, 1.0, 0.9, 1.2, 1.3, 1.0, 1.0])
    assert actions == ["warmup", "pruned", "pruned", "rolled back", "rolled back", "stopped", "stopped"]
    assert occam.schedule_state.phase == "settled"

    ended = Occam(_net(), schedule=Search(warmup=0, start_tol=0.9, tol=0.5, end=0.5), budget=8)
    actions = _run(ended, [1.0, 1.0, 0.8, 0.9, 0.95, 0.9, 0.9, 0.9])
    # best at step 2; steps 3 (its prune) and beyond are not better: at 0.5 * 8 the best model comes back.
    assert actions == ["warmup", "pruned", "pruned", "rolled back", "stopped", "stopped", "stopped", "stopped"]
    assert ended.density == pytest.approx(ended.history[2]["density_before"], abs=1e-9)


def test_it_never_prunes_below_its_floor():
    occam = Occam(_net(), schedule=Search(warmup=0, start_tol=0.9, floor=0.3, r_start=0.4, r0=0.4))
    _run(occam, [1.0] + [1.0 - 0.01 * k for k in range(11)])  # starts at step 1 (no gain), then new bests
    assert occam.density == pytest.approx(0.3, abs=0.01) and occam.schedule_state.phase == "settled"


def test_a_restore_regrows_the_best_models_shapes_after_several_shrinks():
    torch.manual_seed(0)
    model = _net()
    x, y = _data(64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    occam = Occam(model, optimizer, schedule=Search(warmup=0, start_tol=0.9, tol=0.01, patience=2, grow=1.0,
                                                    r_start=0.3, max_restores=0),
                  shrink=True, **structured_pruning(model, x[:4]))
    shapes, weights = [], []
    for signal in [1.0, 1.0, 0.9, 1.0, 1.1]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        shapes.append({n: tuple(p.shape) for n, p in model.named_parameters()})
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
        occam.step(signal)
    assert [r["action"] for r in occam.history] == ["warmup", "pruned", "pruned", "pruned", "rolled back"]
    assert shapes[3] != shapes[2]  # it shrank after the best (step 2) and again after step 3
    after = {n: p.detach() for n, p in model.named_parameters()}
    assert {n: tuple(p.shape) for n, p in after.items()} == shapes[2]
    for n, p in after.items():
        assert torch.equal(p, weights[2][n]), n
    for p in model.parameters():  # the optimizer's state regrew with them
        for v in optimizer.state[p].values():
            assert v.dim() == 0 or v.shape == p.shape
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()  # and training goes on


def test_a_resumed_search_equals_the_uninterrupted_one():
    signals = [1.0, 0.9, 0.85, 0.8, 0.9, 0.95, 0.79, 0.85, 0.9, 0.9]
    whole = Occam(_net(), schedule=Search(warmup=0), budget=len(signals))
    _run(whole, signals)
    first = Occam(_net(), schedule=Search(warmup=0), budget=len(signals))
    _run(first, signals[:5])
    saved = first.state_dict()
    model = _net()
    model.load_state_dict(first.model.state_dict())
    second = Occam(model, schedule=Search(warmup=0), budget=len(signals))
    second.load_state_dict(saved)
    for s in signals[5:]:
        _nudge(second.model)
        second.step(s)
    assert [r["action"] for r in second.history] == [r["action"] for r in whole.history]
    for (n, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), n


def test_a_short_fit_with_search_prunes_and_selects_on_the_hold_back():
    result = occamgd.fit(_net(), _data(), epochs=5, schedule="search", progress=False)
    assert result.occam.budget == 4 and min(r["density"] for r in result.history) < 1.0


def test_state_round_trips_and_bad_settings_are_refused():
    s = Search()
    occam = Occam(_net(), schedule=s, budget=10)
    _run(occam, [1.0, 0.9, 0.89, 0.88, 0.95])
    assert state_from_dict(s, state_to_dict(occam.schedule_state)) == occam.schedule_state
    for bad in (dict(r0=1.0), dict(r_start=0.5, r0=0.4), dict(floor=0.0), dict(grow=0.9), dict(shrink=1.0),
                dict(tol=1.0), dict(start_by=0.8, end=0.5), dict(patience=0), dict(max_restores=-1),
                dict(warmup=1.5), dict(min_rate=0.0)):
        with pytest.raises(InvalidValueError):
            Search(**bad)
    with pytest.raises(InvalidValueError, match="budget must be an integer >= 1"):
        s.init(budget=0)
    with pytest.raises(InvalidValueError, match="Search needs a signal"):
        Occam(_net(), schedule=s).step(None)


def test_save_is_checked_and_only_for_a_controller_that_keeps_a_copy():
    with pytest.raises(InvalidValueError, match="save must be None, True or False"):
        Decision("held", 0.0, save=1)

    class Saver(Guarded):
        needs_snapshot = False

        def decide(self, signal, density, state):
            return Decision("held", 0.0, save=True), state

    occam = Occam(_net(), schedule=Saver())
    with pytest.raises(InvalidValueError, match="needs_snapshot is False"):
        occam.step(1.0)
    assert occam.history == []
