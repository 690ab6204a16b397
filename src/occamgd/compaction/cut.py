"""The walk that compacts: decide which units go, fold their constants, let each handler cut.

A unit of a group goes when every weight that writes it is pruned (then it outputs a constant:
its biases through the per-channel layers, activations and additions after it) or when every
weight that reads it is pruned. The constant is measured, not derived: the masked copy runs once
on the example input, each layer that reads removed units records its input, and each removed
entry must hold one value at every position of the batch (else the unit stays, with a warning:
a zero-padding Conv or padded pooling sees a constant channel as non-constant at the borders).
That value times the reader's weights is added to the reader's bias; then every handler cuts
its rows, columns, statistics and heads. The copy computes what the masked model computes, in
eval mode, within float rounding.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..criteria import Coupled, _gather
from ..errors import InvalidTypeError, InvalidValueError
from ..masks import _wrapped_attribute
from ..occam import Occam
from .graph import Call, Feature, Graph
from .handlers import example_for, handler_for
from .tracing import example_args, trace

#: Largest spread, relative to its size, of an entry that still counts as one constant.
CONSTANT_TOLERANCE = 1e-6


def masks_of(model: nn.Module, masks_or_occam: Any) -> dict[str, torch.Tensor]:
    """Validated bool masks by parameter name, from an Occam, a Masks or a plain mapping."""
    masks = masks_or_occam.masks if isinstance(masks_or_occam, Occam) else masks_or_occam
    if not isinstance(masks, Mapping):
        raise InvalidTypeError(
            f"masks_or_occam must be an occamgd.Occam, an occamgd.Masks or a mapping parameter name -> "
            f"bool tensor, got {type(masks_or_occam).__name__}"
        )
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise InvalidValueError(
            f"masks name tensors {unknown} that {type(model).__name__} does not have; accepted: masks for its "
            f"parameters, such as {list(params)[:4]}"
        )
    out = {}
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(params[name].shape):
            raise InvalidValueError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(params[name].shape)}; "
                "accepted: the parameter's shape"
            )
        out[name] = mask.to(device=params[name].device, dtype=torch.bool)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` / DDP / DataParallel wrappers at the root (Occam's names are its names)."""
    while (attr := _wrapped_attribute(model)) is not None:
        model = getattr(model, attr)
    return model


def default_example(model: nn.Module) -> Any:
    """An example input for models whose input is known without one: a handler's (the GPT's), or,
    for a model whose first layer is a Linear, a random batch of its features, or for one whose
    first layer is a Conv, the smallest square image (side 8 to 128) the model runs on.
    ``InvalidValueError`` asking for one otherwise."""
    example = example_for(model)
    if example is not None:
        return example
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    before = leaves[:leaves.index(first)] if first in leaves else [None]
    if all(isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)) for m in before):
        w = first.weight
        g = torch.Generator().manual_seed(0)
        if isinstance(first, nn.Linear):
            return torch.randn(2, first.in_features, generator=g).to(w.device, w.dtype)
        dims = w.dim() - 2
        for side in range(8, 129):
            x = torch.randn(2, first.in_channels, *([side] * dims), generator=g).to(w.device, w.dtype)
            try:
                with torch.no_grad():
                    was = model.training
                    model.eval()
                    try:
                        model(x)
                    finally:
                        model.train(was)
                return x
            except Exception:  # noqa: BLE001 - any failure means: not this size, try the next
                continue
    raise InvalidValueError(
        f"an example input is needed to trace {type(model).__name__}; accepted: example_input= a batch the model's "
        "forward takes (a tensor, a tuple of positional inputs or a dict of keyword inputs), such as "
        "torch.randn(2, 3, 32, 32) for an image model"
    )


def _unit_pruned(graph: Graph, sid: int, member, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    mask = masks.get(member.param)
    if mask is None:
        return torch.zeros(graph.units(sid), dtype=torch.bool)
    return ~_gather(mask, Coupled(member.param, member.dim, graph.unit_index(member, sid))).any(1).cpu()


def _columns(graph: Graph, feat: Feature, units: Mapping[int, torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """For each space of ``feat`` in ``units``: the entries along the feature of each chosen unit."""
    out = {}
    for sid, offset, inner, n in graph.layout(feat):
        if sid in units:
            chosen = units[sid].nonzero().view(-1)
            out[sid] = [offset + u * inner + torch.arange(inner) for u in chosen.tolist()]
    return out


def _keep(graph: Graph, feat: Feature | None, removed: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """Kept entries along ``feat`` (None when all are kept)."""
    if feat is None or not any(sid in removed for sid, *_ in graph.layout(feat)):
        return None
    parts = []
    for sid, offset, inner, n in graph.layout(feat):
        keep = ~removed[sid] if sid in removed else torch.ones(n, dtype=torch.bool)
        units = keep.nonzero().view(-1, 1)
        parts.append((offset + units * inner + torch.arange(inner).view(1, -1)).reshape(-1))
    return torch.cat(parts) if parts else None


def _why(graph: Graph, sid: int) -> str:
    reasons = graph.unfollowable[sid] + graph.blocked[sid]
    return reasons[0] if reasons else "it has a single unit"


def _decide(graph: Graph, masks: Mapping[str, torch.Tensor]):
    """Per space: the units to remove, and those of them that output a constant to fold."""
    removed, folds = {}, {}
    prunable = set(graph.groups())
    for sid in sorted({graph.find(s) for s in range(len(graph.sizes))}):
        members, n = graph.members[sid], graph.units(sid)
        writers = [m for m in members if m.role == "out"]
        readers = [m for m in members if m.role == "in"]
        if not writers:
            continue
        rows = torch.ones(n, dtype=torch.bool)
        for m in writers:
            rows &= _unit_pruned(graph, sid, m, masks)
        cols = torch.zeros(n, dtype=torch.bool)
        if readers:
            cols = torch.ones(n, dtype=torch.bool)
            for m in readers:
                cols &= _unit_pruned(graph, sid, m, masks)
        gone = rows | cols
        if not gone.any():
            continue
        if sid not in prunable:
            if rows.any() and graph.blocked[sid] != ["the model's output"]:
                warnings.warn(
                    f"kept {int(rows.sum())} pruned units of {', '.join(map(repr, graph.producers(sid)))} as zeros: "
                    f"{_why(graph, sid)}", stacklevel=3)
            continue
        if gone.all() and sid not in graph.can_empty:
            gone[0] = False  # a layer keeps one unit, so every shape stays valid
        block = graph.per_unit[sid]  # per channel from here on
        removed[sid] = gone.repeat_interleave(block)
        folds[sid] = (gone & rows & ~cols).repeat_interleave(block)
    return removed, folds


@torch.no_grad()
def _inputs(model: nn.Module, calls: list[Call], example: Any) -> dict[int, torch.Tensor]:
    """The input of each of ``calls``' layers on the example, in eval mode (first call of each)."""
    seen: dict[int, torch.Tensor] = {}
    handles = []

    def recorder(key: int):
        def hook(module, args, kwargs):
            if key not in seen:
                x = args[0] if args else next(iter(kwargs.values()))
                seen[key] = x.detach()
        return hook

    for call in calls:
        handles.append(call.module.register_forward_pre_hook(recorder(id(call.module)), with_kwargs=True))
    was_training = model.training
    model.eval()
    args, kwargs = example_args(example)
    try:
        model(*args, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _fold(graph: Graph, model: nn.Module, example: Any, removed: dict, folds: dict) -> None:
    """Fold the constants of removed units into their readers' biases; keep units whose value is not constant."""
    readers = [c for c in graph.calls if c.in_feat is not None and hasattr(c.handler, "fold")
               and any(sid in folds and folds[sid].any() for sid, *_ in graph.layout(c.in_feat))]
    if not readers:
        return
    inputs = _inputs(model, readers, example)
    plans = []
    for call in readers:
        x = inputs[id(call.module)]
        values = x.movedim(call.in_feat.dim, 0).reshape(x.shape[call.in_feat.dim], -1)
        for sid, per_unit in _columns(graph, call.in_feat, {s: f for s, f in folds.items() if f.any()}).items():
            units = folds[sid].nonzero().view(-1).tolist()
            for u, cols in zip(units, per_unit):
                v = values[cols.to(values.device)]
                const = v[:, 0]
                spread = (v - const.view(-1, 1)).abs().amax(1) if v.shape[1] else torch.zeros_like(const)
                ok = bool((spread <= CONSTANT_TOLERANCE * (1 + const.abs())).all())
                ok = ok and bool(call.handler.can_fold(call, const).all())
                if not ok:
                    warnings.warn(
                        f"kept a pruned unit of {', '.join(map(repr, graph.producers(sid)))}: it outputs a value that "
                        f"{call.name!r} does not see as one constant (zero padding at the borders), so it cannot be "
                        "folded into a bias exactly", stacklevel=4)
                    removed[sid][u] = False
                    folds[sid][u] = False
                else:
                    plans.append((call, sid, u, cols, const))
    for call, sid, u, cols, const in plans:
        if folds[sid][u]:
            call.handler.fold(call, cols, const)


def compact(model: nn.Module, masks_or_occam: Occam | Mapping[str, torch.Tensor], example_input: Any = None,
            *, exclude: Any = None) -> nn.Module:
    """A smaller dense copy of ``model`` without its removable pruned units.

    ``masks_or_occam``: the :class:`occamgd.Occam` that pruned ``model``, its ``.masks``, or a
    mapping parameter name -> bool mask (True = kept). ``example_input``: a batch the model takes
    (a tensor, a tuple of positional inputs or a dict of keyword inputs); by default the one given
    to :func:`structured_pruning` for this Occam, or one made up for models that need none (a
    Sequential that starts with a Linear, :class:`occamgd.models.GPT`). The copy is ``model``'s
    class, on its device and dtype and in its train/eval mode; with the masks applied it computes
    the same outputs in eval mode (see :mod:`occamgd.compaction.cut`). ``model`` is left as it was.

    Pruned units that cannot be removed (they reach the model's outputs, or are normalised
    together) stay as zeros; a warning names them unless they are the model's outputs. For a model
    inside ``torch.compile`` or DDP the copy is of the module inside.
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    masks = masks_of(model, masks_or_occam)
    context = getattr(getattr(masks_or_occam, "criterion", None), "context", {}) or {}
    if example_input is None:
        example_input = context.get("example_input")
    if example_input is None:
        example_input = default_example(model)
    if exclude is None:
        exclude = context.get("exclude", ())
    example_input = on_device(example_input, model)
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    graph = trace(out, example_input, handler_for, exclude_names(out, exclude))
    removed, folds = _decide(graph, masks)
    if not removed:
        return out
    _fold(graph, out, example_input, removed, folds)
    with torch.no_grad():
        _cut(graph, removed, folds)
    return out


def _cut(graph: Graph, removed: Mapping[int, torch.Tensor], folds: dict) -> None:
    """Let every traced call's handler cut the units ``removed`` from its inputs, outputs and inner spaces."""
    for call in graph.calls:
        inner = {role: ((~removed[graph.find(sid)]).nonzero().view(-1), folds[graph.find(sid)])
                 for role, sid in call.inner.items() if graph.find(sid) in removed}
        keep_in, keep_out = _keep(graph, call.in_feat, removed), _keep(graph, call.out_feat, removed)
        if keep_in is not None or keep_out is not None or inner:
            call.handler.cut(call, keep_in, keep_out, inner)


def on_device(example: Any, model: nn.Module) -> Any:
    """The example's tensors on the device of the model's first parameter (a model moved after tracing)."""
    param = next(iter(model.parameters()), None)
    if param is None:
        return example

    def move(t):
        return t.to(param.device) if torch.is_tensor(t) and t.device != param.device else t

    if isinstance(example, tuple):
        return tuple(move(t) for t in example)
    if isinstance(example, Mapping):
        return {k: move(v) for k, v in example.items()}
    return move(example)


def exclude_names(model: nn.Module, exclude: Any) -> tuple[str, ...]:
    """Module names from ``exclude`` (a name, a module type, or a list of them)."""
    if exclude is None:
        return ()
    items = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
    names: list[str] = []
    modules = dict(model.named_modules())
    for item in items:
        if isinstance(item, type):
            names += [n for n, m in modules.items() if isinstance(m, item) and n]
        elif isinstance(item, str):
            if item not in modules:
                raise InvalidValueError(f"exclude names {item!r}, which is not a module of {type(model).__name__}; "
                                        f"accepted: module names such as {[n for n in modules if n][:4]}")
            names.append(item)
        else:
            raise InvalidTypeError(f"exclude items must be module names or types, got {item!r}")
    return tuple(names)
