"""bench.chargpt: the step-based char-gpt task in the one runner (records, pruning, fairness, resume, refusals)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from occamgd.bench import TASKS, chargpt, run_bench
from occamgd.bench.chargpt import QUICK, STANDARD, CharGPTConfig

TASK = TASKS["char-gpt"]
METHODS = TASK.methods

SMOKE = CharGPTConfig(name="smoke", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, steps=20,
                      interval=5, eval_batches=2, warmup=2, dropout=0.0, lr=3e-3, sample_chars=20)
TEXT = "".join(f"{word} the quick brown fox jumps over the lazy dog.\n" for word in ("Alas", "Lo", "Hark") * 20)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def run_chargpt(**kwargs):
    return run_bench("char-gpt", **kwargs)


def _losses(run):
    """What a rerun must repeat exactly (timings differ from run to run)."""
    return [(r["step"], r["holdback_loss"], r["train_loss"], r["density"], r["rate"]) for r in run["history"]]


def _runs(root):
    """``dataset/method/seed<k>.json`` -> record (the run id left out of the key)."""
    return {f"{p.parent.parent.name}/{p.parent.name}/seed{json.loads(p.read_text())['seed']}.json":
            json.loads(p.read_text()) for p in root.glob("*/*/seed*.json")}


def test_smoke_bench_writes_runs_report_and_prunes(tmp_path, corpus):
    results = run_chargpt(seeds=1, out=tmp_path, progress=False, corpus=corpus, config=SMOKE)
    root = tmp_path / "char-gpt-smoke"
    assert results == root / "results.md"
    runs = _runs(root)
    assert set(runs) == {f"corpus/{m}/seed0.json" for m in METHODS}
    occam, gd, gmp = (runs[f"corpus/{m}/seed0.json"] for m in ("occam-val", "gd", "gmp"))
    assert [r["step"] for r in occam["history"]] == [5, 10, 15, 20]
    # occam-val pruned at every evaluation but the last; gd never did.
    assert [r["rate"] > 0 for r in occam["history"]] == [True, True, True, False]
    assert occam["history"][-1]["density"] < 0.5
    assert {r["density"] for r in gd["history"]} == {1.0}
    # gmp reaches its fixed density at 75 % of the steps (after evaluation 3 of 4) and holds it.
    assert gmp["history"][-1]["density"] == pytest.approx(TASK.gmp_density, abs=0.01)
    assert gmp["history"][2]["density"] > TASK.gmp_density + 0.05
    for run in runs.values():
        assert 0 < run["density"] <= 1.0 and run["best_step"] in (5, 10, 15, 20)
        assert run["selection_loss"] == min(r["holdback_loss"] for r in run["history"])
        assert run["test_loss"] is None  # no test split: the validation text selects and is reported
        assert all(r["tokens_per_s"] > 0 for r in run["history"])
        assert len(run["sample"]) == SMOKE.sample_chars and set(run["sample"]) <= set(TEXT)
    text = results.read_text()
    for m in METHODS:
        assert f"| {m} |" in text
    assert occam["sample"] in text
    assert (root / "corpus-curves.png").stat().st_size > 0


def test_every_method_starts_from_the_same_weights_and_batches(tmp_path, corpus):
    run_chargpt(seeds=1, out=tmp_path, progress=False, corpus=corpus, config=SMOKE)
    runs = _runs(tmp_path / "char-gpt-smoke")
    # Nothing is pruned before the first evaluation, so every method must see the same loss there
    # (gd-wd's chosen run may use another weight decay; rigl is sparse from its first step, at the
    # default controller's density).
    first = {m: runs[f"corpus/{m}/seed0.json"]["history"][0] for m in METHODS if m not in ("gd-wd", "rigl")}
    assert len({r["holdback_loss"] for r in first.values()}) == 1
    assert len({r["train_loss"] for r in first.values()}) == 1


def test_resume_skips_finished_runs_and_redoes_missing_ones(tmp_path, corpus, monkeypatch):
    run_chargpt(seeds=1, out=tmp_path, progress=False, corpus=corpus, config=SMOKE)
    root = tmp_path / "char-gpt-smoke"
    before = {k: _losses(v) for k, v in _runs(root).items()}
    next((root / "corpus" / "gmp").glob("seed0-*.json")).unlink()
    calls = []
    real = chargpt.train_run
    monkeypatch.setattr(chargpt, "train_run", lambda *a, **k: calls.append(a[3].schedule) or real(*a, **k))
    run_chargpt(seeds=1, out=tmp_path, progress=False, corpus=corpus, config=SMOKE)
    assert [type(s).__name__ for s in calls] == ["GMP"]
    after = {k: _losses(v) for k, v in _runs(root).items()}
    assert after == before  # same seed, same batches: the redone run repeats itself exactly


def test_runs_with_other_settings_are_not_mixed(tmp_path, corpus):
    run_chargpt(seeds=1, out=tmp_path, progress=False, corpus=corpus, config=SMOKE, methods=["gd"])
    other = dataclasses.replace(SMOKE, lr=1e-3)
    report = run_chargpt(seeds=1, out=tmp_path, progress=False, corpus=corpus, config=other, methods=["gd"])
    files = sorted((tmp_path / "char-gpt-smoke" / "corpus" / "gd").glob("seed0-*.json"))
    assert len(files) == 2  # a changed setting is a new run, the old one is left as it was
    assert report.read_text().count("| gd |") == 1  # the report is this configuration's alone


def test_refusals_come_before_any_training(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(chargpt, "train_run", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        run_chargpt(out=tmp_path, corpus=corpus, config=SMOKE, methods=["gd", "sgd"], progress=False)
    with pytest.raises(ValueError, match="seeds"):
        run_chargpt(seeds=0, out=tmp_path, corpus=corpus, config=SMOKE, progress=False)
    with pytest.raises(ValueError, match=r"at least \d+ characters"):
        run_chargpt(out=tmp_path, corpus=corpus, config=dataclasses.replace(SMOKE, block_size=512), progress=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OCCAMGD_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="tinyshakespeare"):
        run_chargpt(out=tmp_path, config=SMOKE, progress=False, data_root=tmp_path / "nowhere")
    assert not list(tmp_path.glob("char-gpt*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_without_cuda_is_a_clear_error(tmp_path, corpus):
    with pytest.raises(ValueError, match="gpu=True needs a CUDA device"):
        run_chargpt(gpu=True, out=tmp_path, corpus=corpus, config=SMOKE, progress=False)


def test_the_bundled_corpus_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OCCAMGD_DATA", raising=False)
    (data,) = TASK.load(0, True, {})
    assert data.name == "tinyshakespeare" and data.classes == 58  # the quick configuration reads 20 000 characters


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    c = STANDARD
    lrs = [c.lr_at(s) for s in range(c.steps)]
    assert lrs[0] == pytest.approx(c.lr / c.warmup)
    assert lrs[c.warmup - 1] == pytest.approx(c.lr) == max(lrs)
    assert lrs[-1] == pytest.approx(c.lr * c.min_lr_ratio)
    assert all(a >= b for a, b in zip(lrs[c.warmup:], lrs[c.warmup + 1:]))


@pytest.mark.parametrize(("field", "value"), [("interval", 5000), ("warmup", 3000), ("steps", 0)])
def test_bad_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(STANDARD, **{field: value})


def test_configurations_match_the_documented_shapes():
    assert (STANDARD.n_layer, STANDARD.n_head, STANDARD.n_embd, STANDARD.block_size) == (6, 6, 384, 256)
    assert (STANDARD.batch_size, STANDARD.steps, STANDARD.interval, STANDARD.eval_batches) == (64, 3000, 250, 40)
    assert (QUICK.n_layer, QUICK.n_head, QUICK.n_embd, QUICK.block_size, QUICK.batch_size) == (4, 4, 128, 64, 32)


def test_gmp_oracle_is_told_the_default_controllers_density_and_gd_wd_keeps_its_best_grid_run(tmp_path, corpus):
    run_chargpt(seeds=1, out=tmp_path, progress=False, corpus=corpus, config=SMOKE, methods=["gmp-oracle", "gd-wd"])
    runs = _runs(tmp_path / "char-gpt-smoke")
    assert set(runs) == {f"corpus/{m}/seed0.json" for m in ("occam-guarded", "gmp-oracle", "gd-wd")}
    default = runs["corpus/occam-guarded/seed0.json"]
    assert f"final_density={default['density']!r}" in runs["corpus/gmp-oracle/seed0.json"]["schedule"]
    wd = runs["corpus/gd-wd/seed0.json"]
    assert set(wd["grid"]) == {"0.01", "0.1", "1.0"}
    assert wd["selection_loss"] == min(wd["grid"].values())
    assert str(wd["weight_decay"]) == min(wd["grid"], key=wd["grid"].get) == wd["chosen"]
