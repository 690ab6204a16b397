"""``char-gpt``: Occam on a character-level GPT trained on Tiny Shakespeare, step by step.

One long run has no epochs, so an "epoch" here is ``interval`` optimizer steps: every
``interval`` steps the validation loss is estimated on a fixed set of batches (the same ones at
every evaluation and for every method), the best state so far is kept by that loss, and then
``occam.step(val_loss)`` prunes. The training loop is in plain sight below (:func:`train_run`);
every method of a seed starts from the same weights, sees the same batches and follows the same
learning-rate schedule (AdamW, linear warm-up, cosine decay to 10 %).

The task is registered in the one experiment layer (:mod:`occamgd.bench`): its methods, runner,
records and report are those of every task. Options: ``corpus`` (a text file; Tiny Shakespeare
by default), ``data_root``, ``gpu`` (CUDA with bf16 autocast and ``torch.compile``) and
``config`` (a :class:`CharGPTConfig` in place of :data:`QUICK` / :data:`STANDARD`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import math
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import InvalidTypeError, InvalidValueError
from .._timing import synchronize
from ..data.text import TINYSHAKESPEARE_SHA256, CharCorpus, find_tinyshakespeare, get_batch, load_text
from ..models.gpt import GPT, GPTConfig, prunable
from ..occam import Occam
from .measure import macs_per_sample, parameter_counts, throughput_fields, training_flops
from ..rigl import RigL, update_interval
from .registry import BenchData, Context, Task, TrainSpec, register_task

TASK = "char-gpt"
#: Seed of the generator that draws the fixed validation batches (the same for every run).
EVAL_SEED = 1234
#: Prompt and seed of the text sample generated from each method's best state (seed 0 only).
SAMPLE_PROMPT, SAMPLE_SEED = "\n", 0


@dataclass(frozen=True)
class CharGPTConfig:
    """Model, batches and learning-rate schedule of one char-gpt configuration (``steps`` is the budget)."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    steps: int
    interval: int  # optimizer steps per evaluation (and per Occam step)
    eval_batches: int
    warmup: int  # steps of linear learning-rate warm-up
    dropout: float = 0.2
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # on 2-D weights only
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    corpus_chars: int | None = None  # train on the first N characters only (None: the whole text)
    sample_chars: int = 300

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps", "interval",
                     "eval_batches", "sample_chars"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise InvalidValueError(f"CharGPTConfig.{name} must be an integer >= 1, got {value!r}")
        if self.interval > self.steps:
            raise InvalidValueError(f"CharGPTConfig.interval ({self.interval}) exceeds steps ({self.steps}); accepted: "
                             "an interval <= steps, so that at least one evaluation happens")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup < self.steps):
            raise InvalidValueError(f"CharGPTConfig.warmup must be an integer in [0, steps), got {self.warmup!r}")
        if self.corpus_chars is not None and not (isinstance(self.corpus_chars, int) and self.corpus_chars >= 1):
            raise InvalidValueError(f"CharGPTConfig.corpus_chars must be None or an integer >= 1, got {self.corpus_chars!r}")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to the floor."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - 1 - self.warmup)
        floor = self.lr * self.min_lr_ratio
        return floor + 0.5 * (self.lr - floor) * (1.0 + math.cos(math.pi * progress))


#: The standard Tiny Shakespeare model (6 layers, 6 heads, 384 wide, context 256; ~10.7 M weights),
#: nanoGPT's character-level configuration; meant for a GPU (``gpu=True``: bf16 autocast and torch.compile).
STANDARD = CharGPTConfig(name="standard", n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64,
                         steps=3000, interval=250, eval_batches=40, warmup=100)
#: A small model for a CPU (~0.8 M weights, about a minute per run on 2 threads). It trains on the
#: first 20 000 characters only and without dropout, so that within that minute plain gradient
#: descent fits the training text faster than the validation text and its validation loss
#: flattens: the regime where pruning can pay. (On the whole corpus a minute of CPU only reaches
#: loss ~2.1, far from overfitting.)
QUICK = CharGPTConfig(name="quick", n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=32,
                      steps=600, interval=50, eval_batches=16, warmup=30, dropout=0.0, corpus_chars=20_000)


# Training -------------------------------------------------------------------------------------
@torch.no_grad()
def estimate_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], autocast) -> float:
    """Mean loss over ``batches`` in eval mode; the module's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with autocast():
            losses = [model(x, y)[1].float() for x, y in batches]
    finally:
        model.train(was_training)
    return torch.stack(losses).mean().item()


def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_run(config: CharGPTConfig, corpus: CharCorpus, device: torch.device, spec: TrainSpec, seed: int, *,
              bf16: bool = False, compile: bool = False, sample: bool = False, progress: bool = False,
              label: str = "") -> dict:
    """Train one run; return its record (history, the best evaluation's figures, throughput, sample)."""
    torch.manual_seed(seed)  # same initial weights and dropout stream for every method of a seed
    model = GPT(config.model_config(corpus.vocab_size)).to(device)
    weight_decay = config.weight_decay if spec.weight_decay is None else spec.weight_decay
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay), lr=config.lr, betas=config.betas,
                                  fused=device.type == "cuda")
    schedule = spec.schedule
    # The run's budget: the evaluations a prune follows (none after the last one).
    budget = max(1, (config.steps - 1) // config.interval)
    if schedule is None:
        occam = None
    elif spec.structured:
        from ..compaction import structured_pruning

        scope = spec.structured if isinstance(spec.structured, str) else "layer"
        occam = Occam(model, optimizer, schedule=schedule, shrink=spec.shrink, budget=budget,
                      **structured_pruning(model, scope=scope))
    else:
        occam = Occam(model, optimizer, schedule=schedule, include=prunable(model), budget=budget,
                      criterion=spec.criterion)
    # A compiled graph is built for the shapes it saw: a shrinking run trains eager.
    compile = compile and not spec.shrink
    # Dynamic sparse training (the rigl method): sparse from the first step, its masks kept after every step.
    rigl = None if spec.rigl is None else RigL(
        model, optimizer, total_steps=config.steps, include=prunable(model), seed=seed,
        update_every=update_interval(config.steps, spec.rigl.get("end", 0.75)), **spec.rigl)
    masks = occam.masks if occam is not None else rigl.masks if rigl is not None else None
    forward = torch.compile(model) if compile else model
    autocast = _autocast(device, bf16)

    train_gen = torch.Generator().manual_seed(seed)
    eval_gen = torch.Generator().manual_seed(EVAL_SEED)
    eval_batches = [get_batch(corpus.val, config.block_size, config.batch_size, eval_gen, device)
                    for _ in range(config.eval_batches)]
    tokens_per_interval = config.interval * config.batch_size * config.block_size

    history, best, best_state, best_occam, best_masks = [], None, None, None, {}
    train_loss_sum = torch.zeros((), device=device)
    bar = tqdm(total=config.steps, desc=f"{TASK} {label} seed{seed}", unit="step", disable=not progress,
               leave=False)
    synchronize(device)
    started = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(corpus.train, config.block_size, config.batch_size, train_gen, device)
        with autocast():
            _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()  # Occam's (or RigL's) hook re-zeroes the pruned weights here
        train_loss_sum += loss.detach().float()
        bar.update()
        if (step + 1) % config.interval:
            continue

        # Evaluation: the training clock stops here and restarts after the prune.
        synchronize(device)
        train_seconds = time.perf_counter() - started
        val_loss = estimate_loss(forward, eval_batches, autocast)
        train_loss = train_loss_sum.item() / config.interval
        train_loss_sum.zero_()
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"{TASK} {label} seed {seed}: validation loss {val_loss} at step {step + 1}")
        density = masks.density if masks is not None else 1.0
        record = {"epoch": len(history), "step": step + 1, "holdback_loss": val_loss, "train_loss": train_loss,
                  "density": density, "rate": 0.0, "lr": lr, "tokens_per_s": tokens_per_interval / train_seconds,
                  "train_seconds": train_seconds, "seconds": train_seconds, "prune_seconds": 0.0,
                  "densities": masks.densities() if masks is not None else {}}
        if occam is not None and occam.shrink:  # the entries each pruned tensor held while this interval trained
            record["live"] = {name: p.numel() for name, p in occam.masks.params.items()}
        if best is None or val_loss < best["holdback_loss"]:
            best = record
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            # Its masks, and with shrinking its shapes (regrown from this state if a prune shrinks the model since).
            best_occam = copy.deepcopy(occam.state_dict()) if occam is not None else None
            best_masks = {n: masks[n].to("cpu", copy=True) for n in masks} if masks is not None else {}
        # No prune after the last evaluation: no step would train or evaluate that model.
        if occam is not None and step + 1 < config.steps:
            start_prune = time.perf_counter()
            record["rate"] = occam.step(val_loss if spec.signal == "holdback" else train_loss)
            record["action"] = occam.history[-1]["action"]
            synchronize(device)
            record["prune_seconds"] = time.perf_counter() - start_prune
        history.append(record)
        bar.set_postfix(val=f"{val_loss:.3f}", density=f"{density:.3f}")
        synchronize(device)
        started = time.perf_counter()
    bar.close()
    if occam is not None:
        occam.detach()
    if rigl is not None:
        rigl.detach()
    # The final model is the selected (best) state with its masks, and its shapes where the model shrank since.
    if best_occam is not None:
        occam.load_state_dict(best_occam)
    model.load_state_dict(best_state)
    dense = GPT(config.model_config(corpus.vocab_size)).to(device)
    macs = macs_per_sample(dense, eval_batches[0][0][:1])
    numel = {name: p.numel() for name, p in dense.named_parameters()}
    measured = {**parameter_counts(model, best_masks), "dense_params": dense.num_params(),
                **training_flops(macs, history, config.interval * config.batch_size, numel),
                **throughput_fields(model, dense, eval_batches[0][0])}

    speeds = [r["tokens_per_s"] for r in history]
    result = {
        "selected_epoch": best["epoch"],
        "selection_loss": best["holdback_loss"],
        "test_loss": None,  # no test split: the validation text selects and is what is reported
        "test_acc": None,
        "density": best["density"],
        "best_step": best["step"],
        "final_loss": history[-1]["holdback_loss"],
        "train_seconds": sum(r["train_seconds"] for r in history),
        # The first interval holds compilation and warm-up: leave it out when there are others.
        "tokens_per_s": statistics.median(speeds[1:] if len(speeds) > 1 else speeds),
        "params": model.num_params(),
        "prunable": sum(p.numel() for p in masks.params.values()) if masks is not None else None,
        "schedule": repr(occam.schedule) if occam is not None else None,
        **({"rigl": repr(rigl), "rigl_updates": len(rigl.history)} if rigl is not None else {}),
        "weight_decay": weight_decay,
        "compiled": compile,
        **measured,
        "history": history,
    }
    if sample:
        prompt = corpus.encode(SAMPLE_PROMPT)[None].to(device)
        generator = torch.Generator(device).manual_seed(SAMPLE_SEED)
        out = model.generate(prompt, config.sample_chars, generator=generator)
        result["sample"] = corpus.decode(out[0, len(SAMPLE_PROMPT):].cpu())
    return result


# The task -------------------------------------------------------------------------------------
def _device(gpu: bool) -> torch.device:
    if gpu:
        if not torch.cuda.is_available():
            raise InvalidValueError(f"gpu=True needs a CUDA device, but torch {torch.__version__} sees none; "
                             "accepted: gpu=False (CPU), or a CUDA build of torch on a machine with a GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _can_compile() -> bool:
    """torch.compile's GPU backend needs Triton; without it the bench runs eager."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _dataset_name(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return "tinyshakespeare" if digest == TINYSHAKESPEARE_SHA256 else path.stem


def _base_config(quick: bool, options: dict) -> CharGPTConfig:
    config = options.get("config")
    if config is None:
        return QUICK if quick else STANDARD
    if not isinstance(config, CharGPTConfig):
        raise InvalidTypeError(f"config must be a CharGPTConfig, got {type(config).__name__}")
    return config


def _config(ctx: Context) -> CharGPTConfig:
    return dataclasses.replace(_base_config(ctx.quick, ctx.options), steps=ctx.budget)


def _hardware(options: dict) -> tuple[torch.device, bool, bool]:
    device = _device(bool(options.get("gpu")))
    bf16 = device.type == "cuda"
    return device, bf16, bf16 and _can_compile()


@functools.lru_cache(maxsize=2)
def _corpus(path: Path, block_size: int, max_chars: int | None) -> CharCorpus:
    return load_text(path, block_size=block_size, max_chars=max_chars)


def _load(seed: int, quick: bool, options: dict) -> list[BenchData]:
    config = _base_config(quick, options)
    _hardware(options)  # a GPU asked for and absent fails here, before any training
    corpus = options.get("corpus")
    path = Path(corpus).expanduser() if corpus is not None else find_tinyshakespeare(root=options.get("data_root"))
    text = _corpus(path, config.block_size, config.corpus_chars)
    return [BenchData(_dataset_name(path), text, None, text.vocab_size)]


def _model(ctx: Context) -> GPT:
    return GPT(_config(ctx).model_config(ctx.data.classes))


def _train(ctx: Context, spec: TrainSpec) -> dict:
    device, bf16, compile = _hardware(ctx.options)
    record = train_run(_config(ctx), ctx.data.train, device, spec, ctx.seed, bf16=bf16, compile=compile,
                       sample=ctx.seed == 0, progress=ctx.progress, label=ctx.data.name)
    return {**record, "device_name": _device_name(device), "torch": torch.__version__}


def _settings(quick: bool, options: dict) -> dict:
    """What shapes a run besides the method: the configuration (its steps are the budget) and the device kind."""
    device, bf16, compile = _hardware(options)
    config = dataclasses.asdict(_base_config(quick, options))
    config.pop("steps")
    return {"config": config, "device": device.type, "bf16": bf16, "compile": compile}


#: Fraction of a run after which gmp holds its final density.
GMP_END = 0.75


def _gmp_end(evaluations: int) -> int:
    # GMP counts controller steps (evaluations): it reaches its density at GMP_END of the run.
    return max(0, round(GMP_END * evaluations) - 1)


register_task(Task(
    TASK, "a character-level GPT on Tiny Shakespeare (or any text), trained step by step; the validation text "
    "selects and is reported (no test split)", _load, _model, _train, _settings,
    evaluations=lambda ctx: ctx.budget // _config(ctx).interval, budget=STANDARD.steps, quick_budget=QUICK.steps,
    unit="steps", methods=("gd", "gd-wd", "gmp", "gmp-grid", "gmp-oracle", "occam", "occam-val", "occam-planned",
                           "occam-guarded", "occam-search", "rigl", "occam-structured", "occam-planned-structured", "gmp-structured"),
    options_accepted=("corpus", "data_root", "gpu", "config"), weight_decays=(0.01, 0.1, 1.0),
    gmp_end=_gmp_end, score=("selection_loss", "best validation loss"),
    budget_from=lambda quick, options: _base_config(quick, options).steps,
    variant=lambda quick, options: "" if options.get("config") is None else f"-{options['config'].name}",
))
