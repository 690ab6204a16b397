"""The experiment layer's vocabulary: tasks, methods, and the two registries that hold them.

A :class:`Task` is data, a model factory, a budget (epochs or optimizer steps) and the loop that
trains the model for one method and one seed. A :class:`Method` says how a run prunes: which
controller (:mod:`occamgd.schedules`) and which signal it reads, what it needs from other methods,
and whether it tunes a weight decay; a method that is not a training run at all (post-training
pruning, a random forest) brings its own ``run``. Every task's loop turns a :class:`TrainSpec` into
one record of the same schema (:mod:`occamgd.bench.runner`), so every report, table and plot
reads every task alike.

Adding a method or a task is one call of :func:`register_method` or :func:`register_task`; the
command line reads its choices from these registries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InvalidValueError
from ..schedules import Schedule

#: What a method's controller reads: the loss on held-back data (validation) or the training loss.
SIGNALS = ("holdback", "train")
#: How a task counts its budget.
UNITS = ("epochs", "steps")


@dataclass
class BenchData:
    """One dataset of a task for one seed.

    ``train`` is what the loop trains on (it holds back its own validation part), ``test`` is only
    ever reported (``None`` where the task has no test split), ``classes`` the number of outputs.
    Epoch tasks hold ``(X, y)`` tensors; the char-GPT task holds a :class:`~occamgd.data.CharCorpus`.
    """

    name: str
    train: Any
    test: Any
    classes: int


@dataclass
class Context:
    """Everything one run of one method on one dataset and seed can read."""

    task: "Task"
    data: BenchData
    seed: int
    quick: bool
    budget: int  # epochs or optimizer steps, as the task counts
    options: dict[str, Any]
    run_dir: Path  # <out>/<task>/<dataset>: where a method may keep files for the others
    previous: dict[str, dict] = field(default_factory=dict)  # this seed's finished records, by method
    progress: bool = False  # whether a loop may show its own progress bar

    @property
    def evaluations(self) -> int:
        """How many times the controller is stepped in one run (epochs, or steps per interval)."""
        return self.task.evaluations(self)


@dataclass(frozen=True)
class TrainSpec:
    """What a task's loop is asked to train: a controller (``None``: plain training, no Occam),
    the signal it reads, an optional AdamW weight decay in place of the task's own optimizer,
    where to save the final model for methods that start from it, and a ``start``
    (``{"model": state_dict, "masks": Masks.state_dict()}``) to train from instead of fresh weights.
    ``rigl``: train sparse with :class:`occamgd.rigl.RigL`, these keyword arguments (``density``,
    ``alpha``, ``end``, ``distribution``; the loop sets ``total_steps``, ``update_every`` and ``seed``).
    ``structured``: prune whole groups of coupled units
    (:func:`occamgd.compaction.structured_pruning`); ``shrink`` (with ``structured``): remove them from
    the live model at each prune, so that the epochs after it train a smaller network."""

    schedule: Schedule | None = None
    signal: str = "holdback"
    weight_decay: float | None = None
    save_final: Path | None = None
    start: dict | None = None
    rigl: dict | None = None
    structured: bool | str = False  # True ("layer") or "global": the group criterion's scope
    shrink: bool = False
    criterion: str = "layerwise"  # the magnitude criterion of an unstructured run: "layerwise" or "global"

    def __post_init__(self):
        if self.criterion not in ("layerwise", "global"):
            raise InvalidValueError(f"TrainSpec criterion must be 'layerwise' or 'global', got {self.criterion!r}")
        if self.criterion != "layerwise" and self.structured:
            raise InvalidValueError("TrainSpec(criterion='global') is for unstructured runs; accepted: "
                                    "structured='global' for groups ranked over the whole model")
        if self.shrink and not self.structured:
            raise InvalidValueError("TrainSpec(shrink=True) removes whole groups, which needs structured=True; "
                                    "accepted: structured=True with shrink=True, or shrink=False")


@dataclass(frozen=True)
class Method:
    """One way of training, the same on every task.

    - ``schedule(ctx)`` builds the controller (``None``: plain training); ``signal`` is what it reads.
    - ``needs``: methods whose records of the same seed this one reads (they run first).
    - ``grid(ctx)``: named candidate runs (``{name: TrainSpec}``) trained in its place; the one with
      the lowest selection (hold-back) loss is kept, ``chosen`` names it, and its time is all of theirs.
    - ``save_final``: its final model is kept for the methods that need it (``gd+prune`` starts from gd's).
    - ``run(ctx)``: for methods that are not one training run of the task's loop; returns a record.
    - ``extra(record)``: fields derived from a finished record and added to it (what a method
      reports beyond the schema, e.g. the paper's test-peeking choice).
    - ``rigl(ctx)``: RigL's settings (``TrainSpec.rigl``) for a method that trains sparse with RigL.
    - ``structured`` / ``shrink``: passed to the loop's :class:`TrainSpec` (whole groups pruned; the
      live model shrunk at each prune); ``criterion``: ``"layerwise"`` or ``"global"`` magnitude.
    """

    name: str
    description: str
    schedule: Callable[[Context], Schedule | None] = lambda ctx: None
    signal: str = "holdback"
    needs: tuple[str, ...] = ()
    grid: Callable[[Context], dict[str, TrainSpec]] | None = None
    save_final: bool = False
    run: Callable[[Context], dict] | None = None
    extra: Callable[[dict], dict] | None = None
    rigl: Callable[[Context], dict] | None = None
    structured: bool | str = False
    shrink: bool = False
    criterion: str = "layerwise"

    def __post_init__(self):
        if self.shrink and not self.structured:
            raise InvalidValueError(f"method {self.name!r}: shrink=True needs structured=True")
        if self.signal not in SIGNALS:
            raise InvalidValueError(f"method {self.name!r}: signal must be one of {SIGNALS}, got {self.signal!r}")


@dataclass(frozen=True)
class Task:
    """Data, model, budget and loop of one experiment.

    - ``load(seed, quick, options)`` returns the datasets (everything that can fail on the data fails
      here, before any training); ``options`` are the task's own settings from the caller, checked
      against ``options_accepted``.
    - ``model(ctx)`` builds the network (seeded by the caller); ``train(ctx, spec)`` trains it for one
      method and seed and returns a record (:func:`occamgd.bench.runner.record_fields`).
    - ``budget`` / ``quick_budget`` count ``unit`` (epochs or optimizer steps).
    - ``settings(quick, options)``: what else shapes a result (batch size, learning rate, model
      shape...): it names the run, so a changed setting never reuses an old result.
    - ``score``: the record field the report ranks by, and its label.
    """

    name: str
    description: str
    load: Callable[[int, bool, dict], list[BenchData]]
    model: Callable[[Context], nn.Module]
    train: Callable[[Context, TrainSpec], dict]
    settings: Callable[[bool, dict], dict]
    evaluations: Callable[[Context], int]
    budget: int
    quick_budget: int
    unit: str = "epochs"
    methods: tuple[str, ...] = ()
    options_accepted: tuple[str, ...] = ()
    weight_decays: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    gmp_density: float = 0.25  # the density gmp is told in advance
    #: Last controller step at which gmp still prunes, from the number of steps in a run.
    gmp_end: Callable[[int], int] = lambda evaluations: max(0, evaluations - 2)
    score: tuple[str, str] = ("test_loss", "test loss")
    #: ``(quick, options) -> budget`` where the options decide it (a configuration's steps).
    budget_from: Callable[[bool, dict], int] | None = None
    #: ``(quick, options) -> suffix`` of the run directory for option-made variants.
    variant: Callable[[bool, dict], str] = lambda quick, options: ""

    def default_budget(self, quick: bool, options: dict) -> int:
        if self.budget_from is not None:
            return self.budget_from(quick, options)
        return self.quick_budget if quick else self.budget

    def __post_init__(self):
        if self.unit not in UNITS:
            raise InvalidValueError(f"task {self.name!r}: unit must be one of {UNITS}, got {self.unit!r}")


def final_model_path(ctx: Context, method: str, run: str) -> Path:
    """Where run ``run`` of ``method`` (one that saves its final model: gd) leaves that model."""
    return ctx.run_dir / method / f"seed{ctx.seed}-{run}-final.pt"


TASKS: dict[str, Task] = {}
METHODS: dict[str, Method] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (the command line's choices); a name is registered once."""
    if task.name in TASKS:
        raise InvalidValueError(f"a bench task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS`; a name is registered once."""
    if method.name in METHODS:
        raise InvalidValueError(f"a bench method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise InvalidValueError(f"unknown bench task {name!r}; accepted: {', '.join(TASKS)}") from None


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidValueError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}") from None
