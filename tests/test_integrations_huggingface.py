"""integrations.huggingface: OccamTrainerCallback inside a real transformers.Trainer (tiny GPT-2, CPU).

Protects: pruning at evaluations only, pruned weights staying zero through accelerate's optimizer
wrapper, density in the logs, the state written into each checkpoint and restored on resume
(bit for bit the masks of an uninterrupted run), best-model masks, and the refusals.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import occamgd  # noqa: E402
from occamgd.integrations.huggingface import STATE_NAME, OccamTrainerCallback  # noqa: E402
from occamgd.schedules import ConstantRate  # noqa: E402

VOCAB, LENGTH = 12, 12


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()


def _data(n: int, seed: int) -> list[dict]:
    """Cyclic sequences (next token = this token + 1 mod VOCAB): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    rows = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(LENGTH)) % VOCAB
    return [{"input_ids": r, "labels": r} for r in rows]


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def _trainer(tmp_path, callbacks, max_steps=12, **overrides) -> Trainer:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, learning_rate=5e-3, eval_strategy="steps", eval_steps=3,
                    save_strategy="no", logging_steps=3, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    settings.update(overrides)
    return Trainer(model=_model(), args=TrainingArguments(**settings), train_dataset=_data(96, 0),
                   eval_dataset=_data(32, 1), callbacks=callbacks)


def _leaks(occam) -> int:
    """Pruned entries that are not zero."""
    return sum(int((p[~occam.masks[name]] != 0).sum()) for name, p in occam.masks.params.items())


class _StepCounter(TrainerCallback):
    """Counts real optimizer updates on the torch optimizer inside accelerate's wrapper."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.updates = 0
        optimizer.optimizer.register_step_post_hook(lambda *a: setattr(self, "updates", self.updates + 1))


def test_prunes_at_each_evaluation_and_keeps_pruned_weights_zero(tmp_path):
    callback, counter = OccamTrainerCallback(schedule="paper"), _StepCounter()
    trainer = _trainer(tmp_path, [callback, counter], gradient_accumulation_steps=2)
    trainer.train()
    occam = callback.occam
    # Evaluations at steps 3, 6, 9, 12; each but the last is followed by a prune (r0 = 0.4 twice first).
    assert [r["epoch"] for r in occam.history] == [0, 1, 2]
    assert occam.density < 0.6 ** 2 + 1e-6
    assert _leaks(occam) == 0
    assert counter.updates == 12  # the hook fires once per real update, after accumulation
    # Default selection: GPT-2's Conv1D projections, not the embeddings or the tied head.
    assert all(".attn." in n or ".mlp." in n for n in occam.masks) and len(occam.masks) == 8
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [3, 6, 9, 12]
    densities = [e["occam_density"] for e in evals]
    assert densities[0] == 1.0 and densities == sorted(densities, reverse=True) and densities[-1] < 0.5


def test_evaluation_after_training_does_not_prune(tmp_path):
    callback = OccamTrainerCallback(schedule="paper")
    trainer = _trainer(tmp_path, [callback], max_steps=6)
    trainer.train()
    masks = {n: m.clone() for n, m in callback.occam.masks.items()}
    trainer.evaluate()
    trainer.evaluate()
    assert len(callback.occam.history) == 1
    assert all(torch.equal(masks[n], m) for n, m in callback.occam.masks.items())


def test_eval_on_start_is_not_a_signal(tmp_path):
    callback = OccamTrainerCallback(schedule=ConstantRate(0.5))
    _trainer(tmp_path, [callback], max_steps=6, eval_on_start=True).train()
    assert len(callback.occam.history) == 1  # the step-3 evaluation only; step 6 is the last


class _MaskProbe(TrainerCallback):
    """Records the callback's masks right after it restored them (runs after it in on_train_begin)."""

    def __init__(self, occam_callback):
        self.occam_callback = occam_callback

    def on_train_begin(self, args, state, control, **kwargs):
        self.masks = {n: m.clone() for n, m in self.occam_callback.occam.masks.items()}


def test_checkpoints_hold_the_state_and_resume_repeats_an_uninterrupted_run(tmp_path):
    save = dict(save_strategy="steps", save_steps=6)
    full = OccamTrainerCallback(schedule="paper")
    _trainer(tmp_path / "full", [full], **save).train()

    first = OccamTrainerCallback(schedule="paper")
    _trainer(tmp_path / "cut", [first], max_steps=12, **save).train()
    checkpoint = tmp_path / "cut" / "out" / "checkpoint-6"
    saved = torch.load(checkpoint / STATE_NAME, weights_only=True)
    assert saved["global_step"] == 6 and saved["pending_signal"] is not None  # step 6's evaluation waits
    assert (tmp_path / "cut" / "out" / "checkpoint-12" / STATE_NAME).is_file()

    resumed = OccamTrainerCallback(schedule="paper")
    probe = _MaskProbe(resumed)
    trainer = _trainer(tmp_path / "cut", [resumed, probe], **save)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert all(torch.equal(probe.masks[n], saved["occam"]["masks"][n]) for n in saved["occam"]["masks"])
    assert any(not bool(m.all()) for m in probe.masks.values())
    assert [r["signal"] for r in resumed.occam.history] == [r["signal"] for r in full.occam.history]
    assert all(torch.equal(full.occam.masks[n], m) for n, m in resumed.occam.masks.items())
    assert _leaks(resumed.occam) == 0


def test_resume_without_occam_state_is_refused_unless_asked_to_start_afresh(tmp_path):
    _trainer(tmp_path, [], max_steps=6, save_strategy="steps", save_steps=6).train()
    checkpoint = tmp_path / "out" / "checkpoint-6"
    with pytest.raises(FileNotFoundError, match="resume_from=False"):
        _trainer(tmp_path, [OccamTrainerCallback(schedule="paper")], max_steps=12).train(resume_from_checkpoint=str(checkpoint))
    fresh = OccamTrainerCallback(resume_from=False)
    _trainer(tmp_path, [fresh], max_steps=12).train(resume_from_checkpoint=str(checkpoint))
    # Evaluations at 9 (pruned after) and 12 (the last: nothing after it to prune for).
    assert len(fresh.occam.history) == 1


def test_load_best_model_at_end_brings_back_the_best_checkpoints_masks(tmp_path):
    # The loss falls at every evaluation here, so "best" = highest loss picks the first checkpoint:
    # its masks differ from the last step's, which the callback would otherwise keep.
    callback = OccamTrainerCallback(schedule=ConstantRate(0.5))
    trainer = _trainer(tmp_path, [callback], save_strategy="steps", save_steps=3, load_best_model_at_end=True,
                       metric_for_best_model="eval_loss", greater_is_better=True)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best.endswith("checkpoint-3") and callback.occam.density == 1.0
    saved = torch.load(f"{best}/{STATE_NAME}", weights_only=True)
    assert all(torch.equal(saved["occam"]["masks"][n], m) for n, m in callback.occam.masks.items())
    assert _leaks(callback.occam) == 0  # the loaded weights are zero exactly where these masks prune


def test_several_evaluation_datasets_read_the_named_one(tmp_path):
    callback = OccamTrainerCallback(metric="eval_b_loss")
    trainer = _trainer(tmp_path, [callback], max_steps=6)
    trainer.eval_dataset = {"a": _data(16, 2), "b": _data(16, 3)}
    trainer.train()
    b_losses = [e["eval_b_loss"] for e in trainer.state.log_history if "eval_b_loss" in e]
    assert [r["signal"] for r in callback.occam.history] == pytest.approx(b_losses[:1])


def test_a_metric_no_evaluation_reports_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'eval_perplexity'.*eval_loss"):
        _trainer(tmp_path, [OccamTrainerCallback(metric="eval_perplexity")], max_steps=6).train()


def test_training_without_evaluations_is_refused(tmp_path):
    with pytest.raises(ValueError, match="eval_strategy"):
        _trainer(tmp_path, [OccamTrainerCallback(schedule="paper")], max_steps=3, eval_strategy="no").train()


@pytest.mark.parametrize(("kwargs", "needle"), [({"metric": ""}, "metric"), ({"zero_state": "never"}, "zero_state"),
                                                ({"resume_from": True}, "resume_from"),
                                                ({"schedule": "fast"}, "fast"), ({"criterion": "random"}, "random")])
def test_bad_arguments_are_refused_at_construction(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        OccamTrainerCallback(**kwargs)


def test_an_optimizer_that_is_not_torch_is_refused():
    args = TrainingArguments(output_dir="unused", eval_strategy="steps", eval_steps=1, report_to=[], use_cpu=True)
    state = transformers.TrainerState()
    with pytest.raises(TypeError, match="torch.optim optimizer"):
        OccamTrainerCallback(schedule="paper").on_train_begin(args, state, transformers.TrainerControl(), model=_model(),
                                              optimizer=object())


def test_a_run_that_ends_without_pruning_says_so_and_why(tmp_path):
    # A controller still waiting for the gains to slow when the run ends: a warning and a log entry.
    callback = OccamTrainerCallback(schedule=occamgd.Guarded(warmup=100))
    trainer = _trainer(tmp_path, [callback])
    with pytest.warns(occamgd.errors.NotPrunedWarning, match="still in its warm-up phase"):
        trainer.train()
    assert callback.occam.density == 1.0
    assert "warm-up" in trainer.state.log_history[-1]["occam_warning"]
