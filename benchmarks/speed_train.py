"""Training speed, Occam vs plain: seconds per epoch for the MLP, the CNN and the GPT.

What is measured: whole training epochs (forward, backward, optimizer step over every batch; for
Occam also the mask re-zeroing hook after every step and ``occam.step`` at the end of the epoch)
of three models on random data of fixed seed (dense kernels run at a speed independent of the
values):

- ``mlp``: the paper's MLP 784-1024-10 with Dropout(0.2), Adam(1e-3), batch 128;
- ``cnn``: the paper's CNN, N = 32, on 3 x 32 x 32 images, 10 classes, Adam(1e-3), batch 128;
- ``gpt``: occamgd's character GPT at the char-GPT bench's quick size (4 layers, 4 heads, 128
  wide, context 64, vocabulary 65, no dropout), AdamW(1e-3, weight decay 0.1), batch 32; an
  "epoch" is ``--gpt-steps`` (50, the quick bench's pruning interval) steps, and Occam prunes the
  block weights (``occamgd.models.gpt.prunable``). ``--gpt-size standard``: the standard size
  instead (6 layers, 6 heads, 384 wide, context 256, batch 64; for a GPU), float32, eager.

Occam runs with the paper's preset (``Occam(model, optimizer, schedule="paper")``: layerwise
magnitude, OccamRate r0 = 0.4), which prunes 40 % at the end of the untimed warm-up epoch, so every
timed epoch trains a masked model (the "occam density" column shows it). The library's default,
the guarded controller, waits until the loss's gains slow and on random data may not prune at all
in a few epochs, which would time a model without masks. The signal is the epoch's mean training loss. Each
run builds a fresh model from the same seed, trains one untimed warm-up epoch, then ``--epochs``
timed ones. Runs alternate plain and Occam (A B A B ...) so that slow drift of the machine's speed
hits both alike; the figure is the ratio of the medians (over runs) of each run's median epoch,
with the run-to-run spread.

Run from the repository root::

    .venv/bin/python benchmarks/speed_train.py                  # CPU, 2 threads, 5 runs each
    .venv/bin/python benchmarks/speed_train.py --device cuda
    .venv/bin/python benchmarks/speed_train.py --smoke          # tiny sizes: checks that it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import occamgd
from _common import setup, write_figures
from occamgd._timing import synchronize
from occamgd.models import CNN, MLP, GPT, GPTConfig
from occamgd.models.gpt import prunable

SEED = 0
MODELS = ("mlp", "cnn", "gpt")


#: ``--gpt-size``: (GPTConfig arguments, batch size); quick is the default.
GPT_SIZES = {
    "quick": (dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0), 32),
    "standard": (dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0), 64),
}
BATCH = {"mlp": 128, "cnn": 128}


def batch_size(name: str, args: argparse.Namespace) -> int:
    return GPT_SIZES[args.gpt_size][1] if name == "gpt" else BATCH[name]


def describe(name: str, args: argparse.Namespace) -> str:
    if name == "mlp":
        return f"MLP 784-1024-10, Dropout(0.2), Adam(1e-3), {args.mlp_rows:,} rows, batch {batch_size(name, args)}"
    if name == "cnn":
        return f"CNN N=32 on 3x32x32, 10 classes, Adam(1e-3), {args.cnn_rows:,} rows, batch {batch_size(name, args)}"
    c = GPT_SIZES[args.gpt_size][0]
    return (f"GPT {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, context {c['block_size']}, "
            f"vocabulary {c['vocab_size']}, no dropout, AdamW(1e-3, wd 0.1), "
            f"{args.gpt_steps} steps of batch {batch_size(name, args)} per epoch")


def make(name: str, args: argparse.Namespace, device: torch.device):
    """(model, optimizer, Occam keyword arguments, (x, y), loss of a batch), the same on every call."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    if name == "gpt":
        config = GPT_SIZES[args.gpt_size][0]
        model = GPT(GPTConfig(**config)).to(device)
        rows = args.gpt_steps * batch_size(name, args)
        tokens = torch.randint(0, config["vocab_size"], (rows, config["block_size"] + 1), generator=gen)
        opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)
        data = (tokens[:, :-1], tokens[:, 1:])
        return model, opt, {"include": prunable(model)}, data, lambda m, x, y: m(x, y)[1]
    if name == "mlp":
        model = MLP(784, 10)
        x = torch.randn(args.mlp_rows, 784, generator=gen)
    else:
        model = CNN(3, 10, n=32, image_size=32)
        x = torch.randn(args.cnn_rows, 3, 32, 32, generator=gen)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = (x, torch.randint(0, 10, (x.shape[0],), generator=gen))
    return model, opt, {}, data, lambda m, x, y: F.cross_entropy(m(x), y)


def run(name: str, method: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One run: a fresh model, 1 untimed warm-up epoch, then ``args.epochs`` timed ones."""
    model, opt, occam_kwargs, (x, y), loss_fn = make(name, args, device)
    batch = batch_size(name, args)
    occam = occamgd.Occam(model, opt, schedule="paper", **occam_kwargs) if method == "occam" else None
    x, y = x.to(device), y.to(device)
    rows = x.shape[0]
    gen = torch.Generator().manual_seed(SEED + 1)
    times = []
    model.train()
    for epoch in range(1 + args.epochs):
        perm = torch.randperm(rows, generator=gen).to(device)
        xs, ys = x[perm], y[perm]  # shuffled before the timer starts; batches below are views
        synchronize(device)
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for i in range(0, rows, batch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, xs[i:i + batch], ys[i:i + batch])
            loss.backward()
            opt.step()
            total += loss.detach()
        signal = float(total) / -(-rows // batch)  # one device sync per epoch, in both methods
        if occam is not None:
            occam.step(signal)
        synchronize(device)
        if epoch > 0:  # epoch 0 warms up: allocator, kernel selection, optimizer state creation
            times.append(time.perf_counter() - start)
    return {"times": times, "density": occam.density if occam else 1.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: all three")
    parser.add_argument("--repeats", type=int, default=5, help="runs per method and model (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per run (default 2)")
    parser.add_argument("--mlp-rows", type=int, default=60_000, help="MLP rows per epoch (default 60000)")
    parser.add_argument("--cnn-rows", type=int, default=10_000, help="CNN rows per epoch (default 10000)")
    parser.add_argument("--gpt-steps", type=int, default=50, help="GPT optimizer steps per epoch (default 50)")
    parser.add_argument("--gpt-size", choices=sorted(GPT_SIZES), default="quick",
                        help="quick (default): 4 x 4 x 128, context 64, batch 32; standard: 6 x 6 x 384, "
                             "context 256, batch 64")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (256 MLP rows, 128 CNN rows, 4 GPT steps, 2 runs, 1 epoch): checks it runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.mlp_rows, args.cnn_rows, args.gpt_steps, args.repeats, args.epochs = 256, 128, 4, 2, 1
    if min(args.repeats, args.epochs, args.mlp_rows, args.cnn_rows, args.gpt_steps, args.threads) < 1:
        parser.error("--repeats, --epochs, --threads, --mlp-rows, --cnn-rows and --gpt-steps must be at least 1")
    device, command, hardware = setup(parser, args, "training seconds per epoch, Occam (paper preset) vs plain")
    print(f"{args.repeats} runs per method, alternating plain / occam; each: 1 warm-up + {args.epochs} timed epochs")

    results = {}
    for name in args.models:
        print(f"\n{name}: {describe(name, args)}")
        runs: dict[str, list[dict]] = {"plain": [], "occam": []}
        for r in range(args.repeats):
            for method in ("plain", "occam"):
                runs[method].append(run(name, method, args, device))
            print(f"  run {r + 1}/{args.repeats}: " + ", ".join(
                f"{m} {statistics.median(runs[m][-1]['times']):.4f} s" for m in runs))
        medians = {m: [statistics.median(r["times"]) for r in rs] for m, rs in runs.items()}
        median = {m: statistics.median(v) for m, v in medians.items()}
        results[name] = {
            "seconds_per_epoch": {m: [r["times"] for r in rs] for m, rs in runs.items()},
            "median": median,
            "spread": {m: max(v) / min(v) - 1.0 for m, v in medians.items()},
            "ratio": median["occam"] / median["plain"],
            "occam_density": statistics.mean(r["density"] for r in runs["occam"]),
        }

    print()
    print(f"{'model':6}{'plain s/epoch':>15}{'occam s/epoch':>15}{'occam/plain':>13}{'spread plain':>14}"
          f"{'spread occam':>14}{'occam density':>15}")
    for name, r in results.items():
        print(f"{name:6}{r['median']['plain']:15.4f}{r['median']['occam']:15.4f}{r['ratio']:13.4f}"
              f"{r['spread']['plain']:14.1%}{r['spread']['occam']:14.1%}{r['occam_density']:15.3f}")
    print("spread: (slowest run median / fastest run median) - 1 over the runs of each method; a ratio "
          "closer to 1 than the spread is within noise")

    if args.json:
        write_figures(args.json, "speed_train", command, {
            "device": str(device), "hardware": hardware, "repeats": args.repeats, "epochs": args.epochs,
            "gpt_size": args.gpt_size, "gpt_config": GPT_SIZES[args.gpt_size][0],
            "gpt_batch": GPT_SIZES[args.gpt_size][1], "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
