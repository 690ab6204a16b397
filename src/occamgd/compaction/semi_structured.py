"""2:4 semi-structured sparsity: convert N:M-pruned Linear layers for sparse tensor cores (CUDA, fp16 / bf16)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..criteria import is_nm
from ..errors import InvalidTypeError, InvalidValueError

#: Shapes the 2:4 kernels of both torch backends (CUTLASS and cuSPARSELt) accept for fp16 / bf16
#: weights: rows a multiple of 32, columns a multiple of 64.
SEMI_STRUCTURED_MULTIPLES = (32, 64)
#: Below this many input and output features a 2:4 matmul does not beat a dense one on an H100
#: (independent H100 measurements, docs/anchors.md: 0.23x at 4096 cubed, 0.99x at 16384x4096x4096, 1.20x at 8192 cubed).
SEMI_STRUCTURED_MIN_FEATURES = 8192


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
