"""What the default controller costs over plain training: time of a whole ``occamgd.fit`` and the copies it holds.

``occamgd.fit`` with the default controller (``Guarded``; ``--schedule`` names another preset) against the same fit with ``Never()`` (plain
training with the same hold-back evaluation and best-epoch copy), on one bundled table, the same
seed, split, initial weights and batches: the two fits alternate (A B A B ...) and the ratio is
taken pair by pair, so a drift of the machine's speed cancels. Both fits mask nothing at run time
that GD does not compute (the masked weights are still multiplied), so the time ratio is the
controller's own cost: its prunes, its snapshot of the best model and its restores.

Memory: a controller that can undo holds one copy of the model (parameters, buffers and one byte per
prunable weight: ``Guarded`` the model before its last prune, ``Search`` its best); ``fit`` keeps its best epoch's weights for both
runs (with Occam's masks and state, not its copy). The script prints the largest copy Occam took
over the run against the model's size.

Targets: at most 10 % more training time than GD; at most one extra copy of the model.

Run from the repository root on a quiet machine::

    .venv/bin/python benchmarks/controller_cost.py                 # Vehicle, 60 epochs, 5 pairs
    .venv/bin/python benchmarks/controller_cost.py --quick         # smoke test: 2 pairs, 8 epochs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import occamgd
from _common import setup, write_figures
from occamgd.schedules import get_schedule
from occamgd.data.tabular import BUNDLED_MANIFEST, load_table

TARGET_TIME = 0.10
TARGET_COPIES = 1.0


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def one_fit(table, schedule, epochs: int, seed: int) -> tuple[float, int, int, float]:
    """Seconds, the largest snapshot held (bytes), the model's bytes and the selected density."""
    torch.manual_seed(seed)
    d, k = table.X_train.shape[1], len(table.classes)  # the tabular bench's MLP, 256-256
    model = torch.nn.Sequential(torch.nn.Linear(d, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, k))
    held = []
    take = occamgd.Occam._take_snapshot

    def counted(occam):  # every copy Occam takes, sized as it is taken (a sum of sizes: no time to speak of)
        take(occam)
        held.append(occam.snapshot_bytes)

    occamgd.Occam._take_snapshot = counted
    try:
        start = time.perf_counter()
        result = occamgd.fit(model, table.train, epochs=epochs, schedule=schedule, holdback=0.15, seed=seed,
                             progress=False)
        seconds = time.perf_counter() - start
    finally:
        occamgd.Occam._take_snapshot = take
    return seconds, max(held, default=0), model_bytes(model), result.history[result.best_epoch]["density"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--table", default="Vehicle", help="a bundled table (default Vehicle)")
    parser.add_argument("--epochs", type=int, default=60, help="epochs of each fit (default 60, the bench's)")
    parser.add_argument("--pairs", type=int, default=5, help="timed pairs (default 5) after one warm-up pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", default=None, help="a preset name (default: the library's default)")
    parser.add_argument("--quick", action="store_true", help="2 pairs of 8 epochs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.pairs = 8, 2
    if min(args.threads, args.epochs, args.pairs) < 1 or args.epochs < 2:
        parser.error("--threads and --pairs must be at least 1, --epochs at least 2")
    schedule = get_schedule(args.schedule)
    name = type(schedule).__name__
    _, command, _ = setup(parser, args, f"cost of the controller {name} over plain training")
    table = load_table(args.table, manifest=BUNDLED_MANIFEST, seed=args.seed)

    one_fit(table, occamgd.Never(), args.epochs, args.seed)  # warm-up pair
    one_fit(table, args.schedule, args.epochs, args.seed)
    ratios, gd_times, controller_times = [], [], []
    for _ in range(args.pairs):
        gd, _, size, _ = one_fit(table, occamgd.Never(), args.epochs, args.seed)
        controlled, held, _, density = one_fit(table, args.schedule, args.epochs, args.seed)
        gd_times.append(gd)
        controller_times.append(controlled)
        ratios.append(controlled / gd)
    ratio = statistics.median(ratios)
    copies = held / size
    print(f"table {args.table}: {len(table.y_train)} training rows, MLP 256-256, {args.epochs} epochs, seed {args.seed}")
    print(f"fit with Never (GD): median {statistics.median(gd_times):.2f} s; with {name}: median "
          f"{statistics.median(controller_times):.2f} s, selected density {density:.3f}")
    print(f"time {name} / GD, pair by pair: median {ratio:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) -> "
          f"{'PASS' if ratio <= 1 + TARGET_TIME else 'MISS'} (target <= {1 + TARGET_TIME:.2f})")
    print(f"largest snapshot held: {held / 2**20:.3f} MiB = {copies:.2f} x the model ({size / 2**20:.3f} MiB; "
          f"the masks add one byte per prunable weight) -> "
          f"{'PASS' if copies <= TARGET_COPIES + 0.3 else 'MISS'} (target: one copy of the model)")
    if args.json:
        write_figures(args.json, "controller_cost", command, {
            "table": args.table, "epochs": args.epochs, "pairs": args.pairs, "seed": args.seed,
            "schedule": repr(schedule), "gd_s": gd_times, "controller_s": controller_times, "ratio": ratio, "snapshot_bytes": held,
            "model_bytes": size, "copies": copies, "density": density})
    return 0


if __name__ == "__main__":
    sys.exit(main())
