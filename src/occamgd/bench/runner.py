"""``occamgd bench TASK``: run every method of a task for every seed and dataset, then report.

One runner for every task. Each run is named by its configuration: the task's settings, the
budget, the data options, the method's controller (its ``repr``, so a changed default counts),
its signal and the runs it read. A run writes
``<out>/<task>[-quick][-<budget>]/<dataset>/<method>/seed<k>-<run id>.json`` atomically when it
finishes; a run whose file exists is not redone, so an interrupted bench resumes where it
stopped, and a changed setting makes a new run id: an old result is never silently reused. The
report (``results.md`` and PNGs beside the dataset directories) is written from this call's
records alone.

Every record has the same schema (:data:`RECORD_FIELDS`, whatever task wrote it), so the report and
``benchmarks/ablation.py`` read every task alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import InvalidValueError
from ..io import atomic_write_text
from .registry import METHODS, Context, Method, Task, TrainSpec, final_model_path, get_method, get_task

#: Version of the record schema written here; other versions are not read.
RECORD_SCHEMA = 1
#: What every run reports besides its identity (``None`` where it does not apply): the evaluation
#: kept (chosen by the selection loss, never by the test split), its losses and density, the
#: training time and the per-evaluation history.
RECORD_FIELDS = ("selected_epoch", "selection_loss", "test_loss", "test_acc", "density", "train_seconds", "history")
#: Options that do not change a run: already in a task's settings (the configuration, the device kind), or
#: choosing which tables run (a table's run is the same whichever others run beside it).
_NOT_IDENTITY = ("config", "gpu", "datasets")


def order_methods(task: Task, methods: list[str]) -> list[str]:
    """Methods with what they need first (added when missing); each must be one the task offers."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        get_method(name)
        if name not in task.methods:
            raise InvalidValueError(f"method {name!r} is not offered by task {task.name!r}; accepted: "
                             f"{', '.join(task.methods)}")
        for need in METHODS[name].needs:
            visit(need)
        if name not in ordered:
            ordered.append(name)

    for name in methods:
        visit(name)
    return ordered


def run_id(config: dict[str, Any]) -> str:
    """A short digest of a run's configuration (canonical JSON)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _check_budget(task: Task, budget: int | None) -> None:
    if budget is not None and not (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1):
        raise InvalidValueError(f"the budget of task {task.name!r} is a number of {task.unit}, an integer >= 1; "
                         f"got {budget!r}")


def _check_options(task: Task, options: dict[str, Any]) -> dict[str, Any]:
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(task.options_accepted))
    if unknown:
        raise InvalidValueError(f"task {task.name!r} does not take the options {unknown}; accepted: "
                         f"{', '.join(task.options_accepted) or 'none'}")
    return options


def _spec_config(spec: TrainSpec) -> dict[str, Any]:
    config = {"schedule": repr(spec.schedule) if spec.schedule is not None else None,
              "signal": spec.signal if spec.schedule is not None else None, "weight_decay": spec.weight_decay,
              **({"rigl": spec.rigl} if spec.rigl is not None else {})}
    # Named only when set, so that the runs of every other method keep their identity.
    config.update({k: getattr(spec, k) for k in ("structured", "shrink") if getattr(spec, k)})
    if spec.criterion != "layerwise":
        config["criterion"] = spec.criterion
    return config


def _method_config(ctx: Context, method: Method) -> tuple[dict[str, Any], Any]:
    """The method's part of a run's identity, and what it trains: one TrainSpec, a grid of them, or None."""
    if method.run is not None:
        plan = None
        trained: dict[str, Any] = {}
    elif method.grid is not None:
        plan = method.grid(ctx)
        trained = {"grid": {name: _spec_config(spec) for name, spec in plan.items()}}
    else:
        plan = TrainSpec(method.schedule(ctx), method.signal, rigl=method.rigl(ctx) if method.rigl else None,
                         structured=method.structured, shrink=method.shrink, criterion=method.criterion)
        trained = _spec_config(plan)
    config = {"method": method.name, **trained, "needs": {need: ctx.previous[need]["run_id"] for need in method.needs}}
    return config, plan


def _run(ctx: Context, method: Method, plan, rid: str, save_final: bool) -> dict[str, Any]:
    if method.run is not None:
        return method.run(ctx)
    if isinstance(plan, TrainSpec):
        final = final_model_path(ctx, method.name, rid) if save_final else None
        return ctx.task.train(ctx, dataclasses.replace(plan, save_final=final))
    runs = {name: ctx.task.train(ctx, spec) for name, spec in plan.items()}
    chosen = min(runs, key=lambda name: runs[name]["selection_loss"])  # the test split never chooses
    score = ctx.task.score[0]
    # Every candidate's score and density too: the curve a grid draws (reported, never used to choose).
    return {**runs[chosen], "chosen": chosen, "grid": {name: r["selection_loss"] for name, r in runs.items()},
            "grid_score": {name: r.get(score) for name, r in runs.items()},
            "grid_density": {name: r.get("density") for name, r in runs.items()},
            "train_seconds": sum(r["train_seconds"] for r in runs.values())}


def run_bench(task_name: str, seeds: int = 3, quick: bool = False, out: str | Path = "runs",
              methods: list[str] | None = None, progress: bool = True, budget: int | None = None,
              **options) -> Path:
    """Run (or resume) a bench; return the path of its markdown report.

    ``budget`` overrides the task's epochs (or steps); such runs go to their own directory
    (``<task>-e<epochs>`` / ``<task>-s<steps>``). ``options`` are the task's own settings
    (``task.options_accepted``: a manifest, a data directory, a corpus, ``gpu``...).
    """
    from .report import write_report

    return write_report(*run_records(task_name, seeds, quick, out, methods, progress, budget, **options))


def run_records(task_name: str, seeds: int = 3, quick: bool = False, out: str | Path = "runs",
                methods: list[str] | None = None, progress: bool = True, budget: int | None = None,
                **options) -> tuple[Path, Task, list[str], list[dict[str, Any]]]:
    """What :func:`run_bench` does before its report: ``(root, task, methods in order, records)``."""
    task = get_task(task_name)
    if not (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1):
        raise InvalidValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    _check_budget(task, budget)
    options = _check_options(task, options)
    order = order_methods(task, list(methods or task.methods))
    default = task.default_budget(quick, options)
    suffix = f"-{task.unit[0]}{budget}" if budget is not None and budget != default else ""
    budget = budget or default
    root = Path(out) / (task.name + ("-quick" if quick else "") + task.variant(quick, options) + suffix)
    # The data and the settings are checked (a missing file, an absent GPU) before any training.
    first = task.load(0, quick, options)
    identity = {"task": task.name, "unit": task.unit, "budget": budget, "quick": quick,
                "settings": task.settings(quick, options),
                "options": {k: str(v) for k, v in sorted(options.items()) if k not in _NOT_IDENTITY}}
    # Final models are kept only where a method of this call starts from them.
    keep_final = {need for m in order for need in METHODS[m].needs if METHODS[need].save_final}
    records = []
    bar = tqdm(total=seeds * len(first) * len(order), desc=f"occamgd bench {task.name}", unit="run",
               disable=not progress)
    for seed in range(seeds):
        for data in first if seed == 0 else task.load(seed, quick, options):
            ctx = Context(task, data, seed, quick, budget, options, root / data.name, progress=progress)
            for name in order:
                method = METHODS[name]
                bar.set_postfix(dataset=data.name, method=name, seed=seed)
                method_config, plan = _method_config(ctx, method)
                config = {**identity, **method_config}
                rid = run_id(config)
                path = ctx.run_dir / name / f"seed{seed}-{rid}.json"
                if path.exists():
                    record = read_record(path)
                else:
                    fields = _run(ctx, method, plan, rid, name in keep_final)
                    missing = [f for f in RECORD_FIELDS if f not in fields]
                    if missing:
                        raise InvalidValueError(f"method {name!r} on task {task.name!r} returned a record without "
                                         f"{missing}; accepted: a dict with every field of RECORD_FIELDS")
                    if method.extra is not None:
                        fields = {**fields, **method.extra(fields)}
                    record = {"schema": RECORD_SCHEMA, "task": task.name, "dataset": data.name, "method": name,
                              "seed": seed, "run_id": rid, "config": config, **fields}
                    atomic_write_text(json.dumps(record, indent=1), path)
                ctx.previous[name] = record
                records.append(record)
                bar.update()
    bar.close()
    return root, task, order, records


def read_record(path: str | Path) -> dict[str, Any]:
    """One run's record, after checking it is one (a damaged or foreign file is named)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidValueError(f"{path} is not a bench record ({e}); delete it to run that configuration again") from e
    if not isinstance(record, dict) or record.get("schema") != RECORD_SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise InvalidValueError(f"{path} has record schema {found!r}; this occamgd reads schema {RECORD_SCHEMA}: "
                         "run the bench again into another --out")
    return record


def load_records(root: str | Path) -> list[dict[str, Any]]:
    """Every record under a bench's directory (``<root>/<dataset>/<method>/seed*.json``)."""
    return [read_record(path) for path in sorted(Path(root).glob("*/*/seed*.json"))]
