"""Measure a compaction: parameters, bytes, latency and throughput of the masked and the compacted model."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torch import nn

from .._timing import synchronize
from ..errors import InvalidTypeError, InvalidValueError


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
