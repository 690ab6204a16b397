"""Shrinking while training: remove pruned groups from the live model at each prune (``Occam(shrink=True)``).

:func:`compact` makes a smaller copy; here the same decision, folding and handlers run on a copy
of the live model, and what they keep is carried back into the live model in place: each
affected ``Parameter`` keeps its identity (``param.data`` is replaced by the kept entries), so the
optimizer, the user's references and hooks still hold it; its gradient, its optimizer state
tensors (momentum, Adam moments; scalar step counts are left alone) and its mask are sliced the
same way; buffers (BatchNorm statistics) and module attributes (``in_features``, heads, ...) take
the copy's values. Which entries are kept is read by running the handlers' cuts on a copy whose
parameters hold their own flat indices, so every handler that only selects entries serves as is.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ..criteria import GroupCriterion
from ..errors import InvalidTypeError, InvalidValueError
from ..masks import _wrapped_attribute
from .cut import _cut, _decide, _fold, exclude_names, on_device
from .handlers import handler_for
from .tracing import trace

#: Optimizers whose state is per-parameter tensors shaped like the parameter, plus scalars.
SHRINK_OPTIMIZERS = tuple(getattr(torch.optim, n) for n in (
    "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam") if hasattr(torch.optim, n))
_PRIMITIVE = (int, float, bool, str, type(None))


def _accepted_optimizers() -> str:
    return ", ".join(f"torch.optim.{c.__name__}" for c in SHRINK_OPTIMIZERS)


def check_criterion(model: nn.Module, criterion: Any) -> None:
    """Refuse, before training, a criterion or model that shrinking cannot follow."""
    context = getattr(criterion, "context", None) or {}
    if not isinstance(criterion, GroupCriterion) or context.get("example_input") is None:
        raise InvalidValueError(
            f"shrink=True needs criterion/include from occamgd.compaction.structured_pruning(model, example_input), "
            f"got criterion {getattr(criterion, '__name__', criterion)!r}; accepted: "
            "Occam(model, optimizer, shrink=True, **structured_pruning(model, example_input))")
    wrapper = _wrapped_attribute(model)
    if wrapper is not None:
        raise InvalidTypeError(
            f"shrink=True cannot shrink a {type(model).__name__} (torch.compile / DDP / DataParallel wrapper): a "
            "compiled graph or DDP reducer is built for the old shapes; accepted: the plain nn.Module (compile or "
            "wrap the final, shrunk model)")
    params = dict(model.named_parameters())
    missing = sorted({m.param for g in criterion.groups for m in g} - set(params))
    if missing:
        raise InvalidValueError(
            f"shrink=True: the structured criterion names tensors {missing[:4]} that {type(model).__name__} does not "
            "have; accepted: the criterion structured_pruning made for this very model")
    try:
        trace(copy.deepcopy(model), on_device(context["example_input"], model), handler_for,
              exclude_names(model, context.get("exclude", ())))
    except (InvalidValueError, InvalidTypeError):
        raise
    except Exception as error:  # noqa: BLE001 - whatever the tracer or forward raises is reported
        raise InvalidValueError(
            f"shrink=True: the tracer cannot run {type(model).__name__} on the example input of its structured "
            f"criterion ({type(error).__name__}: {error}); accepted: a model that "
            "occamgd.compaction.structured_pruning(model, example_input) traces, with that example input") from error


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    if type(optimizer) not in SHRINK_OPTIMIZERS:
        raise InvalidTypeError(
            f"shrink=True slices the optimizer's state, whose layout is known only for built-in optimizers; got "
            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}; accepted: {_accepted_optimizers()}")


def set_data(param: torch.Tensor, value: torch.Tensor) -> None:
    """``param.data = value`` with a fresh gradient accumulator: the cached one records the old shape (an
    autograd graph still alive, such as the last loss, would keep it in use); torch resets it only when the
    dtype or device changes, so the data passes through an empty tensor of another dtype first. Tensor
    hooks and post-accumulate hooks stay on the parameter."""
    other = torch.float64 if value.dtype != torch.float64 else torch.float32
    param.data = torch.empty(0, dtype=other, device=value.device)
    param.data = value


def structure(model: nn.Module) -> dict[str, Any]:
    """Each module's class and its plain attributes (sizes, head counts): what a cut changes besides tensors."""
    out = {}
    for name, m in model.named_modules():
        attrs = {k: v for k, v in vars(m).items() if k != "training" and (
            isinstance(v, _PRIMITIVE) or (isinstance(v, tuple) and all(isinstance(x, _PRIMITIVE) for x in v)))}
        out[name] = {"class": _name(type(m)), "attrs": attrs}
    return out


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(current: type, path: str) -> type:
    """The class named ``path`` among ``current``'s bases and their (already imported) subclasses: nothing is
    imported from a name read from a checkpoint (a cut may turn a module into a subclass, a regrowth back)."""
    for base in current.__mro__:
        if not issubclass(base, nn.Module) or base is nn.Module:
            continue
        todo = [base]
        while todo:
            cls = todo.pop()
            if _name(cls) == path:
                return cls
            todo += cls.__subclasses__()
    raise InvalidValueError(f"recorded module class {path!r} is not a base of {_name(current)} nor a subclass of "
                            "one; accepted: a state from an Occam around this same architecture")


def set_structure(model: nn.Module, record: dict[str, Any]) -> None:
    """Give each module the class and plain attributes in ``record`` (from :func:`structure`)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(record) - set(modules))
    if unknown:
        raise InvalidValueError(f"recorded structure names modules {unknown[:4]} that {type(model).__name__} does not "
                                "have; accepted: a state from an Occam around this same architecture")
    for name, rec in record.items():
        m = modules[name]
        if _name(type(m)) != rec["class"]:
            m.__class__ = _resolve(type(m), rec["class"])
        for k, v in rec["attrs"].items():
            current = getattr(m, k, None)
            # A reference the live module holds (a LightningModule's trainer, None in a copy) is not structure.
            if current is not None and not isinstance(current, (*_PRIMITIVE, tuple)):
                continue
            if current != v:
                setattr(m, k, v)


def set_shapes(model: nn.Module, shapes: dict[str, tuple], optimizer=None) -> None:
    """Give parameters and buffers these shapes in place (zeros where the shape changes: weights are loaded after)."""
    tensors = dict(model.named_parameters())
    for mname, m in model.named_modules():
        for k, b in m._buffers.items():
            if b is not None:
                tensors.setdefault(f"{mname}.{k}" if mname else k, (m, k))
    unknown = sorted(set(shapes) - set(tensors))
    if unknown:  # checked before anything changes
        raise InvalidValueError(f"recorded shapes name {unknown[:4]}, which {type(model).__name__} does not have; "
                                "accepted: a state from an Occam around this same architecture")
    for name, shape in shapes.items():
        t = tensors[name]
        if isinstance(t, tuple):
            m, k = t
            if tuple(m._buffers[k].shape) != tuple(shape):
                m._buffers[k] = m._buffers[k].new_zeros(shape)
        elif tuple(t.shape) != tuple(shape):
            set_data(t, t.data.new_zeros(shape))
            t.grad = None
            if optimizer is not None:
                optimizer.state.pop(t, None)


def shapes(model: nn.Module) -> dict[str, tuple]:
    out = {n: tuple(p.shape) for n, p in model.named_parameters()}
    out.update({n: tuple(b.shape) for n, b in model.named_buffers()})
    return out


@torch.no_grad()
def shrink(model: nn.Module, masks, optimizer: torch.optim.Optimizer | None, criterion: GroupCriterion):
    """Remove the removable pruned units of ``model`` in place; return ``{name: (old shape, kept flat indices)}``
    for each parameter that shrank (empty when nothing could be removed)."""
    context = criterion.context
    example = on_device(context["example_input"], model)
    work = copy.deepcopy(model)
    wparams = dict(work.named_parameters())
    for name in masks:
        wparams[name].mul_(masks[name])
    graph = trace(work, example, handler_for, exclude_names(work, context.get("exclude", ())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # units that stay as zeros: they stay masked, as without shrinking
        removed, folds = _decide(graph, {n: masks[n] for n in masks})
        if not removed:
            return {}
        _fold(graph, work, example, removed, folds)
    real = {n: p.detach().clone() for n, p in work.named_parameters()}
    for p in work.parameters():
        p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)
    _cut(graph, removed, folds)
    live, cut = dict(model.named_parameters()), dict(work.named_parameters())
    for name in set(cut) - set(live):  # a bias made by folding: only zero constants can be dropped
        if bool(real[name].any()):
            raise InvalidValueError(
                f"shrink=True: folding the constant outputs of pruned units needs a bias {name!r} that the live "
                "model does not have; accepted: layers with biases after the pruned ones, or compact() at the end")
    index: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}
    for name, p in live.items():
        if name not in cut:
            raise InvalidValueError(f"shrink=True: cutting removed the parameter {name!r}; accepted: handlers that "
                                    "keep every parameter")
        idx = cut[name].detach()
        same = tuple(idx.shape) == tuple(p.shape)
        flat = idx.reshape(-1).long()
        if not torch.equal(flat.double(), idx.reshape(-1)) or (flat.numel() and (
                int(flat.min()) < 0 or int(flat.max()) >= p.numel() or flat.unique().numel() != flat.numel())):
            raise InvalidValueError(f"shrink=True: the handler of {name!r} does more than select entries when it "
                                    "cuts; accepted: handlers whose cut only keeps entries")
        if same and torch.equal(flat, torch.arange(p.numel(), device=flat.device)):
            if not torch.equal(real[name], p.detach()):
                p.copy_(real[name])  # a folded bias
            continue
        value = real[name].reshape(-1)[flat].view(idx.shape).contiguous()
        index[name] = (tuple(p.shape), flat)
        if optimizer is not None:
            state = optimizer.state.get(p, {})
            for k, v in list(state.items()):
                if torch.is_tensor(v) and v.shape == p.shape:
                    state[k] = v.reshape(-1)[flat.to(v.device)].view(idx.shape).clone()
        grad = None if p.grad is None else p.grad.reshape(-1)[flat.to(p.grad.device)].view(idx.shape).clone()
        p.grad = None
        if name in masks.params:
            masks.reshape(name, masks[name].reshape(-1)[flat.to(masks[name].device)].view(idx.shape),
                          p.numel() - flat.numel())
        set_data(p, value)
        p.grad = grad
    wmods = dict(work.named_modules())
    for mname, m in model.named_modules():
        w = wmods[mname]
        for k, b in list(m._buffers.items()):
            wb = w._buffers.get(k)
            if b is not None and wb is not None and wb.shape != b.shape:
                m._buffers[k] = wb
    set_structure(model, {n: r for n, r in structure(work).items() if n in dict(model.named_modules())})
    masks.refresh()
    return index


def regrow(model: nn.Module, saved: dict[str, torch.Tensor], index: dict, optimizer, masks) -> None:
    """Give the shrunk tensors back their saved (pre-prune) shapes; optimizer state of regrown entries is zero."""
    params = dict(model.named_parameters())
    for name, (old_shape, flat) in index.items():
        p = params[name]
        if optimizer is not None:
            state = optimizer.state.get(p, {})
            for k, v in list(state.items()):
                if torch.is_tensor(v) and v.shape == p.shape:
                    grown = v.new_zeros(old_shape)
                    grown.view(-1)[flat.to(v.device)] = v.reshape(-1)
                    state[k] = grown
        p.grad = None
        set_data(p, saved[name].to(p.device, p.dtype).clone())
        if name in masks.params:
            masks.reshape(name, torch.ones(old_shape, dtype=torch.bool, device=p.device), 0)
    masks.refresh()


class Shrinker:
    """What ``Occam(shrink=True)`` calls, handed over in the criterion's context by
    :func:`~occamgd.compaction.structured_pruning` (the core never imports the compaction package)."""

    check_criterion = staticmethod(check_criterion)
    check_optimizer = staticmethod(check_optimizer)
    shrink = staticmethod(shrink)
    regrow = staticmethod(regrow)
    shapes = staticmethod(shapes)
    structure = staticmethod(structure)
    set_shapes = staticmethod(set_shapes)
    set_structure = staticmethod(set_structure)

    @staticmethod
    def rebuild(model: nn.Module, criterion: GroupCriterion) -> GroupCriterion:
        """The structured criterion of the model as it is now (its unit indices follow its shapes)."""
        from .plan import structured_pruning
        exclude = list(criterion.context.get("exclude", ())) or None
        return structured_pruning(model, criterion.context["example_input"], scope=criterion.scope, exclude=exclude,
                                  strict=False, check=False)["criterion"]

    def __repr__(self) -> str:
        return "Shrinker()"


SHRINKER = Shrinker()
