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
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidTypeError, InvalidValueError
from .graph import Call, Feature, Graph, Seg


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
