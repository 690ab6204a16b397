"""Occam Gradient Descent as a PyTorch Lightning callback (``lightning`` 2.x).

::

    from occamgd.integrations.lightning import OccamCallback

    trainer = lightning.Trainer(max_epochs=20, callbacks=[OccamCallback(monitor="val_loss")])
    trainer.fit(module, train_loader, val_loader)   # the module logs "val_loss" in validation_step

When fitting starts the callback builds an :class:`occamgd.Occam` around the LightningModule
and its first optimizer (a :class:`~occamgd.integrations.distributed.DistributedOccam` when the
trainer runs on more than one process). After every validation of the fit (not the sanity check)
it reads the monitored loss, and prunes just before the next training step: a checkpoint saved at
the end of that validation (``ModelCheckpoint``) holds the very model whose loss it records, and
the model ``fit`` ends with is the last one validated, never a prune nothing has evaluated.

``OccamCallback(shrink=True)`` prunes whole units (neurons, channels, heads: see
:func:`occamgd.compaction.structured_pruning`) and removes them from the live module at each prune,
so the rest of the fit trains a smaller model; Lightning's optimizer loop, schedulers and gradient
clipping keep the same ``Parameter`` objects (sliced in place, their optimizer state too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from ..errors import InvalidTypeError, InvalidValueError, NotPrunedWarning
from ..criteria import Criterion
from ..masks import Selection, select_prunable
from ..occam import Occam
from ..schedules import Schedule
from ._common import (build_occam, check_arguments, check_shapes_match, check_structure, differs, fits, mismatch,
                      original_record, reshape_like, state_dict_shapes, structured_kwargs)

_STATE_KEYS = {"occam", "pending_signal"}
#: Strategies that give each rank a shard of a parameter that no mask can be named for (see
#: docs/distributed.md): FSDP (1) flattens tensors into shards, DeepSpeed partitions them inside
#: its engine. ModelParallelStrategy (FSDP2's ``fully_shard`` in ``configure_model``) is pruned
#: exactly through occamgd.sharded (tensor parallelism there is refused when the Occam is built).
_SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy)


def run_budget(trainer: pl.Trainer) -> int | None:
    """The fit's budget: how many times the callback will call ``Occam.step`` in the whole fit (from
    the first batch, also when resuming from a checkpoint), or ``None`` when it cannot be known.

    One step per validation during the fit that a training batch follows (the prune a validation
    asks for happens just before the next batch, so a validation after the fit's last batch never
    prunes). The fit ends after ``max_epochs`` epochs of ``num_training_batches`` batches (after
    ``limit_train_batches``) or at ``max_steps`` optimizer steps (``accumulate_grad_batches``
    batches each, and one at each epoch's end), whichever comes first; validations run where
    Lightning runs them: every ``val_check_batch`` batches (from ``val_check_interval``) of each
    ``check_val_every_n_epoch``-th epoch, or of the whole fit when that is ``None``.

    ``None``: neither ``max_epochs`` nor ``max_steps`` bounds the fit (``max_epochs=-1``), a
    training set without a length, a time-based ``val_check_interval``, no validation. An early
    stop (``EarlyStopping``, ``max_time``) makes fewer: the budget is the most there can be.
    """
    if getattr(trainer, "_val_check_time_interval", None) is not None or not trainer.enable_validation:
        return None
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    epochs_bound = max_epochs is not None and max_epochs >= 0
    if not epochs_bound and max_steps == -1:
        return None
    if trainer.train_dataloader is None:  # as Trainer.estimated_stepping_batches does
        trainer.fit_loop.setup_data()
    batches, every = trainer.num_training_batches, trainer.val_check_batch
    if not batches or batches == float("inf") or every is None or every == float("inf"):
        return None
    batches, every, accumulate = int(batches), int(every), int(trainer.accumulate_grad_batches)
    steps_per_epoch = math.ceil(batches / accumulate)
    total = max_epochs * batches if epochs_bound else math.inf
    if max_steps != -1:
        total = min(total, (max_steps // steps_per_epoch) * batches + (max_steps % steps_per_epoch) * accumulate)
    if total <= 1:
        return None
    epoch_every = trainer.check_val_every_n_epoch
    if epoch_every is None:  # every `every` batches of the whole fit
        count = (total - 1) // every
    else:
        per_epoch = batches // every
        last = (total - 1) // batches  # the epoch of the fit's last batch, and that batch's place in it
        place = total - last * batches
        count = (last // epoch_every) * per_epoch
        if (last + 1) % epoch_every == 0:
            count += min(per_epoch, (place - 1) // every)
    return count if count >= 1 else None


class OccamCallback(pl.Callback):
    """Prune a LightningModule with Occam Gradient Descent while ``Trainer.fit`` trains it.

    - ``monitor``: the logged validation loss that drives the schedule (the signal); log it in
      ``validation_step`` with ``self.log(monitor, loss)``. A name that is not logged raises
      ``ValueError`` naming the metrics that are.
    - ``criterion``, ``schedule``, ``include``, ``exclude``, ``zero_state``, ``snapshot_device``:
      as for :class:`occamgd.Occam`. A schedule object holds configuration only (each run's
      state is in its Occam), so one callback object configures many runs.
    - ``structured``: prune whole units with the include and criterion of
      :func:`occamgd.compaction.structured_pruning` (``criterion`` ``"layerwise"`` or ``"global"`` is
      its scope; ``exclude``: module names or types left whole; ``include`` is refused). ``None``
      (the default): structured when ``shrink`` is.
    - ``shrink``: remove the pruned units from the live module at each prune (``Occam(shrink=True)``).
      Refused when fitting is set up with a strategy other than a single device (DDP's reducer and
      every sharding strategy are built for the old shapes), a module compiled with
      ``torch.compile``, more than one optimizer (only the first one's state is sliced), or an
      optimizer other than :data:`occamgd.compaction.shrink.SHRINK_OPTIMIZERS`.
    - ``example_input``: the input traced to find the units (what ``forward`` takes: a tensor, a
      tuple, a dict of keyword inputs); by default the module's ``example_input_array``.
    - ``min_density``, ``max_density``, ``max_params``: the bounds of :class:`occamgd.Occam`. The
      fit's budget is passed to the Occam when fitting starts (see :func:`run_budget`).

    Pruning: the signal of each validation during the fit is read at its end; the prune it asks
    for happens just before the next training batch, and ``occam/density`` and ``occam/rate`` are
    then logged to the module's loggers at the current ``global_step``. The last validation's
    signal is kept (and checkpointed) for the next fit to continue from.

    Checkpoints: masks, schedule state, history and the pending signal are in the callback's
    ``state_dict``, so ``trainer.save_checkpoint`` and ``Trainer.fit(..., ckpt_path=...)`` resume
    pruning where it stopped. Lightning restores callbacks before fitting starts, before the
    optimizer exists: the state is held until the Occam is built. Fitting the same module again
    with this callback keeps its masks; a different module starts afresh.

    A shrunk fit's checkpoints hold weights of the shrunk shapes. Lightning loads a checkpoint's
    weights before it restores the callbacks, so with ``shrink=True`` the callback hooks the
    module's ``load_state_dict`` when fitting is set up: weights of other shapes than the module's
    are matched with the shapes this callback's state in the same checkpoint records, and the
    module is given them (and the matching module sizes) before they load; weights whose shapes
    it does not record are refused, naming them.

    After fitting, ``callback.occam`` holds the masks (``.masks``, ``.density``) and the
    per-prune history (``.history``).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        criterion: str | Criterion = "layerwise",
        schedule: Schedule | str | None = None,
        include: Selection | None = None,
        exclude: Selection | None = None,
        *,
        zero_state: str = "prune",
        snapshot_device: str | torch.device | None = "cpu",
        structured: bool | None = None,
        shrink: bool = False,
        example_input: Any = None,
        min_density: float | None = None,
        max_density: float | None = None,
        max_params: int | None = None,
    ):
        check_arguments("monitor", monitor, "the name of a logged validation loss", criterion, schedule, zero_state)
        self.structured = check_structure(structured, shrink, criterion, include, example_input)
        self.shrink = shrink
        self.example_input = example_input
        self.bounds = {k: v for k, v in (("min_density", min_density), ("max_density", max_density),
                                         ("max_params", max_params)) if v is not None}
        self.monitor = monitor
        self.criterion = criterion
        self.schedule = schedule
        self.include = include
        self.exclude = exclude
        self.zero_state = zero_state
        self.snapshot_device = snapshot_device
        #: The Occam pruning the module (``None`` before the first fit starts).
        self.occam: Occam | None = None
        self._pending_signal: float | None = None
        #: Whether the pending signal is already the ranks' mean (restored from a checkpoint).
        self._pending_is_mean = False
        self._loaded: dict[str, Any] | None = None
        self._fitting = False
        self._validations = 0
        self._hook: Any = None  # the module's load_state_dict hook while a fit is set up (shrink=True)
        #: The module's shapes and structure before a shrunk checkpoint's were given to it (no Occam yet).
        self._original: dict[str, Any] | None = None

    # Shrinking: settings, and loading a shrunk fit's weights --------------------------------
    def _check_shrink_settings(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.shrink:
            return
        if not isinstance(trainer.strategy, SingleDeviceStrategy):
            raise InvalidValueError(
                f"OccamCallback(shrink=True) trains on one process and one device; got "
                f"{type(trainer.strategy).__name__} (world_size={trainer.world_size}): DDP's gradient reducer and the "
                "sharding strategies are built for the old shapes; accepted: a single-device strategy "
                "(devices=1, strategy='auto'), or shrink=False (masks, on any number of processes)")
        if getattr(pl_module, "_compiler_ctx", None) is not None or hasattr(pl_module, "_orig_mod"):
            raise InvalidTypeError(
                f"OccamCallback(shrink=True) got a {type(pl_module).__name__} compiled with torch.compile: the "
                "compiled graph is built for the old shapes, and every shrink would recompile it; accepted: fit the "
                "plain module (compile the final, shrunk model), or shrink=False")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """With ``shrink=True``: refuse what cannot shrink, and hook the module's ``load_state_dict``
        before Lightning loads a shrunk checkpoint's weights into it (``fit(ckpt_path=...)``)."""
        if stage != "fit" or not self.shrink:
            return
        self._check_shrink_settings(trainer, pl_module)
        self._unhook()
        self._hook = pl_module.register_load_state_dict_pre_hook(
            lambda module, state_dict, prefix, *rest: self._before_load(trainer, module, state_dict, prefix))

    def _unhook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _before_load(self, trainer: pl.Trainer, module: torch.nn.Module, state_dict: Mapping[str, Any],
                     prefix: str) -> None:
        """Before weights of other shapes load: give the module the shapes this callback's state records."""
        if prefix:
            return
        incoming = state_dict_shapes(state_dict)
        if not differs(module, incoming):
            return
        checkpoint = getattr(getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None) or {}
        ours = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        record = (ours.get("occam") or {}).get("shrink")
        if record is None or not fits(record, incoming):
            raise InvalidValueError(
                f"OccamCallback(shrink=True): the checkpoint's weights have other shapes than "
                f"{type(module).__name__} ({mismatch(module, incoming)}), and the checkpoint holds no {self.state_key} state "
                f"recording those shapes{'' if ours else ' (no state of this callback at all)'}; accepted: a "
                "checkpoint that OccamCallback(shrink=True) saved, with its callback state, or weights of this "
                "module's shapes")
        if self._original is None and not (self.occam is not None and self.occam.model is module):
            self._original = original_record(module)
        reshape_like(module, record)

    # Building ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build (or re-attach) the Occam around the module and its first optimizer."""
        self._unhook()  # the checkpoint's weights are loaded by now
        original, self._original = self._original, None
        if isinstance(trainer.strategy, _SHARDED_STRATEGIES):
            raise InvalidTypeError(
                f"OccamCallback cannot prune under {type(trainer.strategy).__name__}: it shards "
                "parameters across ranks into flat partitions, each rank only a shard no mask can be named for; "
                "accepted: a single-device strategy, DDP (strategy='ddp'), or ModelParallelStrategy with "
                "FSDP2 (fully_shard in configure_model; pruned exactly, see docs/distributed.md)"
            )
        if not trainer.optimizers:
            raise InvalidValueError(
                f"{type(pl_module).__name__}.configure_optimizers returned no optimizer; accepted: "
                "at least one torch.optim optimizer (the first one is hooked to keep pruned weights at 0)"
            )
        # Checked before anything is built or hooked, so a refusal leaves no trace.
        self._check_shrink_settings(trainer, pl_module)
        if self.shrink and len(trainer.optimizers) > 1:
            raise InvalidValueError(
                f"OccamCallback(shrink=True) slices the state of the first optimizer only, and "
                f"{type(pl_module).__name__}.configure_optimizers returned {len(trainer.optimizers)}; accepted: one "
                "optimizer, or shrink=False")
        if original is not None and self._loaded is None:
            raise InvalidValueError(
                "OccamCallback(shrink=True): the module was given a shrunk checkpoint's weights without the "
                "callback state that shrank it; accepted: fit(..., ckpt_path=...) with a checkpoint that "
                "OccamCallback(shrink=True) saved")
        plan = self._plan(pl_module, original) if self.structured else None
        include, exclude = (plan["include"], None) if plan else (self.include, self.exclude)
        self._check_other_optimizers(select_prunable(pl_module, include, exclude), trainer.optimizers)
        optimizer = trainer.optimizers[0]
        if self.occam is not None and self.occam.model is pl_module:
            self.occam.attach(optimizer)
        else:
            self.occam = self._build(trainer, pl_module, optimizer, plan)
            self._pending_signal = None
        self._fitting = True
        self._validations = 0
        if self._loaded is not None:
            state, self._loaded = self._loaded, None
            self._restore(state)

    def _plan(self, pl_module: pl.LightningModule, original: dict[str, Any] | None) -> dict[str, Any]:
        example = self.example_input if self.example_input is not None else getattr(
            pl_module, "example_input_array", None)
        if example is None:
            raise InvalidValueError(
                f"OccamCallback(structured=True) traces an input of {type(pl_module).__name__}.forward to find its "
                "units, and got none; accepted: OccamCallback(..., example_input=a small batch forward takes), or "
                "self.example_input_array = ... in the module's __init__")
        return structured_kwargs(pl_module, example, self.criterion, self.exclude, original)

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer,
               plan: dict[str, Any] | None = None) -> Occam:
        include, exclude, criterion = self.include, self.exclude, self.criterion
        if plan is not None:
            include, exclude, criterion = plan["include"], None, plan["criterion"]
        return build_occam(pl_module, optimizer, trainer.world_size, criterion=criterion, schedule=self.schedule,
                           include=include, exclude=exclude, zero_state=self.zero_state,
                           snapshot_device=self.snapshot_device, shrink=self.shrink, budget=run_budget(trainer),
                           bounds=self.bounds)

    @staticmethod
    def _check_other_optimizers(prunable: Mapping[str, torch.nn.Parameter], optimizers) -> None:
        # Only the first optimizer is hooked: a prunable tensor that another one updates would regrow.
        hooked = {id(p) for group in optimizers[0].param_groups for p in group["params"]}
        others = {id(p) for opt in optimizers[1:] for group in opt.param_groups for p in group["params"]}
        stray = [n for n, p in prunable.items() if id(p) in others and id(p) not in hooked]
        if stray:
            raise InvalidValueError(
                f"prunable tensors {stray} are updated by an optimizer other than the first, which "
                "OccamCallback does not hook, so their pruned weights would regrow; accepted: "
                "exclude=... those tensors, or optimize them with the first optimizer"
            )

    # Pruning ----------------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Read the monitored validation loss of a fit's validation; the prune waits for training."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise InvalidValueError(
                f"OccamCallback monitors {self.monitor!r}, which was not logged in this validation; "
                f"logged metrics: {sorted(metrics)}; accepted: OccamCallback(monitor=...) naming a "
                "validation loss logged with self.log(...) in validation_step"
            )
        self._pending_signal = float(metrics[self.monitor])
        self._pending_is_mean = False
        self._validations += 1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Prune on the last validation's signal before training on anything after it."""
        if self._pending_signal is None:
            return
        signal = self._pending_signal
        try:
            if self._pending_is_mean:  # every rank holds the mean already: prune on it, not on its mean
                rate = Occam.step(self.occam, signal)
            else:
                rate = self.occam.step(signal)
        except ValueError as error:
            raise InvalidValueError(f"OccamCallback could not prune on {self.monitor!r} = {signal!r}: {error}") from error
        self._pending_signal, self._pending_is_mean = None, False
        for logger in trainer.loggers:
            logger.log_metrics({"occam/density": self.occam.density, "occam/rate": rate}, step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn when the fit ran no validation, so nothing was pruned."""
        if self._validations == 0:
            rank_zero_warn(
                f"OccamCallback read no {self.monitor!r}: no validation ran during this fit, so "
                "nothing was pruned; give Trainer.fit a val_dataloader and keep limit_val_batches > 0"
            )
        elif self.occam is not None and (reason := self.occam.unpruned_reason()) is not None:
            rank_zero_warn(f"OccamCallback: {reason}", category=NotPrunedWarning)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """After fitting, unhook the optimizer (the masks and history stay in ``self.occam``)."""
        if stage == "fit":
            self._unhook()
            self._fitting = False
            if self.occam is not None:
                self.occam.detach()

    # Checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Occam's state (masks, schedule, history) and the signal waiting for its prune."""
        if self.occam is None:
            return dict(self._loaded) if self._loaded is not None else {}
        from .distributed import DistributedOccam

        pending = self._pending_signal
        if isinstance(self.occam, DistributedOccam) and not self._pending_is_mean:
            # The checkpoint is written by rank 0: keep the ranks' mean (what every rank would prune
            # on, computed as DistributedOccam.step computes it), not rank 0's own loss. A collective:
            # Lightning asks every rank for its state.
            pending = self.occam._mean_signal(pending)
        if self.occam.sharded:
            # Lightning keeps callback states in the checkpoint's metadata, written by rank 0: gather
            # the masks (a collective too), so any rank count can load them.
            from ..sharded import full_state_dict

            return {"occam": full_state_dict(self.occam), "pending_signal": pending}
        return {"occam": self.occam.state_dict(), "pending_signal": pending}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore now if fitting has started; otherwise hold the state until it does."""
        if set(state_dict) != _STATE_KEYS:
            raise InvalidValueError(
                f"OccamCallback state has keys {sorted(state_dict)}; accepted: exactly "
                f"{sorted(_STATE_KEYS)} (a state from OccamCallback.state_dict)"
            )
        if self._fitting and self.occam is not None:
            self._restore(state_dict)
        else:
            self._loaded = dict(state_dict)

    def _restore(self, state: Mapping[str, Any]) -> None:
        from .distributed import DistributedOccam

        check_shapes_match(self.occam.model, state["occam"], "the checkpoint's OccamCallback state")
        self.occam.load_state_dict(state["occam"])
        self._pending_signal = state["pending_signal"]
        # A DistributedOccam's checkpoint holds the ranks' mean (see state_dict).
        self._pending_is_mean = self._pending_signal is not None and isinstance(self.occam, DistributedOccam)

    def __repr__(self) -> str:
        return (
            f"OccamCallback(monitor={self.monitor!r}, criterion={self.criterion!r}, "
            f"schedule={self.schedule!r}, occam={self.occam!r})"
        )
