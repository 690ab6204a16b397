"""Structured methods in the bench: occam-structured and gmp-structured shrink while training; every record
has the training time per epoch, FLOPs as run, the final model's parameters and its throughput beside dense."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from occamgd.bench import METHODS, TASKS, TrainSpec, measure, runner, tasks
from occamgd.bench.measure import inference_throughput, parameter_counts, training_flops
from occamgd.bench.methods import STRUCTURED_UNITS, UnitGMP, group_units
from occamgd.bench.registry import Method
from occamgd.bench.report import value
from occamgd.compaction import structured_pruning
from occamgd.errors import InvalidValueError
from occamgd.masks import Masks

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(root):
    return {f"{p.parent.name}/seed{json.loads(p.read_text())['seed']}": json.loads(p.read_text())
            for p in root.glob("*/*/seed*.json")}


def _images(n_train=96, n_test=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n_train + n_test, 1, 28, 28, generator=g)
    y = (X[:, 0, :14].mean(dim=(1, 2)) > X[:, 0, 14:].mean(dim=(1, 2))).long()
    y[:6] = torch.tensor([2, 2, 3, 3, 4, 4])  # five classes, some rare
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


@pytest.fixture
def fake_fashion(monkeypatch):
    """Every Fashion-MNIST task reads these few random images (no data set needed); inference is timed once."""
    monkeypatch.setattr(tasks, "_images", lambda loader, root: _images())
    monkeypatch.setitem(measure.THROUGHPUT, "warmup", 1)
    monkeypatch.setitem(measure.THROUGHPUT, "repeats", 1)
    monkeypatch.setitem(measure.THROUGHPUT, "min_seconds", 0.0)


def test_unit_gmp_reaches_exactly_its_fraction_of_the_units():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3))
    plan = structured_pruning(model, torch.randn(2, 6), scope="global")  # as gmp-structured prunes
    units = group_units(model, torch.randn(2, 6))
    assert units == 21
    schedule = UnitGMP(0.5, units, start=0, end=4)
    params = dict(model.named_parameters())
    masks = Masks({n: params[n] for n in plan["include"]})
    state = schedule.init()
    kept_units = []
    for _ in range(7):
        decision, state = schedule.decide(1.0, masks.density, state)
        if decision.rate > 0:
            masks.update(plan["criterion"](({n: params[n].detach() for n in masks}), masks, decision.rate))
        kept_units.append(int(masks["0.weight"].any(1).sum()) + int(masks["2.weight"].any(1).sum()))
        assert kept_units[-1] == state.kept  # counted as the global group criterion prunes
    assert kept_units[-1] == round(0.5 * units) and kept_units[-3:] == [kept_units[-1]] * 3
    assert all(b <= a for a, b in zip(kept_units, kept_units[1:]))
    assert "units=21" in repr(schedule)
    with pytest.raises(InvalidValueError, match="units must be an integer >= 1"):
        UnitGMP(0.5, 0)


def test_shrink_needs_structured_in_specs_and_methods():
    with pytest.raises(InvalidValueError, match="needs structured=True"):
        TrainSpec(shrink=True)
    with pytest.raises(InvalidValueError, match="shrink=True needs structured=True"):
        Method("x", "y", shrink=True)


def test_training_flops_count_live_shapes_of_a_shrinking_run():
    macs = {"a.weight": 100, "b.weight": 50}
    numel = {"a.weight": 10, "b.weight": 5}
    history = [{"density": 1.0, "densities": {"a.weight": 1.0, "b.weight": 1.0}, "live": {"a.weight": 10, "b.weight": 5}},
               {"density": 0.4, "densities": {"a.weight": 0.4, "b.weight": 0.4}, "live": {"a.weight": 5, "b.weight": 5}}]
    flops = training_flops(macs, history, samples_per_epoch=2, numel=numel)
    assert flops["flops_dense"] == 2 * 6 * 2 * 150
    assert flops["flops_per_epoch"] == [6 * 2 * 150, 6 * 2 * (50 + 50)]
    assert flops["flops_run"] == sum(flops["flops_per_epoch"])
    assert flops["flops_masked"] == pytest.approx(6 * 2 * 150 * 1.4)
    masked = [{k: v for k, v in r.items() if k != "live"} for r in history]  # a masked run runs dense
    assert training_flops(macs, masked, 2)["flops_run"] == flops["flops_dense"]
    with pytest.raises(InvalidValueError, match="needs numel"):
        training_flops(macs, history, 2)


def test_parameter_counts_and_throughput_of_two_models():
    small, big = nn.Linear(4, 2), nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    big.train()
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0] = False
    assert parameter_counts(small, {"weight": mask}) == {"live_params": 10, "final_params": 6}
    speeds = inference_throughput({"small": small, "big": big}, torch.randn(3, 4), batch_sizes=(1, 5), repeats=2,
                                  min_seconds=0.0)
    assert set(speeds) == {"small", "big"} and all(v > 0 for s in speeds.values() for v in s.values())
    assert set(speeds["big"]) == {1, 5} and big.training  # its mode restored


def test_structured_methods_shrink_on_every_epoch_task_and_records_measure_the_cost(fake_fashion, tmp_path):
    report = runner.run_bench("fashion-resnet", seeds=1, quick=True, out=tmp_path, progress=False,
                              methods=["gd", "occam-guarded", "gmp-structured", "occam-structured"])
    root = tmp_path / "fashion-resnet-quick"
    records = _records(root)
    assert set(records) == {f"{m}/seed0" for m in ("gd", "occam-guarded", "gmp-structured", "occam-structured")}
    gd, gmp = records["gd/seed0"], records["gmp-structured/seed0"]
    for r in records.values():
        assert r["train_seconds"] > 0 and all(h["seconds"] > 0 for h in r["history"])
        for key in ("throughput_b1", "throughput_b256", "dense_throughput_b1", "dense_throughput_b256"):
            assert r[key] > 0, key
        assert r["threads"] == 1 and r["dense_params"] == gd["live_params"]
        assert len(r["flops_per_epoch"]) == 3
    assert gd["final_params"] == gd["live_params"] == gd["params"] and gd["flops_run"] == gd["flops_dense"]
    # gmp-structured holds half of the groups' units after its second epoch (gmp_end = 1 of 3) and shrank
    assert gmp["config"]["structured"] == "global" and gmp["config"]["shrink"] is True
    assert "structured" not in gd["config"]  # other methods keep their identity
    assert f"final_density={STRUCTURED_UNITS!r}" in gmp["config"]["schedule"]
    assert gmp["live_params"] <= gd["live_params"] and gmp["final_params"] <= gmp["live_params"]
    per_epoch = gmp["flops_per_epoch"]
    assert per_epoch[0] == gd["flops_per_epoch"][0] and per_epoch[-1] < per_epoch[0]
    assert gmp["flops_run"] < gmp["flops_dense"] and gmp["flops_masked"] <= gmp["flops_run"]
    assert sum(gmp["history"][-1]["live"].values()) < sum(gmp["history"][0]["live"].values())
    assert gmp["history"][-1]["density"] < gmp["history"][0]["density"] == 1.0
    text = report.read_text()
    for column in ("train time (s)", "params", "samples/s b256", "b256 × dense", "b1 × dense"):
        assert column in text
    assert "| gmp-structured |" in text and "torch threads: 1" in text
    assert (root / "fashion-mnist-cost.png").stat().st_size > 0
    assert value(gmp, "speedup_b256") == gmp["throughput_b256"] / gmp["dense_throughput_b256"]


@pytest.mark.parametrize("task", ["fashion-mlp", "fashion-cnn", "fashion-resnet"])
def test_fashion_tasks_offer_the_structured_methods(task):
    assert {"occam-structured", "gmp-structured", "gd", "occam-guarded"} <= set(TASKS[task].methods)
    assert METHODS["occam-structured"].shrink and METHODS["gmp-structured"].shrink


def test_gmp_structured_on_the_cnn_task(fake_fashion, tmp_path):
    runner.run_bench("fashion-cnn", seeds=1, quick=True, out=tmp_path, progress=False, budget=3,
                     methods=["gmp-structured"])
    record = _records(tmp_path / "fashion-cnn-quick")["gmp-structured/seed0"]
    assert record["live_params"] <= record["dense_params"] and record["flops_run"] < record["flops_dense"]
    assert sum(record["history"][-1]["live"].values()) < sum(record["history"][0]["live"].values())


def test_char_gpt_structured_methods_shrink_and_measure(tmp_path, monkeypatch):
    from occamgd.bench.chargpt import CharGPTConfig

    monkeypatch.setitem(measure.THROUGHPUT, "repeats", 1)
    monkeypatch.setitem(measure.THROUGHPUT, "warmup", 1)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{w} the quick brown fox jumps over the lazy dog.\n" for w in ("Alas", "Lo") * 30))
    config = CharGPTConfig(name="smoke", n_layer=1, n_head=4, n_embd=16, block_size=16, batch_size=4, steps=20,
                           interval=5, eval_batches=2, warmup=2, dropout=0.0, lr=3e-3, sample_chars=10)
    report = runner.run_bench("char-gpt", seeds=1, out=tmp_path / "out", progress=False, corpus=corpus, config=config,
                              methods=["gd", "occam-val", "gmp-structured", "occam-structured"])
    records = _records(tmp_path / "out" / "char-gpt-smoke")
    gd, gmp = records["gd/seed0"], records["gmp-structured/seed0"]
    assert gmp["config"]["shrink"] is True and gmp["compiled"] is False
    assert sum(gmp["history"][-1]["live"].values()) < sum(gmp["history"][0]["live"].values())
    assert gmp["flops_per_epoch"][-1] < gmp["flops_per_epoch"][0] == gd["flops_per_epoch"][0]
    for r in records.values():
        assert r["throughput_b256"] > 0 and r["dense_throughput_b1"] > 0 and r["final_params"] <= r["dense_params"]
        assert all(h["seconds"] == h["train_seconds"] for h in r["history"])
        assert len(r["sample"]) == 10  # generated from the selected state, whatever its shapes
    assert gd["final_params"] == gd["dense_params"]
    masked = records["occam-val/seed0"]  # a masked run: dense shapes, the selected state's kept weights
    assert masked["live_params"] == masked["dense_params"] > masked["final_params"]
    assert masked["flops_run"] == masked["flops_dense"] > masked["flops_masked"]
    assert (tmp_path / "out" / "char-gpt-smoke" / "corpus-cost.png").exists() and "| gmp-structured |" in report.read_text()
