"""How much to prune: rate controllers whose whole state is a plain dict.

Every schedule answers one question once per epoch: given this epoch's signal loss and the
current density, what fraction of the *remaining* prunable weights to prune now (a number in
[0, 1)). Its ``state_dict()`` holds only numbers and lists, so it checkpoints as JSON or with
``torch.save`` alike.
"""

from __future__ import annotations

import math
from typing import Any


def _check_signal(signal: float | None) -> None:
    if signal is not None and not math.isfinite(signal):
        raise ValueError(f"signal must be a finite number, got {signal!r}")


class Schedule:
    """Base class: subclasses set their configuration in ``__init__`` and keep state in ``_state``."""

    _state: dict[str, Any]
    #: Whether ``Occam`` must save the weights and masks before each prune (to roll it back).
    needs_snapshot = False

    def step(self, signal: float | None, density: float) -> float:
        """Record this epoch's signal and return the rate to prune now."""
        raise NotImplementedError

    def decide(self, signal: float | None, density: float) -> tuple[str, float]:
        """``(action, rate)``: what to do now, one of ``ACTIONS``, and the rate to prune at."""
        rate = self.step(signal, density)
        return ("pruned" if rate > 0 else "held"), rate

    def state_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self._state):
            raise ValueError(
                f"{type(self).__name__} state has keys {sorted(state)}; accepted: exactly "
                f"{sorted(self._state)}"
            )
        self._state = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

    @property
    def epoch(self) -> int:
        """Number of steps taken so far."""
        return self._state["epoch"]

    def __repr__(self) -> str:
        config = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({config})"


class OccamRate(Schedule):
    """The paper's zeta rule.

    After epoch ``i`` (0-based) with signal ``c_i``: if ``i > 1``,
    ``zeta = (c_i - c_{i-1}) / (c_{i-1} - c_{i-2})`` and ``rate = clip(zeta * rate, floor, r0)``;
    epochs 0 and 1 prune at ``r0``.

    Defined edge cases: 0/0 (the signal did not move twice) leaves the rate unchanged; x/0 with
    x != 0 gives zeta = +-inf, so the rate goes to ``r0`` (+inf) or ``floor`` (-inf); a
    non-finite signal is rejected with ``ValueError`` and changes no state.
    """

    def __init__(self, r0: float = 0.4, floor: float | None = None):
        if not (isinstance(r0, (int, float)) and 0.0 < r0 < 1.0):
            raise ValueError(f"r0 must be a number in (0, 1), got {r0!r}")
        floor = 0.1 * r0 if floor is None else floor
        if not (isinstance(floor, (int, float)) and 0.0 <= floor <= r0):
            raise ValueError(f"floor must be a number in [0, r0] = [0, {r0}], got {floor!r}")
        self.r0 = float(r0)
        self.floor = float(floor)
        self._state = {"epoch": 0, "rate": self.r0, "signals": [], "zeta": None}

    @staticmethod
    def zeta(c: float, c1: float, c2: float) -> float:
        """``(c - c1) / (c1 - c2)`` with 0/0 -> nan and x/0 -> +-inf."""
        num, den = c - c1, c1 - c2
        if den == 0.0:
            return math.nan if num == 0.0 else math.copysign(math.inf, num)
        return num / den

    def step(self, signal: float | None, density: float) -> float:
        if signal is None:
            raise ValueError("OccamRate needs a signal loss every epoch, got None")
        _check_signal(signal)
        state = self._state
        signals = state["signals"]
        rate = state["rate"]
        zeta = None
        if len(signals) == 2:
            zeta = self.zeta(float(signal), signals[1], signals[0])
            if math.isinf(zeta):
                rate = self.r0 if zeta > 0 else self.floor
            elif not math.isnan(zeta):
                rate = min(max(zeta * rate, self.floor), self.r0)
        state["signals"] = (signals + [float(signal)])[-2:]
        state["rate"] = rate
        # Only finite zetas are kept: the state stays valid JSON and compares equal after a reload.
        state["zeta"] = zeta if zeta is not None and math.isfinite(zeta) else None
        state["epoch"] += 1
        return rate


class ConstantRate(Schedule):
    """Prune the same fraction of the remaining weights every epoch."""

    def __init__(self, rate: float):
        if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self._state = {"epoch": 0}

    def step(self, signal: float | None, density: float) -> float:
        _check_signal(signal)
        self._state["epoch"] += 1
        return self.rate


class GMP(Schedule):
    """Gradual magnitude pruning (Zhu & Gupta 2017): a cubic path to ``final_density``.

    The target after epoch ``e`` is ``d_f + (d_s - d_f) * (1 - p)^3`` with
    ``p = (e - start) / (end - start)`` clipped to [0, 1], where ``d_s`` is the density when the
    schedule reaches ``start``. Nothing is pruned before ``start``; ``final_density`` is reached
    after epoch ``end`` and held from then on.
    """

    def __init__(self, final_density: float, start: int = 0, end: int = 10):
        if not (isinstance(final_density, (int, float)) and 0.0 < final_density <= 1.0):
            raise ValueError(f"final_density must be a number in (0, 1], got {final_density!r}")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ValueError(f"GMP needs integers 0 <= start <= end, got start={start!r}, end={end!r}")
        self.final_density = float(final_density)
        self.start = start
        self.end = end
        self._state = {"epoch": 0, "start_density": None}

    def target(self, epoch: int) -> float:
        """Density the schedule aims for after ``epoch``."""
        d_s = self._state["start_density"]
        if d_s is None or epoch < self.start:
            return 1.0 if d_s is None else d_s
        p = 1.0 if self.end == self.start else min(1.0, (epoch - self.start) / (self.end - self.start))
        return self.final_density + (d_s - self.final_density) * (1.0 - p) ** 3

    def step(self, signal: float | None, density: float) -> float:
        _check_signal(signal)
        state = self._state
        epoch = state["epoch"]
        state["epoch"] += 1
        if epoch < self.start:
            return 0.0
        if state["start_density"] is None:
            state["start_density"] = float(density)
        rate = 1.0 - self.target(epoch) / density if density > 0 else 0.0
        # Rounding leaves the density a hair off target; do not prune one weight an epoch for it.
        return rate if rate > 1e-9 else 0.0


class Never(Schedule):
    """Never prune: plain gradient descent, with the same bookkeeping as the others."""

    def __init__(self):
        self._state = {"epoch": 0}

    def step(self, signal: float | None, density: float) -> float:
        _check_signal(signal)
        self._state["epoch"] += 1
        return 0.0


#: What a schedule decided at one step; recorded in the history and shown in progress output.
ACTIONS = ("pruned", "held", "warmup", "rolled back", "stopped")


class Guarded(Schedule):
    """A controller that starts late, pushes only while the signal falls, undoes harm and stops.

    It answers the three failures of the paper's rule measured in ../shared/ANCHORS.md:

    - **Start**: no pruning while the signal still improves by more than ``start_tol`` of the
      largest improvement it has made in one step: the dense network first learns what it can
      (``warmup`` steps at least). Comparing improvements with each other, not with the loss,
      makes the start the same whether a step is an epoch or a few hundred optimizer steps.
    - **Push**: the first prune removes ``r_start`` (default ``r0 / 2``) of the weights; the rate grows by ``grow``
      (capped at ``r0``) only after a prune that the signal fell through, and is otherwise kept.
    - **Guard**: a prune after which the signal rose by more than ``tol`` (relative) over its
      value before that prune, beyond the drift the unpruned network showed (its signal's change
      over the last warm-up step, when that was a rise), is rolled back (``Occam`` restores the
      model and masks it saved before the prune) and the rate is multiplied by ``shrink``. The
      comparison is with the signal just before the prune, not with the best: a dense network
      that overfits sees its signal rise whether or not it is pruned, and pruning is what
      counters that.
    - **Stop**: after ``max_rollbacks`` rollbacks, once the rate falls below ``min_rate``, or
      after ``patience`` prunes in a row that brought no new best signal, pruning stops for good:
      the density is where the data put it.

    ``decide`` returns one of ``ACTIONS`` with the rate; ``step`` returns the rate alone.
    """

    #: Occam saves the model and masks before each prune so that it can be undone.
    needs_snapshot = True

    def __init__(self, r0: float = 0.4, r_start: float | None = None, grow: float = 1.5, shrink: float = 0.5,
                 tol: float = 0.02, start_tol: float = 0.1, warmup: int = 1, max_rollbacks: int = 3,
                 min_rate: float = 0.02, patience: int = 5):
        r_start = r0 / 2 if r_start is None and isinstance(r0, (int, float)) else r_start
        for name, value, low, high in (("r0", r0, 0.0, 1.0), ("r_start", r_start, 0.0, r0),
                                       ("shrink", shrink, 0.0, 1.0), ("min_rate", min_rate, 0.0, r0)):
            if not (isinstance(value, (int, float)) and low < value <= high) or value == 1.0:
                raise ValueError(f"{name} must be a number in ({low}, {high}{')' if high == 1.0 else ']'}, "
                                 f"got {value!r}")
        if not (isinstance(grow, (int, float)) and grow >= 1.0):
            raise ValueError(f"grow must be a number >= 1, got {grow!r}")
        for name, value in (("tol", tol), ("start_tol", start_tol)):
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
        for name, value in (("warmup", warmup), ("max_rollbacks", max_rollbacks), ("patience", patience)):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.r0, self.r_start, self.grow, self.shrink = float(r0), float(r_start), float(grow), float(shrink)
        self.tol, self.start_tol, self.min_rate = float(tol), float(start_tol), float(min_rate)
        self.warmup, self.max_rollbacks, self.patience = warmup, max_rollbacks, patience
        self._state = {"epoch": 0, "phase": "warmup", "rate": self.r_start, "previous": None, "drift": 0.0,
                       "max_gain": 0.0, "best": None, "since_best": 0, "pruned_last": False, "rollbacks": 0, "action": None}

    def decide(self, signal: float | None, density: float) -> tuple[str, float]:
        if signal is None:
            raise ValueError("Guarded needs a signal loss every step, got None")
        _check_signal(signal)
        s = self._state
        signal = float(signal)
        previous = s["previous"]
        action, rate = "stopped", 0.0
        if s["phase"] == "warmup":
            slowed = False
            if previous is not None:
                gain = previous - signal
                s["max_gain"] = max(s["max_gain"], gain)
                slowed = gain <= self.start_tol * s["max_gain"]
                s["drift"] = max(0.0, -gain)
            if s["epoch"] >= self.warmup and slowed:
                s["phase"] = "pruning"
                action, rate = "pruned", s["rate"]
            else:
                action = "warmup"
        elif s["phase"] == "pruning":
            if s["pruned_last"] and signal > previous + self.tol * abs(previous) + s["drift"]:
                action = "rolled back"
                s["rollbacks"] += 1
                s["rate"] *= self.shrink
                if s["rollbacks"] >= self.max_rollbacks or s["rate"] < self.min_rate:
                    s["phase"] = "stopped"
            else:
                s["since_best"] = 0 if signal < s["best"] else s["since_best"] + 1
                if s["since_best"] >= self.patience:
                    s["phase"] = "stopped"
                else:
                    if s["pruned_last"] and signal < previous:
                        s["rate"] = min(self.r0, s["rate"] * self.grow)
                    action, rate = "pruned", s["rate"]
        if action != "rolled back":
            # After a rollback the model is back at the state whose signal ``previous`` is.
            s["previous"] = signal
            s["best"] = signal if s["best"] is None else min(s["best"], signal)
        s["pruned_last"] = rate > 0.0
        s["action"] = action
        s["epoch"] += 1
        return action, rate

    def step(self, signal: float | None, density: float) -> float:
        return self.decide(signal, density)[1]


#: Named controllers: ``paper`` is exactly ../shared/PAPER.md; ``guarded`` is :class:`Guarded`.
PRESETS = {"paper": OccamRate, "guarded": Guarded}
DEFAULT_PRESET = "guarded"


def get_schedule(schedule: "Schedule | str | None") -> Schedule:
    """A schedule object from a preset name (``None`` = the default preset) or a schedule."""
    if schedule is None:
        schedule = DEFAULT_PRESET
    if isinstance(schedule, str):
        try:
            return PRESETS[schedule]()
        except KeyError:
            raise ValueError(f"unknown schedule preset {schedule!r}; accepted: {', '.join(PRESETS)} "
                             f"or a Schedule object") from None
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be a preset name ({', '.join(PRESETS)}) or an occamgd.schedules.Schedule "
            f"(OccamRate, Guarded, ConstantRate, GMP, Never or a subclass), got {type(schedule).__name__}"
        )
    return schedule
