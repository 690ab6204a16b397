"""What the training-framework callbacks (Lightning, Hugging Face) share: checking their settings
when they are made, and building the Occam when training starts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InvalidValueError
from ..criteria import Criterion, get_criterion
from ..masks import Selection
from ..occam import ZERO_STATE, Occam
from ..schedules import Schedule, get_schedule


def check_arguments(
    signal_arg: str,
    signal_name: Any,
    accepted: str,
    criterion: str | Criterion,
    schedule: Schedule | str | None,
    zero_state: str,
) -> None:
    """Raise ``ValueError`` (``TypeError`` for a schedule of the wrong type) on a callback setting
    that cannot work, when the callback is made rather than when training starts.

    ``signal_arg`` is the callback's argument that names the logged loss (``metric``, ``monitor``),
    ``signal_name`` its value, and ``accepted`` what it must be, for the message.
    """
    if not (isinstance(signal_name, str) and signal_name):
        raise InvalidValueError(f"{signal_arg} must be {accepted}, got {signal_name!r}")
    if zero_state not in ZERO_STATE:
        raise InvalidValueError(f"zero_state must be one of {ZERO_STATE}, got {zero_state!r}")
    get_criterion(criterion)
    get_schedule(schedule)


def build_occam(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    world_size: int,
    *,
    criterion: str | Criterion,
    schedule: Schedule | str | None,
    include: Selection | None,
    exclude: Selection | None,
    zero_state: str,
    snapshot_device: str | torch.device | None,
) -> Occam:
    """A new :class:`~occamgd.Occam` (a ``DistributedOccam`` when ``world_size`` > 1).

    A schedule object holds configuration only (its state lives in the Occam), so one callback
    object configures many runs without their sharing anything.
    """
    kwargs = dict(criterion=criterion, schedule=schedule, include=include, exclude=exclude,
                  zero_state=zero_state, snapshot_device=snapshot_device)
    if world_size > 1:
        from .distributed import DistributedOccam

        return DistributedOccam(model, optimizer, **kwargs)
    return Occam(model, optimizer, **kwargs)
