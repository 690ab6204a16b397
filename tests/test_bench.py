"""occamgd bench: the one experiment layer (registries, runner, run identity, resume, report, refusals)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

from occamgd.bench import METHODS, TASKS, BenchData, Method, register_method, runner
from occamgd.bench.measure import macs_per_sample, model_size, training_flops
from occamgd.bench.tasks import epoch_task
from occamgd.cli import EXIT_BAD_INPUT, main
from occamgd.models import CNN

ABLATION = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"


def _tiny_load(seed, quick, options):
    X, y = make_classification(n_samples=160, n_features=8, n_informative=5, n_classes=3, random_state=seed)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y)
    return [BenchData("blobs", (X[:120], y[:120]), (X[120:], y[120:]), 3)]


def _tiny_model(ctx):
    return nn.Sequential(nn.Linear(ctx.data.train[0].shape[1], 16), nn.ReLU(), nn.Linear(16, ctx.data.classes))


@pytest.fixture
def tiny_task(monkeypatch):
    # Every method but hist-gradient-boosting, whose OpenMP threads make it the slowest here.
    task = epoch_task("tiny", "synthetic blobs", _tiny_load, _tiny_model, epochs=4, quick_epochs=3,
                      methods=tuple(m for m in METHODS if m != "hist-gradient-boosting"))
    monkeypatch.setitem(TASKS, "tiny", task)
    return task


def _results(root):
    """``dataset/method/seed<k>`` -> record (the run id left out of the key)."""
    out = {}
    for p in root.glob("*/*/seed*.json"):
        record = json.loads(p.read_text())
        out[f"{p.parent.parent.name}/{p.parent.name}/seed{record['seed']}"] = record
    return out


def test_every_method_writes_one_record_per_seed_and_a_report(tiny_task, tmp_path):
    report = runner.run_bench("tiny", seeds=2, out=tmp_path, progress=False)
    root = tmp_path / "tiny"
    results = _results(root)
    assert len(results) == 2 * len(tiny_task.methods)
    for record in results.values():  # one schema for every method
        assert set(runner.RECORD_FIELDS) <= set(record) and record["schema"] == runner.RECORD_SCHEMA
        assert record["run_id"] == runner.run_id(record["config"])
    for seed in (0, 1):
        occam = results[f"blobs/occam-val/seed{seed}"]
        assert occam["density"] < 1.0 and occam["selected_epoch"] is not None
        assert len(occam["history"]) == 4 and occam["flops_masked"] < occam["flops_dense"]
        assert occam["bytes_sparse"] < occam["bytes_dense"]
        pruned = results[f"blobs/gd+prune/seed{seed}"]
        assert pruned["density"] == pytest.approx(occam["density"], abs=0.02)
        assert f"final_density={tiny_task.gmp_density!r}" in results[f"blobs/gmp/seed{seed}"]["schedule"]
        default = results[f"blobs/occam-guarded/seed{seed}"]  # the default controller: what the oracle is told
        assert f"final_density={default['density']!r}" in results[f"blobs/gmp-oracle/seed{seed}"]["schedule"]
        assert results[f"blobs/gmp-oracle/seed{seed}"]["config"]["needs"] == {"occam-guarded": default["run_id"]}
        guarded = results[f"blobs/occam-guarded/seed{seed}"]
        assert {r["action"] for r in guarded["history"]} <= {"warmup", "pruned", "held", "rolled back",
                                                             "stopped", "last epoch"}
        assert guarded["rollbacks"] == [r.get("action") for r in guarded["history"]].count("rolled back")
        paper = results[f"blobs/occam/seed{seed}"]
        assert paper["test_peek"]["test_loss"] == min(r["test_loss"] for r in paper["history"])
        wd = results[f"blobs/gd-wd/seed{seed}"]
        assert wd["chosen"] == min(wd["grid"], key=wd["grid"].get) and set(wd["grid"]) == {"0.001", "0.01", "0.1"}
        grid = results[f"blobs/gmp-grid/seed{seed}"]
        assert set(grid["grid"]) == {"0.5", "0.25", "0.1", "0.05"} and grid["chosen"] == min(grid["grid"], key=grid["grid"].get)
        assert grid["selection_loss"] == grid["grid"][grid["chosen"]]
        # Every candidate's test loss and density are kept for the grid's curve; the chosen one's are the record's.
        assert set(grid["grid_score"]) == set(grid["grid_density"]) == set(grid["grid"])
        assert grid["grid_score"][grid["chosen"]] == grid["test_loss"]
        assert grid["grid_density"]["0.05"] < grid["grid_density"]["0.5"]
        assert f"final_density={float(grid['chosen'])!r}" in grid["config"]["grid"][grid["chosen"]]["schedule"]
        assert results[f"blobs/gd/seed{seed}"]["density"] == 1.0
        assert results[f"blobs/random-forest/seed{seed}"]["test_loss"] > 0
    text = report.read_text()
    assert "| occam-val |" in text and "±" in text
    assert (root / "blobs-curves.png").exists() and (root / "blobs-loss-vs-density.png").exists()


def test_the_selected_epoch_is_the_lowest_holdback_loss_never_the_test_loss(tiny_task, tmp_path):
    runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["gd"], progress=False)
    result = _results(tmp_path / "tiny")["blobs/gd/seed0"]
    losses = [r["holdback_loss"] for r in result["history"]]
    assert result["selected_epoch"] == int(np.argmin(losses))
    assert result["test_loss"] == result["history"][result["selected_epoch"]]["test_loss"]


def test_finished_runs_are_not_redone_and_an_interrupted_bench_resumes(tiny_task, tmp_path, monkeypatch):
    calls = []
    real = tiny_task.train

    def failing_on_seed_1(ctx, spec):
        calls.append(ctx.seed)
        if ctx.seed == 1:
            raise KeyboardInterrupt
        return real(ctx, spec)

    object.__setattr__(tiny_task, "train", failing_on_seed_1)
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench("tiny", seeds=2, out=tmp_path, methods=["gd"], progress=False)
    assert list(_results(tmp_path / "tiny")) == ["blobs/gd/seed0"]
    object.__setattr__(tiny_task, "train", real)
    runner.run_bench("tiny", seeds=2, out=tmp_path, methods=["gd"], progress=False)
    assert calls == [0, 1]  # seed 0 was not trained again
    assert sorted(_results(tmp_path / "tiny")) == ["blobs/gd/seed0", "blobs/gd/seed1"]


def test_a_changed_setting_never_reuses_an_old_result(tiny_task, tmp_path, monkeypatch):
    runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["occam-guarded"], progress=False)
    first = list((tmp_path / "tiny" / "blobs" / "occam-guarded").glob("seed0-*.json"))
    # The controller's defaults change (its repr with them): the old record is not this run's.
    monkeypatch.setitem(METHODS, "occam-guarded", Method("occam-guarded", "changed",
                                                         schedule=lambda ctx: __import__("occamgd").Guarded(r0=0.3)))
    runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["occam-guarded"], progress=False)
    both = sorted((tmp_path / "tiny" / "blobs" / "occam-guarded").glob("seed0-*.json"))
    assert len(first) == 1 and len(both) == 2
    configs = [json.loads(p.read_text())["config"]["schedule"] for p in both]
    assert any("r0=0.3" in c for c in configs) and any("r0=0.4" in c for c in configs)


def test_adding_a_method_is_one_registration(tiny_task, tmp_path, monkeypatch):
    from occamgd import ConstantRate

    register_method(Method("constant-0.3", "prune 30 % of the remaining weights every epoch",
                           schedule=lambda ctx: ConstantRate(0.3)))
    try:
        object.__setattr__(tiny_task, "methods", tiny_task.methods + ("constant-0.3",))
        report = runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["constant-0.3"], progress=False)
    finally:
        METHODS.pop("constant-0.3")
    record = _results(tmp_path / "tiny")["blobs/constant-0.3/seed0"]
    assert record["history"][1]["density"] == pytest.approx(0.7, abs=0.01)
    assert "| constant-0.3 |" in report.read_text()
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("gd", "again"))


def test_a_method_may_prune_by_global_magnitude_and_names_it_in_its_identity(tiny_task, tmp_path, monkeypatch):
    from occamgd import ConstantRate
    from occamgd.bench import tasks
    from occamgd.bench.registry import TrainSpec

    asked, real = [], tasks.fit
    monkeypatch.setattr(tasks, "fit", lambda *a, **kw: asked.append(kw["criterion"]) or real(*a, **kw))

    register_method(Method("constant-global", "prune 30 % every epoch, ranked over all tensors together",
                           schedule=lambda ctx: ConstantRate(0.3), criterion="global"))
    try:
        object.__setattr__(tiny_task, "methods", tiny_task.methods + ("constant-global",))
        runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["constant-global"], progress=False)
    finally:
        METHODS.pop("constant-global")
    record = _results(tmp_path / "tiny")["blobs/constant-global/seed0"]
    assert record["config"]["criterion"] == "global" and asked == ["global"]
    densities = [r["density"] for r in record["history"]]
    assert densities[1] == pytest.approx(0.7, abs=0.01)
    with pytest.raises(ValueError, match="criterion must be 'layerwise' or 'global'"):
        TrainSpec(criterion="random")


def test_methods_pull_in_what_they_need(tiny_task):
    assert runner.order_methods(tiny_task, ["gmp-oracle"]) == ["occam-guarded", "gmp-oracle"]
    assert runner.order_methods(tiny_task, ["gd+prune", "gd"]) == ["gd", "occam-val", "gd+prune"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"task_name": "imagenet"}, ValueError, "unknown bench task 'imagenet'"),
        ({"task_name": "tiny", "methods": ["sgd"]}, ValueError, "unknown method 'sgd'"),
        ({"task_name": "tiny", "seeds": 0}, ValueError, "seeds must be an integer >= 1, got 0"),
        ({"task_name": "tiny", "manifest": "x"}, ValueError, "does not take the options"),
        ({"task_name": "tiny", "budget": 0}, ValueError, "an integer >= 1; got 0"),
    ],
)
def test_bad_bench_arguments_are_refused_before_any_run(tiny_task, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        runner.run_bench(out=tmp_path, progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_damaged_record_is_named(tiny_task, tmp_path):
    runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["gd"], progress=False)
    path = next((tmp_path / "tiny" / "blobs" / "gd").glob("seed0-*.json"))
    path.write_text("{")
    with pytest.raises(ValueError, match=f"{path.name} is not a bench record"):
        runner.run_bench("tiny", seeds=1, out=tmp_path, methods=["gd"], progress=False)


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
    assert sorted(_results(tmp_path / "out" / "tabular-quick")) == ["t/gd/seed0", "t/random-forest/seed0"]


def test_the_tabular_bench_reads_the_bundled_tables_by_default():
    from occamgd.bench import tasks

    loaded = tasks._tabular_load(0, True, {})
    assert len(loaded) == 15 and {d.name for d in loaded} >= {"Sonar", "Glass", "TitanicSurvival", "Womenlf"}
    assert all(len(d.train[0]) > len(d.test[0]) > 0 for d in loaded)


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


def test_macs_count_recurrent_weights_at_every_time_step():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    model = Tagger()
    macs = macs_per_sample(model, torch.zeros(2, 5, 4))  # 5 time steps
    assert macs["rnn.weight_ih_l0"] == 32 * 4 * 5 and macs["rnn.weight_hh_l0"] == 32 * 8 * 5
    assert macs["head.weight"] == 3 * 8 * 5


def _fake_run(root, bench, dataset, method, seed, loss, density):
    task = "tabular" if bench.startswith("tabular") else bench
    path = root / bench / dataset / method / f"seed{seed}-abc.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": runner.RECORD_SCHEMA, "task": task, "dataset": dataset, "method": method,
                                "seed": seed, "run_id": "abc", "test_loss": loss, "density": density,
                                "train_seconds": 1.0}))


def test_ablation_judges_each_target_on_the_numbers_it_prints(tmp_path):
    for seed, noise in enumerate((-0.01, 0.01)):
        _fake_run(tmp_path, "tabular", "A", "gd", seed, 0.50 + noise, 1.0)
        _fake_run(tmp_path, "tabular", "A", "occam-guarded", seed, 0.40 + noise, 0.3)
        _fake_run(tmp_path, "tabular", "B", "gd", seed, 0.20 + noise, 1.0)
        _fake_run(tmp_path, "tabular", "B", "occam-guarded", seed, 0.30 + noise, 0.5)  # worse by > 1 std
        _fake_run(tmp_path, "tabular-e30", "A", "occam-guarded", seed, 0.40, 0.15)  # density halves: unstable
        _fake_run(tmp_path, "tabular-e30", "B", "occam-guarded", seed, 0.30, 0.5)
    done = subprocess.run([sys.executable, str(ABLATION), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| A | 0.510 ± 0.014 (1.00) | 0.410 ± 0.014 (0.30) |" not in out  # means, not first seeds
    assert "| A | 0.500 ± 0.014 (1.00) | 0.400 ± 0.014 (0.30) |" in out
    assert "**missed** on 1 of 2 datasets; worse: tabular/B (0.300 vs 0.200 ± 0.014)" in out
    assert "better than gd on average over the tabular suite: **met** (mean test loss 0.3500 vs 0.3500" not in out
    assert "**missed** (mean test loss 0.3500 vs 0.3500; lower on 1 of 2 tables)" in out
    assert "30 -> 60 epochs (factor < 1.5): **missed**; largest factor 2.00 (A: 0.150 -> 0.300)" in out
    assert subprocess.run([sys.executable, str(ABLATION), str(tmp_path / "none")], capture_output=True).returncode == 2


YARDSTICK = Path(__file__).resolve().parents[1] / "benchmarks" / "yardstick.py"


def test_the_yardstick_pairs_each_method_with_gd_seed_by_seed(tmp_path):
    import subprocess
    import sys

    gd = (0.50, 0.52, 0.48, 0.51)
    for seed, loss in enumerate(gd):
        _fake_run(tmp_path, "tabular", "A", "gd", seed, loss, 1.0)
        _fake_run(tmp_path, "tabular", "A", "better", seed, loss - 0.05 + 0.001 * seed, 0.2)  # paired: clearly better
        _fake_run(tmp_path, "tabular", "A", "noisy", seed, loss + (0.05 if seed % 2 else -0.05), 0.5)  # tied
        _fake_run(tmp_path, "tabular", "B", "gd", seed, 0.20, 1.0)
        _fake_run(tmp_path, "tabular", "B", "better", seed, 0.30 + 0.001 * seed, 0.2)  # worse
        _fake_run(tmp_path, "tabular", "B", "noisy", seed, 0.20, 0.5)
    _fake_run(tmp_path, "tabular", "A", "better", 9, 0.0, 0.2)  # no gd run of seed 9: not paired, not counted
    out = subprocess.run([sys.executable, str(YARDSTICK), str(tmp_path / "tabular"), "--dev", "A"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert "0.454 **+** -0.048±0.001" in rows["A"].split(" | ")[3]  # method "better" on A: mean, verdict, paired diff
    assert "**−** +0.10" in rows["B"].split(" | ")[3]
    assert " = " in rows["A"].split(" | ")[4]
    assert "| **better / tied / worse** | | | 1/0/1 | 0/2/0 |" in out
    assert "development tables (A)" in out and "check tables (B)" in out
