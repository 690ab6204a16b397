"""One prune of an FSDP2-sharded model: bytes communicated, seconds, and peak memory per rank.

What is measured, on ``--ranks`` CPU processes (gloo) spawned by this script: ``Occam.step`` with
``ConstantRate(0.4)`` (the first prune, from all-ones masks, and a second one) on an
``nn.Sequential`` of ``--width`` x ``--width`` ``Linear`` layers holding ``--weights`` million
prunable weights, every layer and the root sharded with ``fully_shard`` (parameters built on the
meta device and materialised sharded, so no rank ever holds a full tensor), for the layerwise
and the global criterion:

- **bytes communicated** per step: every collective Occam issues, counted at
  ``torch.distributed`` (the all-reduces of occamgd.sharded and of the mask counts), as the
  bytes of the tensors each rank contributes, and its ratio to the prunable weights' bytes (all
  ranks' shards together, float32). ``CommDebugMode`` counts every collective too, so any made
  elsewhere (inside DTensor operations) would show as a difference (the script prints it). Target: <= 1 % at 10 M weights on 2 ranks.
- **seconds** per step (median over ``--repeats`` fresh models, ranks synchronised by a barrier
  before and after), against one process pruning the same full tensors with ``occamgd.Occam``
  (rank 0, after the sharded runs, with all threads of the ranks).
- **peak memory** per rank during the step: the peak rise of torch's CPU allocations over the
  step (the profiler's memory events, summed in time order; a separate fresh model, since the
  profiler slows the step), and what stays allocated after it (the first prune allocates the
  masks' multipliers, 4 bytes per local weight, kept until the next prune as in single-process
  Occam), against the rank's shard of the prunable weights and the largest full tensor.

Run from the repository root::

    .venv/bin/python benchmarks/fsdp_prune.py                       # 10 M weights, 2 ranks, 3 repeats
    .venv/bin/python benchmarks/fsdp_prune.py --weights 1 --ranks 2 --repeats 2
    .venv/bin/python benchmarks/fsdp_prune.py --smoke               # 0.25 M weights: checks it runs
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import occamgd
from _common import setup, write_figures

RATE = 0.4
TARGET_FRACTION = 0.01


class Counter:
    """Wraps the torch.distributed collectives that occamgd.sharded calls, counting bytes and calls."""

    def __init__(self):
        self.bytes = 0
        self.calls = 0
        self._orig = {}

    def __enter__(self):
        for name in ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor"):
            orig = getattr(dist, name)
            self._orig[name] = orig

            def counted(tensor, *args, _orig=orig, **kwargs):
                t = tensor if torch.is_tensor(tensor) else None
                if t is not None:
                    self.bytes += t.numel() * t.element_size()
                self.calls += 1
                return _orig(tensor, *args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc):
        for name, orig in self._orig.items():
            setattr(dist, name, orig)


def _peak_allocation(fn) -> tuple[int, int]:
    """``fn()`` under the profiler: (peak rise, net change) of torch's CPU allocations, in bytes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak, current


def layers_for(weights_m: float, width: int) -> int:
    return max(1, round(weights_m * 1e6 / (width * width)))


def sharded_model(layers: int, width: int) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            local = p.to_local()
            g = torch.Generator().manual_seed(1000 * dist.get_rank() + i)
            local.copy_(torch.randn(local.shape, generator=g))
    return model


def worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.tensor.debug import CommDebugMode

    layers = layers_for(args.weights, args.width)
    rows = []

    def fresh(criterion):
        model = sharded_model(layers, args.width)
        return model, occamgd.Occam(model, criterion=criterion, schedule=occamgd.ConstantRate(RATE))

    try:
        for criterion in args.criteria:
            # Memory: a fresh model, both steps under the profiler (which slows them: not timed).
            model, occam = fresh(criterion)
            memory = {}
            for step in ("first", "second"):
                dist.barrier()
                memory[step] = _peak_allocation(lambda: occam.step(1.0))
            del occam, model
            for repeat in range(args.repeats):
                model, occam = fresh(criterion)
                shard_bytes = sum(p.to_local().numel() * p.to_local().element_size()
                                  for p in occam.masks.params.values())
                total_bytes = sum(p.numel() * p.element_size() for p in occam.masks.params.values())
                largest = max(p.numel() * p.element_size() for p in occam.masks.params.values())
                for step in ("first", "second"):
                    dist.barrier()
                    with Counter() as counter, CommDebugMode() as comm:
                        start = time.perf_counter()
                        occam.step(1.0)
                        seconds = time.perf_counter() - start
                    dist.barrier()
                    rows.append({
                        "criterion": criterion, "step": step, "repeat": repeat, "seconds": seconds,
                        "bytes": counter.bytes, "collectives": counter.calls,
                        "comm_debug_collectives": comm.get_total_counts(),
                        "peak_rise_bytes": memory[step][0], "net_bytes": memory[step][1],
                        "shard_bytes": shard_bytes, "prunable_bytes": total_bytes, "largest_tensor_bytes": largest,
                        "density": occam.density,
                    })
                del occam, model
        queue.put((rank, rows))
    finally:
        dist.destroy_process_group()


def single_process(layers: int, width: int, criterion: str, repeats: int) -> dict:
    out = {"first": [], "second": []}
    for _ in range(repeats):
        torch.manual_seed(0)
        model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
        occam = occamgd.Occam(model, criterion=criterion, schedule=occamgd.ConstantRate(RATE))
        for step in ("first", "second"):
            start = time.perf_counter()
            occam.step(1.0)
            out[step].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=float, default=10.0, help="millions of prunable weights (default 10)")
    parser.add_argument("--width", type=int, default=1000, help="each layer is width x width (default 1000)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--criteria", nargs="+", default=["layerwise", "global"], choices=["layerwise", "global"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--smoke", action="store_true", help="0.25 M weights (width 500), 1 repeat")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.weights, args.width, args.repeats = 0.25, 500, 1
    _, command, _ = setup(parser, args, f"one prune of an FSDP2 model on {args.ranks} CPU ranks (gloo)")
    layers = layers_for(args.weights, args.width)
    print(f"model: {layers} x Linear({args.width}, {args.width}) = {layers * args.width ** 2 / 1e6:.2f} M prunable "
          f"weights, fully_shard per layer and at the root; rate {RATE}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=worker, args=(r, args.ranks, port, args, queue)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    results = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode:
            print(f"a rank exited with {p.exitcode}", file=sys.stderr)
            return 1

    torch.set_num_threads(args.threads * args.ranks)
    figures = {"weights_m": layers * args.width ** 2 / 1e6, "ranks": args.ranks, "rows": []}
    print()
    print(f"{'criterion':10} {'step':7} {'bytes/rank':>11} {'% of weights':>12} {'colls':>5} {'sharded s':>10} "
          f"{'1-proc s':>9} {'peak alloc/rank':>15} {'kept/rank':>10} {'shard/rank':>11} {'largest full':>12}")
    for criterion in args.criteria:
        single = single_process(layers, args.width, criterion, args.repeats)
        for step in ("first", "second"):
            per_rank = [[row for row in results[r] if row["criterion"] == criterion and row["step"] == step]
                        for r in range(args.ranks)]
            seconds = statistics.median(max(rows[i]["seconds"] for rows in per_rank) for i in range(len(per_rank[0])))
            row0 = per_rank[0][0]
            nbytes = max(row["bytes"] for rows in per_rank for row in rows)
            peaks = [rows[0]["peak_rise_bytes"] for rows in per_rank]
            fraction = nbytes / row0["prunable_bytes"]
            # CommDebugMode sees every c10d and functional collective: beyond those counted here, any
            # made inside DTensor operations.
            hidden = sum(row["comm_debug_collectives"] - row["collectives"] for rows in per_rank for row in rows)
            entry = {"criterion": criterion, "step": step, "bytes_per_rank": nbytes,
                     "fraction_of_prunable_bytes": fraction, "collectives": row0["collectives"],
                     "dtensor_collectives": hidden, "seconds_sharded": seconds,
                     "seconds_single_process": single[step], "peak_rise_bytes_per_rank": peaks,
                     "shard_bytes_per_rank": [rows[0]["shard_bytes"] for rows in per_rank],
                     "net_bytes_per_rank": [rows[0]["net_bytes"] for rows in per_rank],
                     "largest_full_tensor_bytes": row0["largest_tensor_bytes"],
                     "prunable_bytes": row0["prunable_bytes"], "density": row0["density"]}
            figures["rows"].append(entry)
            print(f"{criterion:10} {step:7} {nbytes:>11,} {100 * fraction:>11.4f}% {row0['collectives']:>5} "
                  f"{seconds:>10.3f} {single[step]:>9.3f} {max(peaks) / 2**20:>12.1f} MiB "
                  f"{max(entry['net_bytes_per_rank']) / 2**20:>6.1f} MiB "
                  f"{max(entry['shard_bytes_per_rank']) / 2**20:>7.1f} MiB {row0['largest_tensor_bytes'] / 2**20:>8.1f} MiB")
    worst = max(row["fraction_of_prunable_bytes"] for row in figures["rows"])
    print(f"\nbytes communicated per prune: at most {100 * worst:.4f} % of the prunable weights' bytes "
          f"(target <= {100 * TARGET_FRACTION:.0f} % at 10 M weights on 2 ranks): "
          f"{'met' if worst <= TARGET_FRACTION else 'NOT met'}")
    print("collectives beyond occamgd.sharded's own (CommDebugMode, e.g. inside DTensor operations):",
          sum(row["dtensor_collectives"] for row in figures["rows"]))
    if args.json:
        write_figures(args.json, "fsdp_prune", command, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
