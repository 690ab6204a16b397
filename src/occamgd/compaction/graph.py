"""Trace a model on an example input into the groups of units that must be removed together.

The trace runs the model once, eagerly, in eval mode, under a ``TorchFunctionMode`` that sees every
torch function and tensor method called outside the layers that have a handler (see
:mod:`occamgd.compaction.handlers`), and forward hooks that see those layers' calls. Each tensor's
*feature dimension* (a Linear's last dimension, a Conv's channels) is followed through the ops:

- a layer with a handler makes a new **space** of units for its outputs (a Linear's neurons, a
  Conv's channels, attention heads) and records which of its weights belong to each unit;
- element-wise ops (residual additions, gating products, activations, dropout) **unify** the
  spaces of their inputs: they share channel indices, so their units go together;
- concatenation along the feature dimension lays spaces side by side at offsets; split and chunk
  take them apart at their boundaries;
- reshapes and flatten keep the feature dimension or merge the dimensions after it into each
  unit's block of columns (a Conv channel feeding ``H * W`` columns of a Linear); permutes,
  indexing, reductions over other dimensions and spatial pooling move it;
- a space that reaches the model's outputs, a normalisation over the features (LayerNorm,
  RMSNorm, GroupNorm with groups of several channels), an embedding or the model's inputs is
  **blocked**: its width is the model's interface or its units are normalised together, so
  removing one would change the outputs;
- anything else that reads a feature (an op without a rule, a reshape that splits it, a module
  with weights but no handler) makes the space **unfollowable**, with the op and module path.

Why an eager trace, not ``torch.fx`` or ``torch.export``: it runs every model that runs (Hugging
Face models' Python control flow, ``**kwargs`` forwards, caches), sees concrete shapes, and names
the module path of each op; torch.fx cannot trace transformers 5 at all, and torch.export lowers
to aten ops whose attention and layer boundaries are lost. Its limit, that Python-level control
flow is seen only on the path the example takes and that a size written as a literal in a
``view`` looks like any other integer, is covered by :func:`occamgd.compaction.structured_pruning`
compacting a trial copy on the example before anything trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidTypeError, InvalidValueError


# Data --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seg:
    """``size(space)`` units side by side along a feature dimension, each ``inner`` consecutive entries."""

    space: int
    inner: int = 1


@dataclass(frozen=True)
class Feature:
    """Where a tensor's units lie: dimension ``dim`` is the concatenation of ``segs``."""

    dim: int
    segs: tuple[Seg, ...]


@dataclass
class Member:
    """One weight's share of a space: unit ``u`` owns ``index[u]`` along dimension ``dim`` of ``param``.

    ``role``: ``"out"`` (its rows make the unit: when all of them are pruned the unit outputs a
    constant), ``"in"`` (it reads the unit: when all of them are pruned nobody does), ``"aux"``
    (scored and pruned with the unit, needed for neither, such as an attention head's query and key rows),
    ``"zero"`` (pruned with the unit, not scored: its biases, its batch-norm scale and shift, so that a
    pruned unit outputs zero in training too, and stays exactly removable before zero padding).
    """

    param: str
    dim: int
    index: torch.Tensor
    role: str
    module: str


@dataclass
class Call:
    """One call of a layer that has a handler, with the features of its input and output."""

    name: str
    module: nn.Module
    handler: Any
    in_feat: Feature | None = None
    out_feat: Feature | None = None
    #: Handler-owned spaces inside the layer (an attention's heads), by role name.
    inner: dict[str, int] = field(default_factory=dict)


class Graph:
    """Spaces of units (union-find), their members, and why a space's units cannot be removed."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sizes: list[int] = []
        #: Channels per unit of each space: 1, or a GroupNorm's group size (whole groups go together).
        self.per_unit: list[int] = []
        self.parent: list[int] = []
        self.origin: list[str] = []
        self.members: dict[int, list[Member]] = {}
        self.blocked: dict[int, list[str]] = {}
        self.unfollowable: dict[int, list[str]] = {}
        self.calls: list[Call] = []
        self.calls_by_module: dict[int, Call] = {}
        #: Spaces split apart into consecutive parts (by split / chunk), by root.
        self.parts: dict[int, list[int]] = {}
        #: Spaces whose every unit may go (a handler's that copes with zero width, such as the GPT's heads).
        self.can_empty: set[int] = set()
        self.param_names: dict[int, str] = {}
        for n, p in model.named_parameters():  # a tied tensor by its first name, as Occam's masks name it
            self.param_names.setdefault(id(p), n)

    # Spaces -----------------------------------------------------------------------------------
    def new(self, size: int, origin: str, blocked: str | None = None) -> int:
        self.sizes.append(int(size))
        self.per_unit.append(1)
        self.parent.append(len(self.parent))
        self.origin.append(origin)
        sid = len(self.sizes) - 1
        self.members[sid], self.blocked[sid], self.unfollowable[sid] = [], [], []
        if blocked:
            self.blocked[sid].append(blocked)
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if a in self.parts or b in self.parts:  # split spaces: unify part by part
            fa, fb = Feature(0, (Seg(a),)), Feature(0, (Seg(b),))
            if not self._match(fa, fb):
                why = "unified with units that were split apart differently"
                self.block(fa, why, unfollowable=True)
                self.block(fb, why, unfollowable=True)
            return
        if a > b:
            a, b = b, a  # the older space (nearer the input) names the group
        self.parent[b] = a
        self.coarsen(a, self.per_unit[b], "coupled to channels that are grouped differently")
        for table in (self.members, self.blocked, self.unfollowable):
            table[a].extend(table.pop(b))
        if a in self.can_empty and b not in self.can_empty:
            self.can_empty.discard(a)
        self.can_empty.discard(b)

    def coarsen(self, sid: int, channels: int, why: str) -> bool:
        """Make units of ``channels`` consecutive channels (a GroupNorm's groups); False if they do not divide."""
        sid = self.find(sid)
        block = math.lcm(self.per_unit[sid], channels)
        if self.sizes[sid] % block:
            if why:
                self.blocked[sid].append(why)
            return False
        self.per_unit[sid] = block
        return True

    def units(self, sid: int) -> int:
        """How many units a space holds (channels over channels per unit)."""
        sid = self.find(sid)
        return self.sizes[sid] // self.per_unit[sid]

    def unit_index(self, member: Member, sid: int) -> torch.Tensor:
        """``member.index`` per unit: a unit of several channels owns all their entries."""
        return member.index.reshape(self.units(sid), -1)

    def size(self, sid: int) -> int:
        return self.sizes[self.find(sid)]

    def fixed(self, size: int, why: str) -> Feature:
        """A feature whose units may not change (model inputs, embeddings, constants)."""
        return Feature(0, (Seg(self.new(size, why, blocked=why)),))

    def spaces_of(self, feat: Feature | None) -> list[int]:
        return [] if feat is None else [self.find(s.space) for s in feat.segs]

    def block(self, feat: Feature | None, why: str, unfollowable: bool = False) -> None:
        table = self.unfollowable if unfollowable else self.blocked
        for sid in self.spaces_of(feat):
            if why not in table[sid]:
                table[sid].append(why)

    def width(self, feat: Feature) -> int:
        return sum(self.size(s.space) * s.inner for s in feat.segs)

    def layout(self, feat: Feature) -> list[tuple[int, int, int, int]]:
        """``(space, offset, inner, units)`` of each segment, offsets along the feature dimension (a
        space split apart by ``split`` / ``chunk`` counts as its parts, in order)."""
        out, offset = [], 0

        def emit(sid, inner):
            nonlocal offset
            sid = self.find(sid)
            if sid in self.parts:
                for part in self.parts[sid]:
                    emit(part, inner)
                return
            n = self.sizes[sid]
            out.append((sid, offset, inner, n))
            offset += n * inner

        for seg in feat.segs:
            emit(seg.space, seg.inner)
        return out

    def split_space(self, sid: int, sizes: list[int]) -> None:
        """Split a space into consecutive parts of ``sizes`` units (a fused projection's output
        chunked apart): each part keeps its units' members and reasons."""
        sid = self.find(sid)
        parts, start = [], 0
        for n in sizes:
            part = self.new(n, self.origin[sid])
            for m in self.members[sid]:
                self.members[part].append(Member(m.param, m.dim, m.index[start:start + n], m.role, m.module))
            self.blocked[part] = list(self.blocked[sid])
            self.unfollowable[part] = list(self.unfollowable[sid])
            parts.append(part)
            start += n
        self.members[sid] = []
        self.parts[sid] = parts

    def refine(self, feat: Feature, bounds: set[int]) -> None:
        """Split the spaces of ``feat`` so that every offset in ``bounds`` falls between units' spaces."""
        for sid, offset, inner, n in self.layout(feat):
            cuts = sorted(b for b in bounds if offset < b < offset + n * inner and (b - offset) % inner == 0)
            if cuts and self.per_unit[sid] == 1:
                edges = [0] + [(b - offset) // inner for b in cuts] + [n]
                self.split_space(sid, [e - s for s, e in zip(edges, edges[1:])])

    def _match(self, a: Feature, b: Feature) -> bool:
        """Unify two features part by part, splitting spaces to common boundaries; False if they cannot."""
        bounds = {o for _, o, _, _ in self.layout(a) + self.layout(b)}
        bounds |= {o + n * i for _, o, i, n in self.layout(a) + self.layout(b)}
        self.refine(a, bounds)
        self.refine(b, bounds)
        la, lb = self.layout(a), self.layout(b)
        if [(o, i, n) for _, o, i, n in la] != [(o, i, n) for _, o, i, n in lb]:
            return False
        for (sa, *_), (sb, *_) in zip(la, lb):
            self.union(sa, sb)
        return True

    # Members ----------------------------------------------------------------------------------
    def param_name(self, param: torch.Tensor) -> str:
        return self.param_names[id(param)]

    def add(self, sid: int, param: torch.Tensor, dim: int, index: torch.Tensor, role: str, module: str) -> None:
        self.members[self.find(sid)].append(Member(self.param_name(param), dim, index, role, module))

    def add_feature(self, feat: Feature, param: torch.Tensor, dim: int, role: str, module: str,
                    offset: int = 0) -> None:
        """Every unit of ``feat`` owns its block of entries of ``param`` along ``dim`` (from ``offset``)."""
        for sid, start, inner, n in self.layout(feat):
            index = offset + start + torch.arange(n).view(n, 1) * inner + torch.arange(inner).view(1, inner)
            self.add(sid, param, dim, index, role, module)

    def unify(self, a: Feature, b: Feature, why: str) -> Feature:
        """The two features share unit indices (element-wise): unify their spaces segment by segment."""
        if not self._match(a, b):
            self.block(a, why, unfollowable=True)
            self.block(b, why, unfollowable=True)
        return a

    # Results ----------------------------------------------------------------------------------
    def groups(self) -> list[int]:
        """The spaces whose units can be removed: weights own them, nothing blocks them, at least two units."""
        roots = sorted({self.find(s) for s in range(len(self.sizes))})
        # An entry of a tensor owned by two spaces (weights tied between layers) cannot follow both.
        owners: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = {}
        for r in roots:
            for m in self.members[r]:
                owners.setdefault((m.param, m.dim), []).append((r, m.index.reshape(-1)))
        for (param, dim), entries in owners.items():
            if len({r for r, _ in entries}) < 2:
                continue
            index = torch.cat([i for _, i in entries])
            label = torch.cat([torch.full_like(i, r) for r, i in entries])
            order = torch.argsort(index, stable=True)
            index, label = index[order], label[order]
            clash = (index[1:] == index[:-1]) & (label[1:] != label[:-1])
            for r in set(label[1:][clash].tolist()) | set(label[:-1][clash].tolist()):
                why = f"{param!r} is cut along dimension {dim} by more than one group (tied weights)"
                if why not in self.blocked[r]:
                    self.blocked[r].append(why)
        return [r for r in roots if self.members[r] and any(m.role == "out" for m in self.members[r])
                and not self.blocked[r] and not self.unfollowable[r] and self.units(r) >= 2]

    def producers(self, sid: int) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members[self.find(sid)] if m.role == "out"))


# Tracing -----------------------------------------------------------------------------------------
def _tensors(value: Any) -> Iterable[torch.Tensor]:
    """The tensors inside a module's output (tuples, lists, dicts, Hugging Face ModelOutputs)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _map_reshape(in_shape: tuple, out_shape: tuple, d: int) -> tuple[int, int] | None:
    """Where dimension ``d`` of ``in_shape`` goes in ``out_shape``: ``(dim, factor)`` when it stays
    whole and is merged with the dimensions after it (their product is ``factor``), else None."""
    before = math.prod(in_shape[:d])
    channels = in_shape[d]
    prod = 1
    for e, size in enumerate(out_shape):
        if prod == before and size % channels == 0 and size >= channels:
            factor, merged, k = size // channels, 1, d + 1
            while merged < factor and k < len(in_shape):
                merged *= in_shape[k]
                k += 1
            if merged == factor:
                return e, factor
        prod *= size
        if prod > before and before > 0:
            break
    return None


# Functions and tensor methods by how they treat the feature dimension.
ELEMENTWISE = {
    "add", "sub", "mul", "div", "true_divide", "rsub", "pow", "maximum", "minimum", "where", "clamp", "clip",
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "square", "erf", "tanh", "sigmoid", "sin", "cos",
    "relu", "relu6", "gelu", "silu", "mish", "elu", "selu", "celu", "leaky_relu", "hardtanh", "hardswish",
    "hardsigmoid", "softplus", "softsign", "tanhshrink", "softshrink", "hardshrink", "logsigmoid", "threshold",
    "rrelu", "glu_", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as", "cpu", "cuda",
    "requires_grad_", "masked_fill", "nan_to_num", "sign", "floor", "ceil", "round", "trunc", "frac",
    "eq", "ne", "lt", "le", "gt", "ge", "isnan", "isinf", "isfinite", "logical_not", "logical_and", "logical_or",
    "bitwise_not", "__and__", "__or__", "__invert__", "__xor__",
    # Same layout, values that do not depend on the input's: the units stay where they are.
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "fill_", "zero_",
}
ELEMENTWISE |= {f"{n}_" for n in list(ELEMENTWISE)}
ELEMENTWISE |= {f"__{n}__" for n in ("add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul",
                                     "truediv", "rtruediv", "itruediv", "pow", "rpow", "neg", "abs",
                                     "eq", "ne", "lt", "le", "gt", "ge")}
RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
            "squeeze_", "unsqueeze_"}
PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis", "transpose_"}
EXPANDS = {"expand", "expand_as", "repeat"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "nansum", "nanmean", "prod",
              "norm", "median", "any", "all", "argmax", "argmin"}
SOFTMAX = {"softmax", "log_softmax", "cumsum", "cumprod"}
SPATIAL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
           "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
           "max_pool3d_with_indices", "_max_pool1d", "_max_pool2d", "_max_pool3d", "interpolate", "upsample",
           "lp_pool1d", "lp_pool2d", "fractional_max_pool2d"}
CONCATS = {"cat", "concat", "concatenate"}
#: Functional normalisations over trailing dimensions: their units are normalised together.
FEATURE_NORMS = {"layer_norm", "rms_norm", "normalize", "local_response_norm"}
SPLITS = {"split", "chunk", "split_with_sizes", "tensor_split", "unbind"}
#: Results that carry no unit data (sizes, flags): ignored.
QUERIES = {"size", "dim", "numel", "__len__", "__get__", "is_contiguous", "is_floating_point", "type", "__bool__",
           "__index__", "__int__", "__float__", "element_size", "data_ptr", "stride", "nelement", "ndimension",
           "__format__", "__repr__", "tolist", "item"}


class _Mode(TorchFunctionMode):
    def __init__(self, tracer: Tracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.tracer.leaf_depth == 0:
            self.tracer.function(func, args, kwargs, out)
        return out


class Tracer:
    """Runs the model once and builds its :class:`Graph` (see the module's documentation)."""

    def __init__(self, model: nn.Module, handler_for, exclude: Iterable[str] = ()):
        self.model = model
        self.graph = Graph(model)
        self.handler_for = handler_for
        self.exclude = tuple(exclude)
        self.feats: dict[int, tuple[torch.Tensor, Feature]] = {}
        self.leaf_depth = 0
        self.path: list[str] = []
        self.names = {id(m): n for n, m in model.named_modules()}

    # Features of tensors ------------------------------------------------------------------------
    def feat(self, t: Any) -> Feature | None:
        if not torch.is_tensor(t):
            return None
        entry = self.feats.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def set(self, t: torch.Tensor, feat: Feature | None) -> None:
        if feat is not None and torch.is_tensor(t):
            self.feats[id(t)] = (t, feat)

    def where(self) -> str:
        return f"in {self.path[-1]!r}" if self.path and self.path[-1] else "in the model's forward"

    # Functions ----------------------------------------------------------------------------------
    def function(self, func, args, kwargs, out) -> None:
        name = getattr(func, "__name__", str(func))
        tensors = [a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
        listed = [t for a in args if isinstance(a, (list, tuple)) for t in a if torch.is_tensor(t)]
        tracked = [t for t in tensors + listed if self.feat(t) is not None]
        if not tracked or name in QUERIES or not any(True for _ in _tensors(out)):
            return
        g, here = self.graph, self.where()
        try:
            result = self._rule(name, args, kwargs, out, tracked)
        except _Unfollowable as why:
            for t in tracked:
                g.block(self.feat(t), f"{why} ({name} {here})", unfollowable=True)
            return
        if result is None:
            for t in tracked:
                g.block(self.feat(t), f"{name} {here} reads the units in a way compaction cannot follow",
                        unfollowable=True)

    def _rule(self, name, args, kwargs, out, tracked):
        if name in ELEMENTWISE and torch.is_tensor(out):
            self.set(out, self._elementwise(name, [a for a in list(args) + list(kwargs.values())
                                                   if torch.is_tensor(a)], out))
            return True
        x = tracked[0]
        f = self.feat(x)
        if name in RESHAPES and torch.is_tensor(out):
            mapped = _map_reshape(tuple(x.shape), tuple(out.shape), f.dim)
            if mapped is None:
                raise _Unfollowable(f"a reshape of {tuple(x.shape)} to {tuple(out.shape)} splits the units of "
                                    f"dimension {f.dim}")
            dim, factor = mapped
            self.set(out, Feature(dim, tuple(Seg(s.space, s.inner * factor) for s in f.segs)))
            return True
        if name in PERMUTES and torch.is_tensor(out):
            self.set(out, Feature(self._permuted(name, x, args[1:], kwargs, f.dim), f.segs))
            return True
        if name in EXPANDS and torch.is_tensor(out):
            if out.shape[f.dim + out.dim() - x.dim()] != x.shape[f.dim]:
                raise _Unfollowable("repeats the units")
            self.set(out, Feature(f.dim + out.dim() - x.dim(), f.segs))
            return True
        if name in SPATIAL:
            if f.dim != 1:
                raise _Unfollowable(f"pools over dimension {f.dim}, where the units are")
            for t in _tensors(out):
                if t.dim() == x.dim() and t.shape[1] == x.shape[1]:
                    self.set(t, f)
            return True
        if name in FEATURE_NORMS:
            self.graph.block(f, f"normalised together by {name} {self.where()}")
            if torch.is_tensor(out):
                self.set(out, f)
            return True
        if name in SOFTMAX:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None or _norm_dim(dim, x.dim()) == f.dim:
                raise _Unfollowable("normalises across the units")
            self.set(out, f)
            return True
        if name in REDUCTIONS:
            return self._reduction(args, kwargs, x, f, out)
        if name == "__getitem__":
            return self._getitem(x, f, args[1], out)
        if name in CONCATS:
            return self._cat(args, kwargs, out)
        if name == "stack":
            seq = args[0]
            dim = _norm_dim(kwargs.get("dim", args[1] if len(args) > 1 else 0), out.dim())
            base = self._elementwise(name, list(seq), seq[0])
            self.set(out, Feature(base.dim + (1 if dim <= base.dim else 0), base.segs))
            return True
        if name in SPLITS:
            return self._split(name, args, kwargs, x, f, out)
        if name == "pad":
            pad = args[1] if len(args) > 1 else kwargs["pad"]
            touched = {x.dim() - 1 - i // 2 for i, p in enumerate(pad) if p}
            if f.dim in touched:
                raise _Unfollowable("pads the units' dimension")
            self.set(out, f)
            return True
        return None

    def _elementwise(self, name, operands, out) -> Feature | None:
        g = self.graph
        feats, fixed = [], []
        for t in operands:
            shift = out.dim() - t.dim()
            f = self.feat(t)
            if f is not None:
                feats.append(Feature(f.dim + shift, f.segs))
            else:
                fixed.append((t, shift))
        if not feats:
            return None
        dims = {f.dim for f in feats}
        if len(dims) > 1:
            raise _Unfollowable("combines units that lie along different dimensions")
        base = feats[0]
        for other in feats[1:]:
            base = g.unify(base, other, f"{name} {self.where()} combines units laid out differently")
        for t, shift in fixed:
            d = base.dim - shift
            if 0 <= d < t.dim() and t.shape[d] != 1:
                g.block(base, f"{name} {self.where()} combines them with a tensor whose units are fixed (an input, "
                              "an embedding or a constant)")
        return base

    def _permuted(self, name, x, rest, kwargs, d) -> int:
        n = x.dim()
        if name == "t":
            return 1 - d if n == 2 else d
        if name in ("permute",):
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
            dims = [_norm_dim(int(i), n) for i in (dims or kwargs.get("dims"))]
            return dims.index(d)
        if name in ("movedim", "moveaxis"):
            src, dst = rest[0], rest[1]
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            order = [i for i in range(n) if i not in {_norm_dim(s, n) for s in src}]
            for s, t in sorted(zip([_norm_dim(s, n) for s in src], [_norm_dim(t, n) for t in dst]), key=lambda p: p[1]):
                order.insert(t, s)
            return order.index(d)
        a, b = (_norm_dim(int(i), n) for i in (list(rest) + [kwargs.get("dim0"), kwargs.get("dim1")])[:2])
        return b if d == a else a if d == b else d

    def _reduction(self, args, kwargs, x, f, out) -> bool:
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not torch.is_tensor(args[1]) else None)
        if dim is None:
            raise _Unfollowable("reduces over the units")
        dims = {_norm_dim(int(d), x.dim()) for d in ([dim] if isinstance(dim, int) else dim)}
        if f.dim in dims:
            raise _Unfollowable("reduces over the units")
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        new = f.dim if keep else f.dim - sum(1 for d in dims if d < f.dim)
        for t in _tensors(out):
            self.set(t, Feature(new, f.segs))
        return True

    def _getitem(self, x, f, index, out) -> bool:
        index = index if isinstance(index, tuple) else (index,)
        if any(torch.is_tensor(i) or isinstance(i, (list,)) for i in index):
            raise _Unfollowable("indexes with a tensor")
        n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
        expanded: list = []
        for i in index:
            if i is Ellipsis:
                expanded.extend([slice(None)] * (x.dim() - n_real))
            else:
                expanded.append(i)
        dim_in, dim_out, new = 0, 0, None
        for i in expanded:
            if i is None:
                dim_out += 1
                continue
            if dim_in == f.dim:
                if not (isinstance(i, slice) and i == slice(None)):
                    raise _Unfollowable("indexes into the units")
                new = dim_out
            if isinstance(i, slice):
                dim_out += 1
            dim_in += 1
        if new is None:
            new = dim_out + (f.dim - dim_in)
        self.set(out, Feature(new, f.segs))
        return True

    def _cat(self, args, kwargs, out) -> bool:
        g = self.graph
        seq = list(args[0])
        dim = _norm_dim(kwargs.get("dim", args[1] if len(args) > 1 else 0), out.dim())
        feats = [self.feat(t) for t in seq]
        dims = {f.dim for f in feats if f is not None}
        if dims == {dim}:
            segs = []
            for t, f in zip(seq, feats):
                f = f or g.fixed(t.shape[dim], f"concatenated with fixed units {self.where()}")
                segs.extend(f.segs)
            self.set(out, Feature(dim, tuple(segs)))
            return True
        self.set(out, self._elementwise("cat", seq, out))
        return True

    def _split(self, name, args, kwargs, x, f, out) -> bool:
        g = self.graph
        parts = [t for t in out] if isinstance(out, (tuple, list)) else [out]
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        if name == "unbind":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        dim = _norm_dim(dim, x.dim())
        if dim != f.dim:
            shift = -1 if name == "unbind" and dim < f.dim else 0
            for t in parts:
                self.set(t, Feature(f.dim + shift, f.segs))
            return True
        if name == "unbind":
            raise _Unfollowable("takes the units apart one by one")
        edges, pos = set(), 0
        for t in parts:
            edges |= {pos, pos + t.shape[dim]}
            pos += t.shape[dim]
        g.refine(f, edges)  # a fused projection chunked apart: its space splits into parts
        layout = g.layout(f)
        pos = 0
        for t in parts:
            end = pos + t.shape[dim]
            taken = [(sid, inner) for sid, o, inner, n in layout if o >= pos and o + n * inner <= end]
            if sum(g.sizes[sid] * inner for sid, inner in taken) != end - pos:
                raise _Unfollowable("splits one unit's entries apart")
            self.set(t, Feature(dim, tuple(Seg(sid, inner) for sid, inner in taken)))
            pos = end
        return True

    # Modules ------------------------------------------------------------------------------------
    def _excluded(self, name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in self.exclude)

    def pre(self, module, args, kwargs):
        name = self.names.get(id(module), "?")
        if self.leaf_depth:
            self.leaf_depth += 1
            return
        handler = self.handler_for(module)
        if self._excluded(name) or handler is not None:
            self.leaf_depth = 1
            self.path.append(name)
            return
        self.path.append(name)

    def post(self, module, args, kwargs, output):
        if self.leaf_depth > 1:
            self.leaf_depth -= 1
            return
        name = self.path.pop()
        if self.leaf_depth == 1:
            self.leaf_depth = 0
            self._leaf(name, module, args, kwargs, output)

    def _leaf(self, name, module, args, kwargs, output):
        g = self.graph
        inputs = [t for t in list(args) + list(kwargs.values()) if torch.is_tensor(t)]
        if self._excluded(name):
            for t in inputs:
                g.block(self.feat(t), f"read by the excluded module {name!r}")
            return
        handler = self.handler_for(module)
        previous = g.calls_by_module.get(id(module))
        call = Call(name, module, handler)
        handler.trace(self, call, args, kwargs, output)
        if previous is None:
            g.calls.append(call)
            g.calls_by_module[id(module)] = call
            return
        # The same layer called again (shared weights): the same units, so the features must agree.
        for attr in ("in_feat", "out_feat"):
            a, b = getattr(previous, attr), getattr(call, attr)
            if a is not None and b is not None:
                g.unify(a, b, f"{name!r} is called on inputs laid out differently")
        for key, sid in call.inner.items():
            if key in previous.inner:
                g.union(previous.inner[key], sid)

    # Running ------------------------------------------------------------------------------------
    def run(self, example: Any) -> Any:
        g = self.graph
        handles = []
        for _, module in self.model.named_modules():
            if module is self.model:
                continue
            handles.append(module.register_forward_pre_hook(self.pre, with_kwargs=True))
            handles.append(module.register_forward_hook(self.post, with_kwargs=True))
        args, kwargs = example_args(example)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad(), _Mode(self):  # with gradients: torch's fused inference paths stay off
                output = self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        for t in _tensors(output):
            g.block(self.feat(t), "the model's output")
        return output


class _Unfollowable(Exception):
    pass


def example_args(example: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)`` from an example input (tensor, tuple or dict)."""
    if torch.is_tensor(example):
        return (example,), {}
    if isinstance(example, tuple):
        return example, {}
    if isinstance(example, Mapping):
        return (), dict(example)
    raise InvalidTypeError(
        f"example_input must be a tensor, a tuple of positional inputs or a dict of keyword inputs, got "
        f"{type(example).__name__}"
    )


def trace(model: nn.Module, example: Any, handler_for, exclude: Iterable[str] = ()) -> Graph:
    """The :class:`Graph` of ``model`` on ``example``; ``InvalidValueError`` when the model does not run on it."""
    tracer = Tracer(model, handler_for, exclude)
    try:
        tracer.run(example)
    except (InvalidValueError, InvalidTypeError):
        raise
    except Exception as error:
        raise InvalidValueError(
            f"{type(model).__name__} did not run on the example input while being traced for structured "
            f"pruning ({type(error).__name__}: {error}); accepted: an example_input the model's forward takes "
            "(a tensor, a tuple of positional inputs or a dict of keyword inputs), or prune unstructured "
            "(criterion='layerwise')"
        ) from error
    return tracer.graph
