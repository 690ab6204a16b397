"""What the training-framework callbacks (Lightning, Hugging Face) share: checking their settings
when they are made, building the Occam when training starts (structured, shrinking, with the run's
budget), and giving a fresh model the shapes of a shrunk checkpoint before its weights load."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InvalidTypeError, InvalidValueError
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


def check_structure(structured: Any, shrink: Any, criterion: str | Criterion, include: Selection | None,
                    example_input: Any) -> bool:
    """Check the ``structured`` / ``shrink`` / ``example_input`` settings of a callback; return whether
    it prunes structured (``structured=None`` means: structured when shrinking)."""
    if not isinstance(shrink, bool):
        raise InvalidTypeError(f"shrink must be True or False, got {shrink!r}")
    if structured is not None and not isinstance(structured, bool):
        raise InvalidTypeError(f"structured must be True, False or None (structured when shrinking), got {structured!r}")
    if structured is None:
        structured = shrink
    if shrink and not structured:
        raise InvalidValueError("shrink=True removes whole groups of units (neurons, channels, heads), so it prunes "
                                "structured; got structured=False; accepted: shrink=True with structured=True or "
                                "structured left unset, or shrink=False")
    if example_input is not None and not structured:
        raise InvalidValueError("example_input is only read by structured pruning (it is traced to find the groups); "
                                "accepted: example_input with structured=True or shrink=True, or no example_input")
    if structured:
        if criterion not in ("layerwise", "global"):
            raise InvalidValueError(
                f"structured pruning scores whole groups: criterion must be 'layerwise' (each group's share of its "
                f"units) or 'global' (all groups' units together), got {criterion!r}")
        if include is not None:
            raise InvalidValueError(
                "structured pruning chooses the prunable tensors itself (every tensor of a removable group); got "
                f"include={include!r}; accepted: include=None, and exclude=[module names or types] to leave layers "
                "whole")
    return structured


def structured_kwargs(model: nn.Module, example_input: Any, criterion: str, exclude: Any,
                      original: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``include`` and ``criterion`` of :func:`occamgd.compaction.structured_pruning` for ``model``.

    ``original``: the shapes and structure ``model`` had before :func:`reshape_like` gave it a shrunk
    checkpoint's (a record like an Occam state's ``"shrink"`` entry). The plan is then made on a copy
    of the model as it was, as in the run that shrank it: the prunable tensors are the same, and the
    Occam state loaded next re-plans the groups for the shapes the model has now.
    """
    from ..compaction import structured_pruning

    scope = "global" if criterion == "global" else "layer"
    if original is not None:
        model = copy.deepcopy(model)
        reshape_like(model, original)
    return structured_pruning(model, example_input, scope=scope, exclude=exclude)


def original_record(model: nn.Module) -> dict[str, Any]:
    """The shapes and structure of ``model`` now, for :func:`reshape_like` (as an Occam state records them)."""
    from ..compaction.shrink import SHRINKER

    return {"shapes": SHRINKER.shapes(model), "structure": SHRINKER.structure(model)}


def run_prunes(evaluations: list[int], last: int) -> int | None:
    """How many of the evaluations (at the given training steps) have a training step after them,
    so that the prune their signal asks for happens: the budget (``None`` when there is none)."""
    count = sum(1 for step in evaluations if step < last)
    return count or None


def state_dict_shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if torch.is_tensor(v)}


def live_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return state_dict_shapes(model.state_dict())


def mismatch(module: nn.Module, incoming: dict[str, tuple]) -> str:
    """The first tensors whose ``incoming`` shapes differ from ``module``'s, for a message."""
    live = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    wrong = sorted(k for k, v in incoming.items() if k in live and live[k] != v)[:3]
    return f"{wrong}: {[incoming[k] for k in wrong]} there, {[live[k] for k in wrong]} here"


def differs(model: nn.Module, incoming: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether weights of these shapes would not load into ``model`` as it is now."""
    live = live_shapes(model)
    return any(k in live and live[k] != shape for k, shape in incoming.items())


def fits(record: Mapping[str, Any], incoming: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether the shrink record of an Occam state (its ``"shrink"`` entry) has the shapes of these weights."""
    shapes = {k: tuple(v) for k, v in record["shapes"].items()}
    return any(k in shapes for k in incoming) and all(shapes[k] == v for k, v in incoming.items() if k in shapes)


def reshape_like(model: nn.Module, record: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Give ``model`` the shapes and structure (module sizes, head counts) of a shrunk run, as recorded
    in its Occam state's ``"shrink"`` entry, so that that run's weights load into it: changed tensors
    become zeros of the recorded shape (the weights are loaded right after), and their optimizer
    state is dropped."""
    from ..compaction.shrink import SHRINKER

    SHRINKER.set_shapes(model, {k: tuple(v) for k, v in record["shapes"].items()}, optimizer)
    SHRINKER.set_structure(model, record["structure"])


def check_shapes_match(model: nn.Module, occam_state: Mapping[str, Any], where: str) -> None:
    """Refuse to load the Occam state of a shrunk run into a model whose weights have other shapes
    (loading it would re-shrink the model and zero the weights already loaded)."""
    record = occam_state.get("shrink")
    if record is None:
        return
    live = {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}
    wrong = sorted(k for k, v in record["shapes"].items() if k in live and live[k] != tuple(v))
    if wrong:
        raise InvalidValueError(
            f"{where} is the Occam state of a shrunk model, but the model's weights have other shapes "
            f"({wrong[:3]}: {[live[k] for k in wrong[:3]]} here, {[tuple(record['shapes'][k]) for k in wrong[:3]]} "
            "there): they come from another checkpoint; accepted: the weights and the Occam state of the same "
            "checkpoint")


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
    shrink: bool = False,
    budget: int | None = None,
    bounds: Mapping[str, Any] | None = None,
) -> Occam:
    """A new :class:`~occamgd.Occam` (a ``DistributedOccam`` when ``world_size`` > 1).

    A schedule object holds configuration only (its state lives in the Occam), so one callback
    object configures many runs without their sharing anything. ``bounds``: ``min_density``,
    ``max_density``, ``max_params`` as given to the callback.
    """
    kwargs = dict(criterion=criterion, schedule=schedule, include=include, exclude=exclude,
                  zero_state=zero_state, snapshot_device=snapshot_device, shrink=shrink, budget=budget,
                  **(bounds or {}))
    if world_size > 1:
        from .distributed import DistributedOccam

        return DistributedOccam(model, optimizer, **kwargs)
    return Occam(model, optimizer, **kwargs)
