"""What the guard of ``Guarded`` costs: the memory of its snapshot and its time per epoch.

Before each prune ``Occam`` copies the model's parameters, buffers and masks (to CPU by default) so
that a harmful prune can be rolled back. Per epoch the guard therefore adds at most one snapshot
plus one restore. This script measures both on the paper's MLP (784-1024-10, Adam) and compares
them with one training epoch of the bench's setting (54,000 rows, batch 32: 1,688 steps).

Target: snapshot + restore under 2 % of an epoch.

Run from the repository root on a quiet machine::

    .venv/bin/python benchmarks/guard_cost.py            # 2 threads, 3 epochs, 20 snapshot repeats
    .venv/bin/python benchmarks/guard_cost.py --quick    # smoke test: 5,400 rows
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import occamgd
from _common import setup, write_figures
from occamgd.models import MLP

TARGET = 0.02
BATCH = 32  # the bench's setting the docstring names: 54,000 rows in 1,688 steps


def epoch_seconds(model, opt, X, y, batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(X), batch_size):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(X[i:i + batch_size]), y[i:i + batch_size]).backward()
        opt.step()
    return time.perf_counter() - start


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--rows", type=int, default=54_000, help="training rows per epoch (default 54000)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, the median is taken (default 3)")
    parser.add_argument("--repeats", type=int, default=20, help="timed snapshots and restores (default 20)")
    parser.add_argument("--quick", action="store_true", help="5,400 rows, 1 epoch, 5 repeats")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.epochs, args.repeats = 5_400, 1, 5
    if min(args.threads, args.rows, args.epochs, args.repeats) < 1:
        parser.error("--threads, --rows, --epochs and --repeats must be at least 1")
    _, command, _ = setup(parser, args, "cost of the Guarded schedule's snapshot and rollback")

    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.rows, 784, generator=g)
    y = torch.randint(0, 10, (args.rows,), generator=g)
    torch.manual_seed(0)
    model = MLP(784, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    occam = occamgd.Occam(model, opt, schedule=occamgd.Guarded(warmup=0))
    epoch_seconds(model, opt, X, y, BATCH)  # warm-up
    epoch = statistics.median(epoch_seconds(model, opt, X, y, BATCH) for _ in range(args.epochs))
    occam.step(1.0)
    occam.step(1.0)  # the first prune: Occam now holds a snapshot
    snapshot_bytes = occam.snapshot_bytes
    held = occam._snapshot
    snapshot = timed(occam._take_snapshot, args.repeats)

    def restore():
        occam._snapshot = held
        occam._restore_snapshot()

    rollback = timed(restore, args.repeats)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    ratio = (snapshot + rollback) / epoch
    print(f"model parameters: {params / 2**20:.2f} MiB; snapshot held between prunes: "
          f"{snapshot_bytes / 2**20:.2f} MiB (parameters, buffers and one byte per prunable weight)")
    print(f"epoch ({args.rows:,} rows, batch {BATCH}, median of {args.epochs}): {epoch:.3f} s")
    print(f"snapshot: {snapshot * 1e3:.2f} ms, restore (rollback): {rollback * 1e3:.2f} ms")
    print(f"guard cost per epoch, at most one snapshot and one restore: {ratio:.2%} of an epoch "
          f"-> {'PASS' if ratio < TARGET else 'MISS'} (target < {TARGET:.0%})")

    if args.json:
        write_figures(args.json, "guard_cost", command, {
            "rows": args.rows, "batch_size": BATCH, "epochs": args.epochs, "repeats": args.repeats,
            "parameter_bytes": params, "snapshot_bytes": snapshot_bytes, "epoch_s": epoch, "snapshot_s": snapshot,
            "restore_s": rollback, "ratio": ratio, "target": TARGET, "pass": ratio < TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
