"""Make a pruned network physically smaller and faster, and measure by how much.

Zeros left by unstructured pruning save nothing on ordinary hardware. Here:

- :func:`structured_pruning` picks, for a supported model, the layers whose units (neurons,
  channels, attention heads) can be removed, and the criterion that prunes them whole:
  ``Occam(model, opt, **structured_pruning(model))``.
- :func:`compact` returns a smaller dense copy of the model without the pruned units.
- :func:`to_semi_structured` converts 2:4-sparse Linear layers (see
  :func:`occamgd.criteria.nm_magnitude`) for sparse tensor cores, on CUDA, fp16/bf16.
- :func:`model_size` and :func:`compaction_report` measure parameters, bytes, latency and
  throughput before and after.

What compaction removes, and how the pieces that depend on a unit follow. A unit of a layer
(a row of its weight: a Linear neuron, a Conv output channel; in the GPT an MLP hidden unit or
an attention head) is removed when its whole row is pruned, or when every weight that reads it
in the next layer is pruned. A pruned row still outputs a constant (its bias, through the
activation; a head whose value rows are pruned outputs its value bias): that constant times the
next layer's weights for the unit is added to the next layer's bias, then the unit's row, bias,
normalisation statistics and the next layer's input slices are cut. The compacted model
therefore computes what the masked model computes **in eval mode** (dropout off, batch
normalisation on its running statistics) within float rounding; it is meant for inference.
The last layer's rows are the model's outputs and are never removed; other pruned weights stay
in the copy as zeros. The user's model is never changed.

Supported graphs: ``nn.Sequential`` chains (nested ones too; :class:`occamgd.models.MLP`,
``TabularMLP``, ``CNN``) of Linear, Conv1d/2d/3d (``groups=1``), element-wise activations,
dropout, batch normalisation, max/average pooling and ``Flatten`` (a Conv's channels feed the
following Linear's input columns), and :class:`occamgd.models.GPT` (MLP hidden units and
attention heads of every block). Anything else that stands between a layer with pruned units and
the next layer raises ``ValueError`` naming it.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .errors import InvalidTypeError, InvalidValueError
from ._timing import synchronize
from .criteria import Units, is_nm, structured_criterion
from .models.gpt import GPT, CausalSelfAttention
from .occam import Occam

SUPPORTED = (
    "nn.Sequential chains (occamgd.models.MLP, TabularMLP, CNN) of Linear, Conv1d/2d/3d with groups=1, "
    "element-wise activations, dropout, batch normalisation, max/average pooling and Flatten; "
    "and occamgd.models.GPT"
)

#: Modules that act on each unit alone and map a constant to a constant (kept as they are).
ELEMENTWISE = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.LogSigmoid, nn.Threshold,
)
#: Identity in eval mode, which is where compaction is exact.
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)

#: Shapes the 2:4 kernels of both torch backends (CUTLASS and cuSPARSELt) accept for fp16 / bf16
#: weights: rows a multiple of 32, columns a multiple of 64.
SEMI_STRUCTURED_MULTIPLES = (32, 64)
#: Below this many input and output features a 2:4 matmul does not beat a dense one on an H100
#: (independent H100 measurements, docs/anchors.md: 0.23x at 4096 cubed, 0.99x at 16384x4096x4096, 1.20x at 8192 cubed).
SEMI_STRUCTURED_MIN_FEATURES = 8192


# Masks -----------------------------------------------------------------------------------------
def _masks_of(model: nn.Module, masks_or_occam: Any) -> dict[str, torch.Tensor]:
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


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Replace a parameter by a new one of the same trainability (or remove it with None)."""
    old = getattr(module, name)
    setattr(module, name, None if value is None else nn.Parameter(value, requires_grad=old.requires_grad))


# Chains ----------------------------------------------------------------------------------------
def _is_layer(module: nn.Module) -> bool:
    """A layer whose rows are units: Linear, or a non-transposed, ungrouped Conv."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, _ConvNd) and not module.transposed and module.groups == 1


def _leaves(module: nn.Module, prefix: str = ""):
    """(qualified name, module) in forward order, looking inside nested Sequentials."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, full)
        else:
            yield full, child


@dataclass
class _Link:
    """A layer, the per-unit modules after it, and the layer that reads its units (if any)."""

    name: str
    layer: nn.Module
    between: list[tuple[str, nn.Module]] = field(default_factory=list)
    consumer: tuple[str, nn.Module] | None = None
    #: Why its units cannot be removed (None when they can, or when it is the model's output).
    problem: str | None = None


def _describe(name: str, module: nn.Module) -> str:
    return f"{name!r} ({type(module).__name__})"


def _passes_units(module: nn.Module) -> bool:
    return isinstance(module, ELEMENTWISE + DROPOUT + POOLS + (nn.Flatten,)) or (
        isinstance(module, _BatchNorm) and module.track_running_stats and module.running_mean is not None
    )


def _chain(model: nn.Sequential) -> list[_Link]:
    """The links of a Sequential chain, each with the reason its units cannot go, if any."""
    links: list[_Link] = []
    open_: _Link | None = None
    for name, leaf in _leaves(model):
        if _is_layer(leaf):
            if open_ is not None:
                open_.consumer = (name, leaf)
                open_.problem = open_.problem or _mismatch(open_)
                links.append(open_)
            open_ = _Link(name, leaf)
        elif open_ is None:
            continue  # before the first layer (an input Flatten, say): nothing to carry
        elif open_.problem is None and _passes_units(leaf):
            open_.between.append((name, leaf))
        elif open_.problem is None:
            open_.problem = (
                f"{_describe(name, leaf)} stands between it and the next layer, and compact cannot carry "
                f"removed units through it; supported: {SUPPORTED}"
            )
    if open_ is not None:
        links.append(open_)  # the output layer (or a layer whose units are blocked), never cut
    return links


def _mismatch(link: _Link) -> str | None:
    """Why the consumer cannot read the link's units as separate inputs (None when it can)."""
    units = link.layer.weight.shape[0]
    conv = isinstance(link.layer, _ConvNd)
    name, consumer = link.consumer
    flattened = False
    for bname, between in link.between:
        if isinstance(between, nn.Flatten):
            if not conv or flattened or between.start_dim != 1 or between.end_dim != -1:
                return f"{_describe(bname, between)} mixes its units with other dimensions"
            flattened = True
        elif isinstance(between, _BatchNorm) and (flattened or between.num_features != units):
            return f"{_describe(bname, between)} normalises {between.num_features} features, not its {units} units"
    if conv and not flattened:
        if not isinstance(consumer, _ConvNd) or consumer.in_channels != units:
            return f"the next layer {_describe(name, consumer)} does not read its {units} channels as input channels"
    elif conv:
        if not isinstance(consumer, nn.Linear) or consumer.in_features % units:
            return (
                f"the next layer {_describe(name, consumer)} after Flatten does not read its {units} channels "
                "as equal blocks of input features"
            )
    elif not isinstance(consumer, nn.Linear) or consumer.in_features != units:
        return f"the next layer {_describe(name, consumer)} does not read its {units} outputs as input features"
    return None


def _pads_with_zeros(conv: _ConvNd) -> bool:
    """Whether the Conv pads its input with zeros (which breaks a constant channel at the borders)."""
    if conv.padding_mode != "zeros":
        return False  # reflect / replicate / circular padding of a constant is that constant
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size))
    return any(p > 0 for p in conv.padding)


def _keeps_constants(pool: nn.Module) -> bool:
    """Whether a pooling layer maps a constant channel to the same constant everywhere."""
    if isinstance(pool, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        padding = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,)
        padded = pool.count_include_pad and any(p > 0 for p in padding)
        return not padded and getattr(pool, "divisor_override", None) is None
    return True  # max pooling pads with -inf; adaptive pools average or take the max of a window


def _unit_view(weight: torch.Tensor, units: int) -> torch.Tensor:
    """The consumer's weight as (out, units, entries read from each unit): a Linear's block of
    input columns per unit, or a Conv's kernel per input channel."""
    return weight.reshape(weight.shape[0], units, -1)


@torch.no_grad()
def _compact_link(link: _Link, masks: Mapping[str, torch.Tensor]) -> None:
    """Fold the constants of removable units into the consumer's bias, then cut them."""
    layer = link.layer
    units = layer.weight.shape[0]
    mask = masks.get(f"{link.name}.weight")
    if mask is not None:
        row_pruned = ~mask.reshape(units, -1).any(1)
    else:
        row_pruned = torch.zeros(units, dtype=torch.bool, device=layer.weight.device)
    if link.problem is not None and row_pruned.any():
        raise InvalidValueError(
            f"cannot remove the {int(row_pruned.sum())} pruned units of {_describe(link.name, layer)}: {link.problem}"
        )
    if link.consumer is None or link.problem is not None:
        return  # the model's outputs, or nothing pruned to carry past a module that would block it
    cname, consumer = link.consumer
    cmask = masks.get(f"{cname}.weight")
    col_pruned = torch.zeros_like(row_pruned)
    if cmask is not None:
        col_pruned = ~_unit_view(cmask, units).any(2).any(0)

    # The constant each unit outputs where its row is pruned, carried through the modules between.
    const = layer.bias.detach().clone() if layer.bias is not None else layer.weight.new_zeros(units)
    foldable = torch.ones_like(row_pruned)
    for _, between in link.between:
        if isinstance(between, _BatchNorm):
            scale = torch.rsqrt(between.running_var + between.eps)
            if between.weight is not None:
                scale = scale * between.weight
            const = (const - between.running_mean) * scale
            if between.bias is not None:
                const = const + between.bias
        elif isinstance(between, ELEMENTWISE):
            const = between(const)
        elif isinstance(between, POOLS) and not _keeps_constants(between):
            foldable &= const == 0
    if isinstance(consumer, _ConvNd) and _pads_with_zeros(consumer):
        foldable &= const == 0
    removable = (row_pruned & foldable) | col_pruned
    stuck = row_pruned & ~removable
    if stuck.any():
        warnings.warn(
            f"kept {int(stuck.sum())} pruned units of {_describe(link.name, layer)}: they output a nonzero "
            f"constant that {_describe(cname, consumer)} or a pooling layer before it does not see as a "
            "constant at the borders (zero padding), so it cannot be folded into a bias exactly",
            stacklevel=3,
        )
    if not removable.any():
        return
    keep = ~removable

    cweight = consumer.weight.detach()
    fold = removable & row_pruned & ~col_pruned & (const != 0)
    if fold.any():
        # Each removed unit adds weight * constant to every output of the consumer: into its bias.
        added = _unit_view(cweight, units)[:, fold].sum(2) @ const[fold].to(cweight.dtype)
        bias = consumer.bias.detach() if consumer.bias is not None else None
        if bias is None:
            consumer.register_parameter("bias", nn.Parameter(added, requires_grad=consumer.weight.requires_grad))
        else:
            _set(consumer, "bias", bias + added)

    _set(layer, "weight", layer.weight.detach()[keep].clone())
    if layer.bias is not None:
        _set(layer, "bias", layer.bias.detach()[keep].clone())
    kept = int(keep.sum())
    if isinstance(layer, nn.Linear):
        layer.out_features = kept
    else:
        layer.out_channels = kept
    for _, between in link.between:
        if isinstance(between, _BatchNorm):
            for attr in ("weight", "bias"):
                if getattr(between, attr) is not None:
                    _set(between, attr, getattr(between, attr).detach()[keep].clone())
            between.running_mean = between.running_mean[keep].clone()
            between.running_var = between.running_var[keep].clone()
            between.num_features = kept
    sliced = _unit_view(cweight, units)[:, keep].reshape(cweight.shape[0], -1, *cweight.shape[2:])
    _set(consumer, "weight", sliced.clone())
    if isinstance(consumer, nn.Linear):
        consumer.in_features = sliced.shape[1]
    else:
        consumer.in_channels = kept


def _check_leaves(model: nn.Sequential, links: list[_Link], masks: Mapping[str, torch.Tensor]) -> None:
    """Refuse pruned units inside modules the chain walk does not know (they would stay silently)."""
    layers = {link.name for link in links}
    for name, leaf in _leaves(model):
        if name in layers or _is_layer(leaf):
            continue
        for pname, param in leaf.named_parameters():
            mask = masks.get(f"{name}.{pname}")
            if mask is not None and mask.dim() >= 2 and (~mask.reshape(mask.shape[0], -1).any(1)).any():
                raise InvalidValueError(
                    f"{_describe(name, leaf)} has whole rows of {pname!r} pruned, but compact does not know "
                    f"how its outputs are used; supported: {SUPPORTED}"
                )


# GPT -------------------------------------------------------------------------------------------
@torch.no_grad()
def _compact_heads(attn: CausalSelfAttention, prefix: str, masks: Mapping[str, torch.Tensor]) -> None:
    """Remove the heads whose value rows, or whose columns of ``c_proj``, are all pruned."""
    heads, d = attn.n_head, attn.head_dim
    if heads == 0:
        return
    inner = heads * d
    weight = attn.c_attn.weight.detach()
    amask = masks.get(f"{prefix}.c_attn.weight")
    v_pruned = torch.zeros(heads, dtype=torch.bool, device=weight.device)
    if amask is not None:
        v_pruned = ~amask[2 * inner:].reshape(heads, -1).any(1)
    pmask = masks.get(f"{prefix}.c_proj.weight")
    col_pruned = torch.zeros_like(v_pruned)
    if pmask is not None:
        col_pruned = ~pmask.reshape(pmask.shape[0], heads, d).any(2).any(0)
    removable = v_pruned | col_pruned
    if not removable.any():
        return
    keep = ~removable
    proj = attn.c_proj.weight.detach()
    fold = v_pruned & ~col_pruned
    if attn.c_attn.bias is not None and fold.any():
        # A head whose value rows are pruned averages its value bias over the positions it sees
        # (attention weights sum to 1): a constant, folded into c_proj's bias.
        v_bias = attn.c_attn.bias.detach()[2 * inner:].reshape(heads, d)
        added = torch.einsum("ohd,hd->o", proj.reshape(proj.shape[0], heads, d)[:, fold], v_bias[fold])
        if attn.c_proj.bias is None:
            attn.c_proj.register_parameter("bias", nn.Parameter(added, requires_grad=proj.requires_grad))
        else:
            _set(attn.c_proj, "bias", attn.c_proj.bias.detach() + added)
    rows = keep.view(1, heads, 1).expand(3, heads, d).reshape(-1)
    _set(attn.c_attn, "weight", weight[rows].clone())
    if attn.c_attn.bias is not None:
        _set(attn.c_attn, "bias", attn.c_attn.bias.detach()[rows].clone())
    kept = int(keep.sum())
    attn.c_attn.out_features = 3 * kept * d
    _set(attn.c_proj, "weight", proj.reshape(proj.shape[0], heads, d)[:, keep].reshape(proj.shape[0], -1).clone())
    attn.c_proj.in_features = kept * d
    attn.n_head = kept


def _compact_gpt(model: GPT, masks: Mapping[str, torch.Tensor]) -> None:
    for i, block in enumerate(model.transformer.h):
        prefix = f"transformer.h.{i}"
        mlp = block.mlp
        link = _Link(f"{prefix}.mlp.c_fc", mlp.c_fc, [(f"{prefix}.mlp.gelu", mlp.gelu)],
                     (f"{prefix}.mlp.c_proj", mlp.c_proj))
        _compact_link(link, masks)
        _compact_heads(block.attn, f"{prefix}.attn", masks)


# Public API ------------------------------------------------------------------------------------
def compact(model: nn.Module, masks_or_occam: Occam | Mapping[str, torch.Tensor]) -> nn.Module:
    """A smaller dense copy of ``model`` without its removable pruned units.

    ``masks_or_occam``: the :class:`occamgd.Occam` that pruned ``model``, its ``.masks``, or a
    mapping parameter name -> bool mask (True = kept). The copy is ``model``'s class, on its
    device and dtype and in its train/eval mode; with the masks applied it computes the same
    outputs in eval mode (see the module's documentation for what is removed and how biases are
    folded). ``model`` itself is left as it was.

    Raises ``TypeError`` for a model that is not a supported graph, and ``ValueError`` naming the
    layer when pruned units meet a module that compaction cannot carry them through.
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(model, (nn.Sequential, GPT)):
        raise InvalidTypeError(f"compact does not support {type(model).__name__}; supported: {SUPPORTED}")
    masks = _masks_of(model, masks_or_occam)
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    if isinstance(out, GPT):
        _compact_gpt(out, masks)
    else:
        links = _chain(out)
        _check_leaves(out, links, masks)
        for link in links:
            _compact_link(link, masks)
    return out


def structured_pruning(model: nn.Module) -> dict[str, Any]:
    """``include`` and ``criterion`` for ``Occam`` so that pruning removes whole units that
    :func:`compact` can cut: ``Occam(model, optimizer, **structured_pruning(model))``.

    - Sequential chains: every Linear / Conv layer whose outputs feed another layer through
      supported modules, its rows (neurons, channels) pruned by L2 norm; the output layer is left
      whole, so a classifier keeps all its classes.
    - :class:`occamgd.models.GPT`: each block's ``mlp.c_fc`` (hidden units) and ``attn.c_attn``
      (whole heads: their query, key and value rows together).

    The rate is the fraction of each layer's remaining units pruned per step.
    """
    if isinstance(model, GPT):
        include, units = [], {}
        for i, block in enumerate(model.transformer.h):
            c_attn = f"transformer.h.{i}.attn.c_attn.weight"
            include += [c_attn, f"transformer.h.{i}.mlp.c_fc.weight"]
            units[c_attn] = Units(size=block.attn.head_dim, chunks=3)
        return {"include": include, "criterion": structured_criterion(units)}
    if not isinstance(model, nn.Sequential):
        raise InvalidTypeError(f"structured_pruning does not support {type(model).__name__}; supported: {SUPPORTED}")
    include = [f"{link.name}.weight" for link in _chain(model) if link.consumer and link.problem is None]
    if not include:
        raise InvalidValueError(
            f"{type(model).__name__} has no layer whose units compact can remove (a Linear or Conv followed by "
            f"another through supported modules); supported: {SUPPORTED}"
        )
    return {"include": include, "criterion": "structured"}


def to_semi_structured(
    model: nn.Module, min_features: int = SEMI_STRUCTURED_MIN_FEATURES, inplace: bool = False
) -> nn.Module:
    """Convert eligible 2:4-sparse Linear layers to ``torch.sparse.to_sparse_semi_structured``.

    For inference on a CUDA GPU with sparse tensor cores (compute capability 8.0 or newer). A
    Linear layer is converted when its weight is fp16 or bf16 on CUDA, has at most 2 nonzeros in
    every 4 consecutive input weights (prune with :func:`occamgd.criteria.nm_magnitude` first),
    has rows a multiple of 32 and columns a multiple of 64, and both its input and output features
    are at least ``min_features``: below about 8192 the sparse kernel is slower than dense on an
    H100 (measure yours with ``benchmarks/sparse24.py``). The other layers stay dense. Returns a
    converted copy (``inplace=True`` converts ``model`` itself, to spare GPU memory).

    Raises ``ValueError`` without CUDA, for a model off the GPU, or when no layer is eligible
    (with each layer's reason).
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(min_features, int) and not isinstance(min_features, bool) and min_features >= 1):
        raise InvalidValueError(f"min_features must be an integer >= 1, got {min_features!r}")
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidValueError(f"{type(model).__name__} has no Linear layer to convert to 2:4 semi-structured sparsity")
    if not torch.cuda.is_available():
        raise InvalidValueError(
            f"to_semi_structured needs CUDA (2:4 sparse tensor cores), but this torch {torch.__version__} has no "
            "CUDA device; accepted: a model on a CUDA GPU of compute capability >= 8.0, in float16 or bfloat16"
        )
    if not any(m.weight.is_cuda for _, m in linears):
        devices = sorted({str(m.weight.device) for _, m in linears})
        raise InvalidValueError(
            f"to_semi_structured needs the model on a CUDA GPU, but its Linear weights are on {devices}; "
            "accepted: model.to('cuda', torch.float16) (or torch.bfloat16) first"
        )
    from torch.sparse import to_sparse_semi_structured

    reasons = {}
    eligible = []
    for name, m in linears:
        w = m.weight
        if not w.is_cuda:
            reasons[name] = f"on {w.device}"
        elif torch.cuda.get_device_capability(w.device) < (8, 0):
            reasons[name] = f"GPU {torch.cuda.get_device_name(w.device)} has no sparse tensor cores (sm < 80)"
        elif w.dtype not in (torch.float16, torch.bfloat16):
            reasons[name] = f"dtype {w.dtype}, not float16 / bfloat16"
        elif w.shape[0] % SEMI_STRUCTURED_MULTIPLES[0] or w.shape[1] % SEMI_STRUCTURED_MULTIPLES[1]:
            reasons[name] = f"shape {tuple(w.shape)} is not a multiple of {SEMI_STRUCTURED_MULTIPLES}"
        elif min(w.shape) < min_features:
            reasons[name] = f"shape {tuple(w.shape)} is below min_features={min_features}"
        elif not is_nm(w, 2, 4):
            reasons[name] = "not 2:4 sparse (more than 2 nonzeros in some group of 4 input weights)"
        else:
            eligible.append(name)
    if not eligible:
        raise InvalidValueError(
            "no Linear layer is eligible for 2:4 semi-structured sparsity: "
            + "; ".join(f"{n!r}: {r}" for n, r in reasons.items())
        )
    out = model if inplace else copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name in eligible:
        layer = modules[name]
        layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)
    return out


# Measuring -------------------------------------------------------------------------------------
def model_size(model: nn.Module) -> dict[str, int]:
    """Parameters (tied ones once) and bytes of parameters and buffers, as stored in memory."""
    params = list(model.parameters())
    tensors = params + [b for b in model.buffers()]
    return {
        "parameters": sum(p.numel() for p in params),
        "bytes": sum(t.numel() * t.element_size() for t in tensors),
    }


def _first_tensor(output: Any) -> torch.Tensor:
    """The model's main output (the logits of a GPT's ``(logits, loss)``)."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


@torch.no_grad()
def compaction_report(
    model: nn.Module, compacted: nn.Module, example: torch.Tensor, repeats: int = 20, warmup: int = 3
) -> dict[str, Any]:
    """Size and measured speed of ``model`` (masked, dense) and ``compacted`` on one batch.

    Both run in eval mode (their modes are restored after) on ``example``, alternating which goes
    first every repeat so that drift of the machine's speed hits both alike. Returns
    ``{"before": {...}, "after": {...}, "ratio": {...}, "max_abs_diff", "batch", "repeats",
    "device"}`` where each side has ``parameters``, ``bytes``, ``latency_s`` (median seconds
    per forward of the batch), ``latency_min_s`` and ``throughput`` (examples per second at the
    median), and ``ratio`` holds after / before for ``parameters`` and ``bytes`` and before /
    after for ``latency`` (the speed-up).
    """
    if not (isinstance(repeats, int) and repeats >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise InvalidValueError(f"repeats must be an integer >= 1 and warmup >= 0, got repeats={repeats!r}, warmup={warmup!r}")
    if not torch.is_tensor(example) or example.dim() < 1:
        raise InvalidTypeError(f"example must be a batch tensor (first dimension = examples), got {type(example).__name__}")
    models = {"before": model, "after": compacted}
    modes = {k: m.training for k, m in models.items()}
    device = example.device
    times: dict[str, list[float]] = {"before": [], "after": []}
    try:
        for m in models.values():
            m.eval()
        outputs = {k: _first_tensor(m(example)) for k, m in models.items()}
        for _ in range(warmup):
            for m in models.values():
                m(example)
        for r in range(repeats):
            for key in ("before", "after") if r % 2 == 0 else ("after", "before"):
                synchronize(device)
                start = time.perf_counter()
                models[key](example)
                synchronize(device)
                times[key].append(time.perf_counter() - start)
    finally:
        for k, m in models.items():
            m.train(modes[k])
    batch = example.shape[0]
    report: dict[str, Any] = {"batch": batch, "repeats": repeats, "device": str(device)}
    for key, m in models.items():
        latency = statistics.median(times[key])
        report[key] = {**model_size(m), "latency_s": latency, "latency_min_s": min(times[key]),
                       "throughput": batch / latency if latency > 0 else math.inf}
    before, after = report["before"], report["after"]
    report["ratio"] = {
        "parameters": after["parameters"] / before["parameters"],
        "bytes": after["bytes"] / before["bytes"],
        "latency": before["latency_s"] / after["latency_s"] if after["latency_s"] > 0 else math.inf,
    }
    diff = (outputs["before"].float() - outputs["after"].float()).abs()
    report["max_abs_diff"] = float(diff.max()) if diff.numel() else 0.0
    return report
