"""How much to prune: rate controllers, as configuration plus an explicit state.

Every controller answers one question once per epoch: given this epoch's signal loss and the
current density, what to do now. It holds only its configuration; what it remembers between
epochs is a small frozen dataclass that goes in and comes out (the optax habit)::

    state = schedule.init(budget=60)                             # the run's steps, when known
    decision, state = schedule.decide(signal, density, state)   # pure: nothing is mutated
    decision.action, decision.rate, decision.restore             # e.g. ("pruned", 0.4, False)

``budget`` is how many times ``decide`` will be called in the run (``None`` when the loop does not
know): a controller that uses it (the default :class:`Guarded` starts by a share of it; the
planning ones plan within it) keeps it in its state; the others ignore it.
``decision.rate`` is the fraction of the *remaining* prunable weights to prune now, in [0, 1);
``decision.restore`` asks :class:`occamgd.Occam` to put back the model and masks it saved
before the last prune (only a controller whose ``needs_snapshot`` is true may ask: Occam saves
that copy before each of its prunes). :func:`state_to_dict` turns a state into plain numbers,
strings and lists (JSON or ``torch.save`` alike) and :func:`state_from_dict` checks one back.

Because ``decide`` changes nothing, :class:`~occamgd.Occam` validates a decision before acting
on it and commits the new state only once the step has succeeded: nothing ever needs undoing.

A new controller
----------------
One small class: configuration in ``__init__``, a frozen dataclass ``State`` (its defaults are
the state before the first epoch; override ``init`` when they depend on the configuration, and
leave ``State`` out for a controller that remembers nothing) and ``decide``. The worked example,
a controller that prunes at a fixed rate until the density would fall below a floor::

    from dataclasses import dataclass, replace

    from occamgd import Occam
    from occamgd.schedules import Decision, Schedule

    class FixedUntil(Schedule):
        \"\"\"Prune ``rate`` of the remaining weights each epoch while the density stays >= ``floor``.\"\"\"

        @dataclass(frozen=True)
        class State:
            prunes: int = 0  # prunes so far

        def __init__(self, rate: float = 0.2, floor: float = 0.5):
            self.rate, self.floor = rate, floor

        def decide(self, signal, density, state):
            if density * (1.0 - self.rate) < self.floor:
                return Decision("stopped", 0.0), state
            return Decision("pruned", self.rate), replace(state, prunes=state.prunes + 1)

    occam = Occam(model, optimizer, schedule=FixedUntil(rate=0.2, floor=0.5))

Occam checks the signal before calling ``decide`` (a number, finite, or ``None``); a controller
that needs one raises ``ValueError`` on ``None``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import InvalidTypeError, InvalidValueError

#: What a controller decided at one step; recorded in the history and shown in progress output.
ACTIONS = ("pruned", "held", "warmup", "rolled back", "stopped")


def _is_real(value: Any) -> bool:
    # bool is an int to Python, never a rate or a loss to us.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_signal(signal: Any) -> float | None:
    """``signal`` as a float, or ``None``; ``TypeError`` unless a real number, ``ValueError`` unless finite.

    Real numbers of any type are accepted (``int``, ``float``, numpy scalars) and so are
    one-element tensors and arrays (a loss straight from ``torch``); ``bool`` and strings are not.
    """
    if signal is None:
        return None
    value = signal
    if not isinstance(value, (numbers.Real, str, bytes)) and hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # more than one element
            pass
    if not _is_real(value):
        raise InvalidTypeError(
            f"signal must be a real number (a loss), got {signal!r} of type {type(signal).__name__}; "
            "accepted: an int or float (numpy scalars and one-element tensors too), or None"
        )
    value = float(value)
    if not math.isfinite(value):
        raise InvalidValueError(f"signal must be a finite number, got {signal!r}")
    return value


@dataclass(frozen=True)
class Decision:
    """What a controller decided at one step.

    - ``action``: one of ``ACTIONS``.
    - ``rate``: fraction of the remaining prunable weights to prune now, a real number in [0, 1):
      above 0 for ``"pruned"``, 0 for ``"held"``, ``"warmup"`` and ``"stopped"``; after a
      ``"rolled back"`` any rate (the restored model is then pruned at it).
    - ``restore``: put back the model and masks saved before the last prune; true exactly for
      ``"rolled back"``.
    - ``save``: for a controller whose ``needs_snapshot`` is true, which copy Occam keeps: ``None``
      (Occam's habit) saves the model before each prune; ``True`` saves the model as it is now (before
      this step's prune, after its restore) even when nothing is pruned; ``False`` keeps the copy it
      has. A controller that returns to its best model, not to the one before its last prune, answers
      ``True`` at each new best and ``False`` otherwise.
    """

    action: str
    rate: float
    restore: bool = False
    save: bool | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.action, str) and self.action in ACTIONS):
            raise InvalidValueError(f"Decision action must be one of {ACTIONS}, got {self.action!r}")
        if not (_is_real(self.rate) and 0.0 <= self.rate < 1.0):
            raise InvalidValueError(f"Decision rate must be a real number in [0, 1), got {self.rate!r}")
        if not isinstance(self.restore, bool):
            raise InvalidValueError(f"Decision restore must be True or False, got {self.restore!r}")
        if self.save is not None and not isinstance(self.save, bool):
            raise InvalidValueError(f"Decision save must be None, True or False, got {self.save!r}")
        object.__setattr__(self, "rate", float(self.rate))
        if self.restore != (self.action == "rolled back"):
            raise InvalidValueError(
                f"Decision({self.action!r}, restore={self.restore!r}): accepted: restore=True exactly "
                "with action 'rolled back'"
            )
        if self.action == "pruned" and self.rate == 0.0:
            raise InvalidValueError("Decision('pruned', rate=0.0): accepted: a rate in (0, 1), or action 'held'")
        if self.action in ("held", "warmup", "stopped") and self.rate != 0.0:
            raise InvalidValueError(
                f"Decision({self.action!r}, rate={self.rate!r}): accepted: rate 0 for {self.action!r}, or "
                "action 'pruned'"
            )


class Schedule:
    """Base class of the rate controllers: subclasses hold configuration only.

    A subclass defines ``decide(signal, density, state) -> (Decision, new_state)`` (pure) and,
    when it remembers anything between epochs, a frozen dataclass ``State`` whose defaults are
    its state before the first epoch (or an ``init`` building it from the configuration).
    """

    #: True for a controller that may answer ``restore=True``: Occam then saves the model and
    #: masks before each prune so that the prune can be undone. A class attribute, not derived:
    #: only the controller knows whether it ever rolls back.
    needs_snapshot: bool = False

    @dataclass(frozen=True)
    class State:
        """No state: a controller that remembers nothing between epochs."""

    def init(self, budget: int | None = None) -> Any:
        """The state before the first epoch; ``budget``: the steps of the run, when known (ignored here)."""
        return self.State()

    def decide(self, signal: float | None, density: float, state: Any) -> tuple[Decision, Any]:
        """What to do after an epoch with this ``signal`` at this ``density``, and the next state."""
        raise NotImplementedError(f"{type(self).__name__} must define decide(signal, density, state)")

    def __repr__(self) -> str:
        config = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({config})"


def _pruned_or_held(rate: float) -> Decision:
    return Decision("pruned" if rate > 0.0 else "held", rate)


class OccamRate(Schedule):
    """The paper's zeta rule.

    After epoch ``i`` (0-based) with signal ``c_i``: if ``i > 1``,
    ``zeta = (c_i - c_{i-1}) / (c_{i-1} - c_{i-2})`` and ``rate = clip(zeta * rate, floor, r0)``;
    epochs 0 and 1 prune at ``r0``.

    Defined edge cases: 0/0 (the signal did not move twice) leaves the rate unchanged; x/0 with
    x != 0 gives zeta = +-inf, so the rate goes to ``r0`` (+inf) or ``floor`` (-inf). A missing
    signal (``None``) raises ``ValueError``.
    """

    @dataclass(frozen=True)
    class State:
        epoch: int
        rate: float
        #: The last two signals, oldest first.
        signals: tuple[float, ...] = ()
        #: The last finite zeta (``None`` before epoch 2 and after 0/0 or x/0): valid JSON.
        zeta: float | None = None

    def __init__(self, r0: float = 0.4, floor: float | None = None):
        if not (_is_real(r0) and 0.0 < r0 < 1.0):
            raise InvalidValueError(f"r0 must be a number in (0, 1), got {r0!r}")
        floor = 0.1 * r0 if floor is None else floor
        if not (_is_real(floor) and 0.0 <= floor <= r0):
            raise InvalidValueError(f"floor must be a number in [0, r0] = [0, {r0}], got {floor!r}")
        self.r0 = float(r0)
        self.floor = float(floor)

    def init(self, budget: int | None = None) -> OccamRate.State:
        return self.State(epoch=0, rate=self.r0)

    @staticmethod
    def zeta(c: float, c1: float, c2: float) -> float:
        """``(c - c1) / (c1 - c2)`` with 0/0 -> nan and x/0 -> +-inf."""
        num, den = c - c1, c1 - c2
        if den == 0.0:
            return math.nan if num == 0.0 else math.copysign(math.inf, num)
        return num / den

    def decide(self, signal: float | None, density: float, state: OccamRate.State) -> tuple[Decision, OccamRate.State]:
        signal = check_signal(signal)
        if signal is None:
            raise InvalidValueError("OccamRate needs a signal loss every epoch, got None")
        rate, zeta = state.rate, None
        if len(state.signals) == 2:
            zeta = self.zeta(signal, state.signals[1], state.signals[0])
            if math.isinf(zeta):
                rate = self.r0 if zeta > 0 else self.floor
            elif not math.isnan(zeta):
                rate = min(max(zeta * rate, self.floor), self.r0)
        new = replace(state, epoch=state.epoch + 1, rate=rate, signals=(*state.signals, signal)[-2:],
                      zeta=zeta if zeta is not None and math.isfinite(zeta) else None)
        return _pruned_or_held(rate), new


class ConstantRate(Schedule):
    """Prune the same fraction of the remaining weights every epoch."""

    @dataclass(frozen=True)
    class State:
        epoch: int = 0

    def __init__(self, rate: float):
        if not (_is_real(rate) and 0.0 <= rate < 1.0):
            raise InvalidValueError(f"rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def decide(self, signal: float | None, density: float, state: ConstantRate.State) -> tuple[Decision, ConstantRate.State]:
        check_signal(signal)
        return _pruned_or_held(self.rate), replace(state, epoch=state.epoch + 1)


class GMP(Schedule):
    """Gradual magnitude pruning (Zhu & Gupta 2017): a cubic path to ``final_density``.

    The target after epoch ``e`` is ``d_f + (d_s - d_f) * (1 - p)^3`` with
    ``p = (e - start) / (end - start)`` clipped to [0, 1], where ``d_s`` is the density when the
    schedule reaches ``start``. Nothing is pruned before ``start``; ``final_density`` is reached
    after epoch ``end`` and held from then on.
    """

    @dataclass(frozen=True)
    class State:
        epoch: int = 0
        #: The density at epoch ``start`` (``None`` before it).
        start_density: float | None = None

    def __init__(self, final_density: float, start: int = 0, end: int = 10):
        if not (_is_real(final_density) and 0.0 < final_density <= 1.0):
            raise InvalidValueError(f"final_density must be a number in (0, 1], got {final_density!r}")
        if not (_is_integer(start) and _is_integer(end) and 0 <= start <= end):
            raise InvalidValueError(f"GMP needs integers 0 <= start <= end, got start={start!r}, end={end!r}")
        self.final_density = float(final_density)
        self.start = int(start)
        self.end = int(end)

    def target(self, epoch: int, start_density: float | None) -> float:
        """Density the schedule aims for after ``epoch``, from the density at ``start``."""
        if start_density is None or epoch < self.start:
            return 1.0 if start_density is None else start_density
        p = 1.0 if self.end == self.start else min(1.0, (epoch - self.start) / (self.end - self.start))
        return self.final_density + (start_density - self.final_density) * (1.0 - p) ** 3

    def decide(self, signal: float | None, density: float, state: GMP.State) -> tuple[Decision, GMP.State]:
        check_signal(signal)
        epoch = state.epoch
        if epoch < self.start:
            return Decision("held", 0.0), replace(state, epoch=epoch + 1)
        start_density = float(density) if state.start_density is None else state.start_density
        rate = 1.0 - self.target(epoch, start_density) / density if density > 0 else 0.0
        # Rounding leaves the density a hair off target; do not prune one weight an epoch for it.
        rate = rate if rate > 1e-9 else 0.0
        return _pruned_or_held(rate), replace(state, epoch=epoch + 1, start_density=start_density)


class Never(Schedule):
    """Never prune: plain gradient descent, with the same bookkeeping as the others."""

    @dataclass(frozen=True)
    class State:
        epoch: int = 0

    def decide(self, signal: float | None, density: float, state: Never.State) -> tuple[Decision, Never.State]:
        check_signal(signal)
        return Decision("held", 0.0), replace(state, epoch=state.epoch + 1)


_GUARDED_PHASES = ("warmup", "pruning", "stopped")


class Guarded(Schedule):
    """A controller that starts late, pushes only while the signal falls, undoes harm and stops.

    It answers the three failures of the paper's rule measured in independent re-runs (docs/anchors.md):

    - **Start**: no pruning while the signal still improves by more than ``start_tol`` of the
      largest improvement it has made in one step: the dense network first learns what it can
      (``warmup`` steps at least). Comparing improvements with each other, not with the loss,
      makes the start the same whether a step is an epoch or a few hundred optimizer steps. With a
      budget (the run's number of steps: ``fit``, the callbacks and ``Occam(budget=...)`` pass it)
      pruning starts after ``start_by`` of it at the latest (``None``: only when the gain slows), so
      a short run still finds a size.
    - **Push**: the first prune removes ``r_start`` (default ``r0 / 2``) of the weights; the rate grows by ``grow``
      (capped at ``r0``) only after a prune that the signal fell through, and is otherwise kept.
    - **Guard**: a prune after which the signal rose by more than ``tol`` (relative) over its
      value before that prune, beyond the drift the unpruned network showed (its signal's change
      over the last warm-up step, when that was a rise), is rolled back (``restore=True``: Occam
      restores the model and masks it saved before the prune) and the rate is multiplied by
      ``shrink``. The comparison is with the signal just before the prune, not with the best: a
      dense network that overfits sees its signal rise whether or not it is pruned, and pruning
      is what counters that.
    - **Stop**: after ``max_rollbacks`` rollbacks, once the rate falls below ``min_rate``, or
      after ``patience`` prunes in a row that brought no new best signal, pruning stops for good:
      the density is where the data put it.
    """

    needs_snapshot = True

    @dataclass(frozen=True)
    class State:
        epoch: int
        #: One of ``_GUARDED_PHASES``.
        phase: str
        #: The rate the next prune uses.
        rate: float
        #: The signal of the model as it now is (after a rollback: of the restored model).
        previous: float | None = None
        drift: float = 0.0
        max_gain: float = 0.0
        best: float | None = None
        since_best: int = 0
        pruned_last: bool = False
        rollbacks: int = 0
        #: The run's number of steps (``None``: unknown).
        budget: int | None = None
        #: Fields a state written by an older occamgd lacks (they take their default).
        ADDED: typing.ClassVar[tuple[str, ...]] = ("budget",)

        def __post_init__(self) -> None:
            if self.phase not in _GUARDED_PHASES:
                raise InvalidValueError(f"Guarded state phase must be one of {_GUARDED_PHASES}, got {self.phase!r}")

    def __init__(self, r0: float = 0.4, r_start: float | None = None, grow: float = 1.5, shrink: float = 0.5,
                 tol: float = 0.02, start_tol: float = 0.1, warmup: int = 1, max_rollbacks: int = 3,
                 min_rate: float = 0.02, patience: int = 5, start_by: float | None = 0.75):
        r_start = r0 / 2 if r_start is None and _is_real(r0) else r_start
        for name, value, low, high in (("r0", r0, 0.0, 1.0), ("r_start", r_start, 0.0, r0),
                                       ("shrink", shrink, 0.0, 1.0), ("min_rate", min_rate, 0.0, r0)):
            if not (_is_real(value) and low < value <= high) or value == 1.0:
                raise InvalidValueError(f"{name} must be a number in ({low}, {high}{')' if high == 1.0 else ']'}, "
                                 f"got {value!r}")
        if not (_is_real(grow) and grow >= 1.0):
            raise InvalidValueError(f"grow must be a number >= 1, got {grow!r}")
        for name, value in (("tol", tol), ("start_tol", start_tol)):
            if not (_is_real(value) and 0.0 <= value < 1.0):
                raise InvalidValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
        for name, value in (("warmup", warmup), ("max_rollbacks", max_rollbacks), ("patience", patience)):
            if not (_is_integer(value) and value >= 0):
                raise InvalidValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.r0, self.r_start, self.grow, self.shrink = float(r0), float(r_start), float(grow), float(shrink)
        self.tol, self.start_tol, self.min_rate = float(tol), float(start_tol), float(min_rate)
        if start_by is not None and not (_is_real(start_by) and 0.0 <= start_by <= 1.0):
            raise InvalidValueError(f"start_by must be a fraction of the budget in [0, 1] or None, got {start_by!r}")
        self.warmup, self.max_rollbacks, self.patience = int(warmup), int(max_rollbacks), int(patience)
        self.start_by = None if start_by is None else float(start_by)

    def init(self, budget: int | None = None) -> Guarded.State:
        return self.State(epoch=0, phase="warmup", rate=self.r_start, budget=_budget(budget))

    def decide(self, signal: float | None, density: float, state: Guarded.State) -> tuple[Decision, Guarded.State]:
        signal = check_signal(signal)
        if signal is None:
            raise InvalidValueError("Guarded needs a signal loss every step, got None")
        previous, phase, next_rate = state.previous, state.phase, state.rate
        drift, max_gain, since_best, rollbacks = state.drift, state.max_gain, state.since_best, state.rollbacks
        action, rate = "stopped", 0.0
        if phase == "warmup":
            start_by = math.inf if self.start_by is None else self.start_by  # None: never due by the budget
            start, max_gain = _may_start(signal, state, self.warmup, self.start_tol, start_by)
            if previous is not None:
                drift = max(0.0, signal - previous)
            if start:
                phase = "pruning"
                action, rate = "pruned", next_rate
            else:
                action = "warmup"
        elif phase == "pruning":
            if state.pruned_last and signal > previous + self.tol * abs(previous) + drift:
                action = "rolled back"
                rollbacks += 1
                next_rate *= self.shrink
                if rollbacks >= self.max_rollbacks or next_rate < self.min_rate:
                    phase = "stopped"
            else:
                since_best = 0 if signal < state.best else since_best + 1
                if since_best >= self.patience:
                    phase = "stopped"
                else:
                    if state.pruned_last and signal < previous:
                        next_rate = min(self.r0, next_rate * self.grow)
                    action, rate = "pruned", next_rate
        best = state.best
        if action != "rolled back":
            # After a rollback the model is back at the state whose signal ``previous`` is.
            previous = signal
            best = signal if best is None else min(best, signal)
        new = replace(state, epoch=state.epoch + 1, phase=phase, rate=next_rate, previous=previous, drift=drift,
                      max_gain=max_gain, best=best, since_best=since_best, pruned_last=rate > 0.0,
                      rollbacks=rollbacks)
        return Decision(action, rate, restore=action == "rolled back"), new


def _budget(budget: Any) -> int | None:
    """The run's number of steps as a planning controller keeps it, after checking it."""
    if budget is not None and not (_is_integer(budget) and budget >= 1):
        raise InvalidValueError(f"budget must be an integer >= 1 (the run's steps) or None, got {budget!r}")
    return None if budget is None else int(budget)


def _check_plan(start_tol: Any, tol: Any, start_by: Any, end: Any) -> None:
    """The settings both planning controllers share: two tolerances, and when to start and end by."""
    for name, value in (("start_tol", start_tol), ("tol", tol)):
        if not (_is_real(value) and 0.0 <= value < 1.0):
            raise InvalidValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    if not (_is_real(start_by) and _is_real(end) and 0.0 <= start_by < end <= 1.0):
        raise InvalidValueError(f"start_by and end must be fractions of the budget with 0 <= start_by < end <= 1, "
                                f"got start_by={start_by!r}, end={end!r}")


def _may_start(signal: float, state: Any, warmup: int, start_tol: float, start_by: float) -> tuple[bool, float]:
    """Whether a warming-up controller (Guarded, Planned, Search) starts after this step, and its largest
    one-step gain: the gain has slowed to at most ``start_tol`` of the largest, or ``start_by`` of the budget
    is reached, and ``warmup`` steps have passed."""
    slowed, max_gain = False, state.max_gain
    if state.previous is not None:
        gain = state.previous - signal
        max_gain = max(max_gain, gain)
        slowed = gain <= start_tol * max_gain
    due = state.budget is not None and state.epoch + 1 >= start_by * state.budget
    return state.epoch >= warmup and (slowed or due), max_gain


@dataclass(frozen=True)
class _PlanningState:
    """What both planning controllers (:class:`Planned`, :class:`Search`) remember; ``PHASES`` names theirs."""

    PHASES: typing.ClassVar[tuple[str, ...]] = ()
    epoch: int
    phase: str
    #: The run's number of steps (``None``: unknown).
    budget: int | None = None
    #: The descent's rate (0 before it starts).
    rate: float = 0.0
    previous: float | None = None
    max_gain: float = 0.0
    #: The best signal of the descent (from the step it started).
    best: float | None = None
    #: Steps in a row with the signal more than ``tol`` above ``best``.
    worse: int = 0

    def __post_init__(self) -> None:
        if self.phase not in self.PHASES:
            kind = type(self).__qualname__.split(".")[0]
            raise InvalidValueError(f"{kind} state phase must be one of {self.PHASES}, got {self.phase!r}")


_PLANNED_PHASES = ("warmup", "descent", "stopped")


class Planned(Schedule):
    """A controller that plans its descent within the run: start late, prune steadily, stop where the signal turns.

    - **Start**: as :class:`Guarded`: no pruning while a step still improves the signal by more than
      ``start_tol`` of the largest improvement seen in one step (``warmup`` steps at least). With a
      budget (the run's number of steps, which ``fit``, the callbacks and ``Occam(budget=...)``
      pass) pruning starts after ``start_by`` of it at the latest (and never before ``warmup``
      steps), so a short run still finds a size.
    - **Descend**: every step prunes the same fraction of the remaining weights, planned when the
      descent starts so that the density would reach ``target`` after ``end`` of the budget (at
      most ``r0`` a step; without a budget ``rate``). The descent is not cut short by one
      noisy step: it goes on while the signal stays within ``tol`` (relative) of the best it has
      reached since the descent began.
    - **Stop**: after ``patience`` prunes in a row with the signal more than ``tol`` above the
      best of the descent (from the step it started), the last prune is rolled back (``restore=True``: Occam restores the model and masks it
      saved before it) and pruning stops for good; it stops too once the density reaches
      ``target``. The density the run ends at is where the data stopped it; with ``fit`` (or any
      loop that keeps its best checkpoint) the epoch with the lowest hold-back loss is the model
      returned.
    """

    needs_snapshot = True

    @dataclass(frozen=True)
    class State(_PlanningState):
        PHASES: typing.ClassVar[tuple[str, ...]] = _PLANNED_PHASES

    def __init__(self, target: float = 0.02, start_tol: float = 0.1, warmup: int = 1, start_by: float = 0.1,
                 end: float = 0.35, rate: float = 0.2, r0: float = 0.4, tol: float = 0.1, patience: int = 3):
        for name, value in (("target", target), ("rate", rate), ("r0", r0)):
            if not (_is_real(value) and 0.0 < value < 1.0):
                raise InvalidValueError(f"{name} must be a number in (0, 1), got {value!r}")
        if rate > r0:
            raise InvalidValueError(f"rate must be <= r0 = {r0!r} (the largest rate), got {rate!r}")
        _check_plan(start_tol, tol, start_by, end)
        for name, value in (("warmup", warmup), ("patience", patience)):
            if not (_is_integer(value) and value >= (1 if name == "patience" else 0)):
                raise InvalidValueError(f"{name} must be an integer >= {1 if name == 'patience' else 0}, got {value!r}")
        self.target, self.start_tol, self.warmup = float(target), float(start_tol), int(warmup)
        self.start_by, self.end, self.rate, self.r0 = float(start_by), float(end), float(rate), float(r0)
        self.tol, self.patience = float(tol), int(patience)

    def init(self, budget: int | None = None) -> Planned.State:
        return self.State(epoch=0, phase="warmup", budget=_budget(budget))

    def planned_rate(self, epoch: int, density: float, budget: int | None) -> float:
        """The descent's rate when it starts after step ``epoch`` at ``density``."""
        if density <= self.target:
            return 0.0
        if budget is None:
            return self.rate
        steps = max(1, math.ceil(self.end * budget) - epoch)
        return min(self.r0, 1.0 - (self.target / density) ** (1.0 / steps))

    def decide(self, signal: float | None, density: float, state: Planned.State) -> tuple[Decision, Planned.State]:
        signal = check_signal(signal)
        if signal is None:
            raise InvalidValueError("Planned needs a signal loss every step, got None")
        phase, rate, max_gain, worse = state.phase, state.rate, state.max_gain, state.worse
        # The best is that of the descent: a dense network that overfits before it starts would
        # otherwise make every pruned step look worse than the warm-up's best.
        best = signal if state.best is None or phase == "warmup" else min(state.best, signal)
        action = "stopped"
        if phase == "warmup":
            start, max_gain = _may_start(signal, state, self.warmup, self.start_tol, self.start_by)
            if start:
                rate = self.planned_rate(state.epoch, density, state.budget)
                phase = "descent" if rate > 0.0 else "stopped"
                action = "pruned" if rate > 0.0 else "stopped"
            else:
                action = "warmup"
        elif phase == "descent":
            worse = worse + 1 if signal > state.best + self.tol * abs(state.best) else 0
            if worse >= self.patience:
                phase, action = "stopped", "rolled back"
            elif density * (1.0 - rate) < self.target:
                rate = 1.0 - self.target / density
                phase, action = "stopped", "pruned" if rate > 1e-9 else "stopped"
            else:
                action = "pruned"
        out_rate = rate if action == "pruned" else 0.0
        new = replace(state, epoch=state.epoch + 1, phase=phase, rate=rate if phase == "descent" else 0.0,
                      previous=signal, max_gain=max_gain, best=best, worse=worse)
        return Decision(action, out_rate, restore=action == "rolled back"), new


_SEARCH_PHASES = ("warmup", "descent", "settled")


class Search(Schedule):
    """A controller that searches the size within the run: descend, keep the best model, return to it.

    - **Start**: as :class:`Guarded`: no pruning while a step still improves the signal by more than
      ``start_tol`` of the largest improvement seen in one step (``warmup`` steps at least). With a
      budget (the run's number of steps: ``fit``, the callbacks and ``Occam(budget=...)`` pass it)
      the descent starts after ``start_by`` of it at the latest, so a short run still finds a size.
    - **Descend**: the first prune removes ``r_start`` of the weights; after a prune that brought a
      new best signal the rate grows by ``grow`` (at most ``r0``). The model with the best signal of
      the descent (from the step it started) is the one copy kept (``Decision(save=True)``); a step
      within ``tol`` (relative) of that best goes on: one noisy hold-back step does not end it.
    - **Return**: after ``patience`` steps in a row more than ``tol`` above the best, the best model
      is restored (``restore=True``) and the descent goes on from it at ``shrink`` times the rate, so
      the density just above the one that hurt is tried with a finer step; after ``max_restores``
      returns, or once the rate falls below ``min_rate``, it settles on the best model.
    - **Settle**: with a budget the descent ends at ``end`` of it: the best model is restored (when
      the current one is not it) and trains at its density for the rest of the run. It never prunes
      below ``floor``. Without a budget it settles only by its returns.
    """

    needs_snapshot = True

    @dataclass(frozen=True)
    class State(_PlanningState):
        """``best`` is the kept model's signal, ``best_density`` its density; ``rate`` the next prune's."""

        PHASES: typing.ClassVar[tuple[str, ...]] = _SEARCH_PHASES
        restores: int = 0
        pruned_last: bool = False
        best_density: float = 1.0

    def __init__(self, r_start: float = 0.2, r0: float = 0.4, grow: float = 1.5, shrink: float = 0.5,
                 tol: float = 0.1, patience: int = 2, start_tol: float = 0.1, warmup: int = 1,
                 start_by: float = 0.25, end: float = 0.6, floor: float = 0.01, max_restores: int = 0,
                 min_rate: float = 0.02):
        for name, value in (("r0", r0), ("floor", floor)):
            if not (_is_real(value) and 0.0 < value < 1.0):
                raise InvalidValueError(f"{name} must be a number in (0, 1), got {value!r}")
        for name, value, high in (("r_start", r_start, r0), ("min_rate", min_rate, r0)):
            if not (_is_real(value) and 0.0 < value <= high):
                raise InvalidValueError(f"{name} must be a number in (0, r0={r0!r}], got {value!r}")
        if not (_is_real(grow) and grow >= 1.0):
            raise InvalidValueError(f"grow must be a number >= 1, got {grow!r}")
        if not (_is_real(shrink) and 0.0 < shrink < 1.0):
            raise InvalidValueError(f"shrink must be a number in (0, 1), got {shrink!r}")
        _check_plan(start_tol, tol, start_by, end)
        for name, value, low in (("warmup", warmup, 0), ("patience", patience, 1), ("max_restores", max_restores, 0)):
            if not (_is_integer(value) and value >= low):
                raise InvalidValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.r_start, self.r0, self.grow, self.shrink = float(r_start), float(r0), float(grow), float(shrink)
        self.tol, self.patience, self.start_tol, self.warmup = float(tol), int(patience), float(start_tol), int(warmup)
        self.start_by, self.end, self.floor = float(start_by), float(end), float(floor)
        self.max_restores, self.min_rate = int(max_restores), float(min_rate)

    def init(self, budget: int | None = None) -> Search.State:
        return self.State(epoch=0, phase="warmup", budget=_budget(budget))

    def _rate(self, rate: float, density: float) -> float:
        """``rate``, less where it would cross ``floor``; 0 at the floor."""
        if density * (1.0 - rate) >= self.floor:
            return rate
        rate = 1.0 - self.floor / density
        return rate if rate > 1e-9 else 0.0

    def decide(self, signal: float | None, density: float, state: Search.State) -> tuple[Decision, Search.State]:
        signal = check_signal(signal)
        if signal is None:
            raise InvalidValueError("Search needs a signal loss every step, got None")
        phase, rate, max_gain, best = state.phase, state.rate, state.max_gain, state.best
        worse, restores = state.worse, state.restores
        ended = state.budget is not None and state.epoch + 1 >= self.end * state.budget
        action, out, restore, save = "stopped", 0.0, False, False
        if phase == "warmup":
            start, max_gain = _may_start(signal, state, self.warmup, self.start_tol, self.start_by)
            if start and not ended:
                phase, rate, best, save = "descent", self.r_start, signal, True
                out = self._rate(rate, density)
                action = "pruned" if out > 0.0 else "stopped"
                phase = phase if out > 0.0 else "settled"
            else:
                action = "warmup"
        elif phase == "descent":
            if signal < best:
                if state.pruned_last:
                    rate = min(self.r0, rate * self.grow)
                best, worse, save = signal, 0, True
            elif signal > best + self.tol * abs(best):
                worse += 1
            else:
                worse = 0
            if worse >= self.patience:  # back to the best model, and on from it with a finer step
                action, restore, save, worse = "rolled back", True, True, 0
                restores, rate = restores + 1, rate * self.shrink
                if ended or restores > self.max_restores or rate < self.min_rate:
                    phase, save = "settled", False
                else:
                    out = self._rate(rate, state.best_density)
            elif ended or density <= self.floor + 1e-12:
                phase = "settled"
                if not save:  # the current model is not the best: return to it for the rest of the run
                    action, restore = "rolled back", True
                save = False
            else:
                out = self._rate(rate, density)
                action = "pruned" if out > 0.0 else "stopped"
                phase = phase if out > 0.0 else "settled"
        previous = best if action == "rolled back" else signal  # after a return: the restored model's signal
        new = replace(state, epoch=state.epoch + 1, phase=phase, rate=rate, previous=previous, max_gain=max_gain,
                      best=best, worse=worse, restores=restores, pruned_last=out > 0.0,
                      best_density=density if save and not restore else state.best_density)
        return Decision(action, out, restore=restore, save=save), new


class Every(Schedule):
    """Ask ``schedule`` only every ``k``-th step and hold in between: pruning every ``k`` epochs (or
    evaluations) instead of every one, the interval of the paper's ablation.

    The wrapped controller sees the signal of every ``k``-th step only and plans within the budget
    divided by ``k``; its state travels inside this one (``inner``), checkpoints included.
    """

    #: Fields holding the state of a wrapped controller, and the attribute naming that controller:
    #: :func:`state_from_dict` reads them back with the wrapped controller's own fields.
    nested_states = {"inner": "schedule"}

    @dataclass(frozen=True)
    class State:
        step: int
        inner: Any

    def __init__(self, schedule: "Schedule | str | None" = None, k: int = 2):
        if not (_is_integer(k) and k >= 1):
            raise InvalidValueError(f"k must be an integer >= 1 (prune every k steps), got {k!r}")
        self.schedule, self.k = get_schedule(schedule), int(k)

    @property
    def needs_snapshot(self) -> bool:  # type: ignore[override]
        return self.schedule.needs_snapshot

    def init(self, budget: int | None = None) -> Every.State:
        return self.State(step=0, inner=init_state(self.schedule, None if budget is None else max(1, budget // self.k)))

    def decide(self, signal: float | None, density: float, state: Every.State) -> tuple[Decision, Every.State]:
        signal = check_signal(signal)
        if (state.step + 1) % self.k:
            return Decision("held", 0.0), replace(state, step=state.step + 1)
        decision, inner = self.schedule.decide(signal, density, state.inner)
        return decision, replace(state, step=state.step + 1, inner=inner)


def init_state(schedule: Schedule, budget: int | None) -> Any:
    """``schedule.init(budget=...)``, or ``init()`` for a controller whose ``init`` takes no budget."""
    try:
        takes = "budget" in inspect.signature(schedule.init).parameters
    except (TypeError, ValueError):
        takes = False
    return schedule.init(budget=budget) if takes else schedule.init()


# State as plain data ----------------------------------------------------------------------------
def state_to_dict(state: Any) -> dict[str, Any]:
    """A controller state as a dict of plain numbers, strings, ``None`` and lists (JSON-ready)."""
    if not (dataclasses.is_dataclass(state) and not isinstance(state, type)):
        raise InvalidTypeError(f"a controller state is a dataclass instance, got {type(state).__name__}")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(state).items()}


def _accepted(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_accepted(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_accepted(args[0])}"
    return {type(None): "None", int: "an integer", float: "a real number", bool: "True or False",
            str: "a string"}.get(hint, getattr(hint, "__name__", repr(hint)))


_NO = object()


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` names, or ``_NO``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            if (got := _coerce(value, arm)) is not _NO:
                return got
        return _NO
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return _NO
        items = [_coerce(v, args[0]) for v in value]
        return _NO if any(v is _NO for v in items) else origin(items)
    if hint is type(None):
        return None if value is None else _NO
    if hint is float:
        return float(value) if _is_real(value) else _NO
    if hint is int:
        return int(value) if _is_integer(value) else _NO
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is Any:
        return value
    return value if isinstance(hint, type) and isinstance(value, hint) else _NO


def state_from_dict(schedule: Schedule, data: Mapping[str, Any]) -> Any:
    """The state of ``schedule`` that :func:`state_to_dict` wrote: ``ValueError`` naming a missing,
    unknown or mistyped field and what is accepted. A field the state class names in ``ADDED`` (added
    after states were first written) may be missing: it takes its default."""
    kind = type(schedule).__name__
    cls = type(schedule.init())
    names = [f.name for f in dataclasses.fields(cls)]
    added = set(getattr(cls, "ADDED", ()))
    if not isinstance(data, Mapping) or not set(names) - added <= set(data) <= set(names):
        got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        but = f" (or without {sorted(added)})" if added else ""
        raise InvalidValueError(f"{kind} state has fields {got}; accepted: exactly {names}{but}")
    hints = typing.get_type_hints(cls)
    nested = getattr(schedule, "nested_states", {})
    values = {}
    for name in (n for n in names if n in data):
        if name in nested:  # a wrapped controller's state, read with its own fields
            values[name] = state_from_dict(getattr(schedule, nested[name]), data[name])
            continue
        values[name] = _coerce(data[name], hints[name])
        if values[name] is _NO:
            raise InvalidValueError(f"{kind} state field {name!r} is {data[name]!r}; accepted: {_accepted(hints[name])}")
    return cls(**values)


#: Named controllers: ``paper`` is exactly the paper's rule (Kausik, arXiv:2405.20194); ``guarded`` is
#: :class:`Guarded` (the default); ``planned`` is :class:`Planned`; ``search`` is :class:`Search` (it
#: descends within the run's budget and returns to its best model).
PRESETS = {"paper": OccamRate, "guarded": Guarded, "planned": Planned, "search": Search}
DEFAULT_PRESET = "guarded"


def get_schedule(schedule: "Schedule | str | None") -> Schedule:
    """A schedule object from a preset name (``None`` = the default preset) or a schedule."""
    if schedule is None:
        schedule = DEFAULT_PRESET
    if isinstance(schedule, str):
        try:
            return PRESETS[schedule]()
        except KeyError:
            raise InvalidValueError(f"unknown schedule preset {schedule!r}; accepted: {', '.join(PRESETS)} "
                             f"or a Schedule object") from None
    if not isinstance(schedule, Schedule):
        raise InvalidTypeError(
            f"schedule must be a preset name ({', '.join(PRESETS)}) or an occamgd.schedules.Schedule "
            f"(OccamRate, Guarded, ConstantRate, GMP, Never or a subclass), got {type(schedule).__name__}"
        )
    return schedule
