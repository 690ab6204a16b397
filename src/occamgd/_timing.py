"""Timing helpers shared by the library's measurements (compaction reports, the char-GPT bench)
and the scripts in ``benchmarks/``."""

from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels; a no-op on CPU.

    GPU kernels run asynchronously: without this before and after a timed region the timer sees
    only the launches.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
