"""Inference speed of compacted vs masked-dense models after structured pruning.

What is measured: the paper's MLP (784-1024-10) and CNN (N = 32, 3 x 32 x 32 images, 10 classes),
structured-pruned with ``occamgd.compaction.structured_pruning`` (whole neurons and channels of every
layer but the output layer) to unit densities 0.5, 0.25 and 0.1 in one step
(``ConstantRate(1 - density)``), then ``occamgd.compact``-ed. For each, the masked dense
model (zeros in place, the shape unchanged) and the compacted one run the same batch in eval
mode without gradients, alternating which goes first; ``occamgd.compaction.compaction_report``
gives parameters, bytes, the median latency of one forward pass and the throughput (examples per
second) of each, and the largest output difference (float rounding only). Weights are random
from a fixed seed: the speed of dense kernels does not depend on the values.

``--models gpt`` (not in the default set) adds occamgd's GPT (``--gpt-size``: quick 4 x 4 x 128,
context 64, or standard 6 x 6 x 384, context 256; vocabulary 65), whose MLP hidden units and
attention heads ``structured_pruning`` prunes; each example is one full context of random tokens.

Run from the repository root::

    .venv/bin/python benchmarks/compact_latency.py                  # CPU, 2 threads, batch 1 and 256
    .venv/bin/python benchmarks/compact_latency.py --device cuda
    .venv/bin/python benchmarks/compact_latency.py --smoke          # few repeats: checks it runs
    .venv/bin/python benchmarks/compact_latency.py --device cuda --models gpt --gpt-size standard --batch-sizes 1 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import occamgd
from _common import setup, write_figures
from occamgd.compaction import compact, compaction_report, structured_pruning
from occamgd.models import CNN, GPT, MLP, GPTConfig

SEED = 0
DENSITIES = (0.5, 0.25, 0.1)
#: ``--gpt-size``: the GPT's shape (vocabulary 65, no dropout).
GPT_SIZES = {
    "quick": dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "standard": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0),
}
MODELS = {
    "mlp": (lambda: MLP(784, 10), (784,), "MLP 784-1024-10"),
    "cnn": (lambda: CNN(3, 10, n=32, image_size=32), (3, 32, 32), "CNN N=32, 3x32x32, 10 classes"),
    "gpt": (None, None, "occamgd GPT (--gpt-size)"),
}
DEFAULT_MODELS = ("mlp", "cnn")


def build(name: str, gpt_size: str) -> torch.nn.Module:
    return GPT(GPTConfig(**GPT_SIZES[gpt_size])) if name == "gpt" else MODELS[name][0]()


def example_batch(name: str, batch: int, gpt_size: str, gen: torch.Generator) -> torch.Tensor:
    """A batch of random inputs: images or rows, or for the GPT full contexts of random tokens."""
    if name == "gpt":
        config = GPT_SIZES[gpt_size]
        return torch.randint(0, config["vocab_size"], (batch, config["block_size"]), generator=gen)
    return torch.randn(batch, *MODELS[name][1], generator=gen)


def pruned(name: str, density: float, device: torch.device,
           gpt_size: str = "quick") -> tuple[torch.nn.Module, occamgd.Occam]:
    """The model from a fixed seed, its prunable layers cut to ``density`` of their units."""
    torch.manual_seed(SEED)
    model = build(name, gpt_size).to(device)
    with torch.no_grad():  # nonzero biases, so compaction has constants to fold as after training
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    occam = occamgd.Occam(model, schedule=occamgd.ConstantRate(1 - density), **structured_pruning(model))
    occam.step(0.0)
    return model, occam


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS),
                        help="default: mlp cnn (gpt on request)")
    parser.add_argument("--gpt-size", choices=sorted(GPT_SIZES), default="quick",
                        help="the GPT's shape: quick (default, 4 x 4 x 128, context 64) or standard "
                             "(6 x 6 x 384, context 256)")
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES),
                        help="kept fraction of units (default: 0.5 0.25 0.1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256], help="default: 1 256")
    parser.add_argument("--repeats", type=int, default=50, help="timed forward passes per model (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed forward passes first (default 5)")
    parser.add_argument("--smoke", action="store_true", help="--repeats 3 --warmup 1 --batch-sizes 8: checks it runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.warmup, args.batch_sizes = 3, 1, [8]
    if args.repeats < 1 or args.warmup < 0 or min(args.batch_sizes) < 1 or args.threads < 1:
        parser.error("--repeats, --threads and --batch-sizes must be at least 1, --warmup at least 0")
    if not all(0 < d < 1 for d in args.densities):
        parser.error(f"--densities must lie in (0, 1), got {args.densities}")
    device, command, hardware = setup(parser, args,
                                      "inference of compacted vs masked-dense models (structured pruning)",
                                      device_note="; float32, eval mode, no gradients")
    print(f"{args.warmup} untimed then {args.repeats} timed forward passes per model, alternating masked / compacted")

    gen = torch.Generator().manual_seed(SEED + 1)
    rows = []
    for name in args.models:
        for density in args.densities:
            model, occam = pruned(name, density, device, args.gpt_size)
            small = compact(model, occam)
            for batch in args.batch_sizes:
                example = example_batch(name, batch, args.gpt_size, gen).to(device)
                report = compaction_report(model, small, example, repeats=args.repeats, warmup=args.warmup)
                rows.append({"model": name, "density": density, "weight_density": occam.density, **report})

    print()
    print(f"{'model':6}{'units':>7}{'batch':>7}{'params':>11}{'compact':>11}{'masked ms':>11}{'compact ms':>12}"
          f"{'speed-up':>10}{'masked ex/s':>13}{'compact ex/s':>14}{'max |diff|':>12}")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"{r['model']:6}{r['density']:7.2f}{r['batch']:7d}{b['parameters']:11,}{a['parameters']:11,}"
              f"{b['latency_s'] * 1e3:11.3f}{a['latency_s'] * 1e3:12.3f}{r['ratio']['latency']:9.2f}x"
              f"{b['throughput']:13,.0f}{a['throughput']:14,.0f}{r['max_abs_diff']:12.1e}")
    print("units: kept fraction of the units of each pruned layer; params: all parameters, masked (dense shape) "
          "and compacted; ms: median latency of one forward pass of the batch; speed-up: masked / compacted")

    if args.json:
        write_figures(args.json, "compact_latency", command, {
            "device": str(device), "hardware": hardware, "repeats": args.repeats, "warmup": args.warmup,
            **({"gpt_config": GPT_SIZES[args.gpt_size]} if "gpt" in args.models else {}), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
