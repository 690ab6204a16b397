"""One rank of tests/test_integrations_distributed.py: run by ``torch.distributed.run`` on CPU (gloo).

``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUT_DIR`` trains a tiny
MLP with DDP and DistributedOccam in five scenarios and writes ``OUT_DIR/rank<r>.pt``, which the
test compares across ranks:

- ``trained``: each rank's signal is the loss on its own validation shard (so the ranks' signals
  differ, as they do in real runs); masks, weights, history and local signals per epoch;
- ``divergent``: a criterion that prunes a different random set on every rank, which only the
  broadcast from the first rank can reconcile; the masks after one step;
- ``mismatch``: rank 0 steps with ``None`` while the others give a number; the error each
  rank raised (every rank must raise rather than wait for the others);
- ``lightning``: a Lightning ``Trainer`` on the same processes (strategy ``ddp``) with
  OccamCallback, the validation loss logged without ``sync_dist`` so that the ranks' values
  differ; masks, weights and history;
- ``example``: examples/ddp_train.py for 2 epochs in the same process group, writing its
  checkpoint to ``OUT_DIR/example.pt``, and what it printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from occamgd.integrations.distributed import DistributedOccam
from occamgd.io import atomic_save


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def trained(rank: int, world: int) -> dict:
    model = DistributedDataParallel(tiny_model())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    occam = DistributedOccam(model, optimizer, schedule="paper")
    train = data(128, seed=1)
    loader = DataLoader(train, batch_size=16, sampler=DistributedSampler(train, world, rank, shuffle=False))
    val = data(64, seed=2)
    val_x, val_y = val.tensors[0][rank::world], val.tensors[1][rank::world]
    local_signals = []
    for _ in range(4):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            signal = float(F.cross_entropy(model(val_x), val_y))
        local_signals.append(signal)
        occam.step(signal)
    return {
        "masks": dict(occam.masks.state_dict()),
        "weights": {k: v.clone() for k, v in model.module.state_dict().items()},
        "history": occam.history,
        "local_signals": local_signals,
    }


def divergent(rank: int) -> dict:
    def random_by_rank(weights, masks, rate):
        g = torch.Generator().manual_seed(100 + rank)
        return {n: masks[n] & (torch.rand(masks[n].shape, generator=g) >= rate) for n in masks}

    occam = DistributedOccam(tiny_model(), criterion=random_by_rank, schedule="paper")
    occam.step(1.0)
    return {"masks": dict(occam.masks.state_dict())}


def mismatch(rank: int) -> dict:
    occam = DistributedOccam(tiny_model())
    try:
        occam.step(None if rank == 0 else 1.0)
    except ValueError as error:
        return {"error": str(error), "density": occam.density}
    return {"error": None, "density": occam.density}


def lightning_fit() -> dict:
    import lightning.pytorch as pl

    from occamgd.integrations.lightning import OccamCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    callback, module = OccamCallback(schedule="paper"), Tiny()
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=dist.get_world_size(), strategy="ddp", callbacks=[callback],
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data(128, seed=1), batch_size=16), DataLoader(data(64, seed=2), batch_size=16))
    return {
        "type": type(callback.occam).__name__,
        "masks": dict(callback.occam.masks.state_dict()),
        "weights": {k: v.clone() for k, v in module.net.state_dict().items()},
        "history": callback.occam.history,
    }


def example(out: str) -> str:
    path = Path(__file__).parents[1] / "examples" / "ddp_train.py"
    spec = importlib.util.spec_from_file_location("ddp_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # The paper's rule prunes from the first epoch: two epochs show pruning.
        module.main(["--epochs", "2", "--schedule", "paper", "--checkpoint", f"{out}/example.pt"])
    return printed.getvalue()


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = {"trained": trained(rank, world), "divergent": divergent(rank), "mismatch": mismatch(rank),
                  "example": example(out), "lightning": lightning_fit()}
        atomic_save(result, f"{out}/rank{rank}.pt")
    finally:
        if dist.is_initialized():  # Lightning may have closed it already
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
