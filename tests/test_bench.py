"""occamgd bench: methods registry, runner (JSON per run, resume), reports, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

from occamgd.bench import methods as methods_module
from occamgd.bench import runner, tasks
from occamgd.bench.measure import macs_per_sample, model_size, training_flops
from occamgd.bench.methods import METHODS
from occamgd.bench.tasks import BenchData, Task
from occamgd.cli import EXIT_BAD_INPUT, main
from occamgd.models import CNN


def _tiny_load(seed, quick, options):
    X, y = make_classification(n_samples=160, n_features=8, n_informative=5, n_classes=3, random_state=seed)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y)
    return [BenchData("blobs", (X[:120], y[:120]), (X[120:], y[120:]), 3)]


def _tiny_model(data):
    return nn.Sequential(nn.Linear(data.train[0].shape[1], 16), nn.ReLU(), nn.Linear(16, data.classes))


@pytest.fixture
def tiny_task(monkeypatch):
    # Every method but hist-gradient-boosting, whose OpenMP threads make it the slowest here.
    task = Task("tiny", "synthetic blobs", _tiny_load, _tiny_model, epochs=4, quick_epochs=3,
                methods=tuple(m for m in METHODS if m != "hist-gradient-boosting"))
    monkeypatch.setitem(tasks.TASKS, "tiny", task)
    return task


def _results(root):
    return {p.relative_to(root).as_posix(): json.loads(p.read_text()) for p in root.glob("*/*/seed*.json")}


def test_every_method_writes_one_json_per_seed_and_a_report(tiny_task, tmp_path):
    report = runner.run_bench("tiny", seeds=2, out=tmp_path, progress=False)
    root = tmp_path / "tiny"
    results = _results(root)
    assert len(results) == 2 * len(tiny_task.methods)
    for seed in (0, 1):
        occam = results[f"blobs/occam-val/seed{seed}.json"]
        assert occam["density"] < 1.0 and occam["selected_epoch"] is not None
        assert len(occam["history"]) == 4 and occam["flops_masked"] < occam["flops_dense"]
        assert occam["bytes_sparse"] < occam["bytes_dense"]
        pruned = results[f"blobs/gd+prune/seed{seed}.json"]
        assert pruned["density"] == pytest.approx(occam["density"], abs=0.02)
        assert results[f"blobs/gmp/seed{seed}.json"]["target_density"] == tiny_task.gmp_density
        guarded = results[f"blobs/occam-guarded/seed{seed}.json"]
        assert results[f"blobs/gmp-oracle/seed{seed}.json"]["target_density"] == guarded["density"]
        assert {r["action"] for r in guarded["history"]} <= {"warmup", "pruned", "held", "rolled back",
                                                             "stopped", "last epoch"}
        wd = results[f"blobs/gd-wd/seed{seed}.json"]
        assert str(wd["weight_decay"]) == min(wd["grid"].items(), key=lambda kv: kv[1])[0]
        assert results[f"blobs/gd/seed{seed}.json"]["density"] == 1.0
        assert results[f"blobs/random-forest/seed{seed}.json"]["test_loss"] > 0
    text = report.read_text()
    assert "| occam-val |" in text and "±" in text
    assert (root / "blobs-curves.png").exists() and (root / "blobs-loss-vs-density.png").exists()


def test_the_selected_epoch_is_the_lowest_holdback_loss_never_the_test_loss(tiny_task, tmp_path):
    runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["gd"], progress=False)
    result = _results(tmp_path / "tiny")["blobs/gd/seed0.json"]
    losses = [r["holdback_loss"] for r in result["history"]]
    assert result["selected_epoch"] == int(np.argmin(losses))
    assert result["test_loss"] == result["history"][result["selected_epoch"]]["test_loss"]


def test_finished_runs_are_not_redone_and_an_interrupted_bench_resumes(tiny_task, tmp_path, monkeypatch):
    calls = []
    real = METHODS["gd"]

    def failing_on_seed_1(ctx):
        calls.append(ctx.seed)
        if ctx.seed == 1:
            raise KeyboardInterrupt
        return real.run(ctx)

    monkeypatch.setitem(METHODS, "gd", methods_module.Method("gd", real.description, failing_on_seed_1))
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench("tiny", seeds=2, out=tmp_path, methods=["gd"], progress=False)
    assert list(_results(tmp_path / "tiny")) == ["blobs/gd/seed0.json"]
    monkeypatch.setitem(METHODS, "gd", real)
    runner.run_bench("tiny", seeds=2, out=tmp_path, methods=["gd"], progress=False)
    assert calls == [0, 1]  # seed 0 was not trained again
    assert sorted(_results(tmp_path / "tiny")) == ["blobs/gd/seed0.json", "blobs/gd/seed1.json"]


def test_methods_pull_in_what_they_need():
    assert runner._order(["gmp-oracle"]) == ["occam-guarded", "gmp-oracle"]
    assert runner._order(["gd+prune", "gd"]) == ["gd", "occam-val", "gd+prune"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"task_name": "imagenet"}, ValueError, "unknown bench task 'imagenet'"),
        ({"task_name": "tiny", "methods": ["sgd"]}, ValueError, "unknown method 'sgd'"),
        ({"task_name": "tiny", "seeds": 0}, ValueError, "seeds must be an integer >= 1, got 0"),
    ],
)
def test_bad_bench_arguments_are_refused_before_any_run(tiny_task, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        runner.run_bench(out=tmp_path, progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_missing_image_data_names_where_it_looked_before_training(tmp_path, capsys):
    code = main(["bench", "fashion-mlp", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
                 "--quiet"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "nowhere" in err and "download=True" in err
    assert not (tmp_path / "out").exists()


def test_tabular_bench_from_the_command_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 3))
    frame = "a,b,c,label\n" + "\n".join(f"{a:.4f},{b:.4f},{c:.4f},{'yes' if a + b > 0 else 'no'}" for a, b, c in X)
    (tmp_path / "t.csv").write_text(frame)
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"t": {"file": "t.csv", "target": "label"}}}))
    code = main(["bench", "tabular", "--quick", "--seeds", "1", "--methods", "gd,random-forest", "--manifest",
                 str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(_results(tmp_path / "out" / "tabular-quick")) == ["t/gd/seed0.json", "t/random-forest/seed0.json"]


def test_model_size_counts_kept_values_plus_a_bit_mask():
    model = nn.Linear(100, 10)  # 1000 prunable weights, 10 biases
    size = model_size(model, {"weight": 0.25})
    assert size["params"] == 1010 and size["prunable"] == 1000 and size["kept"] == 250
    assert size["bytes_dense"] == 1010 * 4
    assert size["bytes_sparse"] == 250 * 4 + 1000 // 8 + 10 * 4


def test_macs_count_convolution_positions_and_flops_scale_with_density():
    model = CNN(1, 10, n=4, image_size=28)
    macs = macs_per_sample(model, torch.zeros(2, 1, 28, 28))
    assert macs["conv1.weight"] == 4 * 1 * 9 * 26 * 26
    assert macs["fc2.weight"] == 8 * 10
    history = [{"density": 1.0, "densities": {}}, {"density": 0.5, "densities": {n: 0.5 for n in macs}}]
    flops = training_flops(macs, history, samples_per_epoch=100)
    assert flops["flops_dense"] == 2 * 6 * 100 * sum(macs.values())
    assert flops["flops_masked"] == pytest.approx(0.75 * flops["flops_dense"])


def _fake_run(root, bench, dataset, method, seed, loss, density):
    path = root / bench / dataset / method / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": dataset, "method": method, "seed": seed, "test_loss": loss,
                                "density": density, "train_seconds": 1.0}))


def test_ablation_judges_each_target_on_the_numbers_it_prints(tmp_path, capsys):
    from occamgd.bench import ablation

    for seed, noise in enumerate((-0.01, 0.01)):
        _fake_run(tmp_path, "tabular", "A", "gd", seed, 0.50 + noise, 1.0)
        _fake_run(tmp_path, "tabular", "A", "occam-guarded", seed, 0.40 + noise, 0.3)
        _fake_run(tmp_path, "tabular", "B", "gd", seed, 0.20 + noise, 1.0)
        _fake_run(tmp_path, "tabular", "B", "occam-guarded", seed, 0.30 + noise, 0.5)  # worse by > 1 std
        _fake_run(tmp_path, "tabular-e30", "A", "occam-guarded", seed, 0.40, 0.15)  # density halves: unstable
        _fake_run(tmp_path, "tabular-e30", "B", "occam-guarded", seed, 0.30, 0.5)
    assert ablation.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| A | 0.510 ± 0.014 (1.00) | 0.410 ± 0.014 (0.30) |" not in out  # means, not first seeds
    assert "| A | 0.500 ± 0.014 (1.00) | 0.400 ± 0.014 (0.30) |" in out
    assert "**missed** on 1 of 2 datasets; worse: tabular/B (0.300 vs 0.200 ± 0.014)" in out
    assert "better than gd on average over the tabular suite: **met** (mean test loss 0.3500 vs 0.3500" not in out
    assert "**missed** (mean test loss 0.3500 vs 0.3500; lower on 1 of 2 tables)" in out
    assert "30 -> 60 epochs (factor < 1.5): **missed**; largest factor 2.00 (A: 0.150 -> 0.300)" in out
    assert ablation.main([str(tmp_path / "none")]) == 2
