"""Coverage and speed of compaction on a ResNet and a BERT: masked vs compacted, in FLOPs, parameters and time.

What is measured: a CIFAR-style ResNet-18 (basic blocks with downsample, widths 64-512, 3 x 32 x 32
images, 10 classes) and a BERT (Hugging Face ``BertForSequenceClassification``, 4 layers, hidden
256, 4 heads, intermediate 1024, sequences of 128 tokens), random weights from a fixed seed.
Each is traced by ``occamgd.compaction.structured_pruning`` and pruned in one step to 50 % and 25 %
of each group's units (``ConstantRate(1 - kept)``), then ``occamgd.compact``-ed. For the masked
model (zeros in place) and the compacted one: parameters, FLOPs of one forward pass of the batch
(``torch.utils.flop_counter``), the median latency over alternating runs and the throughput
(``occamgd.compaction.compaction_report``), and the largest output difference. The FLOP ratio
is what the latency ratio is compared with: a compacted dense model should get faster at least in
proportion to the FLOPs it removed.

Run from the repository root::

    .venv/bin/python benchmarks/compact_zoo.py                      # CPU, batch 1 and 64
    .venv/bin/python benchmarks/compact_zoo.py --device cuda
    .venv/bin/python benchmarks/compact_zoo.py --smoke              # tiny models, few repeats: checks it runs

``--torch-pruning`` adds Torch-Pruning (DepGraph) on the same ResNet at the same kept fraction
(``MagnitudePruner``, L2 importance, the classifier ignored): its parameters, FLOPs and latency
beside ours. Install it in the benchmark's environment only, not as a dependency of occamgd::

    .venv/bin/python -m pip install --target /tmp/tp torch-pruning --no-deps
    PYTHONPATH=/tmp/tp .venv/bin/python benchmarks/compact_zoo.py --models resnet --torch-pruning

It prunes without masks and without folding, so its model is not expected to compute the
unpruned one's outputs (the column ``max |diff|`` says by how much it differs); ours computes the
masked model's.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from _common import setup, write_figures
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

import occamgd
from occamgd.compaction import compact, compaction_report, structured_pruning

SEED = 0
KEPT = (0.5, 0.25)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 32 x 32 images (a 3 x 3 stem, no max-pool), as in the CIFAR literature."""

    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            layers += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def build(name: str, smoke: bool):
    """The model and a function making an input batch of a given size."""
    if name == "resnet":
        model = ResNet18(width=8 if smoke else 64)
        return model, lambda batch, g: torch.randn(batch, 3, 32, 32, generator=g)
    from transformers import BertConfig, BertForSequenceClassification

    hidden, layers, length = (32, 2, 16) if smoke else (256, 4, 128)
    config = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=4 * hidden, max_position_embeddings=length, num_labels=2)
    model = BertForSequenceClassification(config)
    return model, lambda batch, g: {"input_ids": torch.randint(0, 1000, (batch, length), generator=g)}


def flops(model: nn.Module, example) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**example) if isinstance(example, dict) else model(example)
    return counter.get_total_flops()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--models", nargs="+", choices=("resnet", "bert"), default=["resnet", "bert"])
    parser.add_argument("--kept", type=float, nargs="+", default=list(KEPT), help="kept fraction of each group's units")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="default: 1 64")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes first (default 3)")
    parser.add_argument("--smoke", action="store_true", help="tiny models, --repeats 2 --warmup 1 --batch-sizes 2")
    parser.add_argument("--torch-pruning", action="store_true",
                        help="also prune the ResNet with Torch-Pruning (installed beside, see above)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.warmup, args.batch_sizes = 2, 1, [2]
    if not all(0 < k < 1 for k in args.kept):
        parser.error(f"--kept must lie in (0, 1), got {args.kept}")
    device, command, hardware = setup(parser, args, "compaction of a ResNet and a BERT: FLOPs, parameters, latency",
                                      device_note="; float32, eval mode, no gradients")
    rows = []
    gen = torch.Generator().manual_seed(SEED + 1)
    for name in args.models:
        for kept in args.kept:
            torch.manual_seed(SEED)
            model, make = build(name, args.smoke)
            model.to(device)
            trace_input = make(2, torch.Generator().manual_seed(SEED))
            trace_input = {k: v.to(device) for k, v in trace_input.items()} if isinstance(trace_input, dict) \
                else trace_input.to(device)
            setup_kwargs = structured_pruning(model, trace_input)
            occam = occamgd.Occam(model, schedule=occamgd.ConstantRate(1 - kept), **setup_kwargs)
            occam.step(0.0)
            small = compact(model, occam)
            groups = len(setup_kwargs["criterion"].groups)
            for batch in args.batch_sizes:
                example = make(batch, gen)
                example = {k: v.to(device) for k, v in example.items()} if isinstance(example, dict) \
                    else example.to(device)
                model.eval()
                small.eval()
                before, after = flops(model, example), flops(small, example)
                report = compaction_report(model, small, example, repeats=args.repeats, warmup=args.warmup)
                rows.append({"model": name, "kept": kept, "groups": groups, "flops_before": before,
                             "flops_after": after, **report})
                if args.torch_pruning and name == "resnet":
                    rows.append(torch_pruning_row(args, kept, batch, example, device))
    print()
    print(f"{'model':10}{'kept':>6}{'batch':>6}{'params':>12}{'compact':>12}{'GFLOPs':>9}{'compact':>9}"
          f"{'FLOP x':>8}{'masked ms':>11}{'compact ms':>12}{'speed-up':>10}{'ex/s after':>12}{'max |diff|':>12}")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"{r['model']:10}{r['kept']:6.2f}{r['batch']:6d}{b['parameters']:12,}{a['parameters']:12,}"
              f"{r['flops_before'] / 1e9:9.3f}{r['flops_after'] / 1e9:9.3f}{r['flops_before'] / r['flops_after']:7.2f}x"
              f"{b['latency_s'] * 1e3:11.2f}{a['latency_s'] * 1e3:12.2f}{r['ratio']['latency']:9.2f}x"
              f"{a['throughput']:12,.1f}{r['max_abs_diff']:12.1e}")
    print("kept: fraction of each group's units kept; FLOP x: masked / compacted FLOPs (what the speed-up is "
          "compared with); ms: median latency of one forward pass of the batch")
    if args.json:
        write_figures(args.json, "compact_zoo", command, {"device": str(device), "hardware": hardware,
                                                          "repeats": args.repeats, "results": rows})
    return 0


def torch_pruning_row(args, kept: float, batch: int, example: torch.Tensor, device) -> dict:
    """The same ResNet (same seed) pruned by Torch-Pruning to ``kept`` of its channels, timed like ours."""
    import torch_pruning as tp

    torch.manual_seed(SEED)
    model, _ = build("resnet", args.smoke)
    model.to(device).eval()
    reference = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(model, example[:1], importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=1 - kept, ignored_layers=[model.fc])
    pruner.step()
    model.eval()
    report = compaction_report(reference, model, example, repeats=args.repeats, warmup=args.warmup)
    return {"model": "resnet/TP", "kept": kept, "groups": 0, "flops_before": flops(reference, example),
            "flops_after": flops(model, example), **report}


if __name__ == "__main__":
    sys.exit(main())
