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
"""

from __future__ import annotations

import os
import warnings
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
from ._common import build_occam, check_arguments

#: File the callback writes into each ``checkpoint-N`` directory of the Trainer.
STATE_NAME = "occam_state.pt"
STATE_FORMAT = 1


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
    ):
        check_arguments("metric", metric, "the name of an evaluation loss such as 'eval_loss'",
                        criterion, schedule, zero_state)
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
        inner = _torch_optimizer(optimizer)
        if self.occam is not None and self.occam.model is model:
            self.occam.attach(inner)
        else:
            self.occam = self._build(args, model, inner)
            self._pending_signal = None
        if state.global_step > 0 and self.resume_from is not False:
            self._load(self._resume_file(args, state), state.global_step)
        self._training = True

    def _build(self, args: TrainingArguments, model: nn.Module, optimizer: torch.optim.Optimizer) -> Occam:
        include, exclude = self.include, self.exclude
        if include is None and exclude is None:
            include, exclude = transformer_weights(model)
        return build_occam(model, optimizer, args.world_size, criterion=self.criterion, schedule=self.schedule,
                           include=include, exclude=exclude, zero_state=self.zero_state,
                           snapshot_device=self.snapshot_device)

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
