"""Which tensors are prunable, and one boolean mask per prunable tensor.

Masks live beside the model, never inside it: the user's module is not re-parametrised, its
``state_dict`` keeps its usual keys, and its forward pass costs what it always cost. The mask is
enforced by multiplying the weight in place (the paper's semantic: re-zero after each update).
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Union

import torch
from torch import nn

from .errors import InvalidTypeError, InvalidValueError

#: Module types whose weights are prunable when the user makes no selection of their own: the
#: paper's dense and convolution kernels and embeddings, and the weight matrices of recurrent
#: layers (RNN, LSTM, GRU and their cells), which are dense kernels too.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.RNNBase,
    nn.RNNCellBase,
)

#: A selection of tensors: parameter or module names (``fnmatch`` patterns allowed), module
#: types (their weights, see :func:`module_weights`), or a predicate
#: ``(parameter_name, parameter) -> bool``.
Selection = Union[str, type, Callable[[str, nn.Parameter], bool], Iterable[Union[str, type]]]


def module_weights(module: nn.Module) -> list[str]:
    """The names of a module's own weight tensors, those that selecting the module selects.

    A recurrent layer's weight matrices (``weight_ih_l<k>``, ``weight_hh_l<k>``, ``weight_hr_l<k>``
    with projections, each also ``_reverse`` when bidirectional; a cell's ``weight_ih`` and
    ``weight_hh``), never its biases; any other module's ``weight`` parameter, if it has one.
    """
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return [name for name, _ in module.named_parameters(recurse=False) if name.startswith("weight_")]
    return ["weight"] if isinstance(getattr(module, "weight", None), nn.Parameter) else []


def _wrapped_attribute(module: nn.Module) -> str | None:
    """The attribute under which a wrapper module holds the module it wraps, or ``None``."""
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return "module"
    # torch.compile's wrapper; its module is loaded only once something was compiled.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
        return "_orig_mod"
    return None


def unwrapped_names(model: nn.Module) -> Callable[[str], str]:
    """``name -> name`` without the wrappers' segments, for ``model``'s parameter, buffer and module names.

    ``torch.compile`` (``_orig_mod.``) and ``DistributedDataParallel`` / ``DataParallel``
    (``module.``) put the wrapped module's names under a prefix, at the root or around any
    submodule. Masks, selections and snapshots use the names without them, so an Occam state moves
    between a compiled, a DDP-wrapped and a plain model. Only the segments that are wrappers' are
    dropped: a submodule of the user's that is called ``module`` keeps its name.
    """
    hidden = {f"{path}.{attr}" if path else attr for path, module in model.named_modules()
              if (attr := _wrapped_attribute(module)) is not None}
    if not hidden:
        return lambda name: name

    def unwrap(name: str) -> str:
        parts = name.split(".")
        return ".".join(part for i, part in enumerate(parts) if ".".join(parts[: i + 1]) not in hidden)

    return unwrap


def _as_items(selection: Selection) -> list:
    if isinstance(selection, (str, type)) or not isinstance(selection, Iterable):
        return [selection]
    return list(selection)


def _matcher(selection: Selection, model: nn.Module) -> Callable[[str, nn.Parameter], bool]:
    """Turn a user's selection into a predicate over ``(parameter_name, parameter)``."""
    items = _as_items(selection)
    unwrap = unwrapped_names(model)
    # A wrapper and the module it wraps get the same name; the inner one, listed later, is kept.
    modules = {unwrap(name): module for name, module in model.named_modules()}
    by_type: set[str] = set()
    patterns: list[str] = []
    predicates: list[Callable[[str, nn.Parameter], bool]] = []
    for item in items:
        if isinstance(item, type):
            if not issubclass(item, nn.Module):
                raise InvalidTypeError(
                    f"selection type {item.__name__} is not a torch.nn.Module subclass; "
                    "accepted: module types, parameter/module names or patterns, or a "
                    "predicate (name, parameter) -> bool"
                )
            by_type.update(
                f"{name}.{weight}" if name else weight
                for name, module in modules.items() if isinstance(module, item)
                for weight in module_weights(module)
            )
        elif isinstance(item, str):
            # A module name stands for that module's weights.
            weights = module_weights(modules[item]) if item in modules and item != "" else []
            patterns.extend([f"{item}.{weight}" for weight in weights] or [item])
        elif callable(item):
            predicates.append(item)
        else:
            raise InvalidTypeError(
                f"cannot select tensors with {item!r}; accepted: module types, parameter/module "
                "names or fnmatch patterns, or a predicate (name, parameter) -> bool"
            )

    # A name that matches nothing is almost always a typo: say so rather than prune less.
    names = [unwrap(name) for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise InvalidValueError(
                f"selection {pattern!r} matches no parameter of {type(model).__name__}; accepted: a "
                f"parameter or module name or fnmatch pattern, such as {names[:4]}"
            )

    def match(name: str, param: nn.Parameter) -> bool:
        return (
            name in by_type
            or any(fnmatch.fnmatchcase(name, p) for p in patterns)
            or any(pred(name, param) for pred in predicates)
        )

    return match


def select_prunable(
    model: nn.Module,
    include: Selection | None = None,
    exclude: Selection | None = None,
) -> dict[str, nn.Parameter]:
    """The prunable parameters of ``model``, by name, in ``named_parameters`` order.

    By default: the ``weight`` of every Linear, Conv1d/2d/3d and Embedding layer and the weight
    matrices of every recurrent layer (RNN, LSTM, GRU and their cells; see
    :func:`module_weights`), unless frozen (``requires_grad=False``; an ``include`` selects frozen
    ones too). Biases and normalisation parameters are never selected by default. Tied parameters appear once. Names
    (those selected by and those returned) leave out the segments of ``torch.compile`` and
    DDP / DataParallel wrappers (see :func:`unwrapped_names`).
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    include_match = _matcher(DEFAULT_PRUNABLE_TYPES if include is None else include, model)
    exclude_match = _matcher(exclude, model) if exclude is not None else (lambda n, p: False)
    unwrap = unwrapped_names(model)
    named = ((unwrap(name), param) for name, param in model.named_parameters())
    # A frozen parameter (requires_grad=False) never trains, so pruning it by default would only
    # cut what the user chose to keep; naming it in ``include`` selects it all the same.
    selected = {name: param for name, param in named if include_match(name, param) and not exclude_match(name, param)
                and (param.requires_grad or include is not None)}
    if not selected:
        raise InvalidValueError(
            f"{type(model).__name__} has no prunable tensors for include={include!r}, "
            f"exclude={exclude!r}; accepted: a model with at least one Linear, Conv1d/2d/3d, "
            "Embedding or recurrent (RNN, LSTM, GRU) weight by default, or an include selection (names, module types or a "
            "predicate) that matches at least one parameter"
        )
    return selected


class Masks(Mapping[str, torch.Tensor]):
    """A mapping ``parameter name -> bool mask`` bound to the parameters it masks.

    ``True`` means kept. Each mask sits on its parameter's device. A multiplier in the
    parameter's dtype is kept beside each mask so that enforcement is one fused in-place multiply
    per step (five bytes per prunable weight in all).

    The multiply is in place, on the very Parameter objects, so it reaches what every layer
    computes with, recurrent ones included: an LSTM's forward pass reads its ``_flat_weights``,
    which are these parameters, and on CUDA ``flatten_parameters()`` makes them views into cuDNN's
    single weight buffer (the same objects, with new storage), so masking them masks that buffer.
    """

    def __init__(self, params: Mapping[str, nn.Parameter]):
        self.params: dict[str, nn.Parameter] = dict(params)
        self._masks: dict[str, torch.Tensor] = {
            name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()
        }
        #: Entries of each tensor removed from the model by shrinking (``Occam(shrink=True)``): they
        #: count as pruned, so densities stay fractions of the tensors' original sizes.
        self.removed: dict[str, int] = {}
        self._refresh_multipliers()

    # Mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self):
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    # Counting ---------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Number of prunable weights (with those removed by shrinking)."""
        return sum(m.numel() for m in self._masks.values()) + sum(self.removed.values())

    @property
    def kept(self) -> int:
        """Number of prunable weights still kept."""
        return int(sum(int(m.sum()) for m in self._masks.values()))

    @property
    def density(self) -> float:
        """Kept fraction of all prunable weights: ``kept / total``.

        Both count the entries of the masked tensors only, each tensor once however often it is
        tied, every entry alike whatever its tensor's size. By default these are the weights of
        Linear, Conv, Embedding and recurrent layers (see :func:`select_prunable`); biases,
        normalisation parameters and any tensor left out of the selection count in neither.
        """
        return self.kept / self.total

    def densities(self) -> dict[str, float]:
        """Kept fraction of each prunable tensor."""
        return {name: float(m.sum()) / (m.numel() + self.removed.get(name, 0)) for name, m in self._masks.items()}

    # Changing ---------------------------------------------------------------------------
    def update(self, new_masks: Mapping[str, torch.Tensor]) -> None:
        """Replace masks (names and shapes must match); weights are zeroed where pruned."""
        self.check(new_masks, "new masks")
        for name, mask in new_masks.items():
            self._masks[name] = mask.to(device=self.params[name].device, dtype=torch.bool).clone()
        self._refresh_multipliers()
        self.apply()

    def rebind(self, params: Mapping[str, nn.Parameter]) -> None:
        """Mask these new parameter objects under their names (same shapes); their pruned entries are zeroed."""
        for name, param in params.items():
            if tuple(param.shape) != tuple(self.params[name].shape):
                raise InvalidValueError(
                    f"parameter {name!r} was replaced by one of shape {tuple(param.shape)}, but its mask has shape "
                    f"{tuple(self.params[name].shape)}; accepted: a parameter of the same shape, or a new Occam"
                )
            self.params[name] = param
            self._masks[name] = self._masks[name].to(param.device)
        self._refresh_multipliers()
        self.apply()

    def reshape(self, name: str, mask: torch.Tensor, removed: int) -> None:
        """Mask ``name`` by ``mask`` after its parameter changed shape (shrinking), ``removed`` more entries gone;
        call :meth:`refresh` after the last one."""
        self._masks[name] = mask.to(device=self.params[name].device, dtype=torch.bool).contiguous()
        if removed:
            self.removed[name] = self.removed.get(name, 0) + int(removed)

    def refresh(self) -> None:
        """Rebuild the multipliers after :meth:`reshape`."""
        self._refresh_multipliers()

    def _refresh_multipliers(self) -> None:
        # Enforcement multiplies by these: the cheapest in-place op, one pass over each weight.
        # Tensors with nothing pruned are skipped: before the first prune enforcement is free.
        pruned = [n for n, m in self._masks.items() if not bool(m.all())]
        self._param_list = [self.params[n] for n in pruned]
        self._mult = [self._masks[n].to(self.params[n].dtype) for n in pruned]

    # Enforcing --------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight in place (one fused multiply over all prunable tensors)."""
        if self._param_list:
            torch._foreach_mul_(self._param_list, self._mult)

    @torch.no_grad()
    def apply_to_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer state (momentum, moments, ...) of every pruned weight in place.

        Every state tensor shaped like its parameter is masked, in one fused multiply; scalar
        state such as Adam's step count is left alone.
        """
        tensors, mults = [], []
        for param, mult in zip(self._param_list, self._mult):
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    tensors.append(value)
                    mults.append(mult if value.dtype == mult.dtype else mult.to(value.dtype))
        if tensors:
            torch._foreach_mul_(tensors, mults)

    # Checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: m.clone() for name, m in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.check(state, "checkpoint masks", require_all=True)
        self.update(state)

    def check(self, masks: Mapping[str, torch.Tensor], what: str = "masks", require_all: bool = False) -> None:
        """Raise ``ValueError`` unless ``masks`` fit this model's prunable tensors."""
        unknown = sorted(set(masks) - set(self.params))
        missing = sorted(set(self.params) - set(masks)) if require_all else []
        if unknown or missing:
            raise InvalidValueError(
                f"{what} do not belong to this model: unknown tensors {unknown}, missing tensors "
                f"{missing}; accepted: masks for exactly this model's prunable tensors "
                f"{sorted(self.params)}"
            )
        for name, mask in masks.items():
            if not torch.is_tensor(mask) or mask.dtype != torch.bool:
                found = mask.dtype if torch.is_tensor(mask) else type(mask).__name__
                raise InvalidTypeError(
                    f"{what}: mask for {name!r} is {found}; accepted: a torch.bool tensor (True = kept), e.g. "
                    "mask.bool() for one of zeros and ones"
                )
            shape = self._shape(name)
            if tuple(mask.shape) != shape:
                raise InvalidValueError(
                    f"{what}: mask for {name!r} has shape {tuple(mask.shape)}, but the parameter "
                    f"has shape {shape}; accepted: the parameter's (whole, unsharded) shape"
                )
            self._check_layout(name, mask, what)

    def _shape(self, name: str) -> tuple[int, ...]:
        """The whole shape of parameter ``name`` (a sharded parameter's global shape)."""
        return tuple(self.params[name].shape)

    def _check_layout(self, name: str, mask: torch.Tensor, what: str) -> None:
        """Refuse a mask laid out unlike its parameter (nothing to check for plain tensors)."""
