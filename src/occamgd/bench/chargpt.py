"""``char-gpt``: Occam on a character-level GPT trained on Tiny Shakespeare, step by step.

One long run has no epochs, so an "epoch" here is ``interval`` optimizer steps: every
``interval`` steps the validation loss is estimated on a fixed set of batches (the same ones at
every evaluation and for every method), the best state so far is kept by that loss, and then
``occam.step(val_loss)`` prunes. The training loop is in plain sight below (``train_run``); every
method of a seed starts from the same weights, sees the same batches and follows the same
learning-rate schedule (AdamW, linear warm-up, cosine decay to 10 %).

Each run writes ``<out>/char-gpt[-quick]/<dataset>/<method>/seed<k>.json`` atomically when it
finishes; a run whose file exists is not redone, so an interrupted bench resumes. The report
(``results.md`` and ``curves.png`` beside the dataset directories) is rebuilt from those files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._timing import synchronize
from ..data.text import TINYSHAKESPEARE_SHA256, CharCorpus, find_tinyshakespeare, get_batch, load_text
from ..io import atomic_write_text
from ..models.gpt import GPT, GPTConfig, prunable
from ..occam import Occam
from ..schedules import GMP, Guarded, OccamRate, Schedule
from ..reporting import markdown_table, mean_std, plot_curves

TASK = "char-gpt"
#: Seed of the generator that draws the fixed validation batches (the same for every run).
EVAL_SEED = 1234
#: Prompt and seed of the text sample generated from each method's best state (seed 0 only).
SAMPLE_PROMPT, SAMPLE_SEED = "\n", 0


@dataclass(frozen=True)
class CharGPTConfig:
    """Model, batches, schedule and method settings of one char-gpt configuration."""

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
    gmp_density: float = 0.25  # the density gmp reaches, fixed in advance
    gmp_end: float = 0.75  # fraction of the steps after which gmp holds its final density
    corpus_chars: int | None = None  # train on the first N characters only (None: the whole text)
    sample_chars: int = 300

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps", "interval",
                     "eval_batches", "sample_chars"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"CharGPTConfig.{name} must be an integer >= 1, got {value!r}")
        if self.interval > self.steps:
            raise ValueError(f"CharGPTConfig.interval ({self.interval}) exceeds steps ({self.steps}); accepted: "
                             "an interval <= steps, so that at least one evaluation happens")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup < self.steps):
            raise ValueError(f"CharGPTConfig.warmup must be an integer in [0, steps), got {self.warmup!r}")
        if not 0.0 < self.gmp_density <= 1.0 or not 0.0 < self.gmp_end <= 1.0:
            raise ValueError(f"CharGPTConfig.gmp_density and gmp_end must be in (0, 1], got "
                             f"{self.gmp_density!r} and {self.gmp_end!r}")
        if self.corpus_chars is not None and not (isinstance(self.corpus_chars, int) and self.corpus_chars >= 1):
            raise ValueError(f"CharGPTConfig.corpus_chars must be None or an integer >= 1, got {self.corpus_chars!r}")

    @property
    def evaluations(self) -> int:
        """Number of evaluations in a run (one every ``interval`` steps)."""
        return self.steps // self.interval

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


#: The standard Tiny Shakespeare model (6 layers, 6 heads, 384 wide, context 256; ~10.7 M weights)
#: as in ../shared/ANCHORS.md; meant for a GPU (``gpu=True``: bf16 autocast and torch.compile).
STANDARD = CharGPTConfig(name="standard", n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64,
                         steps=3000, interval=250, eval_batches=40, warmup=100)
#: A small model for a CPU (~0.8 M weights, about a minute per run on 2 threads). It trains on the
#: first 20 000 characters only and without dropout, so that within that minute plain gradient
#: descent fits the training text faster than the validation text and its validation loss
#: flattens: the regime where pruning can pay. (On the whole corpus a minute of CPU only reaches
#: loss ~2.1, far from overfitting.)
QUICK = CharGPTConfig(name="quick", n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=32,
                      steps=600, interval=50, eval_batches=16, warmup=30, dropout=0.0, corpus_chars=20_000)


# Methods --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """How one method prunes: ``make(config)`` gives ``(schedule or None, signal)``, where the
    signal is what ``occam.step`` reads: ``"val"`` (validation loss) or ``"train"`` (the mean
    training loss since the last evaluation). ``None`` trains without Occam at all."""

    description: str
    #: ``make(config, previous)``; ``previous`` holds this seed's finished results by method.
    make: Callable[[CharGPTConfig, dict], tuple[Schedule | None, str]]
    needs: tuple[str, ...] = ()
    #: When set, one dense run per AdamW weight decay; the lowest best validation loss is kept.
    weight_decays: tuple[float, ...] | None = None


def _gmp(config: CharGPTConfig, density: float) -> GMP:
    # GMP counts Occam steps (evaluations): reach the density at the evaluation at gmp_end of the steps.
    end = max(0, round(config.gmp_end * config.steps / config.interval) - 1)
    return GMP(density, start=0, end=end)


METHODS: dict[str, Method] = {
    "gd": Method("plain AdamW (weight decay 0.1 on 2-D weights), no pruning (and no Occam hook)",
                 lambda c, p: (None, "val")),
    "gd-wd": Method("the same, AdamW weight decay chosen from (0.01, 0.1, 1.0) by best validation loss (time: "
                    "tokens/s of the chosen run)", lambda c, p: (None, "val"), weight_decays=(0.01, 0.1, 1.0)),
    "gmp": Method("gradual magnitude pruning (cubic) to a density fixed in advance (gmp_density, default 0.25), "
                  "reached at gmp_end (default 75 %) of the steps", lambda c, p: (_gmp(c, c.gmp_density), "val")),
    "gmp-oracle": Method("the same, told occam-guarded's density at its best state",
                         lambda c, p: (_gmp(c, p["occam-guarded"]["best"]["density"]), "val"),
                         needs=("occam-guarded",)),
    "occam": Method("the paper's preset (OccamRate, r0 = 0.4) on the mean training loss of the interval",
                    lambda c, p: (OccamRate(), "train")),
    "occam-val": Method("the paper's rule (OccamRate, r0 = 0.4) on the validation loss",
                        lambda c, p: (OccamRate(), "val")),
    "occam-guarded": Method("the guarded controller (occamgd.Guarded) on the validation loss",
                            lambda c, p: (Guarded(), "val")),
}


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


def train_run(method: str, seed: int, config: CharGPTConfig, corpus: CharCorpus, device: torch.device,
              bf16: bool = False, compile: bool = False, sample: bool = False, progress: bool = False,
              previous: dict | None = None, weight_decay: float | None = None) -> dict:
    """Train one method for one seed; return its record (history, best, throughput, sample)."""
    schedule, signal_source = METHODS[method].make(config, previous or {})
    torch.manual_seed(seed)  # same initial weights and dropout stream for every method of a seed
    model = GPT(config.model_config(corpus.vocab_size)).to(device)
    weight_decay = config.weight_decay if weight_decay is None else weight_decay
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay), lr=config.lr, betas=config.betas,
                                  fused=device.type == "cuda")
    occam = Occam(model, optimizer, schedule=schedule, include=prunable(model)) if schedule is not None else None
    forward = torch.compile(model) if compile else model
    autocast = _autocast(device, bf16)

    train_gen = torch.Generator().manual_seed(seed)
    eval_gen = torch.Generator().manual_seed(EVAL_SEED)
    eval_batches = [get_batch(corpus.val, config.block_size, config.batch_size, eval_gen, device)
                    for _ in range(config.eval_batches)]
    tokens_per_interval = config.interval * config.batch_size * config.block_size

    history, best, best_state = [], None, None
    train_loss_sum = torch.zeros((), device=device)
    bar = tqdm(total=config.steps, desc=f"{TASK} {method} seed{seed}", unit="step", disable=not progress,
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
        optimizer.step()  # Occam's hook re-zeroes the pruned weights here
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
            raise FloatingPointError(f"{TASK} {method} seed {seed}: validation loss {val_loss} at step {step + 1}")
        density = occam.density if occam is not None else 1.0
        record = {"step": step + 1, "val_loss": val_loss, "train_loss": train_loss, "density": density,
                  "rate": 0.0, "lr": lr, "tokens_per_s": tokens_per_interval / train_seconds,
                  "train_seconds": train_seconds, "prune_seconds": 0.0}
        if best is None or val_loss < best["val_loss"]:
            best = {"step": step + 1, "val_loss": val_loss, "train_loss": train_loss, "density": density}
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        # No prune after the last evaluation: no step would train or evaluate that model.
        if occam is not None and step + 1 < config.steps:
            start_prune = time.perf_counter()
            record["rate"] = occam.step(val_loss if signal_source == "val" else train_loss)
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

    speeds = [r["tokens_per_s"] for r in history]
    result = {
        "best": best,
        "final_val_loss": history[-1]["val_loss"],
        # The first interval holds compilation and warm-up: leave it out when there are others.
        "tokens_per_s": statistics.median(speeds[1:] if len(speeds) > 1 else speeds),
        "params": model.num_params(),
        "prunable": sum(p.numel() for p in occam.masks.params.values()) if occam is not None else None,
        "schedule": repr(occam.schedule) if occam is not None else None,
        "weight_decay": weight_decay,
        "signal": signal_source if occam is not None else None,
        "history": history,
    }
    if sample:
        model.load_state_dict(best_state)
        prompt = corpus.encode(SAMPLE_PROMPT)[None].to(device)
        generator = torch.Generator(device).manual_seed(SAMPLE_SEED)
        out = model.generate(prompt, config.sample_chars, generator=generator)
        result["sample"] = corpus.decode(out[0, len(SAMPLE_PROMPT):].cpu())
    return result


# The bench ------------------------------------------------------------------------------------
def _device(gpu: bool) -> torch.device:
    if gpu:
        if not torch.cuda.is_available():
            raise ValueError(f"gpu=True needs a CUDA device, but torch {torch.__version__} sees none; "
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


def _settings(config: CharGPTConfig, device: torch.device, bf16: bool, compile: bool) -> dict:
    """What must match for runs to share one report (the device kind, not the machine)."""
    return {"config": dataclasses.asdict(config), "device": device.type, "bf16": bf16, "compile": compile}


def run_chargpt(seeds: int = 3, quick: bool = False, gpu: bool = False, out: str | Path = "runs",
                methods: list[str] | None = None, progress: bool = True, corpus: str | Path | None = None,
                config: CharGPTConfig | None = None) -> Path:
    """Run (or resume) the char-gpt bench; return the path of its ``results.md``.

    - ``quick``: :data:`QUICK` (about a minute per run on a 2-core CPU); else :data:`STANDARD`
      (~10.7 M weights: hours per run on such a CPU, minutes on a GPU). ``config`` replaces both.
    - ``gpu``: train on CUDA with bf16 autocast and ``torch.compile``; refused without CUDA.
    - ``corpus``: a text file; by default Tiny Shakespeare found by
      :func:`occamgd.data.find_tinyshakespeare` (never downloaded by the bench).
    - Runs already on disk with other settings (model, schedule, device) are refused rather than
      mixed into one report; use another ``out``.
    """
    if not (isinstance(seeds, int) and seeds >= 1):
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    unknown = [m for m in methods or () if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown char-gpt methods {unknown}; accepted: {', '.join(METHODS)}")
    order: list[str] = []
    for name in methods or METHODS:  # what a method needs runs before it
        order += [m for m in (*METHODS[name].needs, name) if m not in order]
    if config is None:
        config = QUICK if quick else STANDARD
    if not isinstance(config, CharGPTConfig):
        raise TypeError(f"config must be a CharGPTConfig, got {type(config).__name__}")
    device = _device(gpu)
    bf16 = device.type == "cuda"
    compile = bf16 and _can_compile()
    # Everything that can fail on the data fails here, before any training.
    path = Path(corpus).expanduser() if corpus is not None else find_tinyshakespeare()
    text = load_text(path, block_size=config.block_size, max_chars=config.corpus_chars)
    dataset = _dataset_name(path)
    root = Path(out) / (TASK + ("" if config.name == "standard" else f"-{config.name}"))
    settings = _settings(config, device, bf16, compile)
    _check_settings(root, dataset, settings)

    bar = tqdm(total=seeds * len(order), desc=f"occamgd bench {TASK}", unit="run", disable=not progress)
    for seed in range(seeds):
        previous: dict[str, dict] = {}
        for method in order:
            file = root / dataset / method / f"seed{seed}.json"
            bar.set_postfix(method=method, seed=seed)
            if file.exists():
                previous[method] = json.loads(file.read_text())
            else:
                run = functools.partial(train_run, method, seed, config, text, device, bf16=bf16, compile=compile,
                                        sample=seed == 0, progress=progress, previous=previous)
                grid = METHODS[method].weight_decays
                if grid:
                    runs = [run(weight_decay=wd) for wd in grid]
                    result = min(runs, key=lambda r: r["best"]["val_loss"])
                    result["grid"] = {str(wd): r["best"]["val_loss"] for wd, r in zip(grid, runs)}
                else:
                    result = run()
                record = {"task": TASK, "dataset": dataset, "method": method, "seed": seed, **settings,
                          "torch": torch.__version__, "device_name": _device_name(device), **result}
                atomic_write_text(json.dumps(record, indent=1), file)
                previous[method] = record
            bar.update()
    bar.close()
    return report(root, order)


def _check_settings(root: Path, dataset: str, settings: dict) -> None:
    for file in sorted((root / dataset).glob("*/seed*.json")):
        saved = json.loads(file.read_text())
        theirs = {k: saved.get(k) for k in settings}
        # JSON turns tuples into lists: compare through the same round trip.
        if theirs != json.loads(json.dumps(settings)):
            raise ValueError(
                f"{file} was made with other settings ({theirs}) than this run ({settings}); accepted: the same "
                f"settings to resume, or another out= directory"
            )


# Report ---------------------------------------------------------------------------------------
def report(root: Path, order: list[str]) -> Path:
    """``results.md`` and ``<dataset>-curves.png`` from the JSON files under ``root``."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for file in sorted(root.glob("*/*/seed*.json")):
        result = json.loads(file.read_text())
        runs.setdefault(result["dataset"], {}).setdefault(result["method"], []).append(result)
    colors = {name: f"C{i}" for i, name in enumerate(order)}
    header = ["method", "best val loss", "density at best", "step of best", "final val loss", "tokens/s",
              "throughput vs gd", "seeds"]
    sections = []
    for dataset, by_method in runs.items():
        names = [m for m in order if m in by_method] + sorted(set(by_method) - set(order))
        gd_speed = statistics.mean(r["tokens_per_s"] for r in by_method["gd"]) if "gd" in by_method else None
        rows = []
        for name in names:
            rs = by_method[name]
            speed = statistics.mean(r["tokens_per_s"] for r in rs)
            rows.append([name, mean_std([r["best"]["val_loss"] for r in rs]),
                         mean_std([r["best"]["density"] for r in rs]), mean_std([r["best"]["step"] for r in rs], 0),
                         mean_std([r["final_val_loss"] for r in rs]), mean_std([r["tokens_per_s"] for r in rs], 0),
                         f"{speed / gd_speed:.2f}" if gd_speed else "–", str(len(rs))])
        first = by_method[names[0]][0]
        png = root / f"{dataset}-curves.png"
        plot_curves({m: [r["history"] for r in by_method[m]] for m in names},
                    [("val_loss", "validation loss", False), ("density", "density (kept fraction)", True),
                     ("rate", "rate", False)], png,
                    title=f"{dataset}: x = evaluation (every {first['config']['interval']} steps)", colors=colors)
        samples = "\n".join(f"**{m}** (seed 0, best state):\n\n```text\n{r['sample']}\n```\n"
                            for m in names for r in by_method[m] if r["seed"] == 0 and "sample" in r)
        config = first["config"]
        setup = (f"{config['n_layer']} layers, {config['n_head']} heads, {config['n_embd']} wide, context "
                 f"{config['block_size']}, batch {config['batch_size']}, {config['steps']} steps, evaluation every "
                 f"{config['interval']} steps on {config['eval_batches']} fixed validation batches; device "
                 f"{first['device']} ({first['device_name']}), bf16 {first['bf16']}, compiled {first['compile']}"
                 + (f"; first {config['corpus_chars']} characters of the corpus" if config["corpus_chars"] else ""))
        sections.append(f"### {dataset}\n\n{setup}.\n\n{markdown_table(header, rows)}\n\n![curves]({png.name})\n\n"
                        f"Samples ({config['sample_chars']} characters after the prompt {SAMPLE_PROMPT!r}, "
                        f"generator seed {SAMPLE_SEED}):\n\n{samples}")
    legend = "\n".join(f"- `{m}`: {METHODS[m].description}" for m in order if m in METHODS)
    text = (f"# {root.name}\n\nMean ± std over seeds. Each run keeps its state with the lowest validation loss; "
            "tokens/s is the median over evaluation intervals (first interval left out: warm-up and compilation) "
            "of training steps only, evaluation and pruning excluded.\n\n"
            f"{legend}\n\n" + "\n".join(sections))
    return atomic_write_text(text, root / "results.md")
