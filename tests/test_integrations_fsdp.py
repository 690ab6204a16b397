"""occamgd.sharded: Occam on FSDP2 (``fully_shard``) models, masks exact across shards.

The multi-process tests launch tests/fsdp_worker.py on 2 CPU processes (and its exactness
scenarios on 4) with ``torch.distributed.run`` (gloo) and read what each rank saved. The worker
itself compares, before and after every prune, the gathered sharded masks with what the
single-process criterion (occamgd.criteria) computes on the gathered weights; the tests here
assert those comparisons and the cross-rank agreement. The single-process tests run a world of
one rank inside the test process: refusals, and loading a checkpoint written on 2 ranks.
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
from occamgd.criteria import layerwise_magnitude
from occamgd.errors import InvalidValueError
from occamgd.integrations.distributed import DistributedOccam

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

WORKER = Path(__file__).with_name("fsdp_worker.py")
sys.path.insert(0, str(WORKER.parent))
import fsdp_worker  # noqa: E402  (the same models, for the single-process tests)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, ranks: int, *scenarios: str) -> list[dict]:
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               f"--master_port={_free_port()}", str(WORKER), str(out), *scenarios]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(ranks)]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    return {"out": out, "ranks": _launch(out, 2)}


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("fsdp4"), 4, "exact", "ties")


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _assert_exact(rows: list[dict]):
    assert rows and all(row["equal"] for row in rows), rows
    assert all(row["density"] == row["expected_density"] for row in rows), rows
    assert all(row["state_zero"] for row in rows), rows  # weights and Adam moments of pruned entries
    assert all(later["kept"] < earlier["kept"] for earlier, later in zip(rows, rows[1:]))


@pytest.mark.parametrize("criterion", ["layerwise", "global"])
@pytest.mark.parametrize("scenario", ["exact", "gpt"])
def test_sharded_masks_are_the_single_process_masks_on_2_ranks(two, scenario, criterion):
    ranks = two["ranks"]
    results = [r[scenario][criterion] for r in ranks]
    _assert_exact(results[0]["rows"])
    # Every rank gathered the same masks, and every rank's rows agree (each compared on its own).
    assert all(r["rows"] == results[0]["rows"] for r in results)
    assert all(_equal(r["masks"], results[0]["masks"]) for r in results)
    assert all(r["sharded"] and r["zero"] for r in results)  # pruned weights stay zero through training


def test_plain_occam_no_longer_prunes_each_shard_on_its_own(two):
    # The symptom: per-shard pruning kept more than the single-process rule. Plain Occam
    # (not DistributedOccam) now takes the sharded path and keeps exactly what one process keeps.
    result = two["ranks"][0]["exact"]["layerwise"]
    assert result["type"] == "Occam"
    _assert_exact(result["rows"])
    densities = [row["density"] for row in result["rows"]]
    assert densities == [row["expected_density"] for row in result["rows"]] and densities[-1] < 0.15


@pytest.mark.parametrize("criterion", ["layerwise", "global"])
def test_ties_across_shards_go_to_the_lowest_global_index(two, four, criterion):
    for ranks in (two["ranks"], four):
        for rank in ranks:
            _assert_exact(rank["ties"][criterion])


@pytest.mark.parametrize("criterion", ["layerwise", "global"])
def test_sharded_masks_are_exact_on_4_ranks_with_an_empty_shard(four, criterion):
    # The last layer has 3 rows: on 4 ranks one rank holds none of it.
    assert four[0]["world"] == 4
    for rank in four:
        _assert_exact(rank["exact"][criterion]["rows"])
        assert _equal(rank["exact"][criterion]["masks"], four[0]["exact"][criterion]["masks"])


@pytest.mark.parametrize("how", ["dcp", "full"])
def test_resume_gives_the_uninterrupted_run(two, how):
    for rank in two["ranks"]:
        run, resumed = rank["resume"]["uninterrupted"], rank["resume"][how]
        assert _equal(resumed["weights"], run["weights"])
        assert _equal(resumed["masks"], run["masks"])
        assert resumed["history"] == run["history"]
        assert [h["action"] for h in run["history"]][-1] == "pruned" and run["history"][-1]["density"] < 0.6


def test_ranks_with_different_decisions_all_raise(two):
    for rank in two["ranks"]:
        assert "ranks decided differently" in rank["disagree"]["error"]
        assert "DistributedOccam" in rank["disagree"]["error"]


def test_a_rollback_restores_the_sharded_weights_and_masks(two):
    for rank in two["ranks"]:
        result = rank["rollback"]
        assert result["actions"] == ["warmup", "warmup", "warmup", "pruned", "rolled back", "pruned"]
        (weights, masks), (restored_weights, restored_masks) = result["before_prune"], result["after_rollback"]
        # The model as it was when the prune was decided (after that epoch's training), unpruned.
        assert _equal(restored_weights, weights)
        assert _equal(restored_masks, masks) and all(bool(m.all()) for m in masks.values())
        assert result["density"] < 1.0


# Single-process world ----------------------------------------------------------------------------


@pytest.fixture
def world_of_one():
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _distribute(model: nn.Module, which, placement) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    for i in which:
        model[i].weight = nn.Parameter(distribute_tensor(model[i].weight.detach(), mesh, [placement]))
    return model


def test_mixed_sharded_and_plain_prunable_tensors_are_refused(world_of_one):
    from torch.distributed.tensor import Shard

    with pytest.raises(InvalidValueError, match=r"mix sharded and unsharded.*\['0.weight'\].*\['2.weight'.*accepted"):
        Occam(_distribute(fsdp_worker.mlp(), [0], Shard(0)))
    # Leaving the plain ones out is accepted.
    assert Occam(_distribute(fsdp_worker.mlp(), [0], Shard(0)), include="0.weight").sharded


@pytest.mark.parametrize("make", ["shard1", "replicate"])
def test_tensor_parallel_and_replicated_placements_are_refused(world_of_one, make):
    from torch.distributed.tensor import Replicate, Shard

    placement = Shard(1) if make == "shard1" else Replicate()
    model = _distribute(fsdp_worker.mlp(), [0, 2, 4], placement)
    with pytest.raises(InvalidValueError, match=r"placements \[.*\].*tensor parallelism.*accepted.*Shard\(0\)"):
        DistributedOccam(model)


@pytest.mark.parametrize("criterion", ["structured", "nm"])
def test_structured_and_nm_criteria_over_shards_are_refused(world_of_one, criterion):
    with pytest.raises(InvalidValueError, match=r"cannot prune sharded.*accepted with FSDP2: 'layerwise' or 'global'"):
        Occam(fsdp_worker.shard_mlp(), criterion=criterion)


def test_fsdp2_on_one_rank_prunes_like_plain_occam(world_of_one):
    sharded, plain = fsdp_worker.shard_mlp(), fsdp_worker.mlp()
    a = Occam(sharded, torch.optim.SGD(sharded.parameters(), lr=0.1), schedule="paper", criterion="global")
    b = Occam(plain, torch.optim.SGD(plain.parameters(), lr=0.1), schedule="paper", criterion="global")
    for signal in (1.0, 0.9, 0.85):
        assert a.step(signal) == b.step(signal)
    assert _equal(a.masks.full(), dict(b.masks)) and a.density == b.density
    assert "density=" in repr(a)  # counts are cached: no collective needed to print


def test_rollback_on_one_rank_matches_plain_occam(world_of_one):
    sharded, plain = fsdp_worker.shard_mlp(), fsdp_worker.mlp()
    a = Occam(sharded, torch.optim.Adam(sharded.parameters(), lr=1e-2), schedule="guarded")
    b = Occam(plain, torch.optim.Adam(plain.parameters(), lr=1e-2), schedule="guarded")
    for epoch, signal in enumerate(fsdp_worker.ROLLBACK_SIGNALS + [0.82]):
        fsdp_worker.train(sharded, a.optimizer, epoch, 0)
        fsdp_worker.train(plain, b.optimizer, epoch, 0)
        a.step(signal)
        b.step(signal)
    assert [h["action"] for h in a.history] == [h["action"] for h in b.history]
    assert "rolled back" in [h["action"] for h in a.history]
    assert _equal(a.masks.full(), dict(b.masks))
    assert _equal({k: v.full_tensor() for k, v in sharded.state_dict().items()}, plain.state_dict())


def test_checkpoints_from_2_ranks_load_on_1(two, world_of_one):
    """A changed rank count: DCP reshards the masks; a full state dict is rank-agnostic."""
    import torch.distributed.checkpoint as dcp

    from occamgd.sharded import Checkpointable

    saved = two["ranks"][0]["resume"]
    model = fsdp_worker.shard_mlp()
    occam = DistributedOccam(model, schedule="guarded")
    dcp.load({"occam": Checkpointable(occam)}, checkpoint_id=str(two["out"] / "dcp"))
    assert _equal(occam.masks.full(), saved["saved_masks"]) and occam.history == saved["saved_history"]
    # The full state dict, written by rank 0, loads into a single-process Occam and a 1-rank one.
    state = torch.load(two["out"] / "full.pt", weights_only=False)["occam"]
    plain = Occam(fsdp_worker.mlp(), schedule="guarded")
    plain.load_state_dict(state)
    assert _equal(dict(plain.masks), saved["saved_masks"])
    occam.load_state_dict(state)
    assert _equal(occam.masks.full(), saved["saved_masks"])


def test_a_mask_placed_otherwise_is_refused_naming_what_is_accepted(world_of_one):
    from torch.distributed.tensor import Replicate, distribute_tensor

    occam = Occam(fsdp_worker.shard_mlp())
    mesh = occam.masks["0.weight"].device_mesh
    other = distribute_tensor(torch.ones(21, 8, dtype=torch.bool), mesh, [Replicate()])
    state = occam.state_dict()
    state["masks"]["0.weight"] = other
    with pytest.raises(InvalidValueError, match="another number of ranks.*accepted.*full bool tensor.*distributed.checkpoint"):
        occam.load_state_dict(state)


@pytest.mark.parametrize("criterion", ["layerwise", "global"])
@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float64, torch.float32, torch.float16)])
def test_sharded_criteria_pick_what_the_single_process_criterion_picks(world_of_one, criterion, dtypes):
    from torch.distributed.fsdp import fully_shard

    from occamgd import sharded
    from occamgd.criteria import global_magnitude

    model = fsdp_worker.mlp()
    for i, layer in enumerate(l for l in model if isinstance(l, nn.Linear)):
        layer.to(dtypes[i % len(dtypes)])
        fully_shard(layer)
    occam = Occam(model)
    weights = {n: p.detach() for n, p in occam.masks.params.items()}
    full = {n: w.full_tensor() for n, w in weights.items()}
    masks = occam.masks.full()
    pick, reference = {"layerwise": (sharded.sharded_layerwise, layerwise_magnitude),
                       "global": (sharded.sharded_global, global_magnitude)}[criterion]
    for rate in (0.3, 0.5):
        got = {n: m.full_tensor() for n, m in pick(weights, occam.masks, rate).items()}
        expected = reference(full, masks, rate)
        assert _equal(got, expected)
        occam.masks.update(got)
        masks = expected


@pytest.mark.parametrize("criterion", ["layerwise", "global"])
def test_selection_across_chunk_boundaries_with_ties(world_of_one, monkeypatch, criterion):
    # The selection walks each shard CHUNK entries at a time; ties straddle the chunks here.
    from occamgd import sharded
    from occamgd.criteria import global_magnitude

    monkeypatch.setattr(sharded, "CHUNK", 7)
    model = fsdp_worker.shard_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.to_local().copy_(torch.round(p.to_local() * 4) / 4)
    occam = Occam(model, criterion=criterion)
    weights = {n: p.detach() for n, p in occam.masks.params.items()}
    pick, reference = {"layerwise": (sharded.sharded_layerwise, layerwise_magnitude),
                       "global": (sharded.sharded_global, global_magnitude)}[criterion]
    for rate in (0.3, 0.5, 0.6):
        full, masks = {n: w.full_tensor() for n, w in weights.items()}, occam.masks.full()
        got = pick(weights, occam.masks, rate)
        assert _equal({n: m.full_tensor() for n, m in got.items()}, reference(full, masks, rate))
        occam.masks.update(got)


def test_lightning_model_parallel_strategy_prunes_and_resumes_exactly(two):
    # ModelParallelStrategy with fully_shard in configure_model, OccamCallback, 2 CPU ranks (gloo);
    # val_loss is each rank's own (no sync_dist): the callback's DistributedOccam averages it.
    ranks = [r["lightning"] for r in two["ranks"]]
    for rank in ranks:
        fit, resumed = rank["fit"], rank["resumed"]
        assert fit["type"] == "DistributedOccam" and fit["sharded"] and fit["zero"]
        assert len(fit["history"]) == 3 and fit["history"][-1]["density"] < 0.5
        # 2 epochs, trainer.save_checkpoint, then fit(ckpt_path=...) to 4: the uninterrupted run.
        assert _equal(resumed["masks"], fit["masks"]) and _equal(resumed["weights"], fit["weights"])
        assert resumed["history"] == fit["history"]
    assert _equal(ranks[0]["fit"]["masks"], ranks[1]["fit"]["masks"])


def test_hf_callback_on_fsdp2_saves_on_every_rank_and_resumes_exactly(two):
    # accelerate enables FSDP for GPU setups only, so the Trainer under its FSDP2 configuration
    # cannot run on CPU; the worker drives OccamTrainerCallback's hooks in the Trainer's order.
    for rank in two["ranks"]:
        run, resumed = rank["hf"]["uninterrupted"], rank["hf"]["resumed"]
        assert run["type"] == "DistributedOccam" and run["sharded"] and len(run["history"]) == 3
        assert _equal(resumed["masks"], run["masks"]) and _equal(resumed["weights"], run["weights"])
        assert resumed["history"] == run["history"]
    saved = torch.load(two["out"] / "hf" / "checkpoint-13" / "occam_state.pt", weights_only=True)
    assert all(type(m) is torch.Tensor for m in saved["occam"]["masks"].values())  # gathered, plain
