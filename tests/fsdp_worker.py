"""One rank of tests/test_integrations_fsdp.py: run by ``torch.distributed.run`` on CPU (gloo).

``python -m torch.distributed.run --nproc_per_node=N tests/fsdp_worker.py OUT_DIR [SCENARIO ...]``
shards small models with FSDP2 (``fully_shard``), trains and prunes them with Occam, and writes
``OUT_DIR/rank<r>.pt``. Scenarios:

- ``exact``: an MLP whose row counts do not split evenly (one layer has fewer rows than ranks, so
  a rank holds an empty shard), trained with Adam and pruned 4 times, by ``layerwise`` (plain
  Occam, the same signal on every rank) and ``global`` (DistributedOccam, each rank's own
  signal); before every prune the weights are gathered and the single-process criterion run on
  them: whether the sharded masks, gathered, equal those bit for bit, the densities, and whether
  the optimizer state of every pruned entry is zero on every shard;
- ``ties``: weights rounded to a few values (so the k-th magnitude is tied many times across
  shards) pruned once by each criterion, compared the same way;
- ``gpt``: our GPT (tiny config, tied embedding) sharded per block and at the root, trained and
  pruned by ``global`` and ``layerwise``, compared the same way;
- ``resume``: an uninterrupted run of 4 epochs against runs stopped after 2 and resumed from
  (a) a sharded ``torch.distributed.checkpoint`` of model, optimizer and Occam (guarded
  schedule, so the rollback snapshot travels too), (b) full state dicts written by rank 0; the
  final weights and masks of each, gathered; the checkpoint directory is kept in OUT_DIR for
  the test process to load with another number of ranks;
- ``rollback``: Guarded (DistributedOccam) driven to prune and then roll that prune back: the
  gathered weights and masks before the prune and after the rollback;
- ``disagree``: plain Occam with a different signal on each rank: the error each rank raised;
- ``lightning``: a Lightning ``Trainer`` with ``ModelParallelStrategy`` (``fully_shard`` in
  ``configure_model``) and OccamCallback: 4 epochs uninterrupted, and 2 epochs,
  ``trainer.save_checkpoint``, then ``fit(ckpt_path=...)`` to 4; gathered masks, weights, history;
- ``hf``: OccamTrainerCallback's hooks driven in the Trainer's order on an FSDP2 model (accelerate
  enables FSDP on GPUs only, so a Trainer under FSDP2 cannot run on CPU): 4 epochs, against 2,
  ``on_save`` on every rank, and a fresh callback resuming at that step.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F

from occamgd import Occam
from occamgd.criteria import global_magnitude, layerwise_magnitude
from occamgd.integrations.distributed import DistributedOccam
from occamgd.io import atomic_save
from occamgd.models import GPT, GPTConfig
from occamgd.sharded import Checkpointable, full_state_dict

REFERENCE = {"layerwise": layerwise_magnitude, "global": global_magnitude}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 21), nn.ReLU(), nn.Linear(21, 13), nn.ReLU(), nn.Linear(13, 3))


def tiny_gpt() -> nn.Module:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=29, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    for block in model.modules():
        if type(block).__name__ == "Block":
            fully_shard(block)
    return fully_shard(model)


def shard_mlp() -> nn.Module:
    model = mlp()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def batch(step: int, rank: int, gpt: bool = False):
    g = torch.Generator().manual_seed(1000 * step + rank)
    if gpt:
        ids = torch.randint(0, 29, (4, 8), generator=g)
        return ids, ids
    x = torch.randn(16, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def loss_of(model, xy, gpt: bool = False):
    x, y = xy
    out = model(x)
    if gpt:
        logits = out[0] if isinstance(out, tuple) else out
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(out, y)


def train(model, optimizer, epoch: int, rank: int, gpt: bool = False, steps: int = 3) -> float:
    model.train()
    for s in range(steps):
        optimizer.zero_grad()
        loss_of(model, batch(100 * epoch + s, rank, gpt), gpt).backward()
        optimizer.step()
    with torch.no_grad():
        return float(loss_of(model, batch(999, rank, gpt), gpt))


def gathered(occam):
    weights = {n: p.detach().full_tensor() for n, p in occam.masks.params.items()}
    return weights, occam.masks.full()


def state_is_zero(occam) -> bool:
    """Whether every tensor of the optimizer state is zero where the local mask prunes."""
    ok = True
    for name, p in occam.masks.params.items():
        mask = occam.masks[name].to_local()
        state = occam.optimizer.state.get(p, {}) if occam.optimizer is not None else {}
        for value in state.values():
            if torch.is_tensor(value) and value.shape == p.shape:
                ok &= bool((value.to_local()[~mask] == 0).all())
        ok &= bool((p.to_local()[~mask] == 0).all())
    return ok


def prune_and_compare(occam, signal, criterion: str) -> dict:
    weights, before = gathered(occam)
    rate = occam.step(signal)
    _, after = gathered(occam)
    expected = REFERENCE[criterion](weights, before, rate) if rate else before
    return {
        "rate": rate,
        "equal": all(torch.equal(after[n], expected[n]) for n in after),
        "kept": sum(int(m.sum()) for m in after.values()),
        "density": occam.density,
        "expected_density": sum(int(m.sum()) for m in expected.values()) / occam.masks.total,
        "state_zero": state_is_zero(occam),
    }


def exact(rank: int, make=shard_mlp, gpt: bool = False, epochs: int = 4) -> dict:
    out = {}
    for criterion in ("layerwise", "global"):
        model = make()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        if criterion == "layerwise":  # plain Occam: the ranks give the same signal
            occam = Occam(model, optimizer, criterion=criterion, schedule="paper")
        else:
            occam = DistributedOccam(model, optimizer, criterion=criterion, schedule="paper")
        rows = []
        for epoch in range(epochs):
            signal = train(model, optimizer, epoch, rank, gpt)
            if criterion == "layerwise":
                t = torch.tensor([signal], dtype=torch.float64)
                dist.all_reduce(t)
                signal = float(t) / dist.get_world_size()
            rows.append(prune_and_compare(occam, signal, criterion))
        train(model, optimizer, epochs, rank, gpt)  # masks held through more steps
        weights, masks = gathered(occam)
        out[criterion] = {"rows": rows, "masks": masks, "zero": all(bool((weights[n][~masks[n]] == 0).all())
                                                                    for n in masks),
                          "sharded": occam.sharded, "type": type(occam).__name__}
    return out


def ties(rank: int) -> dict:
    out = {}
    for criterion in ("layerwise", "global"):
        model = shard_mlp()
        with torch.no_grad():
            for p in model.parameters():
                p.to_local().copy_(torch.round(p.to_local() * 4) / 4)
        occam = Occam(model, criterion=criterion, schedule="paper")
        rows = [prune_and_compare(occam, 1.0, criterion), prune_and_compare(occam, 1.0, criterion)]
        out[criterion] = rows
    return out


# Resume ---------------------------------------------------------------------------------------
def _run(rank: int, epochs: range, model, optimizer, occam):
    for epoch in epochs:
        signal = train(model, optimizer, epoch, rank)
        occam.step(signal)


def _fresh():
    model = shard_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, optimizer, DistributedOccam(model, optimizer, schedule="guarded")  # snapshot in the state


def resume(rank: int, out: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                         set_state_dict)

    result = {}
    model, optimizer, occam = _fresh()
    _run(rank, range(4), model, optimizer, occam)
    result["uninterrupted"] = {"weights": {k: v.full_tensor() for k, v in model.state_dict().items()},
                               "masks": occam.masks.full(), "history": occam.history}

    # (a) sharded: torch.distributed.checkpoint
    model, optimizer, occam = _fresh()
    _run(rank, range(2), model, optimizer, occam)
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd, "occam": Checkpointable(occam)}, checkpoint_id=f"{out}/dcp")
    result["saved_masks"] = occam.masks.full()
    result["saved_history"] = occam.history
    model, optimizer, occam = _fresh()
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd, "occam": Checkpointable(occam)}
    dcp.load(state, checkpoint_id=f"{out}/dcp")  # loads the Occam state too
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    _run(rank, range(2, 4), model, optimizer, occam)
    result["dcp"] = {"weights": {k: v.full_tensor() for k, v in model.state_dict().items()},
                     "masks": occam.masks.full(), "history": occam.history}

    # (b) full state dicts, written by rank 0, read by every rank
    model, optimizer, occam = _fresh()
    _run(rank, range(2), model, optimizer, occam)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(model, optimizer, options=full)
    occam_state = full_state_dict(occam)
    if rank == 0:
        atomic_save({"model": msd, "optim": osd, "occam": occam_state}, f"{out}/full.pt")
    dist.barrier()
    model, optimizer, occam = _fresh()
    state = torch.load(f"{out}/full.pt", weights_only=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(full_state_dict=True))
    occam.load_state_dict(state["occam"])
    _run(rank, range(2, 4), model, optimizer, occam)
    result["full"] = {"weights": {k: v.full_tensor() for k, v in model.state_dict().items()},
                      "masks": occam.masks.full(), "history": occam.history}
    return result


#: Guarded's signals that warm up, prune, then roll the prune back (a far worse loss), and prune again.
ROLLBACK_SIGNALS = [1.0, 0.9, 0.85, 0.849, 5.0, 0.83]


def rollback(rank: int) -> dict:
    """Guarded (DistributedOccam) on FSDP2: the weights and masks a rollback restores, gathered."""
    model = shard_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    occam = DistributedOccam(model, optimizer, schedule="guarded")
    before_prune = after_rollback = None
    for epoch, signal in enumerate(ROLLBACK_SIGNALS):
        train(model, optimizer, epoch, rank)
        state = ({k: v.full_tensor() for k, v in model.state_dict().items()}, occam.masks.full())
        occam.step(signal)
        if occam.history[-1]["action"] == "pruned" and before_prune is None:
            before_prune = state
        if occam.history[-1]["action"] == "rolled back":
            after_rollback = ({k: v.full_tensor() for k, v in model.state_dict().items()}, occam.masks.full())
    return {"actions": [h["action"] for h in occam.history], "before_prune": before_prune,
            "after_rollback": after_rollback, "density": occam.density}


def disagree(rank: int) -> dict:
    occam = Occam(shard_mlp(), schedule="paper")
    occam.step(1.0)  # the paper's rule prunes at r0 in the first two epochs, whatever the signal
    occam.step(0.9)
    try:
        occam.step(0.85 + 0.1 * rank)  # rank 0: rate 0.2, rank 1: the floor
    except ValueError as error:
        return {"error": str(error), "density": occam.density}
    return {"error": None, "density": occam.density}


# Lightning -------------------------------------------------------------------------------------
def lightning_fit(out: str, epochs: int = 3, ckpt: str | None = None, save: str | None = None) -> dict:
    """A Lightning Trainer with ModelParallelStrategy (fully_shard in configure_model) and OccamCallback."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader, TensorDataset

    from occamgd.integrations.lightning import OccamCallback

    class Sharded(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def configure_model(self):
            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    def rows(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 8, generator=g)
        return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())

    callback, module = OccamCallback(schedule="paper"), Sharded()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=dist.get_world_size(),
        strategy=ModelParallelStrategy(data_parallel_size=dist.get_world_size(), tensor_parallel_size=1),
        callbacks=[callback], enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, deterministic=True,
    )
    trainer.fit(module, DataLoader(rows(128, 1), batch_size=16), DataLoader(rows(64, 2), batch_size=16),
                ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)
    occam = callback.occam
    weights, masks = gathered(occam)
    return {"type": type(occam).__name__, "sharded": occam.sharded, "masks": masks, "history": occam.history,
            "weights": {k: v.full_tensor() for k, v in module.net.state_dict().items()},
            "zero": all(bool((weights[n][~masks[n]] == 0).all()) for n in masks)}


def lightning(out: str) -> dict:
    return {"fit": lightning_fit(out, epochs=4),
            "first": lightning_fit(out, epochs=2, save=f"{out}/lightning.ckpt"),
            "resumed": lightning_fit(out, epochs=4, ckpt=f"{out}/lightning.ckpt")}


# Hugging Face callback ---------------------------------------------------------------------------
def hf_callback(rank: int, out: str) -> dict:
    """OccamTrainerCallback's own path on an FSDP2 model, driven as the Trainer drives it.

    accelerate (1.15) enables FSDP only for GPU-type distributed setups, so a Trainer under its
    FSDP2 configuration cannot run on CPU: the callback's hooks are called here in the Trainer's
    order (train begin, evaluate, step begin, save on every rank; resume in a fresh callback).
    """
    from pathlib import Path
    from types import SimpleNamespace

    from occamgd.integrations.huggingface import OccamTrainerCallback

    args = SimpleNamespace(eval_strategy="steps", world_size=dist.get_world_size(), output_dir=f"{out}/hf",
                           load_best_model_at_end=False)

    def state(step):
        return SimpleNamespace(global_step=step, is_world_process_zero=rank == 0, log_history=[])

    def begin(step):
        model = shard_mlp()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        callback = OccamTrainerCallback(schedule="paper")
        callback.on_train_begin(args, state(step), None, model=model, optimizer=optimizer)
        return model, optimizer, callback

    def epochs(model, optimizer, callback, span):
        for epoch in span:
            callback.on_step_begin(args, state(10 * epoch), None)
            signal = train(model, optimizer, epoch, rank)
            t = torch.tensor([signal], dtype=torch.float64)
            dist.all_reduce(t)  # the Trainer's evaluation gathers the loss over the ranks
            callback.on_evaluate(args, state(10 * epoch + 3), None, metrics={"eval_loss": float(t) / 2})

    model, optimizer, callback = begin(0)
    epochs(model, optimizer, callback, range(4))
    uninterrupted = {"masks": callback.occam.masks.full(), "history": callback.occam.history,
                     "weights": {k: v.full_tensor() for k, v in model.state_dict().items()},
                     "type": type(callback.occam).__name__, "sharded": callback.occam.sharded}

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    model, optimizer, callback = begin(0)
    epochs(model, optimizer, callback, range(2))
    if rank == 0:
        Path(f"{out}/hf/checkpoint-13").mkdir(parents=True, exist_ok=True)
    dist.barrier()
    callback.on_save(args, state(13), None)  # every rank, as the Trainer calls callbacks
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(model, optimizer, options=full)  # on rank 0 only (cpu_offload)
    if rank == 0:
        atomic_save({"model": msd, "optim": osd}, f"{out}/hf/checkpoint-13/model.pt")
    dist.barrier()
    saved = torch.load(f"{out}/hf/checkpoint-13/model.pt", weights_only=False)
    msd, osd = saved["model"], saved["optim"]
    model, optimizer, _ = begin(0)
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True))
    callback = OccamTrainerCallback(schedule="paper")
    callback.on_train_begin(args, state(13), None, model=model, optimizer=optimizer)  # resumes at step 13
    epochs(model, optimizer, callback, range(2, 4))
    resumed = {"masks": callback.occam.masks.full(), "history": callback.occam.history,
               "weights": {k: v.full_tensor() for k, v in model.state_dict().items()}}
    return {"uninterrupted": uninterrupted, "resumed": resumed}


def main(out: str, scenarios: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {"world": dist.get_world_size()}
    try:
        for name in scenarios or ["exact", "ties", "gpt", "resume", "disagree", "rollback", "lightning", "hf"]:
            if name == "exact":
                result["exact"] = exact(rank)
            elif name == "ties":
                result["ties"] = ties(rank)
            elif name == "gpt":
                result["gpt"] = exact(rank, tiny_gpt, gpt=True, epochs=3)
            elif name == "resume":
                result["resume"] = resume(rank, out)
            elif name == "disagree":
                result["disagree"] = disagree(rank)
            elif name == "lightning":
                result["lightning"] = lightning(out)
            elif name == "rollback":
                result["rollback"] = rollback(rank)
            elif name == "hf":
                result["hf"] = hf_callback(rank, out)
        atomic_save(result, f"{out}/rank{rank}.pt")
    finally:
        if dist.is_initialized():  # Lightning may have closed it already
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
