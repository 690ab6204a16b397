"""occamgd.rigl: dynamic sparse training (RigL) and its bench method."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn
from torch.nn import functional as F

from occamgd.bench import METHODS, TASKS, BenchData, runner
from occamgd.bench.chargpt import CharGPTConfig
from occamgd.bench.tasks import epoch_task
from occamgd.errors import InvalidTypeError, InvalidValueError
from occamgd.rigl import RigL, erk_densities, update_interval
from occamgd.schedules import ConstantRate, Never

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 3))


def _data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def _train(model, optimizer, steps: int, seed: int = 0, each=None):
    x, y = _data(seed=seed)
    for step in range(steps):
        rows = slice((8 * step) % 64, (8 * step) % 64 + 8)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        optimizer.step()
        if each is not None:
            each(step + 1)


def _rigl(model=None, lr=1e-2, **kwargs):
    model = model or _net()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    settings = {"density": 0.3, "total_steps": 40, "update_every": 4, "seed": 0, **kwargs}
    return model, optimizer, RigL(model, optimizer, **settings)


def _kept(rigl):
    return {name: int(mask.sum()) for name, mask in rigl.masks.items()}


# The algorithm -------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_density_stays_exactly_constant_through_the_updates(distribution):
    model, optimizer, rigl = _rigl(distribution=distribution)
    start = _kept(rigl)
    if distribution == "uniform":
        assert start == {name: round(0.3 * p.numel()) for name, p in rigl.masks.params.items()}
    assert rigl.density == pytest.approx(0.3, abs=0.01)
    before = {name: mask.clone() for name, mask in rigl.masks.items()}
    seen = []
    _train(model, optimizer, 40, each=lambda step: seen.append((_kept(rigl), rigl.density)))
    assert all(kept == start for kept, _ in seen)
    assert {density for _, density in seen} == {rigl.density}
    # ... while the connectivity did change.
    assert any(not torch.equal(before[name], rigl.masks[name]) for name in before)


def test_drop_and_grow_counts_follow_the_cosine_schedule():
    model, optimizer, rigl = _rigl(total_steps=48, update_every=4, alpha=0.4, end=0.75)
    _train(model, optimizer, 48)
    horizon = 0.75 * 48
    assert [r["step"] for r in rigl.history] == [4, 8, 12, 16, 20, 24, 28, 32]  # 36 is not before the end
    kept = _kept(rigl)
    for record in rigl.history:
        fraction = 0.4 / 2 * (1 + math.cos(math.pi * record["step"] / horizon))
        assert record["fraction"] == pytest.approx(fraction)
        expected = {name: int(fraction * n) for name, n in kept.items() if int(fraction * n) > 0}
        assert {name: c["k"] for name, c in record["tensors"].items()} == expected
        assert all(0 <= c["new"] <= c["k"] for c in record["tensors"].values())
    assert rigl.history[0]["tensors"]["0.weight"]["k"] > rigl.history[3]["tensors"]["0.weight"]["k"] > 0


def test_grown_weights_are_the_top_gradient_inactive_ones_and_start_at_zero_with_zeroed_adam_state():
    model, optimizer, rigl = _rigl(update_every=3, alpha=0.5)
    seen = {}

    def read_grads(opt, args, kwargs):  # after RigL's own pre-hook: the same, unchanged gradients
        seen["grad"] = {n: p.grad.abs().clone() for n, p in rigl.masks.params.items()}
        seen["mask"] = {n: m.clone() for n, m in rigl.masks.items()}

    def expect(opt, args, kwargs):  # runs after RigL's post-hook
        seen["after"] = {n: m.clone() for n, m in rigl.masks.items()}

    optimizer.register_step_pre_hook(read_grads)
    # Recompute the update as the paper states it, from the weights after the step (before RigL's update).
    shadow = {}
    optimizer.register_step_post_hook(expect)

    def weights_after_step(opt, args, kwargs):
        shadow["w"] = {n: (p.detach() * seen["mask"][n]).clone() for n, p in rigl.masks.params.items()}
        shadow["state"] = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in rigl.masks.params.items()}

    # Put a post-hook in front of RigL's: it must see the stepped weights before the update changes them.
    optimizer._optimizer_step_post_hooks.move_to_end(
        optimizer.register_step_post_hook(weights_after_step).id, last=False)
    _train(model, optimizer, 2)
    _train(model, optimizer, 1, seed=1)  # step 3: the first update
    assert [r["step"] for r in rigl.history] == [3]
    for name, param in rigl.masks.params.items():
        old, new, w, grad = seen["mask"][name], seen["after"][name], shadow["w"][name], seen["grad"][name]
        n_active = int(old.sum())
        k = int(rigl.history[0]["fraction"] * n_active)
        assert k > 0
        kept = torch.zeros(old.numel(), dtype=torch.bool)
        kept[torch.topk(torch.where(old.flatten(), w.flatten().abs(), -1.0), n_active - k).indices] = True
        grown = torch.zeros_like(kept)
        grown[torch.topk(torch.where(kept, -1.0, grad.flatten()), k).indices] = True
        assert torch.equal(new.flatten(), kept | grown), name
        fresh = (new & ~old)
        assert int(fresh.sum()) == rigl.history[0]["tensors"][name]["new"] > 0
        assert torch.all(param.detach()[fresh] == 0)
        state = optimizer.state[param]
        assert torch.all(state["exp_avg"][fresh] == 0) and torch.all(state["exp_avg_sq"][fresh] == 0)
        for key in ("exp_avg", "exp_avg_sq"):  # the kept weights' moments are untouched
            assert torch.equal(state[key][new & old], shadow["state"][name][key][new & old])
        assert bool((state["exp_avg_sq"][new & old] > 0).any())
        assert torch.all(state["exp_avg"][~new] == 0)  # and no inactive weight carries any
        # The grown ones are those with the largest gradients among the rest.
        assert grad[fresh].min() >= grad[~new & ~old].max()


def test_masks_hold_after_every_step_and_nothing_changes_after_end():
    model, optimizer, rigl = _rigl(total_steps=40, update_every=5, end=0.5)
    snapshots = []

    def check(step):
        for name, param in rigl.masks.params.items():
            assert torch.all(param.detach()[~rigl.masks[name]] == 0), (step, name)
        snapshots.append({n: m.clone() for n, m in rigl.masks.items()})

    _train(model, optimizer, 40, each=check)
    assert [r["step"] for r in rigl.history] == [5, 10, 15]  # 20 = end * total_steps is not before the end
    after_end = snapshots[14:]
    assert all(all(torch.equal(s[n], after_end[0][n]) for n in s) for s in after_end)
    assert rigl.drop_fraction(20) == 0.0 and not rigl.updates_at(20) and rigl.updates_at(15)


def test_detach_stops_enforcing_and_updating():
    model, optimizer, rigl = _rigl()
    rigl.detach()
    _train(model, optimizer, 8)
    assert rigl.history == [] and rigl.step_count == 0
    assert any(bool((p.detach()[~rigl.masks[n]] != 0).any()) for n, p in rigl.masks.params.items())


def test_state_dict_round_trip_resumes_exactly():
    model, optimizer, rigl = _rigl(total_steps=40, update_every=4)
    _train(model, optimizer, 10)
    state = copy.deepcopy(rigl.state_dict())
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    _train(model, optimizer, 10, seed=2)

    # As a resumed run does it: build, then load the model's, the optimizer's and RigL's states
    # (building RigL masks the weights with fresh random masks, here other ones).
    other = _net(seed=5)
    other_optimizer = torch.optim.Adam(other.parameters(), lr=1e-2)
    resumed = RigL(other, other_optimizer, 0.3, 40, update_every=4, seed=7)
    other.load_state_dict(model_state)
    other_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(state)
    assert resumed.step_count == 10 and len(resumed.history) == len(state["history"]) == 2
    _train(other, other_optimizer, 10, seed=2)
    assert resumed.step_count == rigl.step_count == 20
    assert all(torch.equal(resumed.masks[n], rigl.masks[n]) for n in rigl.masks)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(InvalidValueError, match="total_steps=40.*total_steps=50"):
        _rigl(total_steps=50)[2].load_state_dict(state)
    with pytest.raises(InvalidValueError, match="format"):
        resumed.load_state_dict({"masks": state["masks"]})


def test_erk_gives_small_tensors_more_density_and_keeps_the_total():
    shapes = {"a": (256, 8), "b": (256, 256), "c": (2, 256)}
    densities = erk_densities(shapes, 0.05)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert densities["c"] == 1.0 and densities["a"] > densities["b"]
    assert sum(densities[n] * sizes[n] for n in sizes) == pytest.approx(0.05 * sum(sizes.values()))
    # Below 1 a density is proportional to sum(shape) / prod(shape).
    assert densities["a"] / densities["b"] == pytest.approx((264 / 2048) / (512 / 65536))
    assert erk_densities(shapes, 1.0) == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_update_interval_is_the_papers_or_less_for_short_runs():
    assert update_interval(100_000) == 100
    assert update_interval(600) == 22  # 450 steps before the end, 20 updates
    assert update_interval(10) == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"density": 0.0}, r"density .*\(0, 1\].*got 0.0"), ({"density": 1.5}, "density.*got 1.5"),
    ({"density": True}, "density.*got True"), ({"density": float("nan")}, "density.*got nan"),
    ({"total_steps": 0}, "total_steps .*>= 1.*got 0"), ({"total_steps": 2.5}, "total_steps.*got 2.5"),
    ({"update_every": 0}, "update_every.*got 0"), ({"alpha": 1.5}, r"alpha .*\[0, 1\].*got 1.5"),
    ({"alpha": -0.1}, "alpha.*got -0.1"), ({"end": 0.0}, r"end .*\(0, 1\].*got 0.0"),
    ({"distribution": "random"}, "distribution must be one of .*'erk'.*got 'random'"),
    ({"seed": "a"}, "seed .*got 'a'"), ({"include": "nothing"}, "matches no parameter"),
])
def test_bad_values_are_refused_by_name(kwargs, match):
    with pytest.raises(InvalidValueError, match=match):
        _rigl(**kwargs)


def test_an_optimizer_that_does_not_train_the_masked_tensors_is_refused():
    model = _net()
    with pytest.raises(InvalidValueError, match=r"does not update the prunable tensors \['0.weight'"):
        RigL(model, torch.optim.SGD(list(model.parameters())[2:], lr=0.1), 0.5, 10)
    with pytest.raises(InvalidTypeError, match="torch.optim.Optimizer"):
        RigL(model, "adam", 0.5, 10)


# The bench method ------------------------------------------------------------------------------
def _tiny_load(seed, quick, options):
    X, y = make_classification(n_samples=200, n_features=8, n_informative=5, n_classes=3, random_state=seed)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    return [BenchData("blobs", (X[:150], y[:150]), (X[150:], y[150:]), 3)]


def _tiny_model(ctx):
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, ctx.data.classes))


def test_the_rigl_method_trains_at_the_guarded_density_seed_by_seed(monkeypatch, tmp_path):
    task = epoch_task("tiny-rigl", "synthetic blobs", _tiny_load, _tiny_model, epochs=8, quick_epochs=8,
                      batch_size=16, methods=("occam-guarded", "rigl"))
    monkeypatch.setitem(TASKS, task.name, task)
    # A guarded record that is sparse in so short a run, whatever the default controller does: the
    # method reads occam-guarded's record, not how it was made.
    monkeypatch.setitem(METHODS, "occam-guarded", dataclasses.replace(
        METHODS["occam-guarded"], schedule=lambda ctx: ConstantRate(0.25)))
    assert "rigl" in TASKS["tabular"].methods and "rigl" in TASKS["fashion-mlp"].methods
    assert "rigl" in TASKS["char-gpt"].methods and METHODS["rigl"].needs == ("occam-guarded",)
    root, _, order, records = runner.run_records(task.name, seeds=2, out=tmp_path, methods=["rigl"], progress=False)
    assert order == ["occam-guarded", "rigl"]
    by = {(r["method"], r["seed"]): r for r in records}
    for seed in (0, 1):
        guarded, rigl = by[("occam-guarded", seed)], by[("rigl", seed)]
        assert rigl["config"]["needs"] == {"occam-guarded": guarded["run_id"]}
        assert rigl["config"]["rigl"]["density"] == guarded["density"]
        # Sparse from the first epoch, at the guarded density (to the rounding of each tensor's count).
        assert {r["density"] for r in rigl["history"]} == {rigl["density"]}
        assert rigl["density"] == pytest.approx(guarded["density"], abs=0.01)
        assert rigl["selected_epoch"] == min(rigl["history"], key=lambda r: r["holdback_loss"])["epoch"]
        assert rigl["rigl_updates"] > 0 and "distribution='erk'" in rigl["rigl"]
        assert rigl["flops_masked"] == pytest.approx(rigl["flops_dense"] * rigl["density"], rel=0.05)
    assert all(by[("occam-guarded", s)]["density"] < 0.5 for s in (0, 1))  # the check means something
    # The run is resumed from its file, not redone.
    path = next((root / "blobs" / "rigl").glob("seed0-*.json"))
    before = path.read_text()
    runner.run_records(task.name, seeds=1, out=tmp_path, methods=["rigl"], progress=False)
    assert path.read_text() == before and json.loads(before)["method"] == "rigl"


def test_the_rigl_method_on_char_gpt_is_sparse_from_the_first_evaluation(monkeypatch, tmp_path):
    monkeypatch.setitem(METHODS, "occam-guarded", dataclasses.replace(
        METHODS["occam-guarded"], schedule=lambda ctx: ConstantRate(0.25)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{w} the quick brown fox jumps over the lazy dog.\n" for w in ("Alas", "Lo") * 30))
    smoke = CharGPTConfig(name="smoke", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, steps=20,
                          interval=5, eval_batches=2, warmup=2, dropout=0.0, lr=3e-3, sample_chars=20)
    _, _, _, records = runner.run_records("char-gpt", seeds=1, out=tmp_path, methods=["rigl"], progress=False,
                                          corpus=corpus, config=smoke)
    guarded, rigl = records
    assert rigl["config"]["rigl"]["density"] == guarded["density"]
    assert {r["density"] for r in rigl["history"]} == {rigl["density"]}
    assert rigl["density"] == pytest.approx(guarded["density"], abs=0.02) and guarded["density"] < 0.8
    assert rigl["rigl_updates"] > 0


def test_in_fit_the_kept_epochs_masks_are_restored_with_its_weights():
    from occamgd.bench.registry import Context
    from occamgd.bench.tasks import _RigLInFit
    from occamgd.fit import fit

    data = _tiny_load(0, True, {})[0]
    ctx = Context(TASKS["tabular"], data, 0, True, 12, {}, None)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    sparse = _RigLInFit(net, {"density": 0.3, "distribution": "erk"}, ctx, 16, 0.15,
                        lambda params: torch.optim.Adam(params, lr=2e-2))
    masks = []
    result = fit(net, data.train, epochs=12, batch_size=16, holdback=0.15, schedule=Never(), progress=False,
                 optimizer=sparse.optimizer,
                 on_epoch_end=lambda r: (sparse.epoch_end(r), masks.append(sparse.rigl.masks.state_dict())))
    assert sparse.total_steps == 12 * math.ceil((150 - 22) / 16)
    assert sparse.rigl.step_count == sparse.total_steps
    best = result.best_epoch
    assert best < 11 and any(not torch.equal(masks[best][n], masks[-1][n]) for n in masks[-1])
    fields = sparse.finish(best, keep_best=True)
    assert fields["rigl_updates"] > 0
    for name, param in sparse.rigl.masks.params.items():
        assert torch.equal(sparse.rigl.masks[name], masks[best][name])
        assert not bool((param.detach()[~sparse.rigl.masks[name]] != 0).any())  # the kept weights' pattern
    assert {r["density"] for r in result.history} == {sparse.rigl.density}
