"""Measure a compaction: parameters, bytes, latency and throughput of the masked and the compacted model."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
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
    """The model's main output: the logits of a GPT's ``(logits, loss)`` or of a Hugging Face ModelOutput."""
    while not torch.is_tensor(output):
        if isinstance(output, Mapping):
            output = output["logits"] if "logits" in output else next(iter(output.values()))
        else:
            output = output[0]
    return output


def _batch(example: Any) -> tuple[tuple, dict, torch.Tensor]:
    """``(args, kwargs, first tensor)`` of an example: a batch tensor, a tuple of them, or a dict of keyword inputs."""
    if torch.is_tensor(example):
        args, kwargs = (example,), {}
    elif isinstance(example, tuple):
        args, kwargs = example, {}
    elif isinstance(example, Mapping):
        args, kwargs = (), dict(example)
    else:
        args, kwargs = (), {}
    first = next((t for t in list(args) + list(kwargs.values()) if torch.is_tensor(t)), None)
    if first is None or first.dim() < 1:
        raise InvalidTypeError(
            f"example must be a batch tensor (first dimension = examples), a tuple of them or a dict of keyword "
            f"inputs, got {type(example).__name__}"
        )
    return args, kwargs, first


@torch.no_grad()
def compaction_report(
    model: nn.Module, compacted: nn.Module, example: Any, repeats: int = 20, warmup: int = 3
) -> dict[str, Any]:
    """Size and measured speed of ``model`` (masked, dense) and ``compacted`` on one batch.

    Both run in eval mode (their modes are restored after) on ``example`` (a batch tensor, a tuple
    of positional inputs, or a dict of keyword inputs such as a tokenizer's), alternating which goes
    first every repeat so that drift of the machine's speed hits both alike. Returns
    ``{"before": {...}, "after": {...}, "ratio": {...}, "max_abs_diff", "batch", "repeats",
    "device"}`` where each side has ``parameters``, ``bytes``, ``latency_s`` (median seconds
    per forward of the batch), ``latency_min_s`` and ``throughput`` (examples per second at the
    median), and ``ratio`` holds after / before for ``parameters`` and ``bytes`` and before /
    after for ``latency`` (the speed-up).
    """
    if not (isinstance(repeats, int) and repeats >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise InvalidValueError(f"repeats must be an integer >= 1 and warmup >= 0, got repeats={repeats!r}, warmup={warmup!r}")
    args, kwargs, first = _batch(example)
    models = {"before": model, "after": compacted}
    modes = {k: m.training for k, m in models.items()}
    device = first.device
    times: dict[str, list[float]] = {"before": [], "after": []}
    try:
        for m in models.values():
            m.eval()
        outputs = {k: _first_tensor(m(*args, **kwargs)) for k, m in models.items()}
        for _ in range(warmup):
            for m in models.values():
                m(*args, **kwargs)
        for r in range(repeats):
            for key in ("before", "after") if r % 2 == 0 else ("after", "before"):
                synchronize(device)
                start = time.perf_counter()
                models[key](*args, **kwargs)
                synchronize(device)
                times[key].append(time.perf_counter() - start)
    finally:
        for k, m in models.items():
            m.train(modes[k])
    batch = first.shape[0]
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
