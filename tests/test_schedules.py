"""schedules.py: the controller protocol (state in, state out), the paper's zeta rule, its edge cases,
the baselines, the guarded controller, and exact resume."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occamgd.schedules import (
    Planned,
    Search,
    GMP,
    ConstantRate,
    Decision,
    Never,
    OccamRate,
    Schedule,
    state_from_dict,
    state_to_dict,
)

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

# Finite signals; small integers make repeated values (0/0 and x/0) common.
SIGNALS = st.lists(
    st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)),
    max_size=12,
)
R0 = st.floats(0.001, 0.999)
FLOOR_FRACTION = st.one_of(st.none(), st.floats(0.0, 1.0))


def reference_rates(signals, r0, floor):
    """The paper's rule written out plainly, with the documented edge cases."""
    rate, rates = r0, []
    for i, c in enumerate(signals):
        if i > 1:
            num = c - signals[i - 1]
            den = signals[i - 1] - signals[i - 2]
            if den != 0:
                rate = min(r0, max(floor, (num / den) * rate))
            elif num > 0:
                rate = r0
            elif num < 0:
                rate = floor
            # 0/0: the rate stays as it was
        rates.append(rate)
    return rates


class Run:
    """Drives a controller the way Occam does: its state goes in and the new one comes out."""

    def __init__(self, schedule):
        self.schedule, self.state = schedule, schedule.init()

    def decide(self, signal, density=1.0):
        decision, self.state = self.schedule.decide(signal, density, self.state)
        return decision.action, decision.rate

    def step(self, signal, density=1.0):
        return self.decide(signal, density)[1]

    @property
    def epoch(self):
        return self.state.epoch

    def state_dict(self):
        return state_to_dict(self.state)

    def load_state_dict(self, data):
        self.state = state_from_dict(self.schedule, data)


def run(schedule, signals, density=1.0):
    """Rates for ``signals``; ``schedule`` is a controller (fresh state) or a :class:`Run`."""
    r = schedule if isinstance(schedule, Run) else Run(schedule)
    return [r.step(c, density) for c in signals]


# OccamRate -----------------------------------------------------------------------------------
def test_occam_rate_defaults_are_the_papers():
    s = OccamRate()
    assert s.r0 == 0.4 and s.floor == pytest.approx(0.04)
    assert s.init() == OccamRate.State(epoch=0, rate=0.4, signals=(), zeta=None)


@given(c0=st.floats(-1e3, 1e3), c1=st.floats(-1e3, 1e3), r0=R0)
@PROPERTY
def test_occam_rate_epochs_zero_and_one_prune_at_r0(c0, c1, r0):
    s = Run(OccamRate(r0))
    assert run(s, [c0, c1]) == [r0, r0]
    assert s.epoch == 2


@given(signals=SIGNALS, r0=R0, fraction=FLOOR_FRACTION)
@PROPERTY
def test_occam_rate_matches_a_plain_reimplementation_and_stays_in_floor_r0(signals, r0, fraction):
    floor = None if fraction is None else fraction * r0
    s = Run(OccamRate(r0, floor))
    expected_floor = 0.1 * r0 if floor is None else floor
    rates = run(s, signals)
    assert rates == reference_rates(signals, r0, expected_floor)
    assert all(expected_floor <= r <= r0 for r in rates)
    assert s.epoch == len(signals)


def test_occam_rate_follows_zeta_on_a_worked_example():
    s = Run(OccamRate(0.4))  # floor 0.04
    # zeta = (0.6-0.8)/(0.8-1.0) = 1 -> 0.4; (0.5-0.6)/(0.6-0.8) = 0.5 -> 0.2;
    # (0.45-0.5)/(0.5-0.6) = 0.5 -> 0.1; (0.5-0.45)/(...) < 0 -> floor; then 2x growth from floor.
    rates = run(s, [1.0, 0.8, 0.6, 0.5, 0.45, 0.5, 0.6])
    assert rates == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.1, 0.04, 0.08])
    assert s.state_dict()["zeta"] == pytest.approx(2.0)


def test_occam_rate_is_capped_at_r0_when_loss_falls_faster():
    s = OccamRate(0.4)
    assert run(s, [10.0, 9.0, 5.0]) == [0.4, 0.4, 0.4]  # zeta = 4, clipped


def test_zero_over_zero_keeps_the_rate():
    s = OccamRate(0.4)
    rates = run(s, [1.0, 0.8, 0.7, 0.7, 0.7, 0.7])  # zeta 0.5 -> 0.2, then 0 (floor), then 0/0
    assert rates == pytest.approx([0.4, 0.4, 0.2, 0.04, 0.04, 0.04])
    s = OccamRate(0.4)
    assert run(s, [2.0, 2.0, 2.0, 2.0]) == [0.4, 0.4, 0.4, 0.4]  # 0/0 from the start keeps r0
    assert math.isnan(OccamRate.zeta(1.0, 1.0, 1.0))


def test_rising_after_a_flat_step_goes_to_r0_and_falling_goes_to_floor():
    s = OccamRate(0.4)
    assert run(s, [1.0, 0.8, 0.7, 0.7, 0.9]) == pytest.approx([0.4, 0.4, 0.2, 0.04, 0.4])  # x/0, x > 0
    s = OccamRate(0.4)
    assert run(s, [1.0, 0.8, 0.8, 0.6]) == pytest.approx([0.4, 0.4, 0.04, 0.04])  # 0 then x/0, x < 0
    s = OccamRate(0.4, floor=0.1)
    assert run(s, [1.0, 1.0, 0.5]) == [0.4, 0.4, 0.1]
    assert OccamRate.zeta(2.0, 1.0, 1.0) == math.inf
    assert OccamRate.zeta(0.0, 1.0, 1.0) == -math.inf


def test_loss_turning_up_sends_the_rate_to_the_floor():
    s = OccamRate(0.4, floor=0.05)
    assert run(s, [1.0, 0.8, 0.9]) == [0.4, 0.4, 0.05]


ALL_SCHEDULES = [
    lambda: OccamRate(),
    lambda: ConstantRate(0.3),
    lambda: GMP(0.2, start=1, end=4),
    lambda: Never(),
]


@pytest.mark.parametrize("make", ALL_SCHEDULES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_signal_raises_value_error_and_changes_no_state(make, bad):
    s = Run(make())
    run(s, [1.0, 0.9, 0.85], density=0.8)
    before = s.state_dict()
    with pytest.raises(ValueError, match="signal"):
        s.step(bad, 0.8)
    assert s.state_dict() == before


def test_occam_rate_needs_a_signal():
    s = Run(OccamRate())
    s.step(1.0, 1.0)
    before = s.state_dict()
    with pytest.raises(ValueError, match="signal"):
        s.step(None, 1.0)
    assert s.state_dict() == before


@pytest.mark.parametrize("make", ALL_SCHEDULES[1:])
def test_other_schedules_accept_no_signal(make):
    s = make()
    assert all(0.0 <= r < 1.0 for r in run(s, [None] * 6, density=1.0))


@pytest.mark.parametrize(
    "kwargs, value",
    [
        ({"r0": 0.0}, "0.0"),
        ({"r0": -0.2}, "-0.2"),
        ({"r0": 1.0}, "1.0"),
        ({"r0": 1.5}, "1.5"),
        ({"r0": math.nan}, "nan"),
        ({"r0": "0.4"}, "'0.4'"),
        ({"r0": 0.4, "floor": 0.5}, "0.5"),  # floor above r0
        ({"r0": 0.4, "floor": -0.01}, "-0.01"),
        ({"r0": 0.4, "floor": math.nan}, "nan"),
    ],
)
def test_occam_rate_bad_config_raises_value_error_naming_the_value(kwargs, value):
    with pytest.raises(ValueError, match=re.escape(value)):
        OccamRate(**kwargs)


def test_occam_rate_accepts_floor_zero_and_floor_equal_to_r0():
    assert run(OccamRate(0.3, floor=0.3), [1.0, 0.5, 0.9, 0.1]) == [0.3] * 4
    assert run(OccamRate(0.3, floor=0.0), [1.0, 0.5, 0.9])[-1] == 0.0


# ConstantRate and Never ------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.99])
def test_constant_rate_returns_its_rate_every_epoch(rate):
    s = Run(ConstantRate(rate))
    assert run(s, [1.0, 0.5, 2.0, None, 0.1], density=0.3) == [rate] * 5
    assert s.epoch == 5


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2.0, math.nan, None])
def test_constant_rate_outside_zero_one_raises_value_error(rate):
    with pytest.raises(ValueError, match=re.escape(repr(rate))):
        ConstantRate(rate)


def test_never_always_returns_zero():
    s = Run(Never())
    assert run(s, [1.0, 0.5, 0.2, 0.9, None], density=0.5) == [0.0] * 5
    assert s.epoch == 5


# GMP -------------------------------------------------------------------------------------------
def cubic_target(epoch, final, start, end, d_start):
    if epoch < start:
        return d_start
    p = 1.0 if end == start else min(1.0, max(0.0, (epoch - start) / (end - start)))
    return final + (d_start - final) * (1.0 - p) ** 3


@given(
    final=st.floats(0.01, 1.0),
    d0=st.floats(0.05, 1.0),
    start=st.integers(0, 5),
    span=st.integers(0, 8),
)
@PROPERTY
def test_gmp_density_path_follows_the_cubic_and_holds_final_density(final, d0, start, span):
    final = min(final, d0)
    end = start + span
    s = Run(GMP(final, start=start, end=end))
    density = d0
    for epoch in range(end + 4):
        rate = s.step(None, density)
        assert 0.0 <= rate < 1.0
        if epoch < start:
            assert rate == 0.0, "GMP pruned before start"
        density *= 1.0 - rate
        assert density == pytest.approx(cubic_target(epoch, final, start, end, d0), rel=1e-9, abs=1e-12)
        if epoch >= end:
            assert density == pytest.approx(final, rel=1e-9)


def test_gmp_worked_example():
    s = Run(GMP(0.1, start=2, end=5))
    density, path = 1.0, []
    for _ in range(8):
        density *= 1.0 - s.step(0.5, density)
        path.append(density)
    # p = 0, 1/3, 2/3, 1 at epochs 2..5: 1, 0.1 + 0.9 * (2/3)^3, 0.1 + 0.9 / 27, 0.1
    assert path == pytest.approx([1.0, 1.0, 1.0, 0.1 + 0.9 * 8 / 27, 0.1 + 0.9 / 27, 0.1, 0.1, 0.1])


def test_gmp_does_not_prune_when_already_below_final_density():
    s = GMP(0.5, start=0, end=3)
    assert run(s, [None] * 5, density=0.3) == [0.0] * 5


def test_gmp_start_density_is_the_density_at_start():
    s = Run(GMP(0.2, start=2, end=4))
    assert s.step(None, 1.0) == 0.0 and s.step(None, 0.9) == 0.0  # someone else pruned meanwhile
    assert s.step(None, 0.6) == 0.0
    density = 0.6 * (1.0 - s.step(None, 0.6))
    assert density == pytest.approx(0.2 + 0.4 * 0.5**3)


@pytest.mark.parametrize(
    "kwargs, value",
    [
        ({"final_density": 0.0}, "0.0"),
        ({"final_density": -0.1}, "-0.1"),
        ({"final_density": 1.5}, "1.5"),
        ({"final_density": math.nan}, "nan"),
        ({"final_density": 0.1, "start": -1}, "start=-1"),
        ({"final_density": 0.1, "start": 5, "end": 4}, "start=5, end=4"),
        ({"final_density": 0.1, "start": 1.5}, "start=1.5"),
        ({"final_density": 0.1, "end": "10"}, "end='10'"),
    ],
)
def test_gmp_bad_config_raises_value_error_naming_the_value(kwargs, value):
    with pytest.raises(ValueError, match=re.escape(value)):
        GMP(**kwargs)


# Checkpointing -------------------------------------------------------------------------------------
def _same_state(a, b):
    """Equal state dicts, where NaN equals NaN (OccamRate records zeta = nan after a 0/0)."""
    def norm(v):
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        return [norm(x) for x in v] if isinstance(v, list) else v

    return a.keys() == b.keys() and all(norm(a[k]) == norm(b[k]) for k in a)


RESUMABLE = [
    lambda: OccamRate(0.4),
    lambda: OccamRate(0.3, floor=0.0),
    lambda: ConstantRate(0.2),
    lambda: GMP(0.1, start=1, end=6),
    lambda: Never(),
]


@pytest.mark.parametrize("make", RESUMABLE)
@given(signals=SIGNALS, split=st.integers(0, 12))
@PROPERTY
def test_state_dict_round_trip_gives_exactly_the_same_subsequent_rates(make, signals, split):
    split = min(split, len(signals))
    original = Run(make())
    densities = [0.9**i for i in range(len(signals))]
    for c, d in zip(signals[:split], densities):
        original.step(c, d)
    state = json.loads(json.dumps(original.state_dict()))  # plain numbers and lists only
    copy = Run(make())
    copy.load_state_dict(state)
    assert _same_state(copy.state_dict(), original.state_dict())
    assert copy.epoch == original.epoch == split
    rest = list(zip(signals[split:], densities[split:]))
    assert [copy.step(c, d) for c, d in rest] == [original.step(c, d) for c, d in rest]


def test_loaded_state_is_not_shared_with_the_source():
    a = Run(OccamRate())
    run(a, [1.0, 0.9])
    state = a.state_dict()
    b = Run(OccamRate())
    b.load_state_dict(state)
    state["signals"].append(123.0)
    a.step(0.5, 1.0)
    assert b.state_dict()["signals"] == [1.0, 0.9]


@pytest.mark.parametrize("make", RESUMABLE)
def test_loading_state_with_wrong_keys_raises_value_error_and_changes_nothing(make):
    s = Run(make())
    s.step(1.0, 1.0)
    before = s.state_dict()
    for bad in ({}, {**before, "extra": 1}, {k: v for k, v in list(before.items())[1:]} or {"x": 0}):
        with pytest.raises(ValueError, match="accepted"):
            s.load_state_dict(bad)
        assert s.state_dict() == before


def test_loading_another_schedules_state_raises_value_error():
    with pytest.raises(ValueError, match="OccamRate"):
        state_from_dict(OccamRate(), state_to_dict(GMP(0.1).init()))


def test_base_schedule_decide_is_abstract_and_repr_shows_config():
    with pytest.raises(NotImplementedError, match="decide"):
        Schedule().decide(1.0, 1.0, Schedule().init())
    assert repr(OccamRate(0.3, floor=0.05)) == "OccamRate(r0=0.3, floor=0.05)"
    assert repr(GMP(0.2, start=1, end=3)) == "GMP(final_density=0.2, start=1, end=3)"


# Guarded ----------------------------------------------------------------------------------------
from occamgd.schedules import ACTIONS, PRESETS, Guarded, get_schedule  # noqa: E402


def decide_all(schedule, signals, density=1.0):
    """``(action, rate)`` for each signal; ``schedule`` is a :class:`Run` (its state carries on)."""
    return [schedule.decide(s, density) for s in signals]


def test_guarded_waits_while_the_signal_improves_fast_then_starts_at_r_start():
    g = Run(Guarded(r_start=0.2, start_tol=0.1))
    # Gains 0.2 then 0.1 (half the largest): still learning; then 0.01, 5 % of the largest: slowed.
    assert decide_all(g, [1.0, 0.8, 0.7, 0.69]) == [("warmup", 0.0)] * 3 + [("pruned", 0.2)]


def test_guarded_start_does_not_depend_on_the_scale_of_the_signal():
    signals = [3.0, 2.5, 2.3, 2.2, 2.17, 2.16]
    starts = []
    for scale in (1.0, 0.01, 100.0):
        actions = [a for a, _ in decide_all(Run(Guarded()), [x * scale for x in signals])]
        starts.append(actions.index("pruned"))
    assert starts == [4, 4, 4]  # gains 0.5, 0.2, 0.1, then 0.03 <= 0.1 * 0.5


def test_guarded_never_prunes_during_its_minimum_warmup_even_if_the_signal_is_flat():
    g = Run(Guarded(warmup=3))
    assert [a for a, _ in decide_all(g, [1.0, 1.0, 1.0])] == ["warmup"] * 3
    assert g.decide(1.0, 1.0)[0] == "pruned"


def test_guarded_with_a_budget_starts_by_start_by_of_it_while_the_signal_still_falls_fast():
    falling = [1.0 - 0.1 * i for i in range(10)]  # every gain the largest: never "slowed"
    g = Run(Guarded(start_by=0.5))
    g.state = g.schedule.init(budget=8)
    # Steps 0-2 warm up; step 3 is the 4th of 8, half the budget: the first prune.
    assert decide_all(g, falling[:4]) == [("warmup", 0.0)] * 3 + [("pruned", 0.2)]
    # Without a budget, or with start_by=None, it waits for the gain to slow, as before.
    assert [a for a, _ in decide_all(Run(Guarded()), falling)] == ["warmup"] * 10
    g = Run(Guarded(start_by=None))
    g.state = g.schedule.init(budget=8)
    assert [a for a, _ in decide_all(g, falling)] == ["warmup"] * 10


def test_guarded_start_by_keeps_the_minimum_warmup_and_an_earlier_slowdown_starts_first():
    g = Run(Guarded(warmup=3, start_by=0.0))
    g.state = g.schedule.init(budget=10)
    assert [a for a, _ in decide_all(g, [1.0, 0.9, 0.8, 0.7])] == ["warmup"] * 3 + ["pruned"]
    g = Run(Guarded(start_by=0.9))
    g.state = g.schedule.init(budget=10)
    assert [a for a, _ in decide_all(g, [1.0, 0.8, 0.79])] == ["warmup", "warmup", "pruned"]


def test_guarded_state_keeps_the_budget_through_json_and_old_states_load_without_it():
    g = Guarded()
    state = g.init(budget=12)
    assert state_from_dict(g, json.loads(json.dumps(state_to_dict(state)))).budget == 12
    old = {k: v for k, v in state_to_dict(g.init()).items() if k != "budget"}  # written before the budget
    assert state_from_dict(g, old).budget is None


def test_guarded_rate_grows_only_while_the_signal_falls_through_its_prunes_and_is_capped():
    g = Run(Guarded(r0=0.4, r_start=0.2, grow=1.5, tol=0.01, warmup=0))
    decide_all(g, [1.0, 1.0])  # epoch 0 warmup (no previous), epoch 1 starts: pruned at 0.2
    assert g.decide(0.9, 1.0) == ("pruned", pytest.approx(0.3))  # fell after a prune: grow
    assert g.decide(0.905, 1.0) == ("pruned", pytest.approx(0.3))  # rose, within tol: keep the rate
    assert g.decide(0.8, 1.0) == ("pruned", pytest.approx(0.4))  # capped at r0
    assert g.decide(0.7, 1.0) == ("pruned", pytest.approx(0.4))


def test_guarded_rolls_back_a_prune_the_signal_rose_through_and_shrinks_the_rate():
    g = Run(Guarded(r_start=0.2, shrink=0.5, tol=0.01, warmup=0, max_rollbacks=3))
    decide_all(g, [1.0, 1.0])  # pruned at 0.2 with the signal at 1.0
    assert g.decide(1.02, 1.0) == ("rolled back", 0.0)  # 2 % above the signal before the prune
    state = g.state_dict()
    assert state["rate"] == pytest.approx(0.1) and state["rollbacks"] == 1
    assert state["previous"] == 1.0  # the restored model's signal
    # After a rollback the next step prunes at the smaller rate, whatever the signal did
    # (a dense network that overfits rises on its own; pruning is what counters it).
    assert g.decide(1.05, 1.0) == ("pruned", pytest.approx(0.1))
    # ...and that prune is judged against 1.05, the signal just before it.
    assert g.decide(1.055, 1.0) == ("pruned", pytest.approx(0.1))


def test_guarded_allows_the_rise_the_unpruned_network_already_showed():
    g = Run(Guarded(tol=0.02, warmup=0))
    decide_all(g, [1.0, 1.05])  # the dense network overfits: +0.05 per step, then the first prune
    assert g.decide(1.10, 1.0)[0] == "pruned"  # +0.05: the drift, not the prune
    assert g.decide(1.20, 1.0)[0] == "rolled back"  # +0.10 > 0.05 drift + 2 % of 1.10


def test_guarded_stops_for_good_after_max_rollbacks():
    g = Run(Guarded(warmup=0, max_rollbacks=2, min_rate=0.001))
    decide_all(g, [1.0, 1.0])
    assert g.decide(2.0, 1.0)[0] == "rolled back"
    assert g.decide(1.0, 1.0)[0] == "pruned"
    assert g.decide(2.0, 1.0)[0] == "rolled back"
    assert decide_all(g, [0.5, 0.1, 3.0]) == [("stopped", 0.0)] * 3


def test_guarded_stops_after_patience_prunes_without_a_new_best_signal():
    g = Run(Guarded(warmup=0, patience=3, tol=0.5))
    decide_all(g, [1.0, 1.0])  # the first prune; best 1.0
    assert [a for a, _ in decide_all(g, [0.9, 1.0, 1.0, 1.0])] == ["pruned", "pruned", "pruned", "stopped"]
    g = Run(Guarded(warmup=0, patience=3, tol=0.5))
    decide_all(g, [1.0, 1.0])
    # A new best resets the count.
    assert [a for a, _ in decide_all(g, [1.0, 1.0, 0.8, 1.0, 1.0])] == ["pruned"] * 5


def test_guarded_stops_once_the_rate_falls_below_min_rate():
    g = Run(Guarded(r_start=0.1, shrink=0.5, min_rate=0.06, warmup=0, max_rollbacks=10))
    decide_all(g, [1.0, 1.0])
    assert g.decide(2.0, 1.0)[0] == "rolled back"  # rate 0.05 < 0.06
    assert g.decide(0.5, 1.0) == ("stopped", 0.0)


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_guarded_rejects_missing_or_non_finite_signals_without_changing_state(bad):
    g = Run(Guarded())
    decide_all(g, [1.0, 0.9])
    before = g.state_dict()
    with pytest.raises(ValueError, match="signal"):
        g.decide(bad, 1.0)
    assert g.state_dict() == before


@pytest.mark.parametrize("kwargs, name", [
    ({"r0": 1.0}, "r0"), ({"r0": 0.0}, "r0"), ({"r_start": 0.5}, "r_start"), ({"grow": 0.9}, "grow"),
    ({"shrink": 0.0}, "shrink"), ({"tol": -0.1}, "tol"), ({"start_tol": 1.0}, "start_tol"),
    ({"warmup": -1}, "warmup"), ({"max_rollbacks": 1.5}, "max_rollbacks"), ({"min_rate": 0.5}, "min_rate"),
    ({"patience": -2}, "patience"), ({"start_by": 1.5}, "start_by"), ({"start_by": "half"}, "start_by"),
])
def test_guarded_rejects_bad_configuration_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        Guarded(**kwargs)


@PROPERTY
@given(SIGNALS.filter(lambda s: len(s) > 0).map(lambda s: [abs(x) for x in s]), st.integers(0, 11))
def test_guarded_decisions_are_valid_and_resume_exactly_from_json_state(signals, cut):
    g = Run(Guarded(warmup=0))
    decisions = decide_all(g, signals)
    stopped = False
    for action, rate in decisions:
        assert action in ACTIONS and 0.0 <= rate <= g.schedule.r0
        assert (rate > 0) == (action == "pruned")
        assert not stopped or action == "stopped"
        stopped = action == "stopped"
    cut = min(cut, len(signals))
    first = Run(Guarded(warmup=0))
    head = decide_all(first, signals[:cut])
    resumed = Run(Guarded(warmup=0))
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + decide_all(resumed, signals[cut:]) == decisions


def test_presets_name_the_paper_rule_and_the_three_controllers():
    assert set(PRESETS) == {"paper", "guarded", "planned", "search"}
    assert isinstance(get_schedule("search"), Search)
    assert isinstance(get_schedule("paper"), OccamRate) and isinstance(get_schedule("guarded"), Guarded)
    assert isinstance(get_schedule("planned"), Planned)
    custom = ConstantRate(0.1)
    assert get_schedule(custom) is custom
    with pytest.raises(ValueError, match="accepted: paper, guarded"):
        get_schedule("zeta")


# The protocol: state in, state out ----------------------------------------------------------------
import dataclasses  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import occamgd.schedules  # noqa: E402
from occamgd import Occam  # noqa: E402
from occamgd.schedules import check_signal  # noqa: E402

EVERY_CONTROLLER = [*RESUMABLE, lambda: Guarded(warmup=0)]


@pytest.mark.parametrize("make", EVERY_CONTROLLER)
def test_decide_is_pure_the_same_state_gives_the_same_answer_and_is_never_changed(make):
    schedule = make()
    state = schedule.init()
    for signal in (1.0, 1.0, 0.9, 1.5, 0.8):
        kept = dataclasses.replace(state)
        first = schedule.decide(signal, 0.7, state)
        assert schedule.decide(signal, 0.7, state) == first
        assert state == kept
        state = first[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.epoch = 0


@pytest.mark.parametrize("make", EVERY_CONTROLLER)
def test_every_state_is_json_through_asdict_and_state_from_dict_inverts_state_to_dict(make):
    schedule = make()
    state = schedule.init()
    for signal in (1.0, 1.0, 0.9, 0.95):
        _, state = schedule.decide(signal, 0.5, state)
        json.dumps(dataclasses.asdict(state))
        assert state_from_dict(schedule, json.loads(json.dumps(state_to_dict(state)))) == state


def test_the_guarded_rollback_asks_occam_to_restore():
    g = Guarded(warmup=0, tol=0.01)
    state = g.init()
    for signal in (1.0, 1.0):
        decision, state = g.decide(signal, 1.0, state)
    assert decision == Decision("pruned", 0.2)
    decision, _ = g.decide(2.0, 1.0, state)
    assert decision == Decision("rolled back", 0.0, restore=True)
    assert Guarded.needs_snapshot and not OccamRate.needs_snapshot


@pytest.mark.parametrize("args, match", [
    (("pruning", 0.2), "action must be one of"),
    (("pruned", 1.0), "rate must be a real number in \\[0, 1\\), got 1.0"),
    (("pruned", math.nan), "got nan"),
    (("pruned", True), "got True"),
    (("pruned", "0.2"), "got '0.2'"),
    (("rolled back", 0.0, 1), "restore must be True or False, got 1"),
    (("rolled back", 0.0), "restore=True exactly with action 'rolled back'"),
    (("pruned", 0.2, True), "restore=True exactly with action 'rolled back'"),
    (("pruned", 0.0), "accepted: a rate in \\(0, 1\\), or action 'held'"),
    (("held", 0.1), "rate 0 for 'held'"),
])
def test_a_decision_is_validated_when_made_naming_the_bad_value(args, match):
    with pytest.raises(ValueError, match=match):
        Decision(*args)


def test_a_decision_takes_any_real_rate_as_a_float_and_may_restore_then_prune():
    assert Decision("pruned", np.float32(0.5)).rate == 0.5 and type(Decision("pruned", 1 / 4).rate) is float
    assert Decision("rolled back", 0.1, restore=True).rate == 0.1


@pytest.mark.parametrize("field, value, match", [
    ("epoch", "3", "field 'epoch' is '3'; accepted: an integer"),
    ("epoch", True, "field 'epoch' is True; accepted: an integer"),
    ("rate", None, "field 'rate' is None; accepted: a real number"),
    ("signals", [1.0, "x"], "field 'signals' is \\[1.0, 'x'\\]; accepted: a list of a real number"),
    ("zeta", "0.5", "accepted: a real number or None"),
])
def test_state_from_dict_names_a_mistyped_field_and_what_it_accepts(field, value, match):
    data = {**state_to_dict(OccamRate().init()), field: value}
    with pytest.raises(ValueError, match=match):
        state_from_dict(OccamRate(), data)


def test_state_from_dict_names_missing_and_unknown_fields():
    with pytest.raises(ValueError, match="GMP state has fields \\['epoch'\\]; accepted: exactly \\['epoch', 'start_density'\\]"):
        state_from_dict(GMP(0.5), {"epoch": 0})
    with pytest.raises(ValueError, match="accepted: exactly"):
        state_from_dict(GMP(0.5), [0, None])


def test_constructors_accept_any_real_number_type_but_not_bool():
    assert OccamRate(r0=np.float32(0.5)).r0 == 0.5
    assert ConstantRate(np.float64(0.25)).rate == 0.25
    gmp = GMP(np.float32(0.5), start=np.int64(1), end=np.int32(3))
    assert (gmp.start, gmp.end) == (1, 3) and type(gmp.start) is int
    assert Guarded(r0=np.float32(0.5), warmup=np.int64(2)).r_start == 0.25
    for make in (lambda: OccamRate(r0=True), lambda: ConstantRate(False), lambda: GMP(0.5, start=True),
                 lambda: Guarded(warmup=True)):
        with pytest.raises(ValueError, match="True|False"):
            make()


@pytest.mark.parametrize("good, value", [(np.float32(0.5), 0.5), (torch.tensor(0.25), 0.25), (np.array([2.0]), 2.0),
                                         (3, 3.0), (None, None)])
def test_check_signal_takes_any_real_number_and_one_element_tensors(good, value):
    assert check_signal(good) == value


@pytest.mark.parametrize("bad", [True, np.True_, "0.5", b"1", torch.tensor([1.0, 2.0]), 1j, torch.tensor(True)])
def test_check_signal_refuses_what_is_not_a_real_number_with_type_error_naming_it(bad):
    with pytest.raises(TypeError, match=re.escape(repr(bad)[:12])):
        check_signal(bad)


def test_the_module_docstrings_worked_example_controller_runs_with_occam(tiny_mlp):
    doc = occamgd.schedules.__doc__
    block = doc.split("below a floor::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    model = tiny_mlp()
    namespace = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}
    exec(textwrap.dedent("\n".join(lines)), namespace)
    occam = namespace["occam"]
    for _ in range(5):
        occam.step(1.0)
    # 0.8, 0.64, 0.512 then 0.41 would fall below 0.5: stopped, and it stays there.
    assert [r["action"] for r in occam.history] == ["pruned"] * 3 + ["stopped"] * 2
    assert 0.5 <= occam.density < 0.52 and occam.schedule_state.prunes == 3
    assert isinstance(occam.schedule, Schedule) and Occam is namespace["Occam"]


def test_a_guarded_state_with_an_unknown_phase_is_refused():
    data = {**state_to_dict(Guarded().init()), "phase": "pruned"}
    with pytest.raises(ValueError, match="phase must be one of \\('warmup', 'pruning', 'stopped'\\), got 'pruned'"):
        state_from_dict(Guarded(), data)


# Every: the pruning interval ------------------------------------------------------------------
import torch  # noqa: E402
from torch import nn  # noqa: E402

from occamgd.schedules import Every  # noqa: E402


def test_every_asks_its_controller_only_every_k_steps_with_the_budget_divided():
    inner = ConstantRate(0.2)
    occam = Occam(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), schedule=Every(inner, 3), budget=12)
    for _ in range(6):
        occam.step(1.0)
    assert [r["action"] for r in occam.history] == ["held", "held", "pruned", "held", "held", "pruned"]
    assert occam.density == pytest.approx(0.8 ** 2, abs=0.02)
    search = Every("search", 2)
    assert search.needs_snapshot and Occam(nn.Linear(4, 2), schedule=search, budget=9).schedule_state.inner.budget == 4


def test_every_state_round_trips_with_the_wrapped_state_and_resumes_alike():
    signals = [1.0, 1.0, 0.9, 0.95, 0.8, 0.7, 0.9, 1.0, 1.1, 1.2]
    whole = Occam(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), schedule=Every("search", 2), budget=10)
    for s in signals:
        whole.step(s)
    first = Occam(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), schedule=Every("search", 2), budget=10)
    for s in signals[:5]:
        first.step(s)
    data = state_to_dict(first.schedule_state)
    assert isinstance(data["inner"], dict)
    assert state_from_dict(first.schedule, data) == first.schedule_state
    with pytest.raises(ValueError, match="Search state has fields"):
        state_from_dict(first.schedule, {**data, "inner": {"epoch": 1}})
    saved = first.state_dict()
    torch.manual_seed(0)
    second = Occam(first.model, schedule=Every("search", 2), budget=10)
    second.load_state_dict(saved)
    for s in signals[5:]:
        second.step(s)
    assert [r["action"] for r in second.history] == [r["action"] for r in whole.history]
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        Every("paper", 0)
