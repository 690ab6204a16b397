"""The run's budget and the user's bounds on the size: what Occam, the planning controller and fit do with them.

- ``budget`` reaches the controller's ``init``; :class:`occamgd.schedules.Planned` plans its descent
  within it, so a short run still prunes.
- ``min_density`` is never crossed; ``max_density`` (or ``max_params``) is reached by three quarters
  of the budget whatever the controller decides, and ``fit`` selects its best epoch within it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import occamgd
from occamgd import Occam
from occamgd.errors import InvalidValueError
from occamgd.schedules import Guarded, Never, OccamRate, Planned, state_from_dict, state_to_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))


def _data(n=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).long()


def _run(occam, signals):
    for s in signals:
        occam.step(s)
    return [r["density"] for r in occam.history]


# The budget ---------------------------------------------------------------------------------
def test_the_budget_reaches_the_controllers_that_use_it_and_is_ignored_by_the_others():
    for schedule in (Planned(), Guarded()):
        assert Occam(_net(), schedule=schedule, budget=12).schedule_state.budget == 12
        assert Occam(_net(), schedule=schedule).schedule_state.budget is None
    for schedule in (OccamRate(), Never()):
        occam = Occam(_net(), schedule=schedule, budget=12)
        assert occam.budget == 12 and occam.schedule_state == schedule.init()


def test_a_controller_whose_init_takes_no_budget_still_works():
    class Old(Never):
        def init(self):  # a user's controller written before budgets existed
            return self.State()

    occam = Occam(_net(), schedule=Old(), budget=5)
    occam.step(1.0)
    assert occam.history[-1]["action"] == "held"


def test_planned_starts_by_a_quarter_of_the_budget_even_while_the_signal_still_falls():
    # A signal that keeps falling fast never "slows": without a budget Guarded would wait for ever.
    signals = [10.0 - k for k in range(8)]  # the same gain every step
    occam = Occam(_net(), schedule=Planned(start_by=0.25), budget=8)
    _run(occam, signals)
    actions = [r["action"] for r in occam.history]
    assert actions[:1] == ["warmup"] and actions[1] == "pruned"  # 0.25 * 8 = 2: due after step 1
    unplanned = Occam(_net(), schedule=Planned(start_by=0.25))
    _run(unplanned, signals)
    assert {r["action"] for r in unplanned.history} == {"warmup"}


def test_the_planned_rate_reaches_the_target_by_the_end_of_the_plan():
    p = Planned(target=0.05, end=0.75, r0=0.9)
    rate = p.planned_rate(epoch=5, density=1.0, budget=40)  # ceil(30) - 5 = 25 prunes
    assert math.isclose((1 - rate) ** 25, 0.05, rel_tol=1e-9)
    assert p.planned_rate(epoch=0, density=1.0, budget=4) == pytest.approx(1 - 0.05 ** (1 / 3))
    assert Planned(r0=0.5).planned_rate(0, 1.0, 4) == 0.5  # capped
    assert Planned(rate=0.3).planned_rate(3, 1.0, None) == 0.3  # no budget: the fixed rate


def test_planned_descends_while_the_signal_holds_then_rolls_back_the_prune_that_hurt_and_stops():
    p = Planned(warmup=0, start_tol=0.5, patience=2, tol=0.05, rate=0.2)
    occam = Occam(_net(), schedule=p)
    # warm-up: gains 0.5 then 0.1 (<= 0.5 * 0.5): start; then flat (within tol of the best); then two rises.
    _run(occam, [2.0, 1.5, 1.4, 1.41, 1.39, 1.6, 1.7, 1.0])
    actions = [r["action"] for r in occam.history]
    assert actions == ["warmup", "warmup", "pruned", "pruned", "pruned", "pruned", "rolled back", "stopped"]
    # The rollback put back the model from before the last prune: four prunes of 0.2, less the last.
    assert occam.history[6]["density"] == pytest.approx(occam.history[4]["density"], abs=2e-3)
    assert occam.density == pytest.approx(0.8 ** 3, abs=6e-3)


def test_planned_stops_at_its_target():
    occam = Occam(_net(), schedule=Planned(target=0.3, warmup=0, start_tol=0.9, rate=0.4))
    _run(occam, [1.0] * 8)
    assert occam.density == pytest.approx(0.3, abs=5e-3)  # rounded per layer
    assert occam.history[-1]["action"] == "stopped"


def test_planned_state_round_trips_and_refuses_bad_settings():
    p = Planned()
    occam = Occam(_net(), schedule=p, budget=10)
    _run(occam, [1.0, 0.9, 0.89, 0.88])
    assert state_from_dict(p, state_to_dict(occam.schedule_state)) == occam.schedule_state
    for bad in (dict(target=0.0), dict(target=1.0), dict(rate=0.6, r0=0.5), dict(start_by=0.8, end=0.5),
                dict(patience=0), dict(tol=1.0), dict(warmup=-1)):
        with pytest.raises(InvalidValueError):
            Planned(**bad)
    with pytest.raises(InvalidValueError, match="budget must be an integer >= 1"):
        p.init(budget=0)


# Bounds ---------------------------------------------------------------------------------------
def test_no_prune_goes_below_the_floor():
    occam = Occam(_net(), schedule="paper", min_density=0.3)
    densities = _run(occam, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    assert min(densities) >= 0.3 - 1e-3
    assert densities[-1] == pytest.approx(0.3, abs=2e-3)
    assert "min_density" in {r.get("bound") for r in occam.history}
    assert occam.history[-1]["action"] == "held"


def test_the_ceiling_is_reached_by_three_quarters_of_the_budget_whatever_the_controller_decides():
    occam = Occam(_net(), schedule=Never(), budget=8, max_density=0.2)
    densities = _run(occam, [1.0] * 8)
    assert densities[0] == 1.0 and densities[1] == 1.0  # nothing forced before a quarter of the budget
    assert all(d <= occam.ceiling_at(i) + 1e-9 for i, d in enumerate(densities))
    assert all(d <= 0.2 for d in densities[5:]) and densities[5] == pytest.approx(0.2, abs=6e-3)
    assert {r.get("bound") for r in occam.history[2:6]} == {"max_density"}
    assert {r["action"] for r in occam.history[2:6]} == {"pruned"}


def test_a_parameter_budget_is_a_ceiling_on_the_whole_model():
    net = _net()
    total = sum(p.numel() for p in net.parameters())  # 6*32 + 32 + 32*2 + 2 = 290; prunable 256
    occam = Occam(net, schedule=Never(), budget=4, max_params=162)
    assert occam.max_density == pytest.approx((162 - 34) / 256)
    _run(occam, [1.0] * 4)
    kept = sum(int(m.sum()) for m in occam.masks.values()) + (total - occam.masks.total)
    assert kept <= 162 + 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_density=0.2), "needs the run's budget"),
    (dict(budget=0), "budget must be an integer >= 1"),
    (dict(budget=5, max_density=1.5), r"max_density must be a fraction of the prunable weights in \(0, 1\]"),
    (dict(min_density=0.0), "min_density must be a fraction"),
    (dict(budget=5, max_density=0.2, max_params=100), "give max_density or max_params, not both"),
    (dict(budget=5, max_params=10), "max_params=10 cannot be met: the model has 34 parameters that are never pruned"),
    (dict(budget=5, min_density=0.5, max_density=0.2), "min_density 0.5 is above the ceiling 0.2"),
])
def test_bad_bounds_are_refused_naming_the_value(kwargs, message):
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(InvalidValueError, match=message):
        Occam(net, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_fit_plans_within_its_epochs_and_selects_within_the_ceiling():
    result = occamgd.fit(_net(), _data(), epochs=6, schedule=Never(), max_density=0.25, progress=False)
    assert result.occam.budget == 5
    selected = result.history[result.best_epoch]
    assert selected["density"] <= 0.25 + 1e-9
    assert result.occam.density <= 0.25 + 1e-9


def test_a_short_fit_with_the_planning_controller_prunes():
    result = occamgd.fit(_net(), _data(), epochs=5, schedule="planned", progress=False)
    assert min(r["density"] for r in result.history) < 1.0


def test_the_estimators_and_the_cli_take_the_bounds(tmp_path):
    import numpy as np
    import pandas as pd

    from occamgd.cli import main
    from occamgd.integrations.sklearn import OccamMLPClassifier

    X, y = _data(200)
    clf = OccamMLPClassifier(hidden_layer_sizes=(16,), epochs=8, max_density=0.3, random_state=0).fit(X.numpy(), y.numpy())
    assert clf.density_ <= 0.3 + 1e-9
    with pytest.raises(InvalidValueError, match="max_density must be a fraction"):
        OccamMLPClassifier(max_density=0).fit(X.numpy(), y.numpy())
    frame = pd.DataFrame(X.numpy(), columns=[f"x{i}" for i in range(6)]).assign(label=np.where(y.numpy() > 0, "a", "b"))
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    assert main(["fit", str(csv), "--target", "label", "--epochs", "8", "--hidden", "16", "--max-density", "0.25",
                 "--quiet", "--out", str(tmp_path / "m")]) == 0
    import json

    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["config"]["max_density"] == 0.25 and report["density"] <= 0.25 + 1e-9
    assert main(["fit", str(csv), "--target", "label", "--min-density", "0.5", "--max-density", "0.2",
                 "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
