"""What each kind of layer does with units: a registry of handlers by module type.

A handler knows one layer type, and nothing of the graph around it (after Torch-Pruning's
``PrunerBox``; the trace in :mod:`occamgd.compaction.tracing` finds the coupled groups, a handler
only describes and cuts). It has three parts:

- ``trace(tracer, call, args, kwargs, output)``: during the trace, say where the layer's input
  units are read (``call.in_feat``), which new units its outputs are (``call.out_feat``, a new
  space), which of its weights belong to each unit (members, for the criterion), and any space
  of its own (an attention's heads, ``call.inner``);
- ``cut(call, keep_in, keep_out, inner)``: keep only the given input and output entries (index
  tensors along the features, ``None`` for all), and the given units of its own spaces;
- ``fold(call, cols, consts)``: for a layer that reads units, add what the removed input entries
  ``cols`` contributed as the constants ``consts`` to its bias (``can_fold`` says where that is
  exact).

A new layer type is one :func:`register_handler` call: ``register_handler(MyLayer, MyHandler())``,
or with the class's qualified name (``"package.module.Class"``) for libraries that should not be
imported before they are used (the Hugging Face handlers below are registered that way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..errors import InvalidTypeError
from .graph import Call, Feature, Seg
from .tracing import Tracer

HANDLERS: dict[type | str, Any] = {}
#: Example inputs for models whose input a handler can make up (``compact`` without ``example_input``).
EXAMPLES: dict[type | str, Callable[[nn.Module], Any]] = {}


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_handler(layer: type | str, handler: Any) -> None:
    """Make ``handler`` the one for ``layer`` (a module class or its qualified name) and its subclasses."""
    if not (isinstance(layer, str) or (isinstance(layer, type) and issubclass(layer, nn.Module))):
        raise InvalidTypeError(f"layer must be a torch.nn.Module subclass or its qualified name, got {layer!r}")
    for method in ("trace", "cut"):
        if not callable(getattr(handler, method, None)):
            raise InvalidTypeError(f"handler {handler!r} lacks a {method}() method; accepted: an object with "
                                   "trace(tracer, call, args, kwargs, output) and cut(call, keep_in, keep_out, inner)")
    HANDLERS[layer] = handler


def register_example(model: type | str, make: Callable[[nn.Module], Any]) -> None:
    """``make(model)`` returns an example input for models of this class (used when none is given)."""
    EXAMPLES[model] = make


def _lookup(table: dict, module: nn.Module):
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
        key = _key(cls)
        if key in table:
            return table[key]
    return None


def handler_for(module: nn.Module):
    """The registered handler for ``module``'s class (or its nearest registered base class), or None."""
    return _lookup(HANDLERS, module)


def example_for(model: nn.Module):
    make = _lookup(EXAMPLES, model)
    return None if make is None else make(model)


# Helpers -----------------------------------------------------------------------------------------
def set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Replace a parameter by a new one of the same trainability (or remove it with None)."""
    old = getattr(module, name)
    setattr(module, name, None if value is None else nn.Parameter(value.contiguous(),
                                                                   requires_grad=old.requires_grad))


def take(t: torch.Tensor, dim: int, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None else t.detach().index_select(dim, keep.to(t.device))


def add_bias(module: nn.Module, added: torch.Tensor, like: torch.Tensor) -> None:
    """``module.bias += added``, creating the bias where the layer had none."""
    if module.bias is None:
        module.register_parameter("bias", nn.Parameter(added.to(like.dtype), requires_grad=like.requires_grad))
    else:
        set_param(module, "bias", module.bias.detach() + added.to(module.bias.dtype))


def first_call(tracer: Tracer, call: Call) -> bool:
    return id(call.module) not in tracer.graph.calls_by_module


def _first_tensor(value: Any) -> torch.Tensor | None:
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if torch.is_tensor(value) else None


def _input(args, kwargs, name: str = "hidden_states"):
    return args[0] if args else kwargs.get(name, next(iter(kwargs.values()), None))


# Linear-like layers ------------------------------------------------------------------------------
class LinearHandler:
    """``nn.Linear``: output units are weight rows, input units are weight columns (last dimension)."""

    in_dim, out_dim = 1, 0  # of the weight

    def sizes(self, module):
        return module.in_features, module.out_features

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        g, module = tracer.graph, call.module
        x, y = _input(args, kwargs, "input"), _first_tensor(output)
        first = first_call(tracer, call)
        f = tracer.feat(x)
        if f is not None:
            if f.dim == x.dim() - 1:
                call.in_feat = f
                if first:
                    g.add_feature(f, module.weight, self.in_dim, "in", call.name)
            else:
                g.block(f, f"{call.name!r} ({type(module).__name__}) reads another dimension than the units'",
                        unfollowable=True)
        sid = g.new(self.sizes(module)[1], call.name)
        call.out_feat = Feature(y.dim() - 1, (Seg(sid),))
        if first:
            g.add_feature(call.out_feat, module.weight, self.out_dim, "out", call.name)
            if module.bias is not None:
                g.add_feature(call.out_feat, module.bias, 0, "zero", call.name)
        tracer.set(y, call.out_feat)

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        m = call.module
        set_param(m, "weight", take(take(m.weight, self.out_dim, keep_out), self.in_dim, keep_in))
        if m.bias is not None and keep_out is not None:
            set_param(m, "bias", take(m.bias, 0, keep_out))
        self.resize(m)

    def resize(self, m) -> None:
        m.out_features, m.in_features = m.weight.shape[self.out_dim], m.weight.shape[self.in_dim]

    def can_fold(self, call: Call, consts: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(consts, dtype=torch.bool)

    def fold(self, call: Call, cols: torch.Tensor, consts: torch.Tensor) -> None:
        w = call.module.weight.detach()
        added = take(w, self.in_dim, cols).movedim(self.out_dim, 0).reshape(w.shape[self.out_dim], -1) @ consts.to(w.dtype)
        add_bias(call.module, added, call.module.weight)


class Conv1DHandler(LinearHandler):
    """Hugging Face's ``Conv1D`` (GPT-2): a Linear with its weight stored transposed, ``(in, out)``."""

    in_dim, out_dim = 0, 1

    def sizes(self, module):
        return module.nx, module.nf

    def resize(self, m) -> None:
        m.nx, m.nf = m.weight.shape


def _pads_with_zeros(conv: _ConvNd) -> bool:
    """Whether the Conv pads its input with zeros (which breaks a constant channel at the borders)."""
    if conv.padding_mode != "zeros":
        return False  # reflect / replicate / circular padding of a constant is that constant
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size))
    return any(p > 0 for p in conv.padding)


class ConvHandler:
    """``nn.Conv1d/2d/3d``: output channels are weight rows; with ``groups=1`` input channels are its
    columns; a depthwise Conv (one channel per group) keeps each channel with its input channel."""

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        g, m = tracer.graph, call.module
        x, y = _input(args, kwargs, "input"), _first_tensor(output)
        f, first = tracer.feat(x), first_call(tracer, call)
        if m.transposed or (m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)):
            kind = "transposed" if m.transposed else f"grouped (groups={m.groups})"
            g.block(f, f"read by {call.name!r}, a {kind} convolution, which compaction does not cut", unfollowable=True)
            sid = g.new(m.out_channels, call.name, blocked=f"outputs of the {kind} convolution {call.name!r}")
            tracer.set(y, Feature(1, (Seg(sid),)))
            return
        if f is not None and (f.dim != 1 or any(s.inner != 1 for s in f.segs)):
            g.block(f, f"{call.name!r} (Conv) reads them along another dimension than its channels", unfollowable=True)
            f = None
        if m.groups > 1:  # depthwise: channel c in, channel c out
            if f is None:
                sid = g.new(m.out_channels, call.name, blocked=f"channels of the depthwise {call.name!r}'s input")
                f = Feature(1, (Seg(sid),))
            call.in_feat = call.out_feat = f
            if first:
                g.add_feature(f, m.weight, 0, "out", call.name)
                if m.bias is not None:
                    g.add_feature(f, m.bias, 0, "zero", call.name)
            tracer.set(y, f)
            return
        if f is not None:
            call.in_feat = f
            if first:
                g.add_feature(f, m.weight, 1, "in", call.name)
        sid = g.new(m.out_channels, call.name)
        call.out_feat = Feature(1, (Seg(sid),))
        if first:
            g.add_feature(call.out_feat, m.weight, 0, "out", call.name)
            if m.bias is not None:
                g.add_feature(call.out_feat, m.bias, 0, "zero", call.name)
        tracer.set(y, call.out_feat)

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        m = call.module
        if m.groups > 1:
            keep = keep_out if keep_out is not None else keep_in
            if keep is None:
                return
            set_param(m, "weight", take(m.weight, 0, keep))
            if m.bias is not None:
                set_param(m, "bias", take(m.bias, 0, keep))
            m.in_channels = m.out_channels = m.groups = len(keep)
            return
        set_param(m, "weight", take(take(m.weight, 0, keep_out), 1, keep_in))
        if m.bias is not None and keep_out is not None:
            set_param(m, "bias", take(m.bias, 0, keep_out))
        m.out_channels, m.in_channels = m.weight.shape[:2]

    def can_fold(self, call: Call, consts: torch.Tensor) -> torch.Tensor:
        if call.module.groups > 1 or not _pads_with_zeros(call.module):
            return torch.ones_like(consts, dtype=torch.bool)
        return consts == 0  # zero padding: a nonzero constant channel is not constant at the borders

    def fold(self, call: Call, cols: torch.Tensor, consts: torch.Tensor) -> None:
        m = call.module
        if m.groups > 1:
            return  # its channels go with the input channel: nothing reads the removed ones
        w = m.weight.detach()
        added = take(w, 1, cols).flatten(2).sum(2) @ consts.to(w.dtype)
        add_bias(m, added, m.weight)


# Per-channel layers ------------------------------------------------------------------------------
class BatchNormHandler:
    """Batch normalisation acts on each channel alone: its statistics and affine follow the channels."""

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        x, y = _input(args, kwargs, "input"), _first_tensor(output)
        f = tracer.feat(x)
        if f is None:
            return
        if f.dim != 1:
            tracer.graph.block(f, f"{call.name!r} normalises another dimension than the units'", unfollowable=True)
            return
        call.in_feat = call.out_feat = f
        if first_call(tracer, call):
            for attr in ("weight", "bias"):
                if isinstance(getattr(call.module, attr, None), nn.Parameter):
                    tracer.graph.add_feature(f, getattr(call.module, attr), 0, "zero", call.name)
        tracer.set(y, f)

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        m, keep = call.module, keep_out
        if keep is None:
            return
        for attr in ("weight", "bias"):
            if getattr(m, attr, None) is not None:
                set_param(m, attr, take(getattr(m, attr), 0, keep))
        for attr in ("running_mean", "running_var"):
            if getattr(m, attr, None) is not None:
                setattr(m, attr, take(getattr(m, attr), 0, keep).clone())
        if hasattr(m, "num_features"):
            m.num_features = len(keep)
        if hasattr(m, "num_channels"):
            m.num_channels = m.num_groups = len(keep)


class GroupNormHandler(BatchNormHandler):
    """GroupNorm normalises each group of ``C / G`` consecutive channels together: whole groups are
    the units (a group's channels go together, and the group count falls with them)."""

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        m, g = call.module, tracer.graph
        per = m.num_channels // m.num_groups
        x = _input(args, kwargs, "input")
        f = tracer.feat(x)
        if f is not None and per > 1 and f.dim == 1:
            for sid, offset, inner, n in g.layout(f):
                if inner != 1 or offset % per or n % per or not g.coarsen(
                        sid, per, f"normalised in groups of {per} channels by {call.name!r} that do not divide them"):
                    g.block(f, f"normalised in groups of {per} channels by {call.name!r} that straddle layers' units")
        return super().trace(tracer, call, args, kwargs, output)

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        m = call.module
        per = m.num_channels // m.num_groups
        if keep_out is None:
            return
        for attr in ("weight", "bias"):
            if getattr(m, attr, None) is not None:
                set_param(m, attr, take(getattr(m, attr), 0, keep_out))
        m.num_channels, m.num_groups = len(keep_out), len(keep_out) // per


class FeatureNormHandler:
    """LayerNorm / RMSNorm over the units' dimension normalises them together: blocked."""

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        x, y = _input(args, kwargs, "input"), _first_tensor(output)
        f = tracer.feat(x)
        if f is None:
            return
        shape = getattr(call.module, "normalized_shape", None)
        dims = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
        if f.dim >= x.dim() - dims:
            tracer.graph.block(f, f"normalised together by {call.name!r} ({type(call.module).__name__})")
        tracer.set(y, f)

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        return None  # never cuts: what it normalises is blocked


class EmbeddingHandler:
    """An embedding's columns are its output units (no bias: a pruned column outputs zero). Its width
    can go where the graph allows: in a transformer it meets a LayerNorm and stays whole."""

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        y, g = _first_tensor(output), tracer.graph
        sid = g.new(y.shape[-1], call.name)
        call.out_feat = Feature(y.dim() - 1, (Seg(sid),))
        if first_call(tracer, call):
            g.add_feature(call.out_feat, call.module.weight, 1, "out", call.name)
        tracer.set(y, call.out_feat)

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        m = call.module
        if keep_out is not None:
            set_param(m, "weight", take(m.weight, 1, keep_out))
            m.embedding_dim = m.weight.shape[1]


# Attention ---------------------------------------------------------------------------------------
class HeadsHandler:
    """Multi-head attention with query, key and value projections: whole heads are units.

    A head owns its ``d`` rows in each of the query, key and value projections (``fused``: one
    matrix of ``3 H d`` rows, the Q, K, V blocks in order; else three layers) and, when the output
    projection is inside the module (``out``), its ``d`` columns there. Value rows make the unit
    (a head whose value rows are pruned outputs its value bias, whatever it attends to: the
    attention weights sum to 1); query and key rows go with it. Without ``out`` the heads are the
    module's outputs (Hugging Face BERT), read by the next layer like any units. ``allow_empty``:
    the forward copes with zero heads, so every head may go. The embedding width the attention
    reads and writes is left whole.

    Grouped-query attention (``queries``: the attribute holding the query heads per key/value
    head, as LLaMA's ``num_key_value_groups``): a unit is one key/value head with its group of
    query heads. ``heads`` / ``dim`` / ``total`` / ``split`` name the module's attributes that the
    forward reads (the number of heads, each head's width, the width of all heads, the split size
    of the fused projection); ``heads=None`` counts them from the value projection.
    """

    def __init__(self, q: str, k: str | None = None, v: str | None = None, out: str | None = None,
                 heads: str | None = "num_heads", dim: str = "head_dim", total: str | None = None,
                 split: str | None = None, skip_if: str | None = None, allow_empty: bool = False,
                 queries: str | None = None):
        self.q, self.k, self.v, self.out = q, k, v, out
        self.heads, self.dim, self.total, self.split, self.skip_if = heads, dim, total, split, skip_if
        self.fused = k is None
        self.allow_empty = allow_empty  # whether the module's forward copes with no heads at all
        self.queries = queries

    def _layers(self, m):
        return [getattr(m, n) for n in ((self.q,) if self.fused else (self.q, self.k, self.v))]

    @staticmethod
    def _rows_dim(layer) -> int:
        return 1 if isinstance(getattr(layer, "nf", None), int) else 0  # HF Conv1D stores (in, out)

    def _shape(self, m) -> tuple[int, int, int]:
        """(units, head width, query heads per unit)."""
        d = int(getattr(m, self.dim))
        group = int(getattr(m, self.queries)) if self.queries else 1
        if self.heads is None:
            v = self._layers(m)[-1]
            return v.weight.shape[self._rows_dim(v)] // d, d, group
        return int(getattr(m, self.heads)), d, group

    @staticmethod
    def _blocks(units: torch.Tensor, width: int) -> torch.Tensor:
        """Unit ``u``'s ``width`` consecutive entries, for each of ``units``."""
        return units.view(-1, 1) * width + torch.arange(width, device=units.device).view(1, width)

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        g, m = tracer.graph, call.module
        x, y = _input(args, kwargs), _first_tensor(output)
        g.block(tracer.feat(x), f"read by the attention {call.name!r} (its embedding width is left whole)")
        heads, d, group = self._shape(m)
        if (self.skip_if and getattr(m, self.skip_if, False)) or heads < 1:
            sid = g.new(y.shape[-1], call.name, blocked=f"outputs of the attention {call.name!r}")
            tracer.set(y, Feature(y.dim() - 1, (Seg(sid),)))
            return
        first = first_call(tracer, call)
        hid = g.new(heads, f"{call.name} heads")
        if self.allow_empty:
            g.can_empty.add(hid)
        units = torch.arange(heads)
        qs, kv = self._blocks(units, group * d), self._blocks(units, d)
        if first:
            layers = self._layers(m)
            for c, role in enumerate(("aux", "aux", "out")):
                layer = layers[0] if self.fused else layers[c]
                index = (kv + c * heads * d) if self.fused else (qs if c == 0 else kv)
                g.add(hid, layer.weight, self._rows_dim(layer), index, role, call.name)
                if layer.bias is not None:
                    g.add(hid, layer.bias, 0, index, "zero", call.name)
        if self.out is None:
            call.out_feat = Feature(y.dim() - 1, (Seg(hid, group * d),))
            tracer.set(y, call.out_feat)
            return
        proj = getattr(m, self.out)
        if first:
            g.add(hid, proj.weight, 1 - self._rows_dim(proj), qs, "in", call.name)
        call.inner["heads"] = hid
        sid = g.new(y.shape[-1], call.name, blocked=f"outputs of the attention {call.name!r}")
        tracer.set(y, Feature(y.dim() - 1, (Seg(sid),)))

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        m = call.module
        heads, d, group = self._shape(m)
        if self.out is None:
            if keep_out is None:
                return
            keep, fold = keep_out.view(-1, group * d)[:, 0] // (group * d), None
        else:
            if "heads" not in inner:
                return
            keep, fold = inner["heads"]
        qcols, kvcols = self._blocks(keep, group * d).reshape(-1), self._blocks(keep, d).reshape(-1)
        layers = self._layers(m)
        if self.out is not None:
            proj = getattr(m, self.out)
            pdim = 1 - self._rows_dim(proj)
            v = layers[0] if self.fused else layers[2]
            if fold is not None and fold.any() and v.bias is not None:
                # Heads whose value rows are pruned output their value bias (each query head of the
                # group the same one): into the projection's bias.
                offset = 2 * heads * d if self.fused else 0
                v_bias = v.bias.detach()[offset:offset + heads * d].view(heads, 1, d).expand(heads, group, d)
                v_bias = v_bias[fold.to(v_bias.device)].reshape(-1)
                fcols = self._blocks(fold.nonzero().view(-1), group * d).reshape(-1)
                w = take(proj.weight.detach(), pdim, fcols)
                add_bias(proj, (w @ v_bias) if pdim == 1 else (v_bias @ w), proj.weight)
            set_param(proj, "weight", take(proj.weight, pdim, qcols))
            _resize(proj)
        if self.fused:
            layer = layers[0]
            rows = torch.cat([kvcols + c * heads * d for c in range(3)])
            set_param(layer, "weight", take(layer.weight, self._rows_dim(layer), rows))
            if layer.bias is not None:
                set_param(layer, "bias", take(layer.bias, 0, rows))
            _resize(layer)
        else:
            for layer, cols in zip(layers, (qcols, kvcols, kvcols)):
                set_param(layer, "weight", take(layer.weight, 0, cols))
                if layer.bias is not None:
                    set_param(layer, "bias", take(layer.bias, 0, cols))
                _resize(layer)
        kept = len(keep)
        if self.heads is not None:
            setattr(m, self.heads, kept * group)
        if self.total:
            setattr(m, self.total, kept * group * d)
        if self.split:
            setattr(m, self.split, kept * d)


class CompactMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with fewer heads than ``embed_dim // head_dim``, which torch's own
    forward cannot run: what :func:`occamgd.compact` turns a self-attention with pruned heads into.

    Same parameters and call signature (self-attention: ``query``, ``key`` and ``value`` of one
    width; ``attn_mask`` 2-D or ``None``, ``key_padding_mask``, ``need_weights``, ``is_causal``);
    ``num_heads`` heads of ``head_dim`` features each. ``_qkv_same_embed_dim`` is False so that
    ``nn.TransformerEncoderLayer`` takes its ordinary path, which calls this forward.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(1 if not self.batch_first else 0) for t in (query, key, value))
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        heads, d = self.num_heads, self.head_dim
        inner = heads * d
        w, b = self.in_proj_weight, self.in_proj_bias
        q, k, v = (nn.functional.linear(t, w[i * inner:(i + 1) * inner], None if b is None else b[i * inner:(i + 1) * inner])
                   for i, t in enumerate((query, key, value)))
        n, length, source = q.shape[0], q.shape[1], k.shape[1]
        q, k, v = (t.reshape(n, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * d ** -0.5
        mask = nn.functional._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None,
                                             other_name="", target_type=q.dtype, check_other=False)
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError("a compacted MultiheadAttention takes a 2-D attn_mask (or None): a per-head 3-D mask "
                                 "does not say which of the original heads were kept")
            scores = scores + mask
        elif is_causal:
            causal = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        padding = nn.functional._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask", other_type=None,
                                                other_name="", target_type=q.dtype, check_other=False)
        if padding is not None:
            scores = scores + padding.view(n, 1, 1, source)
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = nn.functional.dropout(attn, p=self.dropout)
        y = (attn @ v).transpose(1, 2).reshape(n, length, inner)
        out = self.out_proj(y)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1 if not self.batch_first else 0)
        weights = None
        if need_weights:
            weights = attn.mean(1) if average_attn_weights else attn
            if not batched:
                weights = weights.squeeze(0)
        return out, weights


class MultiheadAttentionHandler(HeadsHandler):
    """``nn.MultiheadAttention`` used as self-attention: heads of its fused ``in_proj_weight`` and the
    columns of ``out_proj``. A compacted one becomes :class:`CompactMultiheadAttention`."""

    def __init__(self):
        super().__init__("in_proj", out="out_proj", heads="num_heads", dim="head_dim")

    def trace(self, tracer: Tracer, call: Call, args, kwargs, output) -> None:
        m = call.module
        inputs = list(args[:3]) + [kwargs.get(k) for k in ("query", "key", "value") if k in kwargs]
        mask = kwargs.get("attn_mask", args[5] if len(args) > 5 else None)
        why = None
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            why = "kdim / vdim, bias_k / bias_v or add_zero_attn"
        elif not (len(inputs) >= 3 and inputs[0] is inputs[1] is inputs[2]):
            why = "cross-attention (query, key and value differ)"
        elif torch.is_tensor(mask) and mask.dim() == 3:
            why = "a per-head 3-D attn_mask"
        if why is None:
            return super().trace(tracer, call, args, kwargs, output)
        g, y = tracer.graph, _first_tensor(output)
        for t in inputs:
            g.block(tracer.feat(t), f"read by the attention {call.name!r}")
        sid = g.new(y.shape[-1], call.name, blocked=f"outputs of {call.name!r}, whose heads stay whole ({why})")
        tracer.set(y, Feature(y.dim() - 1, (Seg(sid),)))

    def _layers(self, m):
        return [_InProj(m)]

    def cut(self, call: Call, keep_in, keep_out, inner) -> None:
        m = call.module
        super().cut(call, keep_in, keep_out, inner)
        if isinstance(m, CompactMultiheadAttention) or "heads" not in inner:
            return
        m.__class__ = CompactMultiheadAttention
        m._qkv_same_embed_dim = False  # torch's fused paths assume every head is there


class _InProj:
    """``nn.MultiheadAttention``'s fused projection seen as a layer (``weight``, ``bias``) for HeadsHandler."""

    def __init__(self, m):
        object.__setattr__(self, "m", m)

    @property
    def weight(self):
        return self.m.in_proj_weight

    @property
    def bias(self):
        return self.m.in_proj_bias

    def __setattr__(self, name, value):
        setattr(self.m, {"weight": "in_proj_weight", "bias": "in_proj_bias"}[name], value)

    def __getattr__(self, name):
        return getattr(self.m, {"weight": "in_proj_weight", "bias": "in_proj_bias"}.get(name, name))


def _resize(layer) -> None:
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = layer.weight.shape
    elif isinstance(getattr(layer, "nf", None), int):
        layer.nx, layer.nf = layer.weight.shape


# Built-in registrations --------------------------------------------------------------------------
register_handler(nn.Linear, LinearHandler())
register_handler(_ConvNd, ConvHandler())
register_handler(_BatchNorm, BatchNormHandler())
register_handler(nn.GroupNorm, GroupNormHandler())
for _norm in (nn.LayerNorm, getattr(nn, "RMSNorm", None), "transformers.models.llama.modeling_llama.LlamaRMSNorm",
              "transformers.models.mistral.modeling_mistral.MistralRMSNorm",
              "transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm"):
    if _norm is not None:
        register_handler(_norm, FeatureNormHandler())
register_handler(nn.Embedding, EmbeddingHandler())
register_handler(nn.MultiheadAttention, MultiheadAttentionHandler())
register_handler("transformers.pytorch_utils.Conv1D", Conv1DHandler())
register_handler("transformers.models.bert.modeling_bert.BertSelfAttention",
                 HeadsHandler("query", "key", "value", heads="num_attention_heads", dim="attention_head_size",
                              total="all_head_size"))
register_handler("transformers.models.vit.modeling_vit.ViTAttention",
                 HeadsHandler("q_proj", "k_proj", "v_proj", out="o_proj", heads="num_attention_heads", dim="head_dim"))
for _family in ("llama", "mistral", "qwen2"):  # q/k/v/o projections, grouped-query heads, head count from -1 views
    register_handler(f"transformers.models.{_family}.modeling_{_family}.{_family.capitalize()}Attention",
                     HeadsHandler("q_proj", "k_proj", "v_proj", out="o_proj", heads=None, dim="head_dim",
                                  queries="num_key_value_groups"))
register_handler("transformers.models.gpt2.modeling_gpt2.GPT2Attention",
                 HeadsHandler("c_attn", out="c_proj", heads="num_heads", dim="head_dim", split="split_size",
                              skip_if="is_cross_attention"))
