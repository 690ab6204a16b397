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


# Structured pruning and shrinking --------------------------------------------------------------
def _still_model() -> GPT2LMHeadModel:
    """The tiny GPT-2 without dropout: removing heads changes the shapes dropout draws its masks for."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def _still_trainer(tmp_path, callbacks, max_steps=12, **overrides) -> Trainer:
    trainer = _trainer(tmp_path, callbacks, max_steps=max_steps, **overrides)
    return _with_model(trainer, _still_model(), tmp_path, callbacks, max_steps, overrides)


def _with_model(trainer, model, tmp_path, callbacks, max_steps, overrides) -> Trainer:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, learning_rate=5e-3, eval_strategy="steps", eval_steps=3,
                    save_strategy="no", logging_steps=3, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    settings.update(overrides)
    return Trainer(model=model, args=TrainingArguments(**settings), train_dataset=_data(96, 0),
                   eval_dataset=_data(32, 1), callbacks=callbacks)


def _losses(trainer) -> list[tuple[str, int, float]]:
    return [(k, e["step"], e[k]) for e in trainer.state.log_history for k in ("loss", "eval_loss") if k in e]


class _Sizes(TrainerCallback):
    """The model's parameter count at each step, and whether the Trainer's optimizer still holds its parameters."""

    def __init__(self):
        self.sizes, self.held = [], True

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.sizes.append(sum(p.numel() for p in model.parameters()))
        inner = optimizer.optimizer
        params = {id(p) for g in inner.param_groups for p in g["params"]}
        self.held &= all(id(p) in params for p in model.parameters())
        self.held &= all(v.dim() == 0 or v.shape == p.shape for p in model.parameters() for v in inner.state[p].values())


def test_shrinking_matches_a_masked_structured_run_and_trains_a_smaller_model(tmp_path):
    runs = {}
    for shrink in (False, True):
        callback, sizes = OccamTrainerCallback(schedule=ConstantRate(0.3), structured=True, shrink=shrink), _Sizes()
        trainer = _still_trainer(tmp_path / str(shrink), [callback, sizes], max_grad_norm=1.0)  # clipping on
        params = list(trainer.model.parameters())
        trainer.train()
        runs[shrink] = (trainer, callback, sizes, params)
    (masked, masked_cb, masked_sizes, _), (shrunk, shrunk_cb, shrunk_sizes, params) = runs[False], runs[True]
    # Evaluations at 3, 6, 9 prune before the next step: the shrunk model is smaller from step 4 on.
    assert len(shrunk_cb.occam.history) == 3 and shrunk_cb.occam.density < 0.5
    assert masked_sizes.sizes[0] == masked_sizes.sizes[-1] == shrunk_sizes.sizes[0]
    assert shrunk_sizes.sizes[3] < shrunk_sizes.sizes[2] and shrunk_sizes.sizes[-1] < 0.7 * shrunk_sizes.sizes[0]
    assert shrunk.model.transformer.h[0].attn.num_heads < 2 or shrunk.model.transformer.h[0].mlp.c_fc.nf < 64
    # The Trainer's optimizer, LR scheduler and gradient clipping go on with the same Parameter objects.
    assert all(a is b for a, b in zip(shrunk.model.parameters(), params))
    assert shrunk_sizes.held
    assert shrunk_cb.occam.density == pytest.approx(masked_cb.occam.density)
    got, expected = _losses(shrunk), _losses(masked)
    assert [k[:2] for k in got] == [k[:2] for k in expected] and len(got) == 8
    assert all(torch.isfinite(torch.tensor(v)) for *_, v in got)
    assert [v for *_, v in got] == pytest.approx([v for *_, v in expected], rel=1e-5, abs=1e-6)
    assert _leaks(shrunk_cb.occam) == 0


def test_a_shrunk_run_resumes_from_its_checkpoint_like_an_uninterrupted_run(tmp_path):
    save = dict(save_strategy="steps", save_steps=6)
    full = OccamTrainerCallback(schedule=ConstantRate(0.3), shrink=True)
    whole = _still_trainer(tmp_path / "full", [full], **save)
    whole.train()

    first = OccamTrainerCallback(schedule=ConstantRate(0.3), shrink=True)
    _still_trainer(tmp_path / "cut", [first], **save).train()
    checkpoint = tmp_path / "cut" / "out" / "checkpoint-6"
    saved = torch.load(checkpoint / STATE_NAME, weights_only=True)
    assert saved["occam"]["shrink"] is not None and len(saved["occam"]["history"]) == 1  # shrunk at step 4

    resumed = OccamTrainerCallback(schedule=ConstantRate(0.3), shrink=True)
    trainer = _still_trainer(tmp_path / "cut", [resumed], **save)  # a fresh, dense model
    dense = sum(p.numel() for p in trainer.model.parameters())
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert sum(p.numel() for p in trainer.model.parameters()) < dense
    assert [r["signal"] for r in resumed.occam.history] == pytest.approx([r["signal"] for r in full.occam.history])
    after = [e for e in _losses(whole) if e[1] > 6]
    got = [e for e in _losses(trainer) if e[1] > 6]
    assert [e[:2] for e in got] == [e[:2] for e in after] and len(got) == 4
    assert [e[2] for e in got] == pytest.approx([e[2] for e in after], rel=1e-5, abs=1e-6)
    final, expected = trainer.model.state_dict(), whole.model.state_dict()
    assert all(final[k].shape == v.shape and torch.allclose(final[k], v, rtol=1e-5, atol=1e-6)
               for k, v in expected.items())


def test_load_best_model_at_end_regrows_the_model_to_the_best_checkpoints_shapes(tmp_path):
    # "Best" = highest loss picks checkpoint-3, saved before any prune: the dense model comes back.
    callback = OccamTrainerCallback(schedule=ConstantRate(0.3), shrink=True)
    trainer = _still_trainer(tmp_path, [callback], save_strategy="steps", save_steps=3, load_best_model_at_end=True,
                             metric_for_best_model="eval_loss", greater_is_better=True)
    dense = {k: v.shape for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-3")
    assert {k: v.shape for k, v in trainer.model.state_dict().items()} == dense
    # The best checkpoint's Occam state came back with it: no prune yet, step 3's signal waiting.
    assert callback.occam.density == 1.0 and callback.occam.history == [] and callback._pending_signal is not None
    from safetensors.torch import load_file

    best = load_file(f"{trainer.state.best_model_checkpoint}/model.safetensors")
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in best.items())
    metrics = trainer.evaluate()  # the regrown model runs
    assert metrics["eval_loss"] == pytest.approx(trainer.state.log_history[1]["eval_loss"], rel=1e-5)


def test_load_shrunk_loads_a_shrunk_checkpoint_into_a_fresh_model(tmp_path):
    from occamgd.integrations.huggingface import load_shrunk

    callback = OccamTrainerCallback(schedule=ConstantRate(0.3), shrink=True)
    trainer = _still_trainer(tmp_path, [callback], save_strategy="steps", save_steps=12)
    trainer.train()
    fresh = load_shrunk(_still_model(), tmp_path / "out" / "checkpoint-12")
    x = torch.stack([r["input_ids"] for r in _data(4, 5)])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x).logits, trainer.model(x).logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="occam_state.pt"):
        load_shrunk(_still_model(), tmp_path)


def test_weights_of_shapes_no_occam_state_records_are_refused(tmp_path):
    callback = OccamTrainerCallback(schedule=ConstantRate(0.3), shrink=True)
    trainer = _still_trainer(tmp_path, [callback], max_steps=6)
    other = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2,
                                       n_inner=24))
    with pytest.raises(ValueError, match=r"other shapes.*records those shapes.*resume_from"):
        trainer.model.load_state_dict(other.state_dict())


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"shrink": True, "structured": False}, "shrink=True removes whole groups"),
    ({"structured": True, "include": ["x"]}, "chooses the prunable tensors"),
    ({"structured": True, "criterion": "nm"}, "scores whole groups.*'layerwise'.*'global'"),
    ({"example_input": {"input_ids": torch.zeros(1, 3)}}, "only read by structured"),
    ({"shrink": "yes"}, "shrink must be True or False"),
])
def test_bad_structured_settings_are_refused_at_construction(kwargs, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        OccamTrainerCallback(**kwargs)


def test_shrinking_a_model_the_trainer_compiles_is_refused_when_the_trainer_is_made(tmp_path):
    with pytest.raises(ValueError, match=r"torch_compile=True.*accepted: torch_compile=False"):
        _still_trainer(tmp_path, [OccamTrainerCallback(shrink=True)], torch_compile=True)
    # Added later, the callback refuses at train(), before any step: the model is untouched.
    trainer = _still_trainer(tmp_path, [], torch_compile=True)
    trainer.add_callback(OccamTrainerCallback(shrink=True))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match="torch_compile=True"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_shrinking_on_more_than_one_process_is_refused(tmp_path, monkeypatch):
    trainer = _still_trainer(tmp_path, [])
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    callback = OccamTrainerCallback(shrink=True)
    with pytest.raises(ValueError, match=r"world_size=2.*DDP's gradient reducer.*accepted: one process"):
        callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=trainer.model,
                                optimizer=torch.optim.SGD(trainer.model.parameters(), lr=0.1))
    assert callback.occam is None


def test_shrinking_with_an_optimizer_of_unknown_state_is_refused(tmp_path):
    class Mine(torch.optim.SGD):
        pass

    model = _still_model()
    trainer = _with_model(None, model, tmp_path, [OccamTrainerCallback(shrink=True)], 6, {})
    trainer.optimizer = Mine(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"Mine.*accepted: torch.optim.SGD"):
        trainer.train()


def test_a_training_set_without_rows_to_trace_needs_an_example_input(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(_data(96, 0))

    callback = OccamTrainerCallback(structured=True)
    trainer = _still_trainer(tmp_path, [callback], max_steps=6)
    trainer.train_dataset = Stream()
    with pytest.raises(ValueError, match="example_input="):
        trainer.train()
    x = torch.stack([r["input_ids"] for r in _data(2, 7)])
    callback = OccamTrainerCallback(structured=True, example_input={"input_ids": x}, schedule=ConstantRate(0.3))
    trainer = _still_trainer(tmp_path, [callback], max_steps=6)
    trainer.train_dataset = Stream()
    trainer.train()
    assert callback.occam.density < 1.0


# The run's budget ----------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "budget"), [
    ({}, 3),                                               # evaluations at 3, 6, 9, 12
    ({"eval_steps": 5}, 2),                                # 5, 10, and the one the Trainer adds at 12
    ({"eval_steps": 0.25}, 3),                             # a fraction of max_steps: every 3
    ({"eval_delay": 4}, 2),                                # 6, 9, 12
    ({"max_steps": 3}, None),                              # one evaluation, at the end: no prune
    ({"max_steps": -1, "num_train_epochs": 3, "eval_strategy": "epoch"}, 2),   # 12 steps an epoch
    ({"max_steps": 30, "eval_strategy": "epoch"}, 2),      # epochs end at 12, 24, and 30 (cut short)
    ({"max_steps": -1, "num_train_epochs": 3, "eval_strategy": "epoch", "eval_delay": 2}, 1),
    ({"max_steps": 18, "gradient_accumulation_steps": 2, "eval_strategy": "epoch"}, 2),  # 6 an epoch
])
def test_the_occam_gets_the_runs_budget_and_steps_that_many_times(tmp_path, settings, budget):
    callback = OccamTrainerCallback(schedule=ConstantRate(0.1))
    settings = {"max_steps": 12, **settings}
    trainer = _trainer(tmp_path, [callback], **settings)
    trainer.train()
    assert callback.occam.budget == budget
    assert len(callback.occam.history) == (budget or 0)
