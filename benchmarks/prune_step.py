"""One pruning step: seconds for ``occam.step(...)`` on models with 10 M and 100 M prunable weights.

What is measured: ``Occam.step`` with ``ConstantRate(0.4)`` on ``nn.Sequential`` of 1000 x 1000
``Linear`` layers (1 M prunable weights each; biases are not prunable), for each criterion:
layerwise (the paper's), global, structured (whole rows) and nm (2:4). A step is the whole
epoch-end call: schedule, both density counts, the criterion (selection of the smallest
magnitudes), the mask update, and zeroing the pruned weights and their Adam moments. Each
criterion is timed on fresh models for the first step (all-ones masks) and for the steps after
it (masks with pruned entries, which the criterion must skip). On CUDA the device is
synchronised before and after every timed step.

Target: the first step with the layerwise criterion on 10 M weights takes under 0.5 s (median).

Run from the repository root::

    .venv/bin/python benchmarks/prune_step.py                 # 10 M and 100 M weights, 5 repeats, CPU
    .venv/bin/python benchmarks/prune_step.py --device cuda   # the same on a GPU
    .venv/bin/python benchmarks/prune_step.py --smoke         # 1 M weights, 2 repeats: checks it runs
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import occamgd
from _common import setup, write_figures
from occamgd._timing import synchronize

TARGET_SECONDS = 0.5
TARGET_WEIGHTS = 10  # millions: the size the target is set for
CRITERIA = ("layerwise", "global", "structured", "nm")
RATE = 0.4
WIDTH = 1000  # a WIDTH x WIDTH layer holds 1 M prunable weights
SEED = 0


def make_occam(layers: int, criterion: str, device: torch.device, optimizer: str) -> occamgd.Occam:
    """A fresh model (same seed every time) wrapped in Occam with ConstantRate(RATE)."""
    torch.manual_seed(SEED)
    model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH, device=device) for _ in range(layers)))
    opt = None
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        # Adam creates its moments lazily; one step on zero gradients creates them (and leaves
        # the weights unchanged), so each prune also zeroes the moments, as it does in training.
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return occamgd.Occam(model, opt, criterion=criterion, schedule=occamgd.ConstantRate(RATE))


def time_steps(occam: occamgd.Occam, steps: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds for each of ``steps`` consecutive ``occam.step`` calls, and the density after each."""
    seconds, densities = [], []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        occam.step(0.0)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        densities.append(occam.density)
    return seconds, densities


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh models per criterion (default 5)")
    parser.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=[10, 100],
        help="prunable weights in millions, rounded up to whole 1000 x 1000 layers (default: 10 100)",
    )
    parser.add_argument("--criteria", nargs="+", choices=CRITERIA, default=list(CRITERIA),
                        help="criteria to time (default: all)")
    parser.add_argument("--steps", type=int, default=3, help="consecutive steps timed per model (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument(
        "--optimizer",
        choices=("adam", "none"),
        default="adam",
        help="attach Adam with its moments created, so each step zeroes them too (default), or none",
    )
    parser.add_argument("--quick", "--smoke", action="store_true", help="smoke test: sets --weights 1 --repeats 2")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.weights, args.repeats = [1], 2
    if min(args.weights) <= 0 or args.repeats < 1 or args.steps < 1:
        parser.error("--weights must be > 0, --repeats and --steps at least 1")
    device, command, hardware = setup(parser, args, "one pruning step (occam.step)")
    print(f"models: n x Linear({WIDTH}, {WIDTH}) (biases not prunable), ConstantRate({RATE}), "
          f"optimizer: {args.optimizer}")
    print(f"per size and criterion: 1 untimed warm-up model, then {args.repeats} fresh models x {args.steps} steps")

    results: dict[str, dict[str, list[dict]]] = {}
    for size in args.weights:
        layers = math.ceil(size)
        per_size = results[f"{layers}M"] = {}
        for criterion in args.criteria:
            # Warm-up, untimed: first-call costs (kernel dispatch, allocator growth, CUDA context).
            time_steps(make_occam(layers, criterion, device, args.optimizer), args.steps, device)
            per_step: list[list[float]] = [[] for _ in range(args.steps)]
            densities: list[float] = []
            for _ in range(args.repeats):
                seconds, densities = time_steps(make_occam(layers, criterion, device, args.optimizer), args.steps, device)
                for k, s in enumerate(seconds):
                    per_step[k].append(s)
            # Same seed and rate for every model, so the densities are the same on every repeat.
            per_size[criterion] = [
                {"step": k + 1, "seconds": t, "median": statistics.median(t), "min": min(t), "density": d}
                for k, (t, d) in enumerate(zip(per_step, densities))
            ]

    print()
    print(f"{'weights':>8} {'criterion':11}{'step':>5}{'median s':>11}{'min s':>9}{'density after':>15}")
    for size, per_size in results.items():
        for criterion, rows in per_size.items():
            for row in rows:
                print(f"{size:>8} {criterion:11}{row['step']:5d}{row['median']:11.4f}{row['min']:9.4f}"
                      f"{row['density']:15.4f}")

    target_key = f"{TARGET_WEIGHTS}M"
    passed = None
    if target_key in results and "layerwise" in results[target_key]:
        first = results[target_key]["layerwise"][0]["median"]
        passed = first < TARGET_SECONDS
        print(
            f"{'PASS' if passed else 'MISS'}: first layerwise step on {TARGET_WEIGHTS} M weights {first:.4f} s "
            f"(median) on {device} against a target of < {TARGET_SECONDS} s"
        )
    else:
        print(f"no target check: it applies to the layerwise criterion on {TARGET_WEIGHTS} M weights")

    if args.json:
        write_figures(args.json, "prune_step", command, {
            "device": str(device), "hardware": hardware, "rate": RATE, "optimizer": args.optimizer,
            "repeats": args.repeats, "results": results, "target_seconds": TARGET_SECONDS, "pass": passed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
