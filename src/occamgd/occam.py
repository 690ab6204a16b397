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

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import InvalidTypeError, InvalidValueError
from .criteria import Criterion, get_criterion
from .masks import Selection, select_prunable, unwrapped_names
from . import sharded as _sharded
from .schedules import Decision, Schedule, check_signal, get_schedule, init_state, state_from_dict, state_to_dict

#: 2: the controller's state is its own dataclass (``schedules.state_to_dict``); 1 (occamgd 0.1) is refused.
STATE_FORMAT = 2
#: When the optimizer state of pruned weights is zeroed: at each prune, or after every step too.
ZERO_STATE = ("prune", "step")


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer to hook: ``optimizer`` itself, or the one inside pass-through wrappers.

    A pass-through wrapper keeps the optimizer it wraps in ``.optimizer`` and shares its
    ``state``: it holds nothing of its own, so the weights change only in the inner step, and the
    hook goes there (accelerate's ``AcceleratedOptimizer`` is one, found by this shape, without
    importing accelerate: it takes no hooks itself, and its inner step runs once per real update,
    after gradient accumulation and never for a step the loss scaler skipped). A wrapper with state
    of its own (Lookahead and the like) may move the weights after the inner step, so it is the one
    hooked. Raises ``TypeError`` when what remains is not a ``torch.optim.Optimizer``.
    """
    inner = optimizer
    while True:
        wrapped = getattr(inner, "optimizer", None)
        if not (isinstance(wrapped, torch.optim.Optimizer) and wrapped is not inner
                and getattr(inner, "state", None) is wrapped.state):
            break
        inner = wrapped
    if not isinstance(inner, torch.optim.Optimizer):
        raise InvalidTypeError(
            f"optimizer must be a torch.optim.Optimizer (or a wrapper keeping one in .optimizer), got "
            f"{type(optimizer).__name__}"
        )
    return inner


def _check_bounds(budget: Any, min_density: Any, max_density: Any, max_params: Any) -> None:
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if budget is not None and not (integer(budget) and budget >= 1):
        raise InvalidValueError(f"budget must be an integer >= 1 (how many times step() will be called) or None, "
                                f"got {budget!r}")
    for name, value in (("min_density", min_density), ("max_density", max_density)):
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0.0 < value <= 1.0):
            raise InvalidValueError(f"{name} must be a fraction of the prunable weights in (0, 1] or None, "
                                    f"got {value!r}")
    if max_params is not None and not (integer(max_params) and max_params >= 1):
        raise InvalidValueError(f"max_params must be an integer >= 1 (parameters of the model) or None, "
                                f"got {max_params!r}")
    if max_density is not None and max_params is not None:
        raise InvalidValueError("give max_density or max_params, not both (they are the same bound: one in a "
                                "fraction of the prunable weights, one in parameters)")
    if (max_density is not None or max_params is not None) and budget is None:
        raise InvalidValueError(
            f"{'max_density' if max_density is not None else 'max_params'} needs the run's budget to plan the way "
            "down to it: Occam(..., budget=<how many times step() will be called>); occamgd.fit and the Lightning "
            "and Hugging Face callbacks pass it themselves")


class Occam:
    """Occam Gradient Descent around any ``nn.Module`` and ``torch.optim`` optimizer.

    >>> occam = Occam(model, optimizer, budget=epochs - 1)  # guarded controller, layerwise magnitude
    >>> for epoch in range(epochs):
    ...     train_one_epoch(model, optimizer, loader)  # the user's own loop, unchanged
    ...     occam.step(signal=validation_loss(model))  # adapt the rate, prune, enforce masks

    - ``optimizer``: a ``torch.optim`` optimizer, also inside accelerate's wrapper (see
      :func:`unwrap_optimizer`); ``None`` to :meth:`attach` one later.
    - ``schedule``: a preset name (``"paper"``: the paper's rule exactly; ``"guarded"``, the default:
      :class:`occamgd.schedules.Guarded`; ``"search"``, ``"planned"``) or a schedule object;
      ``None`` is the default preset.
    - ``include`` / ``exclude`` select the prunable tensors (see :func:`select_prunable`).
    - ``every`` and ``signal_fn``, for long runs without epochs: after every ``every`` optimizer
      steps Occam calls ``signal_fn()`` (in eval mode, without gradients) and steps itself.
    - ``snapshot_device``: where a rolling-back schedule keeps its one copy of the model (from before
      the last prune, or its best: ``Decision.save``; ``"cpu"`` by default; ``None`` keeps it beside the weights).
    - ``shrink``: after each prune remove the pruned groups from the live model in place (same
      ``Parameter`` objects, sliced optimizer state; see :mod:`occamgd.compaction.shrink` and
      docs/compaction.md). Needs ``**structured_pruning(model, example_input)``, a built-in
      optimizer (:data:`occamgd.compaction.shrink.SHRINK_OPTIMIZERS`) and a plain (uncompiled,
      unwrapped) model; anything else is refused here.
    - ``budget``: how many times :meth:`step` will be called in this run (epochs, or evaluations;
      with ``every``: the optimizer steps divided by ``every``). A controller that plans (the
      default) uses it so that a short run still finds a size; ``fit`` and the callbacks pass it.
    - ``min_density`` / ``max_density`` (or ``max_params``, parameters of the whole model): the
      user's bounds, combined with the controller's choice. No prune goes below the floor; the
      ceiling is reached by three quarters of the budget at the latest (a cubic path from a
      quarter of it, :meth:`ceiling_at`) whatever the controller decides, so it needs ``budget``.
      A step a bound changed says so in its history record (``"bound"``).

    A model sharded with FSDP2 (``fully_shard``: ``Shard(0)`` DTensor parameters) gets masks
    sharded like its weights and the exact sharded ``"layerwise"`` / ``"global"`` criteria (see
    :mod:`occamgd.sharded`); ``step`` is then collective, and every rank must pass the same
    signal (or use :class:`~occamgd.integrations.distributed.DistributedOccam`, which averages).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: str | Criterion = "layerwise",
        schedule: Schedule | str | None = None,
        *,
        include: Selection | None = None,
        exclude: Selection | None = None,
        zero_state: str = "prune",
        every: int | None = None,
        signal_fn: Callable[[], float] | None = None,
        snapshot_device: str | torch.device | None = "cpu",
        shrink: bool = False,
        budget: int | None = None,
        min_density: float | None = None,
        max_density: float | None = None,
        max_params: int | None = None,
    ):
        if zero_state not in ZERO_STATE:
            raise InvalidValueError(f"zero_state must be one of {ZERO_STATE}, got {zero_state!r}")
        if (every is None) != (signal_fn is None):
            raise InvalidValueError(f"every and signal_fn go together; got every={every!r}, signal_fn={signal_fn!r}")
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise InvalidValueError(f"every must be an integer >= 1 (optimizer steps), got {every!r}")
        if signal_fn is not None and not callable(signal_fn):
            raise InvalidTypeError(f"signal_fn must be a callable returning the signal loss, got {signal_fn!r}")
        if not isinstance(shrink, bool):
            raise InvalidTypeError(f"shrink must be True or False, got {shrink!r}")
        _check_bounds(budget, min_density, max_density, max_params)
        self.zero_state = zero_state
        self.model = model
        self.shrink = shrink
        self.criterion = get_criterion(criterion)
        if shrink:
            self._shrinker().check_criterion(model, self.criterion)
        self.schedule = get_schedule(schedule)
        #: How many times ``step`` will be called in this run (``None``: unknown); the controller plans within it.
        self.budget = budget
        #: The controller's state: what ``schedule.decide`` read last and returned (see :mod:`occamgd.schedules`).
        self.schedule_state = init_state(self.schedule, budget)
        # DTensor (FSDP2) parameters get masks sharded like them and the exact sharded criteria
        # (occamgd.sharded); a mix of sharded and plain prunable tensors is refused there.
        self.masks = _sharded.make_masks(select_prunable(model, include, exclude))
        #: The user's bounds on the density (fractions of the prunable weights; ``None``: none).
        self.min_density = None if min_density is None else float(min_density)
        self.max_density = None if max_density is None else float(max_density)
        if max_params is not None:
            self.max_density = self._params_to_density(max_params)
        if self.min_density is not None and self.max_density is not None and self.min_density > self.max_density:
            raise InvalidValueError(f"min_density {self.min_density!r} is above the ceiling {self.max_density!r} "
                                    f"(from {'max_params' if max_params is not None else 'max_density'}); accepted: "
                                    "min_density <= the ceiling")
        if self.sharded:
            if shrink:
                raise InvalidValueError("shrink=True does not support sharded (FSDP2) parameters; accepted: a model "
                                        "on one device, or shrink=False")
            self.criterion = _sharded.sharded_criterion(self.criterion)
        self.history: list[dict[str, Any]] = []
        self.every, self.signal_fn = every, signal_fn
        self.snapshot_device = None if snapshot_device is None else torch.device(snapshot_device)
        self.optimizer_steps = 0
        self._snapshot: dict[str, Any] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._handles: list = []
        if optimizer is not None:
            self.attach(optimizer)

    # Optimizer hooks --------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep the masks after every ``optimizer.step()`` (replaces any earlier optimizer).

        A pass-through wrapper such as accelerate's ``AcceleratedOptimizer`` is opened and the
        optimizer inside it hooked (see :func:`unwrap_optimizer`); ``self.optimizer`` is that one.
        """
        optimizer = unwrap_optimizer(optimizer)
        if self.shrink:
            self._shrinker().check_optimizer(optimizer)
        self._follow_parameters(optimizer)
        keep = self.enforce if self.zero_state == "step" else self.masks.apply
        try:
            handles = [optimizer.register_step_post_hook(lambda opt, args, kwargs: keep())]
        except AttributeError as error:
            raise InvalidTypeError(
                f"{type(optimizer).__name__} takes no step hooks (torch.optim.Optimizer.__init__ never ran on "
                "it); accepted: a torch.optim optimizer, or a wrapper keeping one in .optimizer and sharing its "
                "state"
            ) from error
        if self.every is not None:
            handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self._count()))
        self.detach()
        self.optimizer = optimizer
        self._handles = handles

    def _count(self) -> None:
        self.optimizer_steps += 1
        if self.optimizer_steps % self.every == 0:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    signal = self.signal_fn()
            finally:
                self.model.train(was_training)
            self.step(signal)

    def detach(self) -> None:
        """Remove the optimizer hooks; the masks stop being enforced."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.optimizer = None

    def _follow_parameters(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Masks follow the model's parameters by name, so they never silently stop holding.

        Anything that replaces a ``Parameter`` object (``load_state_dict(..., assign=True)``, a
        re-registered weight) leaves the masks bound to the old one; here each masked name is looked
        up again and a replaced parameter is masked in its place (its pruned entries zeroed), so the
        density read is the live weights'. The optimizer must update the new one: if it still holds
        the old object the step is refused, naming the tensor. Checked at every epoch step, density
        read, checkpoint and attach; not inside the optimizer hook (that stays one fused multiply).
        """
        if self.sharded:
            # FSDP2 registers unsharded parameters around each forward and its sharded DTensors
            # again after; the masks hold those sharded parameters, the ones it keeps.
            return
        optimizer = optimizer if optimizer is not None else self.optimizer
        unwrap = unwrapped_names(self.model)
        live = {unwrap(name): param for name, param in self.model.named_parameters()}
        moved = {name: live.get(name) for name, param in self.masks.params.items() if live.get(name) is not param}
        if not moved:
            return
        gone = sorted(name for name, param in moved.items() if param is None)
        if gone:
            raise InvalidValueError(
                f"the prunable tensors {gone} are no longer parameters of the model; accepted: a model with the "
                "parameters Occam was built on (same names), or a new Occam"
            )
        if optimizer is not None:
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            stale = sorted(name for name, param in moved.items() if id(param) not in held)
            if stale:
                raise InvalidValueError(
                    f"the parameters {stale} were replaced (e.g. by load_state_dict(..., assign=True)) but the "
                    "optimizer still updates the old ones; accepted: build the optimizer on the model's parameters "
                    "again and call occam.attach(optimizer)"
                )
        self.masks.rebind(moved)

    def enforce(self) -> None:
        """Zero pruned weights and their optimizer state now (for loops without an optimizer)."""
        self.masks.apply()
        if self.optimizer is not None:
            self.masks.apply_to_optimizer_state(self.optimizer)

    @property
    def sharded(self) -> bool:
        """Whether the prunable parameters are DTensors (FSDP2): masks are then :class:`occamgd.sharded.ShardedMasks`."""
        return getattr(self.masks, "sharded", False)

    # Size -------------------------------------------------------------------------------
    @property
    def density(self) -> float:
        """Kept fraction of all prunable weights (see :attr:`occamgd.masks.Masks.density` for what it counts)."""
        self._follow_parameters()
        return self.masks.density

    @property
    def densities(self) -> dict[str, float]:
        """Kept fraction of each prunable tensor."""
        self._follow_parameters()
        return self.masks.densities()

    # The epoch step ---------------------------------------------------------------------
    def step(self, signal: float | None = None) -> float:
        """Adapt the rate from ``signal``, prune, enforce; return the rate used.

        Call once per epoch (or evaluation interval), after training on it. The controller's
        decision is checked before anything happens and its new state is kept only once the step
        has succeeded: a signal that is not a real number (``TypeError``), a non-finite one
        (``ValueError``) or a decision that cannot be carried out (``ValueError``) changes
        nothing. When the controller rolls back its last prune, the model's parameters, buffers
        and masks return to their state before it.
        """
        signal = check_signal(signal)
        self._follow_parameters()
        density_before = self.masks.density
        answer = self.schedule.decide(signal, density_before, self.schedule_state)
        if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], Decision)
                and type(answer[1]) is type(self.schedule_state)):
            raise InvalidTypeError(
                f"schedule {self.schedule!r} answered {answer!r}; accepted: a tuple (Decision, new state) with "
                f"the new state a {type(self.schedule_state).__qualname__}, like its init() returns"
            )
        decision, new_state = answer
        if decision.save is not None and not self.schedule.needs_snapshot:
            raise InvalidValueError(
                f"schedule {self.schedule!r} decided save={decision.save!r} but its needs_snapshot is False; "
                "accepted: save=None, or a schedule class with needs_snapshot = True")
        if decision.restore and self._snapshot is None:
            raise InvalidValueError(
                f"schedule {self.schedule!r} decided {decision.action!r} with nothing to restore; accepted: a "
                "rollback only after a prune, by a schedule whose needs_snapshot is True"
            )
        if self.sharded:  # every rank must take the same decision, or the collectives below would split
            _sharded.agree(self.masks, decision.rate, decision.restore)
        if decision.restore:
            self._restore_snapshot()
        action, rate, bound = self._bounded(decision, len(self.history))
        if decision.save is True:
            self._take_snapshot()
        if rate > 0.0:
            kept = self.masks.kept
            self._prune(rate, self.ceiling_at(len(self.history)) if bound == "max_density" else 1.0,
                        save=decision.save is None)
            if bound == "min_density" and self.masks.kept == kept:  # at the floor: nothing could go
                action, rate = ("held" if action == "pruned" else action), 0.0
        self.schedule_state = new_state
        self.history.append(
            {
                "epoch": len(self.history),
                "signal": signal,
                "action": action,
                "rate": rate,
                "density_before": density_before,
                "density": self.masks.density,
                **({"bound": bound} if bound else {}),
            }
        )
        return rate

    # Bounds -------------------------------------------------------------------------------
    def ceiling_at(self, step: int) -> float:
        """The most the density may be after step ``step`` (0-based) under ``max_density``: 1 until a
        quarter of the budget, then a cubic path (as GMP's) that reaches the ceiling at three quarters
        of it and holds it. 1 when there is no ceiling."""
        if self.max_density is None:
            return 1.0
        start, end = round(0.25 * self.budget), max(round(0.25 * self.budget) + 1, round(0.75 * self.budget))
        p = min(1.0, max(0.0, (step + 1 - start) / (end - start)))
        return self.max_density + (1.0 - self.max_density) * (1.0 - p) ** 3

    def _bounded(self, decision: Decision, step: int) -> tuple[str, float, str | None]:
        """The decision's action and rate within the user's bounds, and which bound changed it."""
        action, rate, bound = decision.action, decision.rate, None
        density = self.masks.density
        ceiling = self.ceiling_at(step)
        if density > ceiling + 1e-12:
            needed = 1.0 - ceiling / density
            if needed > rate + 1e-12:
                rate, bound = needed, "max_density"
                action = "pruned" if action != "rolled back" else action
        if self.min_density is not None and rate > 0.0 and density * (1.0 - rate) < self.min_density:
            rate, bound = max(0.0, 1.0 - self.min_density / density), "min_density"
            if rate <= 1e-9:
                rate = 0.0
                action = "held" if action == "pruned" else action
        return action, rate, bound

    def _params_to_density(self, max_params: int) -> float:
        """``max_params`` (parameters of the whole model) as a ceiling on the prunable weights' density."""
        total = sum(p.numel() for p in self.model.parameters())
        other = total - self.masks.total
        if max_params <= other:
            raise InvalidValueError(
                f"max_params={max_params} cannot be met: the model has {other} parameters that are never pruned "
                f"(biases, norms, tensors left out) besides its {self.masks.total} prunable weights; accepted: "
                f"max_params > {other}")
        return min(1.0, (max_params - other) / self.masks.total)

    def _prune(self, rate: float, ceiling: float = 1.0, save: bool = True) -> None:
        weights = {name: p.detach() for name, p in self.masks.params.items()}
        new = self._choose(weights, rate)
        # The criterion rounds per tensor (or per group): search the rate that keeps the bounds exactly.
        # (Sharded masks: the bounds hold up to that rounding; the search would need global counts.)
        total = self.masks.total
        floor = self.min_density * total if self.min_density is not None else 0
        if not self.sharded and self._kept(new) < floor:
            low, high, new = 0.0, rate, {name: m.clone() for name, m in self.masks.items()}
            for _ in range(20):
                trial = self._choose(weights, (low + high) / 2)
                if self._kept(trial) >= floor:
                    low, new = (low + high) / 2, trial
                else:
                    high = (low + high) / 2
        elif not self.sharded and self._kept(new) > ceiling * total + 1e-9:
            low, high = rate, 1.0 - 1e-9
            for _ in range(30):
                trial = self._choose(weights, (low + high) / 2)
                if self._kept(trial) > ceiling * total + 1e-9:
                    low = (low + high) / 2
                else:
                    high, new = (low + high) / 2, trial
        if save and self.schedule.needs_snapshot:
            self._take_snapshot()
        self.masks.update(new)
        self.enforce()
        if self.shrink:
            self._shrink()

    def _choose(self, weights: Mapping[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
        new = self.criterion(weights, self.masks, rate)
        # A criterion may only prune: never let it revive an entry.
        return {name: new[name] & self.masks[name] for name in self.masks}

    def _kept(self, masks: Mapping[str, torch.Tensor]) -> int:
        return int(sum(int(m.sum()) for m in masks.values()))

    # Shrinking --------------------------------------------------------------------------
    def _shrinker(self) -> Any:
        """The shrinking code (:class:`occamgd.compaction.shrink.Shrinker`), from the structured criterion."""
        shrinker = (getattr(self.criterion, "context", None) or {}).get("shrinker")
        if shrinker is None:
            raise InvalidValueError(
                "shrink=True needs criterion/include from occamgd.compaction.structured_pruning(model, example_input), "
                f"got criterion {getattr(self.criterion, '__name__', self.criterion)!r}; accepted: "
                "Occam(model, optimizer, shrink=True, **structured_pruning(model, example_input))")
        return shrinker

    def _shrink(self) -> None:
        index = self._shrinker().shrink(self.model, self.masks, self.optimizer, self.criterion)
        if self._snapshot is not None and index:
            # The copy may be older than this shrink (a controller that keeps its best): compose the kept indices.
            # A new dict, not a change to the old one: fit's best epoch may hold the snapshot by reference.
            earlier = self._snapshot["shrink"].get("index") or {}
            composed = {**earlier, **{name: (earlier[name][0], earlier[name][1].to(flat.device)[flat])
                                      if name in earlier else (shape, flat) for name, (shape, flat) in index.items()}}
            self._snapshot = {**self._snapshot, "shrink": {**self._snapshot["shrink"], "index": composed}}
        if index:
            self._rebuild_criterion()
        self.enforce()

    def _rebuild_criterion(self) -> None:
        """The structured groups of the model as it is now (their unit indices follow its shapes)."""
        self.criterion = self._shrinker().rebuild(self.model, self.criterion)

    def _shrink_state(self) -> dict[str, Any]:
        shrinker = self._shrinker()
        return {"shapes": shrinker.shapes(self.model), "structure": shrinker.structure(self.model),
                "removed": dict(self.masks.removed)}

    def _check_shrunk_masks(self, masks: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        """Refuse, before the model is reshaped, checkpoint masks that will not fit the shapes it records."""
        if set(masks) != set(self.masks):
            raise InvalidValueError(
                f"checkpoint masks name {sorted(set(masks) ^ set(self.masks))[:4]}, which are not all this model's "
                "prunable tensors; accepted: a state from an Occam around this same model")
        shapes = record.get("shapes") if isinstance(record, Mapping) else None
        if not isinstance(shapes, Mapping):
            raise InvalidValueError("checkpoint's shrink record has no shapes; accepted: a dict from Occam.state_dict()")
        for name, mask in masks.items():
            if not (torch.is_tensor(mask) and mask.dtype == torch.bool):
                raise InvalidTypeError(f"checkpoint masks: mask for {name!r} is not a torch.bool tensor")
            if name not in shapes or tuple(mask.shape) != tuple(shapes[name]):
                raise InvalidValueError(
                    f"checkpoint masks: mask for {name!r} has shape {tuple(mask.shape)}, but the checkpoint shrinks that "
                    f"parameter to {tuple(shapes[name]) if name in shapes else 'no recorded shape'}; the file is "
                    "damaged or assembled from two runs; accepted: a state from Occam.state_dict() as written")

    def _reshape(self, record: Mapping[str, Any]) -> None:
        """Give the model the shapes and structure in ``record`` (from :meth:`_shrink_state`)."""
        shrinker = self._shrinker()
        shrinker.set_shapes(self.model, dict(record["shapes"]), self.optimizer)
        shrinker.set_structure(self.model, record["structure"])
        for name in self.masks:
            p = self.masks.params[name]
            if tuple(self.masks[name].shape) != tuple(p.shape):
                self.masks.reshape(name, torch.ones_like(p, dtype=torch.bool), 0)
        self.masks.removed = dict(record["removed"])
        self.masks.refresh()
        self._rebuild_criterion()

    # Rollback ---------------------------------------------------------------------------
    def _take_snapshot(self) -> None:
        device, unwrap = self.snapshot_device, unwrapped_names(self.model)
        # Named without wrapper prefixes, like the masks: the snapshot moves between wrapped and plain models.
        self._snapshot = {
            "model": {unwrap(k): v.detach().to(device, copy=True) for k, v in self.model.state_dict().items()},
            "masks": {k: v.to(device, copy=True) for k, v in self.masks.items()},
        }
        if self.shrink:  # the shapes and structure before the prune, to regrow them on a rollback
            self._snapshot["shrink"] = self._shrink_state()

    def _restore_snapshot(self) -> None:
        unwrap, saved = unwrapped_names(self.model), self._snapshot["model"]
        if "shrink" in self._snapshot:  # regrow the shapes first; the regrown entries' optimizer state is zero
            record = self._snapshot["shrink"]
            self._shrinker().regrow(self.model, saved, record.get("index") or {}, self.optimizer, self.masks)
            self._reshape(record)
        current = self.model.state_dict()
        if self.sharded:  # DTensors kept on snapshot_device go back beside the shards they restore
            self.model.load_state_dict({k: _sharded.local_to_like(saved[unwrap(k)], v) for k, v in current.items()})
        else:
            self.model.load_state_dict({k: saved[unwrap(k)] for k in current})
        self.masks.load_state_dict(self._snapshot["masks"])
        self._snapshot = None
        self.enforce()

    def _check_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        if "shrink" in snapshot:  # masks of the pre-prune shapes (checked when a rollback regrows them): names here
            if set(snapshot["masks"]) != set(self.masks):
                raise InvalidValueError(
                    f"checkpoint snapshot masks name {sorted(set(snapshot['masks']) ^ set(self.masks))[:4]}, which are "
                    "not all this model's prunable tensors; accepted: a state from an Occam around this same model")
        else:
            self.masks.check(snapshot["masks"], "checkpoint snapshot masks", require_all=True)
        unwrap = unwrapped_names(self.model)
        ours, theirs = {unwrap(k) for k in self.model.state_dict()}, set(snapshot["model"])
        if ours != theirs:
            raise InvalidValueError(
                f"checkpoint snapshot is of another model: tensors {sorted(ours ^ theirs)[:4]} are in only one of "
                "them; accepted: a state from an Occam around this same architecture"
            )

    def _reshard_snapshot(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        unwrap = unwrapped_names(self.model)
        model = {unwrap(k): v for k, v in self.model.state_dict().items()}
        device = self.snapshot_device

        def place(value, like):
            value = _sharded.reshard_like(value, like)
            return value if device is None else value.to(device)

        return {
            "model": {k: place(v, model[k]) if k in model else v for k, v in snapshot["model"].items()},
            "masks": {k: place(v, self.masks[k]) if k in self.masks else v for k, v in snapshot["masks"].items()},
        }

    @property
    def snapshot_bytes(self) -> int:
        """Memory held by the rollback snapshot now (0 when none is held)."""
        if self._snapshot is None:
            return 0
        return sum(_sharded._local(t).numel() * t.element_size() for key in ("model", "masks")
                   for t in self._snapshot[key].values())

    # Checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks, controller state, history and rollback snapshot: everything needed to resume exactly.

        The controller's state is stored as the dict :func:`~occamgd.schedules.state_to_dict`
        makes, beside the controller's type name (checked when loading)."""
        return {
            "format": STATE_FORMAT,
            "masks": self.masks.state_dict(),
            "schedule": {"type": type(self.schedule).__name__, "state": state_to_dict(self.schedule_state)},
            "history": [dict(r) for r in self.history],
            "optimizer_steps": self.optimizer_steps,
            "snapshot": self._snapshot,
            **({"shrink": self._shrink_state()} if self.shrink else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks, schedule state and history; zero the pruned weights."""
        missing = {"format", "masks", "schedule", "history"} - set(state)
        if missing:
            raise InvalidValueError(f"Occam state lacks {sorted(missing)}; accepted: a dict from Occam.state_dict()")
        fmt = state.get("format")
        if type(fmt) is int and 1 <= fmt < STATE_FORMAT:
            raise InvalidValueError(
                f"Occam state format {fmt} was made by an older occamgd; pre-1.0 states are not migrated: "
                f"start the run again (accepted: format {STATE_FORMAT})"
            )
        if type(fmt) is not int or fmt != STATE_FORMAT:
            raise InvalidValueError(f"Occam state format {fmt!r} is not supported; accepted: {STATE_FORMAT}")
        kind = state["schedule"]["type"]
        if kind != type(self.schedule).__name__:
            raise InvalidValueError(
                f"checkpoint was made with schedule {kind}, this Occam uses "
                f"{type(self.schedule).__name__}; accepted: the same schedule type"
            )
        if state.get("shrink") is not None and not self.shrink:
            raise InvalidValueError("checkpoint is of a shrunk model (Occam(shrink=True)); accepted: load it into an "
                                    "Occam built with shrink=True, which re-shrinks the model first")
        # Validate everything before changing anything.
        schedule_state = state_from_dict(self.schedule, state["schedule"]["state"])
        snapshot = state.get("snapshot")
        if snapshot is not None and self.sharded:  # a full (gathered) snapshot: keep this rank's rows
            snapshot = self._reshard_snapshot(snapshot)
        if snapshot is not None:
            self._check_snapshot(snapshot)
        if self.shrink and state.get("shrink") is not None:
            # The masks must fit the shapes the checkpoint gives the model, checked before it is reshaped.
            self._check_shrunk_masks(state["masks"], state["shrink"])
            # Re-shrink the fresh model to the checkpoint's shapes (zeros: its weights are loaded after).
            self._reshape(state["shrink"])
        self.masks.check(state["masks"], "checkpoint masks", require_all=True)
        self.masks.load_state_dict(state["masks"])
        self.schedule_state = schedule_state
        self.history = [dict(r) for r in state["history"]]
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self._snapshot = snapshot
        self.enforce()

    def unpruned_reason(self) -> str | None:
        """Why nothing is pruned after the steps taken, naming the controller's phase and what to
        change; ``None`` once something is pruned, before the first step, and for ``Never``.

        Short runs are where this happens: a controller that waits for the dense network's gains
        to slow (``Guarded``) may still be waiting when the run ends.
        """
        if self.masks.kept < self.masks.total or not self.history or type(self.schedule).__name__ == "Never":
            return None
        steps = len(self.history)
        actions = [r["action"] for r in self.history]
        schedule, state = self.schedule, self.schedule_state
        for field, attr in getattr(schedule, "nested_states", {}).items():  # a wrapper (Every): name what it wraps
            schedule, state = getattr(schedule, attr), getattr(state, field)
        name = type(schedule).__name__
        options = ("train longer or evaluate more often (more Occam steps), or use schedule='paper', which "
                   "prunes from the first step")
        phase = getattr(state, "phase", actions[-1])
        if "rolled back" in actions:
            return (f"Occam ended without pruning: every prune of the {name} controller was rolled back in "
                    f"{steps} steps (the signal rose beyond its tolerance each time; phase {phase!r}); to prune "
                    f"anyway: a larger tolerance (e.g. {name}(tol=...)), a smaller first rate, or {options}")
        if phase == "warmup":
            waiting = ("the signal still improved by more than start_tol of its largest gain"
                       if hasattr(schedule, "start_tol") else "it had not started")
            sooner = (f"{name}(start_by=...), or pass the run's budget (Occam(budget=...)): it starts by "
                      "start_by of it" if hasattr(schedule, "start_by") and self.budget is None
                      else f"{name}(start_tol=..., warmup=...)")
            return (f"Occam ended without pruning: after {steps} steps the {name} controller was still in its "
                    f"warm-up phase ({waiting}); to let it prune: {options}, or start sooner (e.g. {sooner})")
        return (f"Occam ended without pruning: in {steps} steps the {name} controller's decisions were "
                f"{sorted(set(actions))} (phase {phase!r}) and none pruned; to let it prune: {options}")

    def __repr__(self) -> str:
        return (
            f"Occam(tensors={len(self.masks)}, weights={self.masks.total}, density={self.density:.4f}, "
            f"criterion={getattr(self.criterion, '__name__', self.criterion)!r}, schedule={self.schedule!r})"
        )
