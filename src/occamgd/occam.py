"""Occam: binds a model, its optimizer, a criterion and a schedule.

Once per epoch the user calls ``occam.step(signal)``: the schedule turns the signal into a rate,
the criterion turns the rate into new masks, and the pruned weights and their optimizer state
(momentum, Adam moments) are zeroed. Between epochs a hook on the optimizer re-zeroes the pruned
weights after every step (the paper's semantic), whatever the optimizer did.

Between prunes the optimizer state of a pruned weight refills from its gradient, but it cannot
pull the weight back: the weight is zero again after every step, so no forward pass ever sees it,
and the kept weights follow exactly the same trajectory as when that state is zeroed after every
step too. ``zero_state="step"`` does the latter (one more pass per state tensor per step) for
optimizers whose update couples entries (LAMB-style trust ratios, factored second moments).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .criteria import Criterion, get_criterion
from .masks import Masks, Selection, select_prunable
from .schedules import OccamRate, Schedule, _check_signal

STATE_FORMAT = 1
#: When the optimizer state of pruned weights is zeroed: at each prune, or after every step too.
ZERO_STATE = ("prune", "step")


class Occam:
    """Occam Gradient Descent around any ``nn.Module`` and ``torch.optim`` optimizer.

    >>> occam = Occam(model, optimizer)               # paper defaults: layerwise, r0 = 0.4
    >>> for epoch in range(epochs):
    ...     train_one_epoch(model, optimizer, loader)  # the user's own loop, unchanged
    ...     occam.step(signal=validation_loss(model))  # adapt the rate, prune, enforce masks

    ``include`` / ``exclude`` select the prunable tensors (see :func:`select_prunable`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: str | Criterion = "layerwise",
        schedule: Schedule | None = None,
        *,
        include: Selection | None = None,
        exclude: Selection | None = None,
        zero_state: str = "prune",
    ):
        if zero_state not in ZERO_STATE:
            raise ValueError(f"zero_state must be one of {ZERO_STATE}, got {zero_state!r}")
        self.zero_state = zero_state
        self.model = model
        self.criterion = get_criterion(criterion)
        self.schedule = OccamRate() if schedule is None else schedule
        if not isinstance(self.schedule, Schedule):
            raise TypeError(
                f"schedule must be an occamgd.schedules.Schedule (OccamRate, ConstantRate, GMP, "
                f"Never or a subclass), got {type(self.schedule).__name__}"
            )
        self.masks = Masks(select_prunable(model, include, exclude))
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._handles: list = []
        if optimizer is not None:
            self.attach(optimizer)

    # Optimizer hooks --------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep the masks after every ``optimizer.step()`` (replaces any earlier optimizer)."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.detach()
        self.optimizer = optimizer
        keep = self.enforce if self.zero_state == "step" else self.masks.apply
        self._handles = [optimizer.register_step_post_hook(lambda opt, args, kwargs: keep())]

    def detach(self) -> None:
        """Remove the optimizer hooks; the masks stop being enforced."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.optimizer = None

    def enforce(self) -> None:
        """Zero pruned weights and their optimizer state now (for loops without an optimizer)."""
        self.masks.apply()
        if self.optimizer is not None:
            self.masks.apply_to_optimizer_state(self.optimizer)

    # Size -------------------------------------------------------------------------------
    @property
    def density(self) -> float:
        """Kept fraction of all prunable weights."""
        return self.masks.density

    @property
    def densities(self) -> dict[str, float]:
        """Kept fraction of each prunable tensor."""
        return self.masks.densities()

    # The epoch step ---------------------------------------------------------------------
    def step(self, signal: float | None = None) -> float:
        """Adapt the rate from ``signal``, prune, enforce; return the rate used.

        Call once per epoch (or evaluation interval), after training on it. A non-finite signal
        raises ``ValueError`` before anything changes.
        """
        if signal is not None:
            signal = float(signal)
        _check_signal(signal)
        density_before = self.masks.density
        schedule_state = self.schedule.state_dict()
        rate = float(self.schedule.step(signal, density_before))
        if not 0.0 <= rate < 1.0:
            self.schedule.load_state_dict(schedule_state)
            raise ValueError(
                f"schedule {self.schedule!r} returned rate {rate!r}; accepted: a rate in [0, 1)"
            )
        if rate > 0.0:
            weights = {name: p.detach() for name, p in self.masks.params.items()}
            new = self.criterion(weights, self.masks, rate)
            # A criterion may only prune: never let it revive an entry.
            self.masks.update({name: new[name] & self.masks[name] for name in self.masks})
            self.enforce()
        self.history.append(
            {
                "epoch": len(self.history),
                "signal": signal,
                "rate": rate,
                "density_before": density_before,
                "density": self.masks.density,
            }
        )
        return rate

    # Checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks, schedule state and history: everything needed to resume pruning exactly."""
        return {
            "format": STATE_FORMAT,
            "masks": self.masks.state_dict(),
            "schedule": {"type": type(self.schedule).__name__, "state": self.schedule.state_dict()},
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks, schedule state and history; zero the pruned weights."""
        missing = {"format", "masks", "schedule", "history"} - set(state)
        if missing:
            raise ValueError(f"Occam state lacks {sorted(missing)}; accepted: a dict from Occam.state_dict()")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"Occam state format {state.get('format')!r} is not supported; accepted: {STATE_FORMAT}"
            )
        kind = state["schedule"]["type"]
        if kind != type(self.schedule).__name__:
            raise ValueError(
                f"checkpoint was made with schedule {kind}, this Occam uses "
                f"{type(self.schedule).__name__}; accepted: the same schedule type"
            )
        # Validate everything before changing anything.
        self.masks.check(state["masks"], "checkpoint masks", require_all=True)
        self.schedule.load_state_dict(state["schedule"]["state"])
        self.masks.load_state_dict(state["masks"])
        self.history = [dict(r) for r in state["history"]]
        self.enforce()

    def __repr__(self) -> str:
        return (
            f"Occam(tensors={len(self.masks)}, weights={self.masks.total}, density={self.density:.4f}, "
            f"criterion={getattr(self.criterion, '__name__', self.criterion)!r}, schedule={self.schedule!r})"
        )
