"""Occam Gradient Descent with DistributedDataParallel, one process per device.

    torchrun --nproc_per_node=4 examples/ddp_train.py                  # 4 GPUs (nccl)
    torchrun --nproc_per_node=2 examples/ddp_train.py --epochs 5       # no GPU: 2 CPU processes (gloo)
    torchrun --nproc_per_node=4 examples/ddp_train.py --checkpoint runs/ddp.pt   # resumable

Trains the paper's MLP (one hidden layer of 1024, dropout 0.2, Adam 1e-3) on scikit-learn's
digits, split 75/25 into training and hold-back rows. Each rank trains on its shard of the
training rows (``DistributedSampler``) and measures the loss on its shard of the hold-back rows;
``DistributedOccam.step`` averages those losses over the ranks, prunes, and gives every rank the
first rank's masks. With ``--checkpoint`` the first rank writes model, optimizer, Occam state,
epoch and every rank's random-number state atomically after every epoch, and a new launch with
as many ranks resumes from it exactly where the interrupted run was (with another number of
ranks, the weights and masks resume and dropout draws afresh). The checkpoint is read with
``weights_only=True``: tensors and plain containers only, so a file from elsewhere cannot run code.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from occamgd.integrations.distributed import DistributedOccam
from occamgd.io import atomic_save


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", choices=("paper", "guarded"), default=None,
                        help="rate controller (default: the library's default preset)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="write after every epoch; resume if it exists")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error(f"--epochs and --batch-size must be >= 1, got {args.epochs} and {args.batch_size}")
    return args


def setup() -> tuple[torch.device, bool]:
    """Join the process group torchrun describes, unless the caller has; one GPU per rank if any.

    Returns the device and whether this call made the group (and so should close it).
    """
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
        backend = "gloo"
    if dist.is_initialized():
        return device, False
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return device, True


def digits(seed: int):
    x, y = load_digits(return_X_y=True)
    x_train, x_hold, y_train, y_hold = train_test_split(
        x / 16.0, y, test_size=0.25, stratify=y, random_state=seed
    )
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in (x_train, x_hold)]
    labels = [torch.as_tensor(a, dtype=torch.long) for a in (y_train, y_hold)]
    return TensorDataset(tensors[0], labels[0]), (tensors[1], labels[1])


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """The checkpoint at ``path``, unpickling nothing but tensors and plain containers
    (``weights_only=True``): a checkpoint from elsewhere cannot run code. Exits naming the file if
    it holds anything else or is damaged."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError (a damaged zip), ...
        raise SystemExit(f"checkpoint {path} cannot be read as plain tensors ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); delete it to start afresh, or pass "
                         "another --checkpoint") from None
    needed = {"epoch", "model", "optimizer", "occam", "pending_signal", "rng"}
    if not isinstance(state, dict) or needed - set(state):
        raise SystemExit(f"checkpoint {path} is not one this script wrote (it lacks "
                         f"{sorted(needed - set(state)) if isinstance(state, dict) else 'everything'}); delete it "
                         "to start afresh, or pass another --checkpoint")
    return state


def rng_state(device: torch.device) -> dict:
    """This rank's random-number state (dropout draws from it)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict | None, device: torch.device) -> None:
    """Continue this rank's dropout stream; with another number of ranks, start fresh streams."""
    if state is None:
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of ``value`` over all ranks (collective), as DistributedOccam averages the signal."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def main(argv: list[str] | None = None) -> None:
    """Train; ``argv`` as on the command line (``None``: ``sys.argv``)."""
    args = parse_args(argv)
    device, owns_group = setup()
    rank, world = dist.get_rank(), dist.get_world_size()
    train, (x_hold, y_hold) = digits(args.seed)
    # Each rank measures the hold-back loss on its own rows; DistributedOccam averages them.
    x_hold, y_hold = x_hold[rank::world].to(device), y_hold[rank::world].to(device)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1024), nn.ReLU(), nn.Dropout(0.2), nn.Linear(1024, 10))
    model = DistributedDataParallel(net.to(device), device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(args.seed + 1 + rank)  # but each rank its own dropout
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    occam = DistributedOccam(model, optimizer, schedule=args.schedule)  # layerwise magnitude

    start, pending = 0, None
    if args.checkpoint is not None and args.checkpoint.exists():
        state = load_checkpoint(args.checkpoint, device)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        occam.load_state_dict(state["occam"])
        start, pending = state["epoch"] + 1, state["pending_signal"]
        set_rng_state(state["rng"][rank] if len(state["rng"]) == world else None, device)
        if rank == 0:
            print(f"resumed from {args.checkpoint} after epoch {state['epoch']}")
    if pending is not None and start < args.epochs:
        # The run that wrote the checkpoint stopped there and left its last model unpruned: prune
        # now, as an uninterrupted run would have. Every rank passes the same mean, so it stays.
        occam.step(pending)

    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()  # Occam's hook re-zeroes the pruned weights here

        model.eval()
        with torch.no_grad():
            signal = F.cross_entropy(model(x_hold), y_hold).item()
        if epoch < args.epochs - 1:
            occam.step(signal)  # collective: every rank calls it with its own loss; the mean is used
            pending, mean = None, occam.history[-1]["signal"]
        else:
            # The last model is kept as evaluated, unpruned; a longer resumed run prunes it first.
            pending = mean = mean_over_ranks(signal, device)
        if rank == 0:
            print(f"epoch {epoch:3d}  hold-back loss (mean of {world} ranks) {mean:.4f}  "
                  f"density {occam.density:.4f}", flush=True)
        if args.checkpoint is not None:
            rng = [None] * world
            dist.all_gather_object(rng, rng_state(device))  # collective; the first rank writes
            if rank == 0:
                atomic_save({"epoch": epoch, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                             "occam": occam.state_dict(), "pending_signal": pending, "rng": rng},
                            args.checkpoint)
        # No rank may read the checkpoint (on resume) or leave before the first rank has written it.
        dist.barrier()

    if rank == 0:
        print(f"density per tensor {occam.densities}")
    if owns_group:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
