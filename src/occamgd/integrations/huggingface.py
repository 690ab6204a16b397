"""Occam Gradient Descent as a Hugging Face ``transformers.Trainer`` callback.

::

    from occamgd.integrations.huggingface import OccamTrainerCallback

    args = TrainingArguments(..., eval_strategy="steps", eval_steps=250)  # one Occam step per evaluation
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[OccamTrainerCallback()])
    trainer.train()                                      # or train(resume_from_checkpoint=True)

When training begins the callback builds an :class:`occamgd.Occam` around the model and the
torch optimizer inside the Trainer's (``accelerate`` wraps it in an ``AcceleratedOptimizer``,
which has no step hooks of its own: the hook goes on the optimizer it wraps, and fires once per
real update, after gradient accumulation and never for a step the loss scaler skipped). Each
evaluation during training gives the signal (``eval_loss``); the prune it asks for happens just
before the next training step, so the checkpoint saved after that evaluation, and the model
``load_best_model_at_end`` picks, are the very model that was evaluated.

``OccamTrainerCallback(shrink=True)`` prunes whole units (attention heads, MLP neurons: see
:func:`occamgd.compaction.structured_pruning`) and removes them from the live model at each prune,
so the rest of the run trains a smaller model: the Trainer's optimizer, LR scheduler and gradient
clipping keep the same ``Parameter`` objects (sliced in place, their optimizer state too).
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..errors import InvalidTypeError, InvalidValueError, MissingFileError, NotPrunedWarning
from ..criteria import Criterion
from ..io import atomic_save
from ..masks import Selection
from ..occam import Occam, unwrap_optimizer
from ..schedules import Schedule
from ._common import (build_occam, check_arguments, check_shapes_match, check_structure, differs, fits, mismatch,
                      original_record, reshape_like, state_dict_shapes, structured_kwargs)

#: File the callback writes into each ``checkpoint-N`` directory of the Trainer.
STATE_NAME = "occam_state.pt"
STATE_FORMAT = 1
#: Rows of the training set traced to find the structured groups when no ``example_input`` is given.
EXAMPLE_ROWS = 4
_LABEL_KEYS = ("labels", "label", "label_ids")


def transformer_weights(model: nn.Module) -> tuple[list[type], Any]:
    """The default ``(include, exclude)`` for a transformers model: every ``nn.Linear`` and
    ``transformers`` ``Conv1D`` weight (GPT-2's projections are ``Conv1D``), except the output
    embeddings (the language-model head, often tied to the input embeddings, which are not selected
    either): a small share of the weights that every prediction passes through."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    # By identity: a tied head's weight is listed under the input embedding's name, not its own.
    return [nn.Linear, Conv1D], (lambda name, param: param is head_weight)


def run_budget(args: TrainingArguments, state: TrainerState) -> int | None:
    """The run's budget: how many times the callback will call ``Occam.step`` in the whole run
    (from step 0, also when resuming), or ``None`` when the Trainer cannot know.

    One step per evaluation during training that a training step follows (the prune an evaluation
    asks for happens just before the next step, so the evaluation at ``max_steps`` never prunes):

    - ``eval_strategy="steps"``: the multiples of ``state.eval_steps`` (``eval_steps`` as an int, or
      as a fraction of ``max_steps``, rounded up as the Trainer does) below ``max_steps`` and at or
      after ``eval_delay``; the evaluation the Trainer adds at ``max_steps`` does not count;
    - ``eval_strategy="epoch"``: the ends of the epochs before the last (``state.num_train_epochs``
      epochs, the last one cut short at ``max_steps`` when that is set), from epoch ``eval_delay``;
      ``None`` for a training set without a length (epochs end when it runs out).

    An early stop (``EarlyStoppingCallback``) makes fewer: the budget is the most there can be.
    """
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    delay = float(getattr(args, "eval_delay", 0) or 0)
    max_steps, every, epochs = (getattr(state, k, None) for k in ("max_steps", "eval_steps", "num_train_epochs"))
    if strategy == "steps":
        if not (max_steps and every):  # a state that is not the Trainer's, with nothing to count
            return None
        every = int(every)
        first = max(1, math.ceil(delay / every))
        count = (int(max_steps) - 1) // every - first + 1
    elif strategy == "epoch":
        if not epochs or int(epochs) >= sys.maxsize:
            return None
        epochs = int(epochs)
        count = epochs - max(1, math.ceil(delay))
    else:
        return None
    return count if count >= 1 else None


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (see :func:`occamgd.occam.unwrap_optimizer`)."""
    try:
        return unwrap_optimizer(optimizer)
    except TypeError as error:
        raise InvalidTypeError(
            f"OccamTrainerCallback needs a torch.optim optimizer (possibly wrapped by accelerate), got "
            f"{type(optimizer).__name__}; DeepSpeed and other engines that own the update are not supported"
        ) from error


class OccamTrainerCallback(TrainerCallback):
    """Prune a model with Occam Gradient Descent while ``transformers.Trainer`` trains it.

    - ``metric``: the evaluation metric that drives the schedule (default ``"eval_loss"``; with a
      dict of evaluation datasets, ``"eval_<name>_loss"``: the other datasets are ignored). When
      no evaluation of a step reports it, the next step (or the end of training) raises
      ``ValueError`` naming the metrics they did report.
    - ``criterion``, ``schedule``, ``zero_state``, ``snapshot_device``: as for
      :class:`occamgd.Occam`. A schedule object holds configuration only: runs never share state.
    - ``include`` / ``exclude``: which weights are prunable. By default every ``nn.Linear`` and
      ``Conv1D`` weight except the output embeddings (see :func:`transformer_weights`).
    - ``structured``: prune whole units (attention heads, MLP neurons) with the include and criterion
      of :func:`occamgd.compaction.structured_pruning` (``criterion`` ``"layerwise"`` or
      ``"global"`` is its scope; ``exclude``: module names or types left whole; ``include`` is
      refused). ``None`` (the default): structured when ``shrink`` is.
    - ``shrink``: remove the pruned units from the live model at each prune (``Occam(shrink=True)``),
      so the rest of the run trains a smaller model. Refused when the callback meets the Trainer
      (``Trainer(...)``, or at ``train()`` for a callback added later) with ``torch_compile=True``,
      more than one process or GPU (DDP's reducer, DataParallel's replicas, FSDP and DeepSpeed are
      built for the old shapes), or a compiled model; at ``train()`` with an optimizer other than
      :data:`occamgd.compaction.shrink.SHRINK_OPTIMIZERS`.
    - ``example_input``: the batch traced to find the units (a dict of model inputs). By default the
      first ``EXAMPLE_ROWS`` rows of the training set, collated by the Trainer's data collator
      (labels dropped); a training set without ``len`` and ``[i]`` needs it.
    - ``min_density``, ``max_density``, ``max_params``: the bounds of :class:`occamgd.Occam`. The
      run's budget is passed to the Occam when training begins (see :func:`run_budget`).
    - ``resume_from``: where the Occam state is read when ``trainer.train(resume_from_checkpoint=...)``
      resumes at step N. ``None``: ``<output_dir>/checkpoint-N`` (where the Trainer saved it); a
      path: that checkpoint directory or state file; ``False``: start pruning afresh from the
      checkpoint's weights (for a checkpoint trained without this callback).

    Pruning: evaluations at step 0 (``eval_on_start``) and outside training (``trainer.evaluate()``)
    are not signals. ``occam_density`` (the kept fraction of the prunable weights) is added to
    every log, also to ``state.log_history``.

    Checkpoints: on every save, masks, schedule state, history and the signal waiting for its prune
    go to ``checkpoint-N/occam_state.pt`` (atomically, by the main process); resuming restores
    them. With ``load_best_model_at_end`` the best checkpoint's masks come back with its weights.
    After training ``callback.occam`` holds the masks and the per-prune history.

    A shrunk run's checkpoints hold weights of the shrunk shapes, which load into no fresh model.
    With ``shrink=True`` the callback hooks the model's ``load_state_dict`` (from ``Trainer(...)``
    on): weights of other shapes than the model's are matched with the ``occam_state.pt`` that
    records those shapes (the best checkpoint's, ``resume_from``'s, then those in ``output_dir``,
    newest first), and the model is given its shapes and module sizes before they load. So
    ``train(resume_from_checkpoint=...)`` on a fresh model and ``load_best_model_at_end`` (whose
    best checkpoint may be larger than the live model) work; weights whose shapes no Occam state
    records are refused, naming them. Outside the Trainer use :func:`load_shrunk`.
    """

    def __init__(
        self,
        metric: str = "eval_loss",
        criterion: str | Criterion = "layerwise",
        schedule: Schedule | str | None = None,
        include: Selection | None = None,
        exclude: Selection | None = None,
        *,
        zero_state: str = "prune",
        snapshot_device: str | torch.device | None = "cpu",
        resume_from: str | os.PathLike | bool | None = None,
        structured: bool | None = None,
        shrink: bool = False,
        example_input: Any = None,
        min_density: float | None = None,
        max_density: float | None = None,
        max_params: int | None = None,
    ):
        check_arguments("metric", metric, "the name of an evaluation loss such as 'eval_loss'",
                        criterion, schedule, zero_state)
        self.structured = check_structure(structured, shrink, criterion, include, example_input)
        self.shrink = shrink
        self.example_input = example_input
        self.bounds = {k: v for k, v in (("min_density", min_density), ("max_density", max_density),
                                         ("max_params", max_params)) if v is not None}
        if resume_from is True or not (resume_from is None or resume_from is False
                                       or isinstance(resume_from, (str, os.PathLike))):
            raise InvalidValueError(f"resume_from must be None, False or a path, got {resume_from!r}")
        self.metric = metric
        self.criterion = criterion
        self.schedule = schedule
        self.include = include
        self.exclude = exclude
        self.zero_state = zero_state
        self.snapshot_device = snapshot_device
        self.resume_from = resume_from
        #: The Occam pruning the model (``None`` before training begins).
        self.occam: Occam | None = None
        self._pending_signal: float | None = None
        self._unmatched: list[list[str]] = []  # metrics of this step's evaluations that lacked ``metric``
        self._training = False
        self._watched: Any = None  # (model, hook handle) whose load_state_dict is hooked (shrink=True)
        self._args: TrainingArguments | None = None
        self._state: TrainerState | None = None
        #: The model's shapes and structure before a shrunk checkpoint's were given to it (no Occam yet).
        self._original: dict[str, Any] | None = None

    # Shrinking: settings, and loading a shrunk run's weights --------------------------------
    def _check_shrink_settings(self, args: TrainingArguments, model: nn.Module | None) -> None:
        if not self.shrink:
            return
        if getattr(args, "torch_compile", False):
            raise InvalidValueError(
                "OccamTrainerCallback(shrink=True) cannot shrink a model the Trainer compiles "
                "(TrainingArguments.torch_compile=True): the compiled graph is built for the old shapes, and "
                "every shrink would recompile it; accepted: torch_compile=False while shrinking (compile the "
                "final, shrunk model), or shrink=False")
        if model is not None and hasattr(model, "_orig_mod"):
            raise InvalidTypeError(
                f"OccamTrainerCallback(shrink=True) got a torch.compile'd model ({type(model).__name__}): the "
                "compiled graph is built for the old shapes; accepted: the plain model (compile the final, "
                "shrunk model), or shrink=False")
        world, gpus = int(getattr(args, "world_size", 1)), int(getattr(args, "n_gpu", 1))
        if world > 1 or gpus > 1 or getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise InvalidValueError(
                f"OccamTrainerCallback(shrink=True) trains on one process and one device; got world_size={world}, "
                f"n_gpu={gpus}{', DeepSpeed' if getattr(args, 'deepspeed', None) else ''}"
                f"{', FSDP' if getattr(args, 'fsdp', None) else ''}: DDP's gradient reducer, DataParallel's replicas, "
                "FSDP's and DeepSpeed's shards are built for the old shapes; accepted: one process on one device "
                "(CUDA_VISIBLE_DEVICES=0, no torchrun), or shrink=False (masks, on any number of processes)")

    def _watch(self, model: nn.Module) -> None:
        """Hook ``model.load_state_dict`` so that a shrunk checkpoint's weights load (see the class docstring)."""
        if self._watched is not None:
            if self._watched[0] is model:
                return
            self._watched[1].remove()
        self._watched = (model, model.register_load_state_dict_pre_hook(self._before_load))

    def _candidate_states(self) -> list[Path]:
        files = []
        if self._state is not None and self._state.best_model_checkpoint:
            files.append(Path(self._state.best_model_checkpoint) / STATE_NAME)
        if self.resume_from not in (None, False):
            path = Path(self.resume_from).expanduser()
            files.append(path / STATE_NAME if path.is_dir() else path)
        if self._args is not None:
            steps = []
            for d in Path(self._args.output_dir).glob("checkpoint-*"):
                match = re.fullmatch(r"checkpoint-(\d+)", d.name)
                if match and (d / STATE_NAME).is_file():
                    steps.append((int(match.group(1)), d / STATE_NAME))
            files += [f for _, f in sorted(steps, reverse=True)]
        seen, unique = set(), []
        for f in files:
            if f not in seen and f.is_file():
                seen.add(f)
                unique.append(f)
        return unique

    def _before_load(self, module: nn.Module, state_dict: dict, prefix: str, *rest: Any) -> None:
        """Before weights of other shapes load: give the model the shapes its Occam state records."""
        if prefix:
            return
        incoming = state_dict_shapes(state_dict)
        if not differs(module, incoming):
            return
        candidates = self._candidate_states()
        for file in candidates:
            saved = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            occam_state = saved.get("occam") if isinstance(saved, dict) else None
            record = occam_state.get("shrink") if isinstance(occam_state, dict) else None
            if record is not None and fits(record, incoming):
                break
        else:
            raise InvalidValueError(
                f"OccamTrainerCallback(shrink=True): the weights loaded into {type(module).__name__} have other "
                f"shapes than it ({mismatch(module, incoming)}), as a shrunk run's checkpoint has, but none of "
                f"{[str(f) for f in candidates] or 'no occam_state.pt'} records those shapes; accepted: the "
                f"checkpoint's own {STATE_NAME} beside its weights (OccamTrainerCallback(resume_from="
                "'path/to/checkpoint-N') for one moved out of output_dir), or weights of this model's shapes")
        if self.occam is not None and self.occam.model is module:
            self.occam.load_state_dict(occam_state)  # re-shrinks (or regrows) the model, masks and all
        else:
            if self._original is None:
                self._original = original_record(module)
            reshape_like(module, record)

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, **kwargs) -> None:
        """With ``shrink=True``: refuse the Trainer's settings that cannot shrink, and hook the model's
        ``load_state_dict`` before ``train(resume_from_checkpoint=...)`` loads a shrunk checkpoint."""
        self._check_shrink_settings(args, model)
        self._args = args
        if self.shrink and model is not None:
            self._watch(model)

    # Building ---------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, optimizer: Any = None, **kwargs) -> None:
        """Build (or re-attach) the Occam; on a resumed run, restore its state from the checkpoint."""
        if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
            raise InvalidValueError(
                "OccamTrainerCallback prunes at each evaluation, but TrainingArguments.eval_strategy is 'no'; "
                "accepted: eval_strategy='steps' with eval_steps=N (an Occam step every N optimizer steps) or "
                "'epoch', and an eval_dataset"
            )
        if model is None or optimizer is None:
            raise InvalidValueError("OccamTrainerCallback needs the Trainer's model and optimizer at on_train_begin")
        self._check_shrink_settings(args, model)
        inner = _torch_optimizer(optimizer)
        self._args, self._state = args, state
        if self._original is not None and (state.global_step == 0 or self.resume_from is False):
            raise InvalidValueError(
                "OccamTrainerCallback(shrink=True): the model was given the weights of a shrunk checkpoint, but "
                f"{'resume_from=False starts pruning afresh' if state.global_step else 'training starts at step 0'}, "
                "without the Occam state that shrank it; accepted: train(resume_from_checkpoint=...) with the "
                f"checkpoint's own {STATE_NAME} (resume_from=None or a path), or a model of the original shapes")
        if self.occam is not None and self.occam.model is model:
            self.occam.attach(inner)
        else:
            self.occam = self._build(args, state, model, inner, kwargs.get("train_dataloader"))
            self._pending_signal = None
        if self.shrink:
            self._watch(model)
        if state.global_step > 0 and self.resume_from is not False:
            self._load(self._resume_file(args, state), state.global_step)
        self._original = None
        self._training = True

    def _example(self, dataloader: Any) -> Any:
        """The batch traced for structured pruning: ``example_input``, or the training set's first rows."""
        if self.example_input is not None:
            return self.example_input
        dataset, collate = getattr(dataloader, "dataset", None), getattr(dataloader, "collate_fn", None)
        if dataset is None or collate is None or isinstance(dataset, torch.utils.data.IterableDataset) or not (
                hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")) or len(dataset) == 0:
            raise InvalidValueError(
                f"OccamTrainerCallback(structured=True) traces a batch of the model's inputs to find its units, and "
                f"cannot take one from this training set ({type(dataset).__name__}: no len() and [i]); accepted: "
                "OccamTrainerCallback(..., example_input={'input_ids': ..., ...}) with a few rows of inputs")
        batch = collate([dataset[i] for i in range(min(len(dataset), EXAMPLE_ROWS))])
        if not isinstance(batch, Mapping):
            return batch
        labels = set(_LABEL_KEYS) | set(getattr(self._args, "label_names", None) or ())
        return {k: v for k, v in batch.items() if k not in labels}

    def _build(self, args: TrainingArguments, state: TrainerState, model: nn.Module,
               optimizer: torch.optim.Optimizer, dataloader: Any) -> Occam:
        include, exclude, criterion = self.include, self.exclude, self.criterion
        if self.structured:
            planned = structured_kwargs(model, self._example(dataloader), self.criterion, exclude, self._original)
            include, exclude, criterion = planned["include"], None, planned["criterion"]
        elif include is None and exclude is None:
            include, exclude = transformer_weights(model)
        return build_occam(model, optimizer, args.world_size, criterion=criterion, schedule=self.schedule,
                           include=include, exclude=exclude, zero_state=self.zero_state,
                           snapshot_device=self.snapshot_device, shrink=self.shrink, budget=run_budget(args, state),
                           bounds=self.bounds)

    # Pruning ----------------------------------------------------------------------------
    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs) -> None:
        """Keep the evaluation's signal; the prune waits for the next training step."""
        if not self._training or state.global_step == 0 or metrics is None:
            return
        if self.metric in metrics:
            self._pending_signal = float(metrics[self.metric])
        else:
            # With several evaluation datasets only one reports the metric: judge after all of them.
            self._unmatched.append(sorted(metrics))

    def _check_evaluations(self) -> None:
        unmatched, self._unmatched = self._unmatched, []
        if unmatched and self._pending_signal is None:
            raise InvalidValueError(
                f"OccamTrainerCallback reads {self.metric!r}, which no evaluation of this step reported; their "
                f"metrics: {unmatched}; accepted: OccamTrainerCallback(metric=...) naming an evaluation loss (the "
                "model must return a loss: give the eval_dataset labels)"
            )

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        """Prune on the last evaluation's signal before training on anything after it."""
        self._check_evaluations()
        if self._pending_signal is None:
            return
        signal = self._pending_signal
        try:
            self.occam.step(signal)
        except ValueError as error:
            raise InvalidValueError(f"OccamTrainerCallback could not prune on {self.metric!r} = {signal!r} at step "
                             f"{state.global_step}: {error}") from error
        self._pending_signal = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs) -> None:
        """Add ``occam_density`` to the log and to its entry in ``state.log_history``."""
        if self.occam is None or logs is None:
            return
        density = self.occam.density
        logs["occam_density"] = density
        # The Trainer appended a copy of these logs just before calling on_log.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["occam_density"] = density

    # Checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Occam's state (masks, schedule, history) and the signal waiting for its prune.

        With sharded (FSDP2) masks they are gathered into full tensors: a collective, to call on
        every rank (``on_save`` does); the file then loads on any number of ranks.
        """
        if self.occam is None:
            raise InvalidValueError("OccamTrainerCallback has no state before training begins")
        if self.occam.sharded:
            from ..sharded import full_state_dict

            occam_state = full_state_dict(self.occam)
        else:
            occam_state = self.occam.state_dict()
        return {"format": STATE_FORMAT, "occam": occam_state, "pending_signal": self._pending_signal}

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        """Write the state into the checkpoint directory the Trainer just saved."""
        if self.occam is None:
            return
        # Sharded masks are gathered on every rank (a collective), then written by the main process.
        gathered = self.state_dict() if self.occam.sharded else None
        if not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not directory.is_dir():
            warnings.warn(f"OccamTrainerCallback: no checkpoint directory {directory} to save the masks in "
                          "(hyperparameter search runs are not supported); resuming from it will fail",
                          stacklevel=2)
            return
        atomic_save({**(gathered or self.state_dict()), "global_step": state.global_step}, directory / STATE_NAME)

    def _resume_file(self, args: TrainingArguments, state: TrainerState) -> Path:
        if self.resume_from is None:
            return Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_NAME
        path = Path(self.resume_from).expanduser()
        return path / STATE_NAME if path.is_dir() else path

    def _load(self, file: Path, global_step: int | None) -> None:
        if not file.is_file():
            raise MissingFileError(
                f"OccamTrainerCallback: the Trainer resumes at step {global_step}, but {file} does not exist; "
                "accepted: OccamTrainerCallback(resume_from='path/to/checkpoint-N') when the checkpoint was "
                "moved, or resume_from=False to start pruning afresh from the checkpoint's weights"
            )
        saved = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise InvalidValueError(f"{file} is not an OccamTrainerCallback state (format {STATE_FORMAT})")
        if global_step is not None and saved["global_step"] != global_step:
            raise InvalidValueError(f"{file} holds the Occam state of step {saved['global_step']}, but the Trainer resumes "
                             f"at step {global_step}; accepted: the occam_state.pt of the same checkpoint")
        check_shapes_match(self.occam.model, saved["occam"], str(file))
        self.occam.load_state_dict(saved["occam"])
        self._pending_signal = saved["pending_signal"]

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        """Unhook the optimizer; with ``load_best_model_at_end`` take the best checkpoint's masks too."""
        self._training = False
        if self.occam is None:
            return
        self.occam.detach()
        self._check_evaluations()
        reason = self.occam.unpruned_reason()
        if reason is not None:
            state.log_history.append({"occam_warning": reason, "step": state.global_step})
            warnings.warn(f"OccamTrainerCallback: {reason}", NotPrunedWarning, stacklevel=2)
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            file = Path(state.best_model_checkpoint) / STATE_NAME
            if file.is_file():
                self._load(file, None)
            else:
                warnings.warn(f"OccamTrainerCallback: the best checkpoint has no {STATE_NAME}; callback.occam keeps "
                              "the masks of the last step, not those of the weights the Trainer loaded",
                              stacklevel=2)

    def __repr__(self) -> str:
        return (f"OccamTrainerCallback(metric={self.metric!r}, criterion={self.criterion!r}, "
                f"schedule={self.schedule!r}, occam={self.occam!r})")


def load_shrunk(model: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """Load a checkpoint of a shrunk run (``OccamTrainerCallback(shrink=True)``) into ``model``, a fresh
    model of the run's architecture (``from_pretrained`` refuses its weights: its config still has the
    sizes the run started with). The model is given the shapes and module sizes that the
    checkpoint's ``occam_state.pt`` records, then its weights (``model.safetensors`` or
    ``pytorch_model.bin``) load strictly, in place; returns ``model``.
    """
    directory = Path(checkpoint).expanduser()
    file = directory / STATE_NAME
    if not file.is_file():
        raise MissingFileError(f"{file} does not exist; accepted: a checkpoint-N directory that "
                               "OccamTrainerCallback saved (it writes occam_state.pt beside the weights)")
    saved = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise InvalidValueError(f"{file} is not an OccamTrainerCallback state (format {STATE_FORMAT})")
    record = saved["occam"].get("shrink")
    if record is not None:
        reshape_like(model, record)
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        weights = load_file(str(directory / "model.safetensors"), device="cpu")
    elif (directory / "pytorch_model.bin").is_file():
        weights = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise MissingFileError(f"{directory} has neither model.safetensors nor pytorch_model.bin; accepted: a "
                               "checkpoint-N directory that the Trainer saved")
    # Weights the Trainer did not save because they are tied (a language-model head) stay tied.
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
            - {n for n, _ in model.named_parameters()})
    if set(missing) - tied or unexpected:
        raise InvalidValueError(f"the weights in {directory} are not this model's: missing {sorted(set(missing) - tied)[:4]}, "
                                f"unexpected {sorted(unexpected)[:4]}; accepted: a model of the run's architecture")
    return model
