"""The bench's methods: one registration each, the same on every task.

A training method names its controller and signal; the task's own loop trains it (an epoch loop
through :func:`occamgd.fit`, or the char-GPT step loop). ``gd+prune``, ``gd+prune+ft`` and the
scikit-learn baselines are not one run of that loop, so they bring their own ``run``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ..criteria import layerwise_magnitude
from ..fit import evaluate
from ..masks import Masks, select_prunable
from ..errors import InvalidValueError
from ..schedules import DEFAULT_PRESET, GMP, Decision, Guarded, OccamRate, Planned, Search, check_signal, get_schedule
from .measure import model_size, parameter_counts, throughput_fields
from .registry import Context, Method, TrainSpec, final_model_path, register_method


def _gmp(ctx: Context, density: float) -> GMP:
    return GMP(density, start=0, end=ctx.task.gmp_end(ctx.evaluations))


class UnitGMP(GMP):
    """Cubic GMP whose target is a fraction of the structured groups' *units* (neurons, channels, heads), not of
    the weights (``masks.density``, which a unit's removal lowers in two layers at once).

    It counts units itself: ``units`` is how many the groups hold at the start, and each step asks for the
    exact number that brings the kept count to ``round(target * units)``, as the rate of
    :func:`occamgd.criteria.group_magnitude` with ``scope="global"`` (one count over all groups' kept units,
    each group keeping its largest) reads it. With ``scope="layer"`` one rate is rounded up in every group at
    every step and would take a unit a step from the narrowest groups, far past the target.
    """

    @dataclass(frozen=True)
    class State:
        epoch: int = 0
        #: Units the groups keep, as this controller counted its own prunes (``None`` before the first step).
        kept: int | None = None

    def __init__(self, final_units: float, units: int, start: int = 0, end: int = 10):
        super().__init__(final_units, start, end)
        if not (isinstance(units, int) and not isinstance(units, bool) and units >= 1):
            raise InvalidValueError(f"units must be an integer >= 1 (the groups' units), got {units!r}")
        self.units = units

    def decide(self, signal, density, state):
        check_signal(signal)
        kept = self.units if state.kept is None else state.kept
        if state.epoch < self.start:
            return Decision("held", 0.0), replace(state, epoch=state.epoch + 1, kept=kept)
        target = round(self.target(state.epoch, 1.0) * self.units)
        prune = kept - target
        if prune <= 0 or kept <= 1:
            return Decision("held", 0.0), replace(state, epoch=state.epoch + 1, kept=kept)
        # group_magnitude prunes ceil(rate * (kept - 1)) units: exactly `prune` for this rate.
        rate = prune / (kept - 1)
        return Decision("pruned", rate), replace(state, epoch=state.epoch + 1, kept=target)


def group_units(model: torch.nn.Module, example=None) -> int:
    """How many units the structured groups of ``model`` hold (traced on ``example``, see structured_pruning)."""
    from ..compaction import structured_pruning

    return sum(int(group[0].index.shape[0]) for group in structured_pruning(model, example)["criterion"].groups)


def _unit_gmp(ctx: Context, final_units: float) -> UnitGMP:
    from ..fit import EXAMPLE_ROWS

    # The rows fit traces on (epoch tasks); a GPT has its own example input.
    example = ctx.data.train[0][:EXAMPLE_ROWS] if isinstance(ctx.data.train, tuple) else None
    units = group_units(ctx.task.model(ctx), example)
    return UnitGMP(final_units, units, start=0, end=ctx.task.gmp_end(ctx.evaluations))


def _pruned_final_gd(ctx: Context) -> tuple[torch.nn.Module, Masks]:
    """The final GD model, magnitude-pruned (layerwise) to occam-val's selected density."""
    density = ctx.previous["occam-val"]["density"]
    model = ctx.task.model(ctx)
    model.load_state_dict(torch.load(final_model_path(ctx, "gd", ctx.previous["gd"]["run_id"]), weights_only=True))
    masks = Masks(select_prunable(model))
    if density < 1.0:
        masks.update(layerwise_magnitude({n: p.detach() for n, p in masks.params.items()}, masks, 1.0 - density))
    return model, masks


def gd_prune(ctx: Context) -> dict:
    model, masks = _pruned_final_gd(ctx)
    loss, acc = evaluate(model, TensorDataset(*ctx.data.test), F.cross_entropy, "classification")
    # Measured as it is: a masked model runs at its dense shapes.
    speed = throughput_fields(model, ctx.task.model(ctx), ctx.data.test[0][:256])
    return {"selected_epoch": None, "selection_loss": None, "test_loss": loss, "test_acc": acc,
            "density": masks.density, **model_size(model, masks.densities()),
            **parameter_counts(model, {n: masks[n] for n in masks}), **speed, "train_seconds": 0.0, "history": []}


def gd_prune_finetune(ctx: Context) -> dict:
    model, masks = _pruned_final_gd(ctx)
    one_epoch = dataclasses.replace(ctx, budget=1)
    spec = TrainSpec(start={"model": model.state_dict(), "masks": masks.state_dict()})
    return ctx.task.train(one_epoch, spec)


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
        return {"selected_epoch": None, "selection_loss": None,
                "test_loss": float(log_loss(yt, proba, labels=np.arange(ctx.data.classes))),
                "test_acc": float(accuracy_score(yt, proba.argmax(1))), "density": None, "train_seconds": seconds,
                "history": []}

    return run


def _random_forest(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=500, random_state=seed, n_jobs=1)


def _hist_gradient_boosting(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed)


def _test_peek(record: dict) -> dict:
    """The paper's choice of epoch, by test loss: reported beside ours, never used to select."""
    scored = [r for r in record["history"] if r.get("test_loss") is not None]
    if not scored:
        return {}
    peek = min(scored, key=lambda r: r["test_loss"])
    return {"test_peek": {"epoch": peek["epoch"], "test_loss": peek["test_loss"], "density": peek["density"]}}


def _guard_actions(record: dict) -> dict:
    actions = [r.get("action") for r in record["history"]]
    return {"rollbacks": actions.count("rolled back"),
            "stopped_epoch": actions.index("stopped") if "stopped" in actions else None}


register_method(Method("gd", "plain training, no pruning (and no Occam hook where the loop allows); best hold-back "
                       "epoch", save_final=True))
register_method(Method("gd-wd", "the same with AdamW, weight decay chosen from the task's grid by best hold-back "
                       "loss (time: all grid runs)",
                       grid=lambda ctx: {str(wd): TrainSpec(weight_decay=wd) for wd in ctx.task.weight_decays}))
register_method(Method("occam", "the paper's preset: OccamRate (r0 = 0.4) on the training loss; best hold-back "
                       "epoch (the paper's test-peeking choice kept beside it as test_peek)", schedule=lambda ctx: OccamRate(),
                       signal="train", extra=_test_peek))
register_method(Method("occam-val", "the paper's rule (OccamRate, r0 = 0.4) on the hold-back loss",
                       schedule=lambda ctx: OccamRate()))
register_method(Method("occam-guarded", "the guarded controller (occamgd.schedules.Guarded) on the hold-back loss",
                       schedule=lambda ctx: Guarded(), extra=_guard_actions))
register_method(Method("occam-search", "the search controller (occamgd.schedules.Search: it descends "
                       "within the run's budget, keeps its best model and returns to it) on the hold-back loss",
                       schedule=lambda ctx: Search(), extra=_guard_actions))
register_method(Method("gmp", "gradual magnitude pruning (cubic) to the task's density fixed in advance (0.25)",
                       schedule=lambda ctx: _gmp(ctx, ctx.task.gmp_density)))
#: The densities a user would otherwise try one by one (gmp-grid).
GRID_DENSITIES = (0.5, 0.25, 0.1, 0.05)
register_method(Method("gmp-grid", f"gmp to each density of {GRID_DENSITIES}, trained separately; the one with the lowest "
                       "hold-back loss kept (time: all four runs)",
                       grid=lambda ctx: {str(d): TrainSpec(_gmp(ctx, d)) for d in GRID_DENSITIES}))
register_method(Method("occam-planned", "the planning controller (occamgd.schedules.Planned: it plans its descent "
                       "within the run's epochs) on the hold-back loss", schedule=lambda ctx: Planned(),
                       extra=_guard_actions))
#: The method that runs the library's default controller (schedules.DEFAULT_PRESET): what the oracle baselines
#: (gmp-oracle, rigl) are told.
DEFAULT_METHOD = f"occam-{DEFAULT_PRESET}"
register_method(Method("gmp-oracle", f"the same, told {DEFAULT_METHOD}'s selected density",
                       schedule=lambda ctx: _gmp(ctx, ctx.previous[DEFAULT_METHOD]["density"]),
                       needs=(DEFAULT_METHOD,)))
#: RigL's settings in the bench: the paper's (Evci et al. 2020) drop fraction, end and ERK distribution.
RIGL_SETTINGS = {"alpha": 0.3, "end": 0.75, "distribution": "erk"}
register_method(Method("rigl", "dynamic sparse training (RigL, Evci et al. 2020: ERK random masks, drop the smallest "
                       f"weights and regrow by gradient magnitude, cosine schedule) at {DEFAULT_METHOD}'s selected "
                       "density, from the start; best hold-back epoch",
                       rigl=lambda ctx: {"density": ctx.previous[DEFAULT_METHOD]["density"], **RIGL_SETTINGS},
                       needs=(DEFAULT_METHOD,)))
register_method(Method("gd+prune", "final GD model magnitude-pruned (layerwise) to occam-val's density, no "
                       "fine-tuning (its time is the prune only; add gd's)", needs=("gd", "occam-val"), run=gd_prune))
register_method(Method("gd+prune+ft", "the same, then one epoch of masked fine-tuning (time and FLOPs: that epoch "
                       "only)", needs=("gd", "occam-val"), run=gd_prune_finetune))
register_method(Method("random-forest", "scikit-learn RandomForestClassifier(500 trees) on the whole training split",
                       run=_sklearn(_random_forest)))
register_method(Method("hist-gradient-boosting", "scikit-learn HistGradientBoostingClassifier on the whole training "
                       "split", run=_sklearn(_hist_gradient_boosting)))
#: gmp-structured's target: this fraction of the groups' units.
STRUCTURED_UNITS = 0.5
register_method(Method("occam-structured", f"the default controller (get_schedule(None): {DEFAULT_PRESET!r}) on the "
                       "hold-back loss, pruning whole groups of coupled units (occamgd.compaction.structured_pruning, per-group rate) and "
                       "shrinking the live model at each prune", schedule=lambda ctx: get_schedule(None),
                       extra=_guard_actions, structured=True, shrink=True))
register_method(Method("occam-planned-structured", "the same with the planning controller (occamgd.schedules.Planned), "
                       "which starts by a tenth of the run at the latest", schedule=lambda ctx: Planned(),
                       extra=_guard_actions, structured=True, shrink=True))
register_method(Method("gmp-structured", f"cubic GMP to {STRUCTURED_UNITS} of the groups' units (not of the weights: "
                       "a unit's removal cuts two layers), counted over all groups together (scope='global', each "
                       "group keeping its largest unit; one rate rounded up per group would empty narrow groups), "
                       "shrinking the live model at each prune",
                       schedule=lambda ctx: _unit_gmp(ctx, STRUCTURED_UNITS), structured="global", shrink=True))
