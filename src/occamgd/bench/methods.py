"""Bench methods: one registry entry per way of training, each returning one run's result.

Every neural method trains the task's model from the same initial weights (seeded) on the same
batches, and reports the epoch with the lowest hold-back loss: the test split never chooses.
Methods that need another method's outcome name it in ``needs``; the runner runs those first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ..criteria import layerwise_magnitude
from ..fit import History, evaluate, fit
from ..io import atomic_save
from ..masks import Masks, select_prunable
from ..schedules import GMP, Guarded, Never, OccamRate, Schedule
from .measure import macs_per_sample, model_size, training_flops
from .tasks import BenchData, Task


@dataclass
class Context:
    task: Task
    data: BenchData
    seed: int
    epochs: int
    run_dir: Path  # <out>/<task>/<dataset>: where a method may keep files for the others
    previous: dict[str, dict] = field(default_factory=dict)  # results of this dataset and seed


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    run: Callable[[Context], dict]
    needs: tuple[str, ...] = ()


def _summary(ctx: Context, model: torch.nn.Module, history: History, selected: int | None, seconds: float,
             **extra) -> dict:
    """The fields every neural run reports, read at the selected epoch."""
    record = history[selected if selected is not None else -1]
    train_rows = len(ctx.data.train[1]) - round(ctx.task.holdback * len(ctx.data.train[1]))
    macs = macs_per_sample(model, ctx.data.train[0][:1])
    return {
        "selected_epoch": record["epoch"],
        "test_loss": record.get("test_loss"),
        "test_acc": record.get("test_acc"),
        "holdback_loss": record.get("holdback_loss"),
        "density": record["density"],
        **model_size(model, record.get("densities")),
        **training_flops(macs, history, train_rows),
        "train_seconds": seconds,
        "history": history.to_list(),
        **extra,
    }


def _train(ctx: Context, schedule: Schedule | str, signal: str = "holdback", keep_best: bool = True,
           optimizer=None):
    torch.manual_seed(ctx.seed)
    model = ctx.task.model(ctx.data)
    start = time.perf_counter()
    result = fit(model, ctx.data.train, test=ctx.data.test, epochs=ctx.epochs, batch_size=ctx.task.batch_size,
                 lr=ctx.task.lr, schedule=schedule, signal=signal, holdback=ctx.task.holdback, seed=ctx.seed,
                 keep_best=keep_best, progress=False, optimizer=optimizer)
    return model, result, time.perf_counter() - start


def occam_val(ctx: Context) -> dict:
    model, result, seconds = _train(ctx, OccamRate(), "holdback")
    return _summary(ctx, model, result.history, result.best_epoch, seconds, schedule=repr(result.occam.schedule))


def occam_guarded(ctx: Context) -> dict:
    model, result, seconds = _train(ctx, Guarded(), "holdback")
    actions = [r["action"] for r in result.history]
    return _summary(ctx, model, result.history, result.best_epoch, seconds, schedule=repr(result.occam.schedule),
                    rollbacks=actions.count("rolled back"),
                    stopped_epoch=actions.index("stopped") if "stopped" in actions else None)


def occam_paper(ctx: Context) -> dict:
    model, result, seconds = _train(ctx, OccamRate(), "train")
    # The paper chose the epoch by test loss; reported beside ours, never used to select.
    peek = min(result.history, key=lambda r: r["test_loss"])
    return _summary(ctx, model, result.history, result.best_epoch, seconds, schedule=repr(result.occam.schedule),
                    test_peek={"epoch": peek["epoch"], "test_loss": peek["test_loss"], "density": peek["density"]})


def gd(ctx: Context) -> dict:
    model, result, seconds = _train(ctx, Never(), keep_best=False)
    # The final model is what post-train pruning starts from (gd+prune reads it back).
    atomic_save(model.state_dict(), ctx.run_dir / "gd" / f"seed{ctx.seed}-final.pt")
    return _summary(ctx, model, result.history, result.best_epoch, seconds)


#: Weight decays gd-wd tries (AdamW, decoupled); the anchor's tuned value was 1e-2.
WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)


def gd_wd(ctx: Context) -> dict:
    """Dense AdamW; the weight decay with the lowest best hold-back loss wins (test never looks)."""
    runs, seconds = [], 0.0
    for wd in WEIGHT_DECAYS:
        optimizer = lambda params, wd=wd: torch.optim.AdamW(params, lr=ctx.task.lr, weight_decay=wd)  # noqa: E731
        model, result, spent = _train(ctx, Never(), optimizer=optimizer)
        seconds += spent
        runs.append((result.history[result.best_epoch]["holdback_loss"], wd, model, result))
    hold, wd, model, result = min(runs, key=lambda run: run[0])
    return _summary(ctx, model, result.history, result.best_epoch, seconds, weight_decay=wd,
                    grid={str(w): h for h, w, _, _ in runs})


def _pruned_final_gd(ctx: Context) -> tuple[torch.nn.Module, Masks]:
    """The final GD model, magnitude-pruned (layerwise) to occam-val's selected density."""
    density = ctx.previous["occam-val"]["density"]
    model = ctx.task.model(ctx.data)
    model.load_state_dict(torch.load(ctx.run_dir / "gd" / f"seed{ctx.seed}-final.pt", weights_only=True))
    masks = Masks(select_prunable(model))
    if density < 1.0:
        masks.update(layerwise_magnitude({n: p.detach() for n, p in masks.params.items()}, masks, 1.0 - density))
    return model, masks


def gd_prune(ctx: Context) -> dict:
    model, masks = _pruned_final_gd(ctx)
    loss, acc = evaluate(model, TensorDataset(*ctx.data.test), F.cross_entropy, "classification")
    return {"selected_epoch": None, "test_loss": loss, "test_acc": acc, "holdback_loss": None,
            "density": masks.density, **model_size(model, masks.densities()), "train_seconds": 0.0, "history": []}


def gd_prune_finetune(ctx: Context) -> dict:
    model, masks = _pruned_final_gd(ctx)
    start = time.perf_counter()
    result = fit(model, ctx.data.train, test=ctx.data.test, epochs=1, batch_size=ctx.task.batch_size,
                 lr=ctx.task.lr, schedule=Never(), holdback=ctx.task.holdback, seed=ctx.seed,
                 initial_masks=masks.state_dict(), progress=False)
    return _summary(ctx, model, result.history, result.best_epoch, time.perf_counter() - start)


def _gmp(ctx: Context, target: float) -> dict:
    # Reaches the target after the last prune (epoch epochs - 2).
    model, result, seconds = _train(ctx, GMP(target, start=0, end=max(0, ctx.epochs - 2)))
    return _summary(ctx, model, result.history, result.best_epoch, seconds, target_density=target)


def gmp(ctx: Context) -> dict:
    return _gmp(ctx, ctx.task.gmp_density)


def gmp_oracle(ctx: Context) -> dict:
    return _gmp(ctx, ctx.previous["occam-guarded"]["density"])


def _sklearn(estimator_factory: Callable[[int], object]) -> Callable[[Context], dict]:
    def run(ctx: Context) -> dict:
        from sklearn.metrics import accuracy_score, log_loss

        X, y = (t.numpy() for t in ctx.data.train)
        Xt, yt = (t.numpy() for t in ctx.data.test)
        estimator = estimator_factory(ctx.seed)
        start = time.perf_counter()
        estimator.fit(X.reshape(len(X), -1), y)
        seconds = time.perf_counter() - start
        proba = estimator.predict_proba(Xt.reshape(len(Xt), -1))
        return {"selected_epoch": None, "test_loss": float(log_loss(yt, proba, labels=np.arange(ctx.data.classes))),
                "test_acc": float(accuracy_score(yt, proba.argmax(1))), "holdback_loss": None, "density": None,
                "train_seconds": seconds, "history": []}

    return run


def _random_forest(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=500, random_state=seed, n_jobs=1)


def _hist_gradient_boosting(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("occam-val", "the paper's rule on the hold-back loss; best hold-back epoch", occam_val),
    Method("occam", "the paper's preset: r0 = 0.4, training-loss signal, all epochs; best hold-back epoch",
           occam_paper),
    Method("gd", "plain gradient descent; best hold-back epoch", gd),
    Method("gd+prune", "final GD model magnitude-pruned (layerwise) to occam-val's density, no fine-tuning "
           "(its time is the prune only; add gd's)", gd_prune, needs=("gd", "occam-val")),
    Method("gd+prune+ft", "the same, then one epoch of masked fine-tuning (time and FLOPs: that epoch only)",
           gd_prune_finetune, needs=("gd", "occam-val")),
    Method("occam-guarded", "the guarded controller (occamgd.schedules.Guarded) on the hold-back loss; best "
           "hold-back epoch", occam_guarded),
    Method("gd-wd", f"dense AdamW, weight decay chosen from {WEIGHT_DECAYS} by best hold-back loss "
           "(time: all grid runs)", gd_wd),
    Method("gmp", "gradual magnitude pruning (cubic) to a density fixed in advance (the task's, 0.25) over "
           "the same epochs", gmp),
    Method("gmp-oracle", "the same, told occam-guarded's selected density", gmp_oracle, needs=("occam-guarded",)),
    Method("random-forest", "scikit-learn RandomForestClassifier(500 trees) on the whole training split",
           _sklearn(_random_forest)),
    Method("hist-gradient-boosting", "scikit-learn HistGradientBoostingClassifier on the whole training split",
           _sklearn(_hist_gradient_boosting)),
]}
