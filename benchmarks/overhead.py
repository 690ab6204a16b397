"""Mask-enforcement overhead: seconds per training epoch with Occam's masks vs plain training.

What is measured: one training epoch of an MLP 784-1024-10 (Flatten, Linear(784, 1024), ReLU,
Dropout(0.2), Linear(1024, 10)) with batch size 128 and Adam(lr=1e-3) on CPU, once plain and
once wrapped in ``occamgd.Occam`` with about 75 % of the prunable weights pruned, so that the
optimizer hook (re-zero pruned weights after each step; with ``--zero-state step`` their Adam
moments too) runs on every batch with realistic masks.

Target: the ratio of median seconds per epoch, occam / plain, is at most 1.03 (overhead within
3 %).

Run from the repository root::

    .venv/bin/python benchmarks/overhead.py            # full size: 60,000 rows, 7 repeats
    .venv/bin/python benchmarks/overhead.py --quick    # 6,000 rows, 3 repeats: a smoke test
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import occamgd
from _common import cpu_model

TARGET_OVERHEAD = 0.03
FEATURES, HIDDEN, CLASSES = 784, 1024, 10
SEED = 0
# Adam's implementations differ in how they handle exact-zero second moments (torch.sqrt of 0.0
# is about 8x slower than of a positive number on this CPU), so they can be compared.
ADAM_IMPLS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def make_model() -> nn.Module:
    # Same seed for both methods: identical initial weights, so both do the same work.
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(HIDDEN, CLASSES),
    )


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Seconds for one epoch over already-shuffled tensors; batches are views, not copies."""
    model.train()
    start = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per method (default 7)")
    parser.add_argument("--rows", type=int, default=60_000, help="training rows per epoch (default 60000)")
    parser.add_argument("--batch-size", type=int, default=128, help="default 128")
    parser.add_argument(
        "--adam",
        choices=sorted(ADAM_IMPLS),
        default="default",
        help="Adam implementation for both methods (default: torch's choice, the for-loop one on CPU)",
    )
    parser.add_argument(
        "--zero-state",
        choices=("prune", "step"),
        default="prune",
        help="Occam's zero_state: optimizer state of pruned weights zeroed at each prune (default) or every step",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: sets --rows 6000 --repeats 3")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 6_000, 3

    torch.set_num_threads(args.threads)
    steps = -(-args.rows // args.batch_size)
    print("occamgd benchmark: mask-enforcement overhead per training epoch")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU: {cpu_model()}")
    print(
        f"data: {args.rows:,} x {FEATURES} float32, {CLASSES} classes, random values from seed {SEED} "
        "(the speed of dense matmuls does not depend on the values)"
    )
    print(
        f"model: MLP {FEATURES}-{HIDDEN}-{CLASSES} with Dropout(0.2), Adam(lr=1e-3, {args.adam}), "
        f"batch {args.batch_size}, {steps} steps per epoch"
    )

    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(args.rows, FEATURES, generator=gen)
    y = torch.randint(0, CLASSES, (args.rows,), generator=gen)

    plain_model = make_model()
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3, **ADAM_IMPLS[args.adam])

    occam_model = make_model()
    occam_opt = torch.optim.Adam(occam_model.parameters(), lr=1e-3, **ADAM_IMPLS[args.adam])
    occam = occamgd.Occam(occam_model, occam_opt, schedule=occamgd.ConstantRate(0.5), zero_state=args.zero_state)
    # Two prunes at 0.5 leave ~25 % of the weights: masks as they are mid-training, not all-ones.
    occam.step(0.0)
    occam.step(0.0)
    print(
        f"occam: zero_state={args.zero_state!r}, ConstantRate(0.5) stepped twice -> density {occam.density:.4f} "
        f"({1 - occam.density:.1%} of {occam.masks.total:,} prunable weights pruned)"
    )

    runs = {"plain": (plain_model, plain_opt), "occam": (occam_model, occam_opt)}
    times: dict[str, list[float]] = {"plain": [], "occam": []}

    def shuffled() -> tuple[torch.Tensor, torch.Tensor]:
        # Gathered outside the timed region, so only the training steps are timed.
        perm = torch.randperm(args.rows, generator=gen)
        return x[perm], y[perm]

    # Warm-up, untimed: first-call costs (allocator, kernel selection, Adam state creation).
    xs, ys = shuffled()
    for model, opt in runs.values():
        train_epoch(model, opt, xs, ys, args.batch_size)

    for r in range(args.repeats):
        xs, ys = shuffled()
        # Alternate who goes first, so slow drift of the machine's speed hits both alike.
        order = ("plain", "occam") if r % 2 == 0 else ("occam", "plain")
        for name in order:
            times[name].append(train_epoch(*runs[name], xs, ys, args.batch_size))
        print(f"repeat {r + 1}/{args.repeats}: plain {times['plain'][-1]:.3f} s, occam {times['occam'][-1]:.3f} s")

    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    ratio = median["occam"] / median["plain"]
    overhead = ratio - 1.0
    passed = overhead <= TARGET_OVERHEAD

    print()
    print(f"{'':8}{'median s/epoch':>16}{'min s/epoch':>14}")
    for name in times:
        print(f"{name:8}{median[name]:16.4f}{best[name]:14.4f}")
    print(f"ratio of mins   occam/plain: {best['occam'] / best['plain']:.4f}")
    print(f"ratio of medians occam/plain: {ratio:.4f} -> overhead {overhead:+.2%}")
    print(f"{'PASS' if passed else 'MISS'}: overhead {overhead:+.2%} against a target of <= {TARGET_OVERHEAD:.0%}")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "overhead",
                    "command": shlex.join([sys.executable, *sys.argv]),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cpu": cpu_model(),
                    "rows": args.rows,
                    "batch_size": args.batch_size,
                    "adam": args.adam,
                    "zero_state": args.zero_state,
                    "repeats": args.repeats,
                    "density": occam.density,
                    "seconds_per_epoch": times,
                    "median": median,
                    "min": best,
                    "ratio_of_medians": ratio,
                    "overhead": overhead,
                    "target_overhead": TARGET_OVERHEAD,
                    "pass": passed,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
