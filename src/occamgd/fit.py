"""A plain epoch loop for users who do not bring their own.

``fit`` splits a hold-back part off the training data (stratified for classification), trains
one epoch at a time, reads the signal (hold-back loss by default, training loss with
``signal="train"`` as in the paper's reference), lets :class:`Occam` prune, and keeps the state
with the lowest hold-back loss. The test split, when given, is only ever reported.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from .errors import InvalidTypeError, InvalidValueError, NotPrunedWarning
from .criteria import Criterion
from .io import atomic_save
from .masks import Selection
from .occam import Occam
from .schedules import Schedule, get_schedule

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"

Data = Union[Dataset, tuple[Any, Any]]
OptimizerSpec = Union[None, torch.optim.Optimizer, Callable[[Any], torch.optim.Optimizer]]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the model was restored to its last finite state."""


class History(Sequence[dict]):
    """Per-epoch records of a :func:`fit` run (plain dicts of numbers, JSON-ready)."""

    def __init__(self, records: list[dict] | None = None):
        self.records: list[dict] = [dict(r) for r in records or []]

    def __getitem__(self, i):
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict) -> None:
        self.records.append(record)

    def column(self, key: str) -> list:
        """One field across epochs (``None`` where an epoch lacks it)."""
        return [r.get(key) for r in self.records]

    def best_epoch(self, key: str = "holdback_loss") -> int | None:
        """Epoch with the lowest finite ``key`` (first one on ties); ``None`` if there is none."""
        values = [(v, r["epoch"]) for r in self.records if (v := r.get(key)) is not None and math.isfinite(v)]
        return min(values)[1] if values else None

    def to_list(self) -> list[dict]:
        return [dict(r) for r in self.records]

    def __repr__(self) -> str:
        return f"History({len(self)} epochs)"


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (best state restored), Occam (as it was at that
    state), the history of every epoch."""

    model: nn.Module
    occam: Occam
    history: History
    best_epoch: int | None


# Data ------------------------------------------------------------------------------------
def _as_dataset(data: Data, name: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(np.asarray(a)) if not torch.is_tensor(a) else a for a in data)
        if len(x) != len(y):
            raise InvalidValueError(f"{name}: X has {len(x)} rows but y has {len(y)}; accepted: equal lengths")
        # float64 arrays (numpy's default) train as float32; integer inputs (token ids) stay.
        x, y = (t.float() if t.dtype == torch.float64 else t for t in (x, y))
        return TensorDataset(x, y)
    raise InvalidTypeError(f"{name} must be a torch Dataset or a tuple (X, y), got {type(data).__name__}")


def _labels(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    return torch.as_tensor(np.asarray([dataset[i][1] for i in range(len(dataset))]))


def _infer_task(y: torch.Tensor) -> str:
    return "regression" if torch.is_floating_point(y) else "classification"


def _split(dataset: Dataset, fraction: float, task: str, seed: int,
           labels: torch.Tensor | None = None) -> tuple[Dataset, Dataset | None]:
    """Train / hold-back subsets; stratified for classification where every class allows it."""
    n = len(dataset)
    if fraction == 0.0:
        return dataset, None
    n_hold = int(round(fraction * n))
    if n_hold < 1 or n - n_hold < 1:
        raise InvalidValueError(
            f"holdback={fraction} leaves {n_hold} of {n} rows for the hold-back split and "
            f"{n - n_hold} for training; accepted: a fraction in (0, 1) leaving at least one row "
            "on each side, or holdback=0 with signal='train'"
        )
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    stratify = None
    if task == "classification":
        y = (_labels(dataset) if labels is None else labels).cpu().numpy()
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2 and n_hold >= len(counts) and n - n_hold >= len(counts):
            stratify = y
        else:
            warnings.warn(
                "hold-back split is not stratified: some class has fewer than 2 rows or a split "
                "is smaller than the number of classes",
                stacklevel=3,
            )
    train_idx, hold_idx = train_test_split(idx, test_size=n_hold, random_state=seed, stratify=stratify)
    return Subset(dataset, np.sort(train_idx).tolist()), Subset(dataset, np.sort(hold_idx).tolist())


# Loss and evaluation --------------------------------------------------------------------
def _default_loss(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return F.cross_entropy

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.reshape(y.shape), y.to(out.dtype))

    return mse


def _to(batch: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [t.to(device, non_blocking=True) for t in batch]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    loss_fn: Callable,
    task: str,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> tuple[float, float | None]:
    """Mean loss and (for classification) accuracy of ``model`` on ``data``, in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    # A DataLoader draws a seed from the global RNG unless given its own generator; evaluating
    # must not shift the training run's dropout and shuffling.
    for xb, yb in DataLoader(data, batch_size=batch_size, generator=torch.Generator()):
        xb, yb = _to((xb, yb), device)
        out = model(xb)
        total_loss += float(loss_fn(out, yb)) * len(yb)
        if task == "classification":
            correct += int((out.argmax(-1) == yb).sum())
        n += len(yb)
    model.train(was_training)
    return total_loss / n, (correct / n if task == "classification" else None)


# State snapshots and checkpoints --------------------------------------------------------
def _cpu_copy(state: Any) -> Any:
    if torch.is_tensor(state):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_copy(v) for v in state)
    return copy.deepcopy(state)


def _occam_copy(occam: Occam) -> dict:
    """Occam's state, copied, except its own copy of the model (a rollback's snapshot), which is referenced:
    Occam replaces a snapshot, never changes one, so a run holds it once however many states refer to it."""
    state = occam.state_dict()
    return {**_cpu_copy({k: v for k, v in state.items() if k != "snapshot"}), "snapshot": state["snapshot"]}


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, occam: Occam) -> dict:
    return {
        "model": _cpu_copy(model.state_dict()),
        "optimizer": _cpu_copy(optimizer.state_dict()),
        "occam": _occam_copy(occam),
    }


def _restore(snapshot: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None, occam: Occam) -> None:
    if occam.shrink:
        # Occam's state first: it gives the model (the same Parameter objects) the shapes of the saved
        # state, larger or smaller than the live ones; the weights and optimizer state then fit them.
        occam.load_state_dict(snapshot["occam"])
        model.load_state_dict(snapshot["model"])
        if optimizer is not None and "optimizer" in snapshot:
            optimizer.load_state_dict(snapshot["optimizer"])
        occam.enforce()
        return
    model.load_state_dict(snapshot["model"])
    if optimizer is not None and "optimizer" in snapshot:
        optimizer.load_state_dict(snapshot["optimizer"])
    occam.load_state_dict(snapshot["occam"])


def _check_same_model(model: nn.Module, saved: dict, path: Path, shapes: bool = True) -> None:
    """Refuse a checkpoint of another model: other tensor names, or (``shapes``) other shapes. A shrinking
    run's shapes are those its Occam state records: they are checked once Occam has restored them."""
    ours = {k: tuple(v.shape) if shapes else () for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) if shapes else () for k, v in saved.items()}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:4]
        raise InvalidValueError(
            f"checkpoint {path} is from a different model: tensors differ in name or shape "
            f"({diff}); accepted: a checkpoint written by fit() for this same architecture, or a "
            "fresh checkpoint_dir"
        )


def _rng_state(device: torch.device, generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "loader": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# The loop -------------------------------------------------------------------------------
def _make_optimizer(spec: OptimizerSpec, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if spec is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if callable(spec):
        opt = spec(model.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise InvalidTypeError(f"optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt
    raise InvalidTypeError(
        f"optimizer must be None, a torch.optim.Optimizer or a callable params -> Optimizer, "
        f"got {type(spec).__name__}"
    )


def _batches(loader: DataLoader, device: torch.device) -> Iterator[list[torch.Tensor]]:
    for batch in loader:
        yield _to(batch, device)


def fit(
    model: nn.Module,
    train: Data,
    *,
    test: Data | None = None,
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: OptimizerSpec = None,
    schedule: Schedule | str | None = None,
    criterion: str | Criterion = "layerwise",
    include: Selection | None = None,
    exclude: Selection | None = None,
    holdback: float = 0.1,
    signal: str = "holdback",
    task: str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    keep_best: bool = True,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    eval_batch_size: int = 1024,
    on_epoch_end: Callable[[dict], None] | None = None,
    initial_masks: Mapping[str, torch.Tensor] | None = None,
    min_density: float | None = None,
    max_density: float | None = None,
    max_params: int | None = None,
    structured: bool | str = False,
    shrink: bool = False,
) -> FitResult:
    """Train ``model`` with Occam Gradient Descent; return the model, Occam and the history.

    - ``train`` / ``test``: a torch ``Dataset`` of ``(x, y)`` or a tuple ``(X, y)`` of arrays.
    - ``holdback``: fraction of ``train`` held back (stratified for classification); its loss is
      the signal (``signal="holdback"``) and selects the best epoch. ``signal="train"`` reads the
      epoch's mean training loss, as the paper's reference does.
    - ``schedule``: a preset name (``"guarded"``, ``"paper"``, ``"search"``, ``"planned"``) or a schedule
      object; ``None`` is the default preset (``"guarded"``); ``Never()`` gives plain gradient descent.
    - ``optimizer``: Adam(lr) by default, or a callable ``params -> Optimizer``.
    - ``checkpoint_dir``: after every epoch the full state is written atomically; calling
      ``fit`` again with the same arguments resumes exactly where it stopped.
    - ``on_epoch_end``: called with each epoch's record after its checkpoint is written.
    - ``initial_masks``: start from these masks (e.g. to fine-tune a pruned model); weights are
      zeroed where they prune.
    - ``min_density`` / ``max_density`` / ``max_params``: bounds on the size, combined with the
      controller's choice (see :class:`occamgd.Occam`): "as small as the data allows, at most 0.2"
      is ``max_density=0.2``. The best epoch is chosen among the epochs within the bounds.
    - ``structured``: prune whole groups of coupled units (neurons, channels, heads) with
      :func:`occamgd.compaction.structured_pruning`, traced on the first rows of ``train``
      (:data:`EXAMPLE_ROWS`); ``criterion`` and ``include`` are then refused (the groups decide
      them) and ``exclude`` is the module names or types it leaves whole. ``True`` (or ``"layer"``)
      prunes the rate's fraction of each group's units, ``"global"`` of all groups' units together.
    - ``shrink`` (needs ``structured``): after each prune the pruned groups are removed from the
      live model in place (``Occam(shrink=True)``), so the epochs after it train a smaller
      network. ``keep_best`` restores the best epoch's model with its shapes (larger than the
      live one if a prune shrank it since); a checkpoint resumes exactly, shapes included.

    The controller is told the run's budget (``epochs - 1`` prunes) and plans within it.

    Pruning happens after every epoch but the last (a prune after the last epoch would yield a
    model that no epoch trains or evaluates). With ``keep_best`` and a hold-back split, the
    epoch with the lowest hold-back loss is restored at the end: its weights, and ``result.occam``
    as it was when that model was evaluated, before the prune that followed (its masks, the
    controller's state, ``occam.history`` up to the prune before that epoch, and the rollback
    snapshot it then held), so that stepping it on continues from that model. ``result.history``
    keeps every epoch.
    """
    # Validate everything before touching the model or any file.
    if not (isinstance(epochs, int) and epochs >= 0):
        raise InvalidValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise InvalidValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (isinstance(holdback, (int, float)) and 0.0 <= holdback < 1.0):
        raise InvalidValueError(f"holdback must be a fraction in [0, 1), got {holdback!r}")
    if signal not in ("holdback", "train"):
        raise InvalidValueError(f"signal must be 'holdback' or 'train', got {signal!r}")
    if signal == "holdback" and holdback == 0.0:
        raise InvalidValueError("signal='holdback' needs holdback > 0, got holdback=0; accepted: holdback in (0, 1), or signal='train'")
    if structured not in STRUCTURED or not isinstance(structured, (bool, str)):
        raise InvalidValueError(f"structured must be one of {STRUCTURED}, got {structured!r}")
    if not isinstance(shrink, bool):
        raise InvalidValueError(f"shrink must be True or False, got {shrink!r}")
    if shrink and not structured:
        raise InvalidValueError("shrink=True removes whole pruned groups from the model, which needs structured "
                                "pruning, got structured=False; accepted: structured=True with shrink=True, or "
                                "shrink=False")
    if structured and (include is not None or not (isinstance(criterion, str) and criterion == "layerwise")):
        raise InvalidValueError(
            f"structured=True chooses the criterion and the pruned tensors from the model's groups, got "
            f"criterion={getattr(criterion, '__name__', criterion)!r}, include={include!r}; accepted: the default "
            "criterion and include=None with structured=True (exclude names modules to leave whole), or "
            "structured=False")
    if task not in (None, "classification", "regression"):
        raise InvalidValueError(f"task must be 'classification', 'regression' or None (inferred), got {task!r}")
    dataset = _as_dataset(train, "train")
    if len(dataset) == 0:
        raise InvalidValueError("train has no rows; accepted: at least 2 rows")
    test_set = _as_dataset(test, "test") if test is not None else None
    # Reading a generic Dataset's labels walks every item: do it once, for the task and the split.
    labels = _labels(dataset) if task is None or task == "classification" else None
    task = task or _infer_task(labels)
    loss_fn = loss or _default_loss(task)
    schedule = get_schedule(schedule)
    if structured:
        from .compaction import structured_pruning

        scope = structured if isinstance(structured, str) else "layer"
        plan = structured_pruning(model, _example_rows(dataset), scope=scope, exclude=exclude)
        criterion, include, exclude = plan["criterion"], plan["include"], None
    # Occam first: it refuses a model without prunable tensors before anything else happens.
    occam = Occam(model, None, criterion, schedule, include=include, exclude=exclude,
                  budget=epochs - 1 if epochs >= 2 else None, min_density=min_density, max_density=max_density,
                  max_params=max_params, shrink=shrink)
    if initial_masks is not None:
        occam.masks.check(initial_masks, "initial_masks", require_all=True)
    device = next(model.parameters()).device
    train_set, hold_set = _split(dataset, float(holdback), task, seed, labels)
    opt = _make_optimizer(optimizer, model, lr)
    occam.attach(opt)
    # Every setting that shapes the result: a checkpoint made with another one is refused by name.
    config = {"seed": seed, "batch_size": batch_size, "holdback": float(holdback), "signal": signal,
              "task": task, "rows": len(dataset), "schedule": repr(schedule),
              "criterion": getattr(occam.criterion, "__name__", repr(occam.criterion)),
              "optimizer": _optimizer_settings(opt), "loss": getattr(loss_fn, "__name__", repr(loss_fn)),
              "bounds": [occam.min_density, occam.max_density], "structured": structured, "shrink": shrink}
    generator = torch.Generator().manual_seed(seed)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    try:
        if ckpt_path is not None and ckpt_path.exists():
            history, best, start = _resume(ckpt_path, config, epochs, model, opt, occam, device, generator)
        else:
            history, best, start = History(), None, 0
            torch.manual_seed(seed)
            if initial_masks is not None:
                occam.masks.update(initial_masks)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
        bar = tqdm(range(start, epochs), initial=start, total=epochs, desc="occamgd fit",
                   unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            t0 = time.perf_counter()
            last_finite = _snapshot(model, opt, occam)

            def fail(what: str, value: float) -> None:
                _restore(last_finite, model, opt, occam)
                raise NonFiniteLossError(
                    f"{what} is {value} at epoch {epoch}; model, optimizer and masks were restored to "
                    f"their state at the start of epoch {epoch} (the last finite state)"
                )

            record: dict[str, Any] = {"epoch": epoch, "density": occam.density, "kept": occam.masks.kept,
                                      "densities": occam.densities}
            if shrink:  # the entries of each pruned tensor the model holds while it trains this epoch
                record["live"] = {name: p.numel() for name, p in occam.masks.params.items()}
            record["train_loss"], record["train_acc"] = _train_epoch(model, opt, loader, loss_fn, task, device)
            if not math.isfinite(record["train_loss"]):
                fail("training loss", record["train_loss"])
            record["train_time"] = time.perf_counter() - t0
            if hold_set is not None:
                record["holdback_loss"], record["holdback_acc"] = evaluate(model, hold_set, loss_fn, task,
                                                                           eval_batch_size, device)
            if test_set is not None:
                record["test_loss"], record["test_acc"] = evaluate(model, test_set, loss_fn, task,
                                                                   eval_batch_size, device)
            signal_value = record["holdback_loss"] if signal == "holdback" else record["train_loss"]
            if not math.isfinite(signal_value):
                fail(f"{signal} signal loss", signal_value)
            within = occam.max_density is None or record["density"] <= occam.max_density + 1e-9
            if hold_set is not None and within and (best is None or record["holdback_loss"] < best["loss"]):
                # fit holds one copy of the model (this one) as plain training does, Occam at most one more.
                best = {"epoch": epoch, "loss": record["holdback_loss"], "model": _cpu_copy(model.state_dict()),
                        "occam": _occam_copy(occam)}
            if epoch < epochs - 1:
                record["rate"] = occam.step(signal_value)
                record["action"] = occam.history[-1]["action"]
            else:
                record["rate"], record["action"] = 0.0, "last epoch"
            record["time"] = time.perf_counter() - t0
            history.append(record)
            if ckpt_path is not None:
                atomic_save({"format": CHECKPOINT_FORMAT, "config": config, "epochs": epochs, "epoch": epoch,
                             **_snapshot(model, opt, occam), "history": history.to_list(), "best": best,
                             "rng": _rng_state(device, generator)}, ckpt_path)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", signal=f"{signal_value:.4f}",
                            density=f"{record['density']:.3f}", rate=f"{record['rate']:.3f}",
                            action=record["action"])
            if on_epoch_end is not None:
                on_epoch_end(record)
        bar.close()
    except BaseException:
        occam.detach()  # leave no hook behind on an optimizer the caller may have passed in
        raise

    reason = occam.unpruned_reason() if len(history) == epochs else None
    if epochs == 1 and type(schedule).__name__ != "Never":
        reason = "fit with epochs=1 never prunes: pruning happens after every epoch but the last; accepted: epochs >= 2"
    if reason is None and keep_best and best is not None and history[best["epoch"]]["density"] >= 1.0 \
            and type(schedule).__name__ != "Never" and min(r["density"] for r in history) < 1.0:
        pruned = [r for r in history if r["density"] < 1.0 and r.get("holdback_loss") is not None]
        lowest = min(pruned, key=lambda r: r["holdback_loss"]) if pruned else None
        reason = (f"fit kept epoch {best['epoch']}, a dense one: it pruned later, but every pruned epoch had a higher "
                  "hold-back loss" + (f" (the lowest, {lowest['holdback_loss']:.4f} at density {lowest['density']:.3f} "
                                      f"in epoch {lowest['epoch']}, against {best['loss']:.4f})" if lowest else "")
                  + "; the returned model is unpruned. To keep a pruned one: max_density=..., or keep_best=False")
    if reason is not None:
        # Said where the user looks: a warning now, and in the history the run returns (and saves).
        history[-1]["warning"] = reason
        warnings.warn(reason, NotPrunedWarning, stacklevel=2)
    if keep_best and best is not None:
        # All of Occam, not only its masks: a rollback from the returned Occam must not go to a model
        # from after the best epoch. (With shrink, Occam's state regrows the model to that epoch's shapes.)
        _restore({"model": best["model"], "occam": best["occam"]}, model, None, occam)
    return FitResult(model=model, occam=occam, history=history, best_epoch=best["epoch"] if best else None)


#: What ``structured`` accepts: off, on (per-group rate), or the scope of the group criterion.
STRUCTURED = (False, True, "layer", "global")
#: Rows of ``train`` that ``structured=True`` traces the model on.
EXAMPLE_ROWS = 4
#: Settings a checkpoint of an older fit() lacks, and the value it was written with.
_CONFIG_DEFAULTS = {"structured": False, "shrink": False}


def _example_rows(dataset: Dataset) -> torch.Tensor:
    """The inputs of the first :data:`EXAMPLE_ROWS` rows of ``dataset``, as one batch."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][:EXAMPLE_ROWS]
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(EXAMPLE_ROWS, len(dataset)))])


def _optimizer_settings(opt: torch.optim.Optimizer) -> list[str]:
    """The optimizer's type and every hyper-parameter of each parameter group, as text."""
    return [type(opt).__name__] + [repr(sorted((k, v) for k, v in group.items() if k != "params"))
                                   for group in opt.param_groups]


def _read_checkpoint(path: Path) -> dict:
    """A fit() checkpoint's contents (tensors and plain data only), or an error naming the file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle with code in it, not a checkpoint at all
        raise InvalidValueError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}): it is "
            "damaged, "
            "or not a checkpoint fit() wrote; accepted: move it away to start afresh in that checkpoint_dir, "
            "or pass another checkpoint_dir"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InvalidValueError(f"checkpoint {path} has format {found!r}; accepted: {CHECKPOINT_FORMAT} (a "
                                "checkpoint this version of fit() wrote), or a fresh checkpoint_dir")
    missing = sorted({"config", "epochs", "epoch", "model", "optimizer", "occam", "history", "best", "rng"} - set(ckpt))
    if missing:
        raise InvalidValueError(f"checkpoint {path} lacks {missing}: it is damaged or not fit()'s; accepted: move it "
                                "away, or a fresh checkpoint_dir")
    return ckpt


def _resume(path: Path, config: dict, epochs: int, model: nn.Module, opt: torch.optim.Optimizer, occam: Occam,
            device: torch.device, generator: torch.Generator) -> tuple[History, dict | None, int]:
    """Load a fit() checkpoint after checking it belongs to this model and these settings.

    A run may be extended (more epochs than the checkpoint's) exactly: a finished run's last epoch
    was not followed by a prune, so that prune, the one an uninterrupted longer run makes there, is
    made now from the signal the checkpoint recorded. Fewer epochs than the checkpoint holds are
    refused: its history and state are those of a longer run.
    """
    ckpt = _read_checkpoint(path)
    _check_same_model(model, ckpt["model"], path, shapes=not config["shrink"])
    for key, value in config.items():
        saved = ckpt["config"].get(key, _CONFIG_DEFAULTS.get(key))
        if saved != value:
            raise InvalidValueError(
                f"checkpoint {path} was written with {key}={saved!r}, this call has "
                f"{key}={value!r}; accepted: the same {key}, or a fresh checkpoint_dir"
            )
    done = ckpt["epoch"] + 1
    if done > epochs:
        raise InvalidValueError(
            f"checkpoint {path} holds {done} finished epochs, more than epochs={epochs}; accepted: epochs >= {done} "
            "(the run goes on, or returns as it is), or a fresh checkpoint_dir"
        )
    _restore(ckpt, model, opt, occam)
    if config["shrink"]:
        _check_same_model(model, ckpt["model"], path)
    _set_rng_state(ckpt["rng"], device, generator)
    history = History(ckpt["history"])
    if done == ckpt["epochs"] < epochs:
        last = history[-1]
        last["rate"] = occam.step(last["holdback_loss"] if config["signal"] == "holdback" else last["train_loss"])
        last["action"] = occam.history[-1]["action"]
    return history, ckpt["best"], done


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader, loss_fn: Callable,
                 task: str, device: torch.device) -> tuple[float, float | None]:
    """One epoch of gradient descent; mean training loss and accuracy (in train mode, as Keras)."""
    model.train()
    # Sums stay on the device: one synchronisation per epoch, not per batch.
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for xb, yb in _batches(loader, device):
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        batch_loss = loss_fn(out, yb)
        batch_loss.backward()
        opt.step()
        total += batch_loss.detach() * len(yb)
        if task == "classification":
            correct += (out.detach().argmax(-1) == yb).sum()
        n += len(yb)
    return float(total) / n, (int(correct) / n if task == "classification" else None)
