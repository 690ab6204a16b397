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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from ..errors import InvalidTypeError, InvalidValueError, NotPrunedWarning
from ..criteria import Criterion
from ..masks import Selection, select_prunable
from ..occam import Occam
from ..schedules import Schedule
from ._common import build_occam, check_arguments

_STATE_KEYS = {"occam", "pending_signal"}
#: Strategies that give each rank a shard of a parameter that no mask can be named for (see
#: docs/distributed.md): FSDP (1) flattens tensors into shards, DeepSpeed partitions them inside
#: its engine. ModelParallelStrategy (FSDP2's ``fully_shard`` in ``configure_model``) is pruned
#: exactly through occamgd.sharded (tensor parallelism there is refused when the Occam is built).
_SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy)


class OccamCallback(pl.Callback):
    """Prune a LightningModule with Occam Gradient Descent while ``Trainer.fit`` trains it.

    - ``monitor``: the logged validation loss that drives the schedule (the signal); log it in
      ``validation_step`` with ``self.log(monitor, loss)``. A name that is not logged raises
      ``ValueError`` naming the metrics that are.
    - ``criterion``, ``schedule``, ``include``, ``exclude``, ``zero_state``, ``snapshot_device``:
      as for :class:`occamgd.Occam`. A schedule object holds configuration only (each run's
      state is in its Occam), so one callback object configures many runs.

    Pruning: the signal of each validation during the fit is read at its end; the prune it asks
    for happens just before the next training batch, and ``occam/density`` and ``occam/rate`` are
    then logged to the module's loggers at the current ``global_step``. The last validation's
    signal is kept (and checkpointed) for the next fit to continue from.

    Checkpoints: masks, schedule state, history and the pending signal are in the callback's
    ``state_dict``, so ``trainer.save_checkpoint`` and ``Trainer.fit(..., ckpt_path=...)`` resume
    pruning where it stopped. Lightning restores callbacks before fitting starts, before the
    optimizer exists: the state is held until the Occam is built. Fitting the same module again
    with this callback keeps its masks; a different module starts afresh.

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
    ):
        check_arguments("monitor", monitor, "the name of a logged validation loss", criterion, schedule, zero_state)
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

    # Building ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build (or re-attach) the Occam around the module and its first optimizer."""
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
        self._check_other_optimizers(select_prunable(pl_module, self.include, self.exclude), trainer.optimizers)
        optimizer = trainer.optimizers[0]
        if self.occam is not None and self.occam.model is pl_module:
            self.occam.attach(optimizer)
        else:
            self.occam = self._build(trainer, pl_module, optimizer)
            self._pending_signal = None
        self._fitting = True
        self._validations = 0
        if self._loaded is not None:
            state, self._loaded = self._loaded, None
            self._restore(state)

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> Occam:
        return build_occam(pl_module, optimizer, trainer.world_size, criterion=self.criterion, schedule=self.schedule,
                           include=self.include, exclude=self.exclude, zero_state=self.zero_state,
                           snapshot_device=self.snapshot_device)

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

        self.occam.load_state_dict(state["occam"])
        self._pending_signal = state["pending_signal"]
        # A DistributedOccam's checkpoint holds the ranks' mean (see state_dict).
        self._pending_is_mean = self._pending_signal is not None and isinstance(self.occam, DistributedOccam)

    def __repr__(self) -> str:
        return (
            f"OccamCallback(monitor={self.monitor!r}, criterion={self.criterion!r}, "
            f"schedule={self.schedule!r}, occam={self.occam!r})"
        )
