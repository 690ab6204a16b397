"""2:4 semi-structured sparse vs dense matrix products on a CUDA GPU, and where the sparse one pays.

What is measured: ``F.linear(x, W)`` with ``x`` of shape (M, K) and a weight ``W`` of shape (N, K)
pruned to 2:4 by ``occamgd.criteria.nm_magnitude``, once with ``W`` dense and once converted by
``torch.sparse.to_sparse_semi_structured``, in float16 (``--dtype bfloat16`` too). For each
shape M x N x K: ``--repeats`` timings of ``--iters`` back-to-back products each, alternating dense
and sparse, timed with CUDA events (the device is synchronised around every timing); the figure
is the ratio of the median times, dense / sparse (above 1: 2:4 is faster). The sparse result is
checked against the dense one. Then ``occamgd.to_semi_structured`` is run on a Linear
layer of each shape with ``--min-features`` to show which layers it converts.

Reference (docs/anchors.md, H100, float16): 1.20x at 8192 x 8192 x 8192, 0.99x at
16384 x 4096 x 4096, 0.23x at 4096 x 4096 x 4096; ``to_semi_structured`` converts by default only
layers with at least 8192 input and output features.

On a machine without CUDA it prints that it needs CUDA and exits with status 0.

Run from the repository root::

    .venv/bin/python benchmarks/sparse24.py                       # the default shapes, float16
    .venv/bin/python benchmarks/sparse24.py --shapes 8192x8192x8192 --dtype bfloat16
    .venv/bin/python benchmarks/sparse24.py --smoke               # one small shape, few repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _common import setup, write_figures
from occamgd.compaction import SEMI_STRUCTURED_MIN_FEATURES, to_semi_structured
from occamgd.criteria import nm_magnitude

SEED = 0
SHAPES = ("4096x4096x4096", "16384x4096x4096", "4096x8192x8192", "8192x8192x8192", "16384x8192x8192")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not MxNxK, such as 8192x8192x8192") from None
    if min(m, n, k) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} has a dimension below 1")
    return m, n, k


def timed(fn, iters: int) -> float:
    """Seconds per call of ``fn``, over ``iters`` back-to-back calls, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def measure(shape: tuple[int, int, int], dtype: torch.dtype, args: argparse.Namespace) -> dict:
    from torch.sparse import to_sparse_semi_structured

    m, n, k = shape
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    weight = torch.randn(n, k, device="cuda", dtype=dtype, generator=gen)
    mask = nm_magnitude({"w": weight}, {"w": torch.ones_like(weight, dtype=torch.bool)}, 0.5)["w"]
    weight = weight * mask
    x = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
    sparse = to_sparse_semi_structured(weight)
    with torch.no_grad():
        dense_out, sparse_out = F.linear(x, weight), F.linear(x, sparse)
        error = float((dense_out.float() - sparse_out.float()).norm() / dense_out.float().norm())
        calls = {"dense": lambda: F.linear(x, weight), "sparse": lambda: F.linear(x, sparse)}
        for fn in calls.values():
            timed(fn, args.warmup)
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for r in range(args.repeats):
            for key in ("dense", "sparse") if r % 2 == 0 else ("sparse", "dense"):
                times[key].append(timed(calls[key], args.iters))
    median = {key: statistics.median(v) for key, v in times.items()}
    flops = 2 * m * n * k
    return {
        "shape": f"{m}x{n}x{k}",
        "seconds": times,
        "median_s": median,
        "tflops": {key: flops / s / 1e12 for key, s in median.items()},
        "speedup": median["dense"] / median["sparse"],
        "relative_error": error,
        "converted_by_to_semi_structured": converts(n, k, dtype, args.min_features),
    }


def converts(n: int, k: int, dtype: torch.dtype, min_features: int) -> bool:
    """Whether ``to_semi_structured`` converts a 2:4 Linear(k, n) at ``min_features``."""
    layer = nn.Linear(k, n, bias=False, device="cuda", dtype=dtype)
    with torch.no_grad():
        layer.weight.mul_(nm_magnitude({"w": layer.weight}, {"w": torch.ones_like(layer.weight, dtype=torch.bool)},
                                       0.5)["w"])
    try:
        to_semi_structured(nn.Sequential(layer), min_features=min_features, inplace=True)
    except ValueError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[parse_shape(s) for s in SHAPES],
                        help=f"MxNxK: x is (M, K), the weight (N, K) (default: {' '.join(SHAPES)})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="default float16")
    parser.add_argument("--backend", choices=("auto", "cutlass"), default="auto",
                        help="auto: cuSPARSELt where this torch has it, else CUTLASS; cutlass: force CUTLASS")
    parser.add_argument("--repeats", type=int, default=20, help="timings per shape and kind (default 20)")
    parser.add_argument("--iters", type=int, default=20, help="products per timing (default 20)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed products first (default 10)")
    parser.add_argument("--min-features", type=int, default=SEMI_STRUCTURED_MIN_FEATURES,
                        help=f"to_semi_structured's threshold to check (default {SEMI_STRUCTURED_MIN_FEATURES})")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="--shapes 1024x1024x1024 --repeats 2 --iters 2 --warmup 1: checks it runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.shapes, args.repeats, args.iters, args.warmup = [(1024, 1024, 1024)], 2, 2, 1
    if min(args.repeats, args.iters, args.min_features, args.threads) < 1 or args.warmup < 0:
        parser.error("--repeats, --iters, --min-features and --threads must be at least 1, --warmup at least 0")

    _, command, _ = setup(parser, args, "2:4 semi-structured sparse vs dense F.linear")
    if not torch.cuda.is_available():
        print("needs CUDA: 2:4 sparse kernels run only on NVIDIA GPUs (compute capability >= 8.0); "
              "this torch has no CUDA device. Nothing measured.")
        return 0
    capability = torch.cuda.get_device_capability()
    print(f"device: cuda ({torch.cuda.get_device_name()}, compute capability {capability[0]}.{capability[1]})")
    if capability < (8, 0):
        print("needs a GPU of compute capability >= 8.0 (Ampere or newer) for 2:4 sparse tensor cores. Nothing measured.")
        return 0
    from torch.sparse import SparseSemiStructuredTensor

    # torch converts to cuSPARSELt unless this class flag asks for CUTLASS (torch's own tutorial sets it).
    force_cutlass = args.backend == "cutlass" or not torch.backends.cusparselt.is_available()
    SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
    backend = "CUTLASS" if force_cutlass else "cuSPARSELt"
    print(f"dtype {args.dtype}, backend {backend}; {args.warmup} untimed, then {args.repeats} timings of "
          f"{args.iters} products per kind, alternating dense / sparse")

    rows = [measure(shape, DTYPES[args.dtype], args) for shape in args.shapes]
    print()
    print(f"{'M x N x K':>18}{'dense ms':>11}{'2:4 ms':>10}{'dense TFLOP/s':>15}{'2:4 TFLOP/s':>13}"
          f"{'speed-up':>10}{'rel. error':>12}{'converted':>11}")
    for r in rows:
        print(f"{r['shape']:>18}{r['median_s']['dense'] * 1e3:11.3f}{r['median_s']['sparse'] * 1e3:10.3f}"
              f"{r['tflops']['dense']:15.1f}{r['tflops']['sparse']:13.1f}{r['speedup']:9.2f}x"
              f"{r['relative_error']:12.1e}{'yes' if r['converted_by_to_semi_structured'] else 'no':>11}")
    pays = [r["shape"] for r in rows if r["speedup"] > 1.0]
    print(f"2:4 faster than dense at: {', '.join(pays) if pays else 'none of these shapes'}; "
          f"converted: to_semi_structured(min_features={args.min_features}) on a Linear(K, N) of that shape")

    if args.json:
        write_figures(args.json, "sparse24", command, {
            "device": torch.cuda.get_device_name(), "capability": list(capability), "dtype": args.dtype,
            "backend": backend, "repeats": args.repeats, "iters": args.iters, "min_features": args.min_features,
            "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
