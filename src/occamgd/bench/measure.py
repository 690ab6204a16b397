"""What a pruned model costs: parameters, bytes on disk, and training FLOPs, dense vs masked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

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


def training_flops(macs: Mapping[str, int], history: Sequence[Mapping], samples_per_epoch: int) -> dict[str, float]:
    """Estimated training FLOPs over the epochs in ``history``, dense and with the masks.

    Forward plus backward is about three forward passes and a MAC is two FLOPs, so an epoch costs
    ``6 * samples * sum(MACs * density)`` over the prunable tensors (biases, norms and activations
    are left out: they are the same for every method).
    """
    dense = masked = 0.0
    for record in history:
        densities = record.get("densities") or {}
        dense += 6.0 * samples_per_epoch * sum(macs.values())
        masked += 6.0 * samples_per_epoch * sum(m * densities.get(n, record.get("density", 1.0)) for n, m in macs.items())
    return {"flops_dense": dense, "flops_masked": masked}
