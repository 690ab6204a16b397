"""What a pruned model costs: parameters, bytes on disk, training FLOPs (dense, masked, as run), and
inference throughput of the final model beside the dense one."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._timing import synchronize
from ..errors import InvalidValueError
from ..masks import module_weights, select_prunable, unwrapped_names


def model_size(model: nn.Module, densities: Mapping[str, float] | None = None) -> dict[str, float]:
    """Parameter counts and bytes, dense and sparse.

    Sparse bytes store the kept prunable values plus a 1-bit mask per prunable weight, and every
    other parameter densely: a format any loader can rebuild the dense tensor from.
    """
    prunable = select_prunable(model)
    densities = densities or {}
    params = sum(p.numel() for p in model.parameters())
    bytes_dense = sum(p.numel() * p.element_size() for p in model.parameters())
    total = sum(p.numel() for p in prunable.values())
    kept = sum(round(p.numel() * densities.get(name, 1.0)) for name, p in prunable.items())
    kept_bytes = sum(round(p.numel() * densities.get(name, 1.0)) * p.element_size() for name, p in prunable.items())
    other_bytes = bytes_dense - sum(p.numel() * p.element_size() for p in prunable.values())
    return {
        "params": params,
        "prunable": total,
        "kept": kept,
        "bytes_dense": bytes_dense,
        "bytes_sparse": kept_bytes + (total + 7) // 8 + other_bytes,
    }


def macs_per_sample(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of one forward pass per prunable weight tensor, for one sample.

    A weight used at P output positions (a convolution's output pixels, a linear layer applied
    to every token) costs ``numel * P`` MACs; an embedding lookup costs none. Measured with forward
    hooks on ``example[:1]``.
    """
    prunable = select_prunable(model)
    unwrap = unwrapped_names(model)
    owners = {(f"{unwrap(name)}.{w}" if unwrap(name) else w): module for name, module in model.named_modules()
              for w in module_weights(module)}
    positions: dict[str, int] = {}
    handles = []
    for name in prunable:
        module = owners.get(name)
        if module is None:
            continue

        def hook(mod, inputs, output, name=name):
            if isinstance(mod, nn.Embedding):
                positions[name] = 0  # a lookup, not a product
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                positions[name] = output[0, 0].numel()  # output positions of one sample, one channel
            else:
                if isinstance(output, tuple):  # a recurrent layer: (outputs, hidden state)
                    output = output[0]
                positions[name] = output.numel() // output.shape[-1]  # rows the layer is applied to

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: prunable[name].numel() * positions.get(name, 1) for name in prunable}


def training_flops(macs: Mapping[str, int], history: Sequence[Mapping], samples_per_epoch: int,
                   numel: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Estimated training FLOPs over the epochs in ``history``: dense, with the masks, and as run.

    Forward plus backward is about three forward passes and a MAC is two FLOPs, so an epoch costs
    ``6 * samples * sum(MACs * fraction)`` over the prunable tensors (biases, norms and activations
    are left out: they are the same for every method). ``macs`` are the dense model's. Masked
    (``flops_masked``): the fraction is each tensor's density (what a sparse kernel would do;
    tensors absent from a record's ``densities`` count whole). As run (``flops_run`` and
    ``flops_per_epoch``): dense kernels on the live shapes, so a masked run costs the dense figure
    and a shrinking run the share of each tensor it still held that epoch (a record's ``live``
    entries over ``numel``, the dense tensor's entries).
    """
    dense = masked = run = 0.0
    per_epoch = []
    epoch_dense = 6.0 * samples_per_epoch * sum(macs.values())
    for record in history:
        densities = record.get("densities") or {}
        default = 1.0 if densities else record.get("density", 1.0)
        live = record.get("live") or {}
        if live and numel is None:
            raise InvalidValueError("training_flops: a history with live sizes (a shrinking run) needs numel, the "
                                    "dense tensors' entries; accepted: numel={name: dense numel}")
        dense += epoch_dense
        masked += 6.0 * samples_per_epoch * sum(m * densities.get(n, default) for n, m in macs.items())
        epoch = 6.0 * samples_per_epoch * sum(m * (live[n] / numel[n] if n in live else 1.0) for n, m in macs.items())
        run += epoch
        per_epoch.append(epoch)
    return {"flops_dense": dense, "flops_masked": masked, "flops_run": run, "flops_per_epoch": per_epoch}


def parameter_counts(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
    """``live_params``: the entries the model holds (a shrunk model's live shapes); ``final_params``: those
    of them not masked to zero (the kept count of a masked run, the live count of a shrunk one less any
    units it could not remove)."""
    live = sum(p.numel() for p in model.parameters())
    masked = sum(int(m.numel() - m.sum()) for m in (masks or {}).values())
    return {"live_params": live, "final_params": live - masked}


def _batch_of(example: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` rows from ``example``, repeated where it has fewer."""
    if len(example) == 0:
        raise InvalidValueError("inference_throughput needs an example batch with at least one row")
    reps = math.ceil(size / len(example))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:size] if reps > 1 else example[:size]


@torch.no_grad()
def inference_throughput(models: Mapping[str, nn.Module], example: torch.Tensor, batch_sizes: Sequence[int] = (1, 256),
                         warmup: int = 3, repeats: int = 7, min_seconds: float = 0.02) -> dict[str, dict[int, float]]:
    """Samples per second of each model at each batch size: eval mode, no gradients, the threads the process
    has set. ``warmup`` calls first, then ``repeats`` timed repetitions, the models alternating in every one so
    that drift of the machine hits them alike; a repetition runs as many calls as make ``min_seconds`` (found
    in the warm-up), and the median repetition is reported. The models run as they are: a masked model at
    its dense shapes and speed."""
    if not (isinstance(repeats, int) and repeats >= 1 and isinstance(warmup, int) and warmup >= 1):
        raise InvalidValueError(f"repeats and warmup must be integers >= 1, got repeats={repeats!r}, warmup={warmup!r}")
    modes = {k: m.training for k, m in models.items()}
    out: dict[str, dict[int, float]] = {k: {} for k in models}
    try:
        for m in models.values():
            m.eval()
        for size in batch_sizes:
            x = {k: _batch_of(example, size).to(next(m.parameters()).device) for k, m in models.items()}
            calls = {}
            for k, m in models.items():
                device = x[k].device
                synchronize(device)
                start = time.perf_counter()
                for _ in range(warmup):
                    m(x[k])
                synchronize(device)
                per_call = (time.perf_counter() - start) / warmup
                calls[k] = max(1, math.ceil(min_seconds / per_call)) if per_call > 0 else 1
            times: dict[str, list[float]] = {k: [] for k in models}
            for r in range(repeats):
                for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                    m, device = models[k], x[k].device
                    synchronize(device)
                    start = time.perf_counter()
                    for _ in range(calls[k]):
                        m(x[k])
                    synchronize(device)
                    times[k].append((time.perf_counter() - start) / calls[k])
            for k in models:
                median = statistics.median(times[k])
                out[k][size] = size / median if median > 0 else math.inf
    finally:
        for k, m in models.items():
            m.train(modes[k])
    return out


#: How the bench times inference (:func:`inference_throughput`'s settings): batch sizes and repetitions.
THROUGHPUT: dict[str, Any] = {"batch_sizes": (1, 256), "warmup": 3, "repeats": 5, "min_seconds": 0.01}


def throughput_fields(model: nn.Module, dense: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """A record's throughput fields: ``throughput_b<n>`` of the final model, ``dense_throughput_b<n>`` of the
    task's dense model, measured side by side (:func:`inference_throughput` with :data:`THROUGHPUT`), and
    the threads used."""
    batch_sizes = THROUGHPUT["batch_sizes"]
    speeds = inference_throughput({"final": model, "dense": dense}, example, batch_sizes, THROUGHPUT["warmup"],
                                  THROUGHPUT["repeats"], THROUGHPUT["min_seconds"])
    fields: dict[str, float] = {"threads": torch.get_num_threads()}
    for size in batch_sizes:
        fields[f"throughput_b{size}"] = speeds["final"][size]
        fields[f"dense_throughput_b{size}"] = speeds["dense"][size]
    return fields
