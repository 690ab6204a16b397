"""Occam under ``torch.nn.parallel.DistributedDataParallel`` (one process per device, ``torchrun``).

DDP keeps the replicas' weights identical by averaging gradients, but Occam's epoch step reads
a signal that each rank measures on its own data and chooses masks from magnitudes. Two things
keep every rank's pruning identical:

- the signal is all-reduced (mean over the ranks) before the schedule reads it, so every rank's
  schedule sees the same number and decides the same rate;
- the masks the criterion chooses on the group's first rank are broadcast to all ranks, so that
  ties between equal magnitudes, or replicas that drifted apart by a rounding, cannot split them.

FSDP2 models (``fully_shard``: parameters as ``Shard(0)`` DTensors) are pruned exactly through
:mod:`occamgd.sharded`: the signal is still averaged, and the masks, sharded like the weights,
are chosen by a distributed k-th-value search (no broadcast: every rank computes its own rows
of the same masks). FSDP (1), whose flat shards are no tensor's rows, and tensor parallelism
(``Shard(d)``, ``d > 0``) are refused.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InvalidTypeError, InvalidValueError
from ..criteria import Criterion
from ..masks import Masks
from ..occam import Occam
from ..schedules import check_signal


def _sharded_part(model: nn.Module) -> str | None:
    """Why ``model`` is sharded in a way Occam cannot mask (a sentence naming the part), or ``None``.

    FSDP (1) flattens parameters into shards that are no tensor's rows; FSDP2 (``fully_shard``)
    and other DTensor parameters are accepted here and checked by :mod:`occamgd.sharded`.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    for name, module in model.named_modules():
        if isinstance(module, FullyShardedDataParallel):
            return f"module {name or '<root>'!r} is {type(module).__name__}"
    for name, param in model.named_parameters():
        # FSDP (1) marks every parameter it flattens into shards, also the module's own ones that
        # use_orig_params=True leaves in place: the inner module of a wrapper is caught too.
        if getattr(param, "_fsdp_flattened", False):
            return f"parameter {name!r} is flattened into shards by FullyShardedDataParallel"
    return None


class DistributedOccam(Occam):
    """:class:`occamgd.Occam` for data-parallel training: every rank ends each step with the same masks.

    Build it on every rank, after ``torch.distributed.init_process_group``, around the model
    (the ``DistributedDataParallel`` wrapper or the module inside it: masks are named after the
    module's own parameters, so checkpoints load with or without DDP) and its optimizer::

        model = DistributedDataParallel(net.to(device), device_ids=...)
        occam = DistributedOccam(model, optimizer)
        for epoch in range(epochs):
            train_one_epoch(model, optimizer, loader)   # loader with a DistributedSampler
            occam.step(signal=validation_loss(model))   # each rank's own loss; the mean is used

    ``step`` is collective: every rank of ``group`` must call it, each with its own signal (or
    every rank with ``None``). The signal is averaged over the ranks (all-reduce), the schedule
    decides from the mean, and the criterion's masks are broadcast from the group's first rank.
    The same holds for the automatic interval (``every``, ``signal_fn``): the optimizer steps,
    and so the calls, line up across ranks because DDP steps all ranks together.

    ``group`` is the process group to agree within (default: the world). Every other argument
    (optimizer, criterion, schedule, include, ...) and everything else is
    :class:`~occamgd.Occam`'s: the optimizer hook, ``state_dict`` (identical on every rank; save
    it from one) and ``load_state_dict`` (call it on every rank).

    A model sharded with FSDP2 (``fully_shard``) is pruned exactly (see :mod:`occamgd.sharded`;
    criteria ``"layerwise"`` and ``"global"``). One sharded by FSDP (1) (``FullyShardedDataParallel``)
    raises ``TypeError``; tensor-parallel DTensors (``Shard(d)``, ``d > 0``) and a mix of sharded
    and plain prunable tensors raise ``ValueError``.
    """

    def __init__(self, model: nn.Module, *args: Any, group: dist.ProcessGroup | None = None, **kwargs: Any):
        if kwargs.get("shrink"):
            raise InvalidValueError(
                "DistributedOccam does not support shrink=True: DDP's reducer and every rank's buckets are built for "
                "the parameters' shapes, which shrinking changes; accepted: shrink=False (compact the model after "
                "training with occamgd.compact), or Occam(shrink=True) in a single process")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DistributedOccam needs an initialised process group; call "
                "torch.distributed.init_process_group(...) first (torchrun sets the environment), "
                "or use occamgd.Occam in a single process"
            )
        if not isinstance(model, nn.Module):
            raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        sharded = _sharded_part(model)
        if sharded is not None:
            raise InvalidTypeError(
                f"DistributedOccam cannot prune a model sharded by FSDP (1): {sharded}. It flattens each "
                "rank's part of many tensors into one shard, so a rank holds only a shard of a tensor "
                "that no mask can be named for; accepted: a plain module, one wrapped in "
                "torch.nn.parallel.DistributedDataParallel, or one sharded with FSDP2 "
                "(torch.distributed.fsdp.fully_shard: DTensor Shard(0) parameters, pruned exactly)"
            )
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.group = group
        super().__init__(model, *args, **kwargs)
        # gloo reduces host tensors; other backends (nccl) want the tensors on the model's device.
        first = next(iter(self.masks.params.values()))
        self._device = torch.device("cpu") if dist.get_backend(group) == "gloo" else first.device
        if not self.sharded:  # sharded masks are chosen exactly on every rank: nothing to broadcast
            self.criterion = self._broadcasting(self.criterion)

    @property
    def world_size(self) -> int:
        """Number of ranks in the group."""
        return dist.get_world_size(self.group)

    def step(self, signal: float | None = None) -> float:
        """All-reduce ``signal`` (mean over ranks), then :meth:`Occam.step` on the mean.

        Collective: every rank must call it. A rank whose signal is not a finite real number (a
        ``bool`` or string neither) makes every rank raise ``ValueError`` (none blocks waiting for
        it); so does a signal given on some ranks and ``None`` on others.
        """
        return super().step(self._mean_signal(signal))

    def _mean_signal(self, signal: Any) -> float | None:
        value, bad = 0.0, 0.0
        if signal is not None:
            try:
                value = check_signal(signal)
            except (TypeError, ValueError):  # judged on every rank below, so that none blocks
                bad = 1.0
        # One all-reduce carries the sum, how many ranks gave a signal and how many gave a bad one.
        packed = torch.tensor(
            [value, float(signal is not None), bad], dtype=torch.float64, device=self._device
        )
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.group)
        total, given, bad_ranks = packed.tolist()
        ranks = self.world_size
        if bad_ranks:
            raise InvalidValueError(
                f"signal on {int(bad_ranks)} of {ranks} ranks is not a finite real number (here: {signal!r}); "
                "accepted: a finite number on every rank, or None on every rank"
            )
        if given == 0:
            return None
        if given != ranks:
            raise InvalidValueError(
                f"signal given on {int(given)} of {ranks} ranks (here: {signal!r}); accepted: a "
                "signal on every rank (each its own validation loss) or None on every rank"
            )
        mean = total / ranks
        if not math.isfinite(mean):
            raise InvalidValueError(
                f"signal averaged over {ranks} ranks is {mean!r} (here: {signal!r}); accepted: a "
                "finite number on every rank"
            )
        return mean

    def _broadcasting(self, criterion: Criterion) -> Criterion:
        """``criterion``, with its masks replaced by those chosen on the group's first rank."""

        @functools.wraps(criterion)
        def broadcast_masks(weights, masks: Masks, rate: float) -> dict[str, torch.Tensor]:
            chosen = criterion(weights, masks, rate)
            names = list(masks)
            # All masks travel as one byte tensor: a single collective, and every backend has uint8.
            flat = torch.cat([chosen[n].reshape(-1) for n in names]).to(self._device, torch.uint8)
            dist.broadcast(flat, group=self.group, group_src=0)
            sizes = [masks[n].numel() for n in names]
            return {
                n: part.view(masks[n].shape).to(masks[n].device, torch.bool)
                for n, part in zip(names, flat.split(sizes))
            }

        return broadcast_masks

    def __repr__(self) -> str:
        return f"Distributed{super().__repr__()[:-1]}, world_size={self.world_size})"
