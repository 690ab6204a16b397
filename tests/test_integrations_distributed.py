"""integrations/distributed.py: DistributedOccam keeps every DDP rank's masks identical.

The multi-process test launches tests/ddp_worker.py on 2 CPU processes (gloo) with
``torch.distributed.run`` and compares what each rank saved. The single-process tests run a
world of one rank inside the test process for what needs no second rank (refusals, wrapping).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from occamgd import Occam
from occamgd.integrations.distributed import DistributedOccam

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: Path, *args: str) -> str:
    """Run ``script`` on 2 CPU processes (gloo); return its standard output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", str(script), *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of 2 ranks of tests/ddp_worker.py saved: [rank0, rank1]."""
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(WORKER, str(out))
    return [{**torch.load(out / f"rank{r}.pt", weights_only=False), "out": out} for r in range(2)]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_end_with_identical_masks_and_weights_after_pruning(ranks):
    a, b = (r["trained"] for r in ranks)
    assert _equal(a["masks"], b["masks"])
    assert _equal(a["weights"], b["weights"])
    assert a["history"] == b["history"]
    densities = [row["density"] for row in a["history"]]
    assert len(densities) == 4 and densities[-1] < 0.5
    assert all(later < earlier for earlier, later in zip([1.0] + densities, densities))
    for name, mask in a["masks"].items():
        assert bool((a["weights"][name][~mask] == 0).all()), name


def test_signal_is_the_mean_of_the_ranks_signals(ranks):
    a, b = (r["trained"] for r in ranks)
    # Each rank validated on its own shard: the raw signals differ, the schedule saw their mean.
    assert a["local_signals"] != b["local_signals"]
    means = [(x + y) / 2 for x, y in zip(a["local_signals"], b["local_signals"])]
    assert [row["signal"] for row in a["history"]] == pytest.approx(means, rel=1e-12)


def test_masks_are_broadcast_from_the_first_rank(ranks):
    # The worker's criterion prunes a different random set on each rank.
    a, b = (r["divergent"]["masks"] for r in ranks)
    assert _equal(a, b)
    g = torch.Generator().manual_seed(100)  # rank 0's choice, as the worker draws it
    expected = {n: torch.rand(m.shape, generator=g) >= 0.4 for n, m in a.items()}
    assert _equal(a, expected)


def test_signal_on_some_ranks_only_raises_on_every_rank(ranks):
    for rank in ranks:
        assert "signal given on 1 of 2 ranks" in rank["mismatch"]["error"]
        assert rank["mismatch"]["density"] == 1.0


def test_lightning_callback_under_ddp_agrees_across_ranks(ranks):
    # Lightning gives each rank its own validation shard and val_loss was not synced: only the
    # callback's DistributedOccam makes the ranks agree.
    a, b = (r["lightning"] for r in ranks)
    assert a["type"] == b["type"] == "DistributedOccam"
    assert a["history"] == b["history"] and len(a["history"]) == 2
    assert a["history"][-1]["density"] < 0.5
    assert _equal(a["masks"], b["masks"]) and _equal(a["weights"], b["weights"])


def test_example_script_trains_prunes_and_checkpoints(ranks):
    out = ranks[0]["example"]
    assert "epoch   1  hold-back loss (mean of 2 ranks)" in out and ranks[1]["example"] == ""
    state = torch.load(ranks[0]["out"] / "example.pt", weights_only=True)
    assert state["epoch"] == 1 and state["pending_signal"] is not None and len(state["rng"]) == 2
    masks = state["occam"]["masks"]
    assert 0.5 < float(masks["1.weight"].float().mean()) < 0.7  # one prune at r0 = 0.4
    assert all(bool((state["model"][name][~mask] == 0).all()) for name, mask in masks.items())


# Single-process world ----------------------------------------------------------------------


@pytest.fixture
def world_of_one():
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


def test_needs_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedOccam(_model())


def test_ddp_wrapper_is_unwrapped_and_prunes_like_occam(world_of_one):
    plain, wrapped = _model(), _model()
    ddp = nn.parallel.DistributedDataParallel(wrapped)
    occam = DistributedOccam(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), schedule="paper")
    reference = Occam(plain, torch.optim.SGD(plain.parameters(), lr=0.1), schedule="paper")
    # Masks are named after the module's own parameters, so checkpoints move with or without DDP.
    assert list(occam.masks) == ["0.weight", "2.weight"]
    for signal in (1.0, 0.9, 0.85):
        assert occam.step(signal) == reference.step(signal)
    assert _equal(dict(occam.masks), dict(reference.masks))
    reference.load_state_dict(occam.state_dict())
    assert "world_size=1" in repr(occam)
    # A plain Occam around the DDP wrapper names its masks the same way.
    assert list(Occam(ddp).masks) == ["0.weight", "2.weight"]


@pytest.mark.parametrize("bad", ["nan", "0.5", True, float("inf"), object()])
def test_bad_signal_raises_and_changes_nothing(world_of_one, bad):
    occam = DistributedOccam(_model())
    with pytest.raises(ValueError, match="signal"):
        occam.step(bad)
    assert occam.density == 1.0 and occam.history == []


def _fsdp1(model):
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, device_id=torch.device("cpu"))


def _fsdp1_inner(model):
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=True).module


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("shard, what", [(_fsdp1, "FullyShardedDataParallel"), (_fsdp1_inner, "flattened")])
def test_fsdp1_models_are_refused_with_the_reason(world_of_one, shard, what):
    with pytest.raises(TypeError, match=f"{what}.*only a shard"):
        DistributedOccam(shard(_model()))


# FSDP2 (fully_shard) and DTensor parameters are pruned exactly, or refused by occamgd.sharded:
# see tests/test_integrations_fsdp.py.
