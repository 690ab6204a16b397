"""What every benchmark does first and last: the header about the machine, and the JSON figures."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from occamgd.io import atomic_write_text


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or 'unknown' where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def setup(
    parser: argparse.ArgumentParser, args: argparse.Namespace, title: str, device_note: str = ""
) -> tuple[torch.device | None, str, str]:
    """Check ``--device``, set torch's threads to ``--threads`` and print the header lines.

    The header: ``occamgd benchmark: <title>``, the exact command line, the torch version with
    the thread count and the CPU model, and (for scripts with ``--device``) the device with its
    hardware name, followed by ``device_note``. Returns ``(device, command, hardware)``;
    ``device`` is None, and ``hardware`` the CPU model, for scripts without ``--device`` (those
    that run on the CPU only, and sparse24.py, which checks its GPU itself).
    """
    device = None
    if getattr(args, "device", None) is not None:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            # Refuse rather than quietly timing the CPU under a GPU label.
            parser.error(f"--device {args.device}: CUDA is not available in this torch ({torch.__version__})")
    torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv])
    cpu = cpu_model()
    hardware = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else cpu
    print(f"occamgd benchmark: {title}")
    print(f"command: {command}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU: {cpu}")
    if device is not None:
        print(f"device: {device} ({hardware}){device_note}")
    return device, command, hardware


def write_figures(path: Path, benchmark: str, command: str, fields: Mapping[str, Any]) -> None:
    """Write the figures as JSON at ``path`` (atomically: a reader never sees half a file).

    The file starts with what identifies the run (``benchmark``, ``command``, the torch version,
    the thread count and the CPU model), then ``fields`` in their order.
    """
    figures = {"benchmark": benchmark, "command": command, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "cpu": cpu_model(), **fields}
    atomic_write_text(json.dumps(figures, indent=2) + "\n", path)
    print(f"figures written to {path}")
