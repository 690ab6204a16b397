#!/usr/bin/env python3
"""The GPU measurement suite: one command that measures every GPU figure the docs lack.

Run from the repository root on a GPU machine, as it comes (no network, no installing: the
suite puts this repository's ``src/`` on the path of everything it starts)::

    python3 benchmarks/gpu_suite.py --out gpu-results     # under 8 minutes (a 470 s budget)
    python3 benchmarks/gpu_suite.py --dry-run --out tmp   # CPU, tiny sizes, seconds: checks it runs

First a preflight (in a subprocess): torch >= 2.3, CUDA available (not needed with ``--dry-run``),
numpy and tqdm importable, occamgd imported from this repository; otherwise it stops at once and
says why (exit status 2). Then each part runs in its own subprocess (its own process group) with
a hard time limit; a part past its limit is killed with everything it started and recorded as
"timed out", with whatever figures and output it had written. The parts, in the order they run
(time limits on a GPU):

c. ``prune_step`` (60 s): ``prune_step.py`` at 10 M and 100 M weights, layerwise and global.
d. ``sparse24`` (45 s): ``sparse24.py`` at 8192^3, 16384x4096x4096 and 4096^3 (fp16).
e. ``compact_gpt`` (45 s): ``compact_latency.py --models gpt --gpt-size standard``: compacted vs
   masked-dense inference latency of the standard GPT at unit densities 0.5, 0.25, 0.1.
b. ``throughput`` (50 s): ``speed_train.py --models gpt --gpt-size standard`` (fp32, eager, plain
   vs Occam's paper preset, alternating runs); the char-GPT part's tokens/s give the bf16 +
   compile figure.
a. ``chargpt`` (all the budget left: the other limits sum to 200 s, so at least 270 s less the
   preflight's few seconds; 250 s when it is not last): the char-GPT standard configuration (6
   layers x 6 heads x 384, context 256, batch 64, bf16, torch.compile where Triton is installed)
   for ``gd`` and the default controller ``occam-guarded``, 3000 steps, seed 0, through
   ``occamgd.bench.chargpt.train_run``; its figures are rewritten after each method, so a timeout
   keeps the methods that finished. It runs last so that the short parts cannot be starved.

The whole run stays under ``--budget`` (470 s): a part gets the smaller of its limit and what is
left (``chargpt``, when last and without ``--part-timeout``, all that is left), and is skipped
when under 5 s is left. Output, under ``--out`` (default ``gpu-results``):
``<part>.json`` per part (``part``, ``title``, ``status``, ``time_limit_s``, ``seconds``,
``returncode``, ``command``, ``log``, ``output_tail``, ``figures``: the part's own JSON or null),
``logs/<part>.log`` (its whole output), ``raw/<part>.json`` (the figures as the part wrote them),
and ``summary.json`` / ``summary.md``, rewritten after every part: the environment, each part's
status and the table of targets (measured value; met / missed / not measured), also printed at
the end. Every JSON file is written atomically. Exit status: 0 when every part ran (or was
skipped because it needs CUDA), 1 when one failed or timed out, 2 when the preflight failed.
Stopped by SIGINT or SIGTERM, the suite kills the running part, records it as "interrupted" with
what it had written, writes the summary and exits.

``--dry-run``: the same code paths on the CPU with tiny sizes (a 1-layer GPT for 20 steps, 1 M
and 2 M weights, a 1024^3 product, which is skipped without CUDA), in seconds; the test suite
runs it (tests/test_gpu_suite.py). Its figures are not measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BENCH = ROOT / "benchmarks"

MIN_TORCH = (2, 3)
#: The whole suite's default time budget, seconds (preflight included): under 8 minutes.
BUDGET_S = 470.0
DRY_BUDGET_S = 300.0
PREFLIGHT_LIMIT_S = 60.0
#: A part is not started with less time than this left in the budget.
MIN_START_S = 5.0
OUTPUT_TAIL_CHARS = 4000

# What is measured on the GPU, and the dry run's stand-ins.
CHARGPT_STEPS = 3000
DRY_CHARGPT_STEPS = 20
CHARGPT_METHODS = ("gd", "occam-guarded")  # plain AdamW and the library's default controller
CHARGPT_SEED = 0
PRUNE_WEIGHTS = ("10", "100")
DRY_PRUNE_WEIGHTS = ("1", "2")
SPARSE_SHAPES = ("8192x8192x8192", "16384x4096x4096", "4096x4096x4096")
DRY_SPARSE_SHAPE = "1024x1024x1024"  # sparse24.py --smoke
COMPACT_DENSITIES = ("0.5", "0.25", "0.1")
COMPACT_BATCHES = ("1", "64")

# Targets.
THROUGHPUT_TOLERANCE = 0.02  # Occam's training throughput within 2 % of plain
PRUNE_TARGET_S = 0.020  # one prune step on 100 M weights
SPARSE_TARGET = 1.2  # 2:4 over dense on the large shape


@dataclass
class Part:
    name: str
    title: str
    limit: float
    command: list[str]
    raw: Path
    elastic: bool = False  # run with all the budget left instead of ``limit``


#: In the order they run: the short ones first, the long char-GPT runs with the time left.
PARTS = ("prune_step", "sparse24", "compact_gpt", "throughput", "chargpt")
TEST_PARTS = ("_sleep",)  # test-only: writes partial figures, starts a child, then outlives any limit
LIMITS = {"chargpt": 250.0, "throughput": 50.0, "prune_step": 60.0, "sparse24": 45.0, "compact_gpt": 45.0,
          "_sleep": 3.0}
DRY_LIMITS = {**{name: 60.0 for name in PARTS}, "_sleep": 3.0}


# Files ----------------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a reader never sees half a file).

    The same as ``occamgd.io.atomic_write_text``, without importing torch: the driver never
    imports torch (so CUDA cannot hang it, and it holds no GPU memory while parts run).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def child_env() -> dict[str, str]:
    """This repository's src/ first on PYTHONPATH, unbuffered output (a killed part keeps its lines)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


# The plan -------------------------------------------------------------------------------------
def plan(names: list[str], args: argparse.Namespace, out: Path) -> list[Part]:
    dry = args.dry_run
    py = sys.executable
    threads = ["--threads", "1"] if dry else []  # dry run: the CPU is shared; GPU parts: the scripts' default
    device = [] if dry else ["--device", "cuda"]
    limits = dict(DRY_LIMITS if dry else LIMITS)
    fixed = set()
    for name, seconds in args.part_timeout:
        for n in (names if name is None else [name]):
            limits[n] = seconds
            fixed.add(n)
    parts = []
    for name in names:
        raw = out / "raw" / f"{name}.json"
        if name in ("chargpt", "_sleep"):
            command = [py, str(Path(__file__).resolve()), "--run-part", name, "--raw", str(raw)]
            command += ["--dry-run"] if dry else []
            title = ("a. char-GPT standard (6x6x384, ctx 256, batch 64, bf16, compile), gd and occam-guarded, "
                     f"{CHARGPT_STEPS} steps, 1 seed") if name == "chargpt" else "test-only: outlives its limit"
            if dry and name == "chargpt":
                title = "a. char-GPT, gd and occam-guarded (dry run: 1 x 2 x 32, 20 steps, CPU)"
        elif name == "throughput":
            title = "b. training throughput, plain vs Occam (speed_train.py, GPT)"
            size = ["--gpt-size", "quick", "--repeats", "1", "--epochs", "1", "--gpt-steps", "1"] if dry else \
                ["--gpt-size", "standard", "--repeats", "3", "--epochs", "2", "--gpt-steps", "20"]
            command = [py, str(BENCH / "speed_train.py"), *device, *threads, "--models", "gpt", *size]
        elif name == "prune_step":
            title = "c. one prune step at 10 M and 100 M weights (prune_step.py)"
            size = ["--weights", *DRY_PRUNE_WEIGHTS, "--criteria", "layerwise", "--repeats", "1", "--steps", "2"] \
                if dry else ["--weights", *PRUNE_WEIGHTS, "--criteria", "layerwise", "global", "--repeats", "5"]
            command = [py, str(BENCH / "prune_step.py"), *device, *threads, *size]
        elif name == "sparse24":
            title = "d. 2:4 semi-structured vs dense matmul (sparse24.py)"
            size = ["--smoke"] if dry else ["--shapes", *SPARSE_SHAPES]
            command = [py, str(BENCH / "sparse24.py"), *threads, *size]
        elif name == "compact_gpt":
            title = "e. GPT inference, compacted vs masked dense (compact_latency.py)"
            size = ["--gpt-size", "quick", "--smoke", "--densities", "0.5"] if dry else \
                ["--gpt-size", "standard", "--densities", *COMPACT_DENSITIES, "--batch-sizes", *COMPACT_BATCHES]
            command = [py, str(BENCH / "compact_latency.py"), *device, *threads, "--models", "gpt", *size]
        else:
            raise ValueError(name)
        if name not in ("chargpt", "_sleep"):
            command += ["--json", str(raw)]
        parts.append(Part(name, title, limits[name], command, raw))
    if parts and parts[-1].name == "chargpt" and "chargpt" not in fixed:
        parts[-1].elastic = True
    return parts


# Running a part -------------------------------------------------------------------------------
def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the part's process group (the part and all it started: compile workers too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def run_process(name: str, command: list[str], limit: float, log: Path) -> tuple[int | None, bool, str, float]:
    """Run ``command`` in its own session with a hard limit; tee its output to ``log`` and stdout.

    Returns ``(returncode, timed_out, output, seconds)``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    chunks: list[str] = []
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as sink:
        sink.write(f"$ {shlex.join(command)}\n")
        sink.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), cwd=ROOT, start_new_session=True)

        def tee() -> None:
            assert proc.stdout is not None
            for raw_line in proc.stdout:
                line = raw_line.decode("utf-8", "replace")
                chunks.append(line)
                sink.write(line)
                sink.flush()
                print(f"  [{name}] {line}", end="", flush=True)

        reader = threading.Thread(target=tee, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also after a normal exit, or when the suite itself is stopped: nothing it started outlives it
            _kill_group(proc)
        reader.join(timeout=10)
        seconds = time.monotonic() - start
        if timed_out:
            note = f"\n[gpu_suite] killed after {limit:.1f} s (time limit)\n"
            sink.write(note)
            chunks.append(note)
    return (None if timed_out else proc.returncode), timed_out, "".join(chunks), seconds


NEEDS_CUDA = re.compile(r"needs CUDA|needs a GPU of compute capability")


def run_part(part: Part, deadline: float, out: Path) -> dict:
    left = deadline - time.monotonic()
    record: dict[str, Any] = {"part": part.name, "title": part.title, "time_limit_s": part.limit,
                              "command": shlex.join(part.command), "log": f"logs/{part.name}.log"}
    if left < MIN_START_S:
        record.update(status="skipped: out of time budget", seconds=0.0, returncode=None, output_tail="",
                      figures=None)
        return record
    limit = left if part.elastic else min(part.limit, left)
    record["time_limit_s"] = round(limit, 1)
    part.raw.unlink(missing_ok=True)  # no figures left over from an earlier run
    print(f"\n== {part.name}: {part.title} (limit {limit:.1f} s)", flush=True)
    rc, timed_out, output, seconds = run_process(part.name, part.command, limit, out / record["log"])
    figures = read_json(part.raw)
    if timed_out:
        status = "timed out"
    elif rc != 0:
        status = f"failed (exit status {rc})"
    elif figures is not None:
        status = "ok"
    elif NEEDS_CUDA.search(output):
        status = "skipped: needs CUDA (compute capability >= 8.0)"
    else:
        status = "failed (no figures written)"
    record.update(status=status, seconds=round(seconds, 2), returncode=rc, output_tail=output[-OUTPUT_TAIL_CHARS:],
                  figures=figures)
    print(f"== {part.name}: {status} in {seconds:.1f} s", flush=True)
    return record


# Preflight ------------------------------------------------------------------------------------
PREFLIGHT = r"""
import json, platform, sys
info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
try:
    import torch
except Exception as e:
    info["torch_error"] = f"{type(e).__name__}: {e}"
else:
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["device_count"] = torch.cuda.device_count()
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["cusparselt"] = bool(torch.backends.cusparselt.is_available())
for name in ("numpy", "tqdm", "triton"):
    try:
        info[name] = getattr(__import__(name), "__version__", "unknown")
    except Exception:
        info[name] = None
try:
    import occamgd
    info["occamgd"] = getattr(occamgd, "__version__", "unknown")
    info["occamgd_file"] = occamgd.__file__
except Exception as e:
    info["occamgd_error"] = f"{type(e).__name__}: {e}"
print("PREFLIGHT " + json.dumps(info))
"""


def preflight(dry_run: bool, out: Path, limit: float) -> tuple[dict, list[str]]:
    """The environment as the parts will see it, and the reasons not to go on (empty: go)."""
    rc, timed_out, output, _ = run_process("preflight", [sys.executable, "-c", PREFLIGHT], limit,
                                           out / "logs" / "preflight.log")
    lines = [line for line in output.splitlines() if line.startswith("PREFLIGHT ")]
    if timed_out or not lines:
        why = f"timed out after {limit:.0f} s" if timed_out else f"exit status {rc}"
        return {}, [f"the preflight check did not finish ({why}); its output: {output[-1000:]!r}"]
    info = json.loads(lines[-1][len("PREFLIGHT "):])
    problems = []
    if "torch_error" in info:
        problems.append(f"cannot import torch with {sys.executable}: {info['torch_error']}")
    else:
        version = tuple(int(v) for v in re.findall(r"\d+", info["torch"])[:2])
        if version < MIN_TORCH:
            problems.append(f"torch {info['torch']} is too old: the suite needs torch >= "
                            f"{'.'.join(map(str, MIN_TORCH))}")
        if not dry_run and not info.get("cuda_available"):
            problems.append(f"CUDA is not available in torch {info['torch']} (built for CUDA "
                            f"{info.get('torch_cuda')}): this suite measures a GPU; run it on a CUDA machine, "
                            "or use --dry-run to check it on CPU")
    for name in ("numpy", "tqdm"):
        if info.get(name) is None:
            problems.append(f"{name} is not importable: occamgd needs it")
    if "occamgd_error" in info:
        problems.append(f"cannot import occamgd from {SRC}: {info['occamgd_error']}")
    elif "occamgd_file" in info and not Path(info["occamgd_file"]).resolve().is_relative_to(SRC):
        problems.append(f"occamgd was imported from {info['occamgd_file']}, not from this repository's {SRC}")
    return info, problems


# Targets --------------------------------------------------------------------------------------
def _runs(records: dict) -> tuple[dict, str | None]:
    rec = records.get("chargpt")
    if rec is None:
        return {}, "not run"
    runs = (rec.get("figures") or {}).get("runs") or {}
    return runs, None if rec["status"] == "ok" else rec["status"]


def _missing(rec: dict | None, why: str = "") -> dict:
    if rec is None:
        return {"value": None, "measured": "–", "verdict": "not measured (part not run)"}
    return {"value": None, "measured": "–", "verdict": f"not measured ({why or rec['status']})"}


def targets(records: dict, dry_run: bool) -> list[dict]:
    rows = []
    runs, note = _runs(records)
    done = [m for m in CHARGPT_METHODS if m in runs and "error" not in runs[m]]
    steps = DRY_CHARGPT_STEPS if dry_run else CHARGPT_STEPS

    # 1. Throughput on the char-GPT (bf16, compile), from part a.
    row = {"target": f"Occam's training throughput within {THROUGHPUT_TOLERANCE:.0%} of plain on the GPT",
           "source": "a. chargpt: tokens/s, occam-guarded / gd (median interval, first left out)"}
    if len(done) == 2:
        gd, occ = runs["gd"]["tokens_per_s"], runs["occam-guarded"]["tokens_per_s"]
        ratio = occ / gd
        row.update(value=ratio, measured=f"{occ:,.0f} vs {gd:,.0f} tokens/s: {ratio:.3f}x",
                   verdict="met" if ratio >= 1 - THROUGHPUT_TOLERANCE else "missed")
    else:
        row.update(_missing(records.get("chargpt"), note or "a method failed"))
    rows.append(row)

    # 1b. The same from part b (alternating runs, fp32 eager, paper preset).
    rec = records.get("throughput")
    row = {"target": f"Occam's training throughput within {THROUGHPUT_TOLERANCE:.0%} of plain on the GPT",
           "source": "b. speed_train.py gpt: s/epoch, occam (paper preset) / plain"}
    gpt = (((rec or {}).get("figures") or {}).get("results") or {}).get("gpt")
    if rec and rec["status"] == "ok" and gpt:
        ratio = gpt["ratio"]
        row.update(value=ratio, measured=f"{ratio:.3f}x time (spread plain {gpt['spread']['plain']:.1%}, "
                                         f"occam {gpt['spread']['occam']:.1%})",
                   verdict="met" if ratio <= 1 + THROUGHPUT_TOLERANCE else "missed")
    else:
        row.update(_missing(rec))
    rows.append(row)

    # 2. One prune step on 100 M weights.
    rec = records.get("prune_step")
    size = f"{DRY_PRUNE_WEIGHTS[-1] if dry_run else PRUNE_WEIGHTS[-1]}M"
    row = {"target": f"one prune step on 100 M weights under {PRUNE_TARGET_S * 1e3:.0f} ms",
           "source": f"c. prune_step.py: layerwise, {size} weights, slowest step's median"}
    steps_rows = ((((rec or {}).get("figures") or {}).get("results") or {}).get(size) or {}).get("layerwise")
    if rec and rec["status"] == "ok" and steps_rows:
        medians = [r["median"] for r in steps_rows]
        worst = max(medians)
        row.update(value=worst, measured="step medians " + " / ".join(f"{m * 1e3:.1f}" for m in medians) + " ms",
                   verdict="met" if worst < PRUNE_TARGET_S else "missed")
    else:
        row.update(_missing(rec))
    rows.append(row)

    # 3. 2:4 on the large shape.
    rec = records.get("sparse24")
    shape = DRY_SPARSE_SHAPE if dry_run else SPARSE_SHAPES[0]
    row = {"target": f"2:4 at least {SPARSE_TARGET}x dense on the large shape",
           "source": f"d. sparse24.py: {shape}, dense / 2:4 median time"}
    hits = [r for r in (((rec or {}).get("figures") or {}).get("results") or []) if r.get("shape") == shape]
    if rec and rec["status"] == "ok" and hits:
        speedup = hits[0]["speedup"]
        others = ", ".join(f"{r['shape']} {r['speedup']:.2f}x" for r in rec["figures"]["results"] if r is not hits[0])
        row.update(value=speedup, measured=f"{speedup:.2f}x" + (f" (others: {others})" if others else ""),
                   verdict="met" if speedup >= SPARSE_TARGET else "missed")
    else:
        row.update(_missing(rec))
    rows.append(row)

    # 4. Best validation loss, default controller vs gd.
    row = {"target": f"default controller's best validation loss vs gd at {steps} steps (1 seed)",
           "source": "a. chargpt: best val loss (lower is better)"}
    if len(done) == 2:
        gd, occ = runs["gd"], runs["occam-guarded"]
        row.update(value=occ["selection_loss"] - gd["selection_loss"],
                   measured=(f"occam-guarded {occ['selection_loss']:.4f} (density {occ['density']:.3f}, step "
                             f"{occ['best_step']}) vs gd {gd['selection_loss']:.4f} (step {gd['best_step']})"),
                   verdict="met" if occ["selection_loss"] < gd["selection_loss"] else "missed")
    else:
        row.update(_missing(records.get("chargpt"), note or "a method failed"))
    rows.append(row)

    # Reference figure, no target: compaction of the GPT.
    rec = records.get("compact_gpt")
    row = {"target": "(no target) GPT inference speed-up, compacted over masked dense",
           "source": "e. compact_latency.py gpt: masked / compacted median latency"}
    results = ((rec or {}).get("figures") or {}).get("results") or []
    if rec and rec["status"] == "ok" and results:
        row.update(value=None, verdict="reference",
                   measured=", ".join(f"units {r['density']} batch {r['batch']}: {r['ratio']['latency']:.2f}x"
                                      for r in results))
    else:
        row.update(_missing(rec))
    rows.append(row)
    return rows


def markdown(summary: dict) -> str:
    lines = []
    if summary["dry_run"]:
        lines += ["**Dry run** (CPU, tiny sizes): these figures only show that the suite runs; they are not "
                  "measurements.", ""]
    env = summary.get("environment") or {}
    lines += [f"Device: {env.get('device', 'cpu')}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); "
              f"suite time {summary['seconds']:.0f} s of a {summary['budget_s']:.0f} s budget.", ""]
    lines += ["| target | source | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['source']} | {r['measured']} | {r['verdict']} |" for r in summary["targets"]]
    lines += ["", "| part | status | seconds | limit s |", "|---|---|---|---|"]
    lines += [f"| {name} | {p['status']} | {p['seconds']:.1f} | {p['time_limit_s']:g} |"
              for name, p in summary["parts"].items()]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict, records: dict, started: float) -> str:
    summary["seconds"] = round(time.monotonic() - started, 2)
    summary["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary["parts"] = {name: {k: r[k] for k in ("status", "seconds", "time_limit_s")} | {"file": f"{name}.json"}
                        for name, r in records.items()}
    summary["targets"] = targets(records, summary["dry_run"])
    table = markdown(summary)
    summary["table"] = table
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(table)  # a copy for reading; summary.json is the record
    return table


# The parts that run inside this script ---------------------------------------------------------
def part_chargpt(raw: Path, dry_run: bool) -> int:
    """Part a: gd and occam-guarded on the standard char-GPT; figures rewritten after each method."""
    import dataclasses

    import torch

    from occamgd.bench import METHODS, TASKS, TrainSpec
    from occamgd.bench.chargpt import QUICK, STANDARD, CharGPTConfig, train_run
    from occamgd.data.text import find_tinyshakespeare, load_text
    from occamgd.io import atomic_write_text

    if dry_run:
        torch.set_num_threads(1)
        config = dataclasses.replace(QUICK, name="dry-run", n_layer=1, n_head=2, n_embd=32, block_size=32,
                                     batch_size=4, steps=DRY_CHARGPT_STEPS, interval=10, eval_batches=2, warmup=2)
        device = torch.device("cpu")
    else:
        config = dataclasses.replace(STANDARD, steps=CHARGPT_STEPS)
        device = torch.device("cuda")
    assert isinstance(config, CharGPTConfig)
    offered = TASKS["char-gpt"].methods
    unknown = [m for m in CHARGPT_METHODS if m not in offered]
    if unknown:
        raise SystemExit(f"chargpt: the bench's char-gpt task has no method {unknown}; it has {list(offered)}")

    def spec(method: str) -> TrainSpec:
        # gd and occam-guarded build their controllers without reading the bench's context.
        return TrainSpec(METHODS[method].schedule(None), METHODS[method].signal)

    bf16 = device.type == "cuda"
    try:
        import triton  # noqa: F401  torch.compile's GPU backend needs it

        compile_ok = bf16
    except ImportError:
        compile_ok = False
    path = find_tinyshakespeare()
    corpus = load_text(path, block_size=config.block_size, max_chars=config.corpus_chars)
    figures: dict[str, Any] = {
        "benchmark": "chargpt", "torch": torch.__version__, "device": str(device),
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": dataclasses.asdict(config), "bf16": bf16, "compile": compile_ok, "corpus": str(path),
        "seed": CHARGPT_SEED, "methods": list(CHARGPT_METHODS), "runs": {}}

    def save() -> None:
        atomic_write_text(json.dumps(figures, indent=1, default=str) + "\n", raw)

    save()
    print(f"chargpt: {config.name}, {config.steps} steps, {device}, bf16 {bf16}, compile {compile_ok}, corpus {path}")
    failed = False
    for method in CHARGPT_METHODS:
        started = time.perf_counter()
        compile_error = None
        try:
            result = train_run(config, corpus, device, spec(method), CHARGPT_SEED, bf16=bf16, compile=compile_ok,
                               label=method)
            used_compile = compile_ok
        except Exception as e:
            if not compile_ok:
                print(f"chargpt {method}: failed: {type(e).__name__}: {e}")
                figures["runs"][method] = {"error": f"{type(e).__name__}: {e}"}
                failed = True
                save()
                continue
            # A compile failure should not cost the measurement: retry eager and say so.
            compile_error = f"{type(e).__name__}: {e}"
            print(f"chargpt {method}: compiled run failed ({compile_error}); retrying without torch.compile")
            try:
                result = train_run(config, corpus, device, spec(method), CHARGPT_SEED, bf16=bf16, compile=False,
                                   label=method)
                used_compile = False
            except Exception as e2:
                figures["runs"][method] = {"error": f"{type(e2).__name__}: {e2}", "compile_error": compile_error}
                failed = True
                save()
                continue
        result.pop("sample", None)
        figures["runs"][method] = {**result, "compile": used_compile, "compile_error": compile_error,
                                   "seconds": time.perf_counter() - started}
        print(f"chargpt {method}: best val {result['selection_loss']:.4f} at step {result['best_step']} (density "
              f"{result['density']:.3f}), final {result['final_loss']:.4f}, {result['tokens_per_s']:,.0f} tokens/s, "
              f"{time.perf_counter() - started:.1f} s")
        save()
    runs = figures["runs"]
    if all(m in runs and "error" not in runs[m] for m in CHARGPT_METHODS):
        figures["throughput_ratio"] = runs["occam-guarded"]["tokens_per_s"] / runs["gd"]["tokens_per_s"]
        figures["best_val_loss"] = {m: runs[m]["selection_loss"] for m in CHARGPT_METHODS}
        save()
    return 1 if failed else 0


def part_sleep(raw: Path, dry_run: bool) -> int:
    """Test-only: partial figures and a child process, then it outlives any time limit."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    write_json(raw, {"benchmark": "_sleep", "partial": True, "child_pid": child.pid})
    print(f"_sleep: partial figures written, child {child.pid} started; sleeping", flush=True)
    time.sleep(600)
    return 0


IN_SCRIPT = {"chargpt": part_chargpt, "_sleep": part_sleep}


# Main -----------------------------------------------------------------------------------------
def _timeout(text: str) -> tuple[str | None, float]:
    name, _, value = text.rpartition("=")
    if name and name not in PARTS + TEST_PARTS:
        raise argparse.ArgumentTypeError(f"unknown part {name!r} in {text!r}; parts: {', '.join(PARTS)}")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not [PART=]SECONDS") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the time limit must be > 0 seconds")
    return name or None, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="parts and limits: " + ", ".join(f"{p} {LIMITS[p]:.0f} s" for p in PARTS))
    parser.add_argument("--out", type=Path, default=Path("gpu-results"),
                        help="folder for the JSON files (default gpu-results)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, seconds: checks that it all runs")
    parser.add_argument("--parts", nargs="+", metavar="PART", default=list(PARTS),
                        help=f"parts to run, in this order (default: {' '.join(PARTS)})")
    parser.add_argument("--part-timeout", nargs="+", type=_timeout, default=[], metavar="[PART=]SECONDS",
                        help="replace the time limit of one part (PART=SECONDS) or of every part (SECONDS)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"time budget of the whole suite, seconds (default {BUDGET_S:.0f}; dry run "
                             f"{DRY_BUDGET_S:.0f})")
    parser.add_argument("--run-part", help=argparse.SUPPRESS)  # internal: run one in-script part
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_part:
        return IN_SCRIPT[args.run_part](args.raw, args.dry_run)

    unknown = [p for p in args.parts if p not in PARTS + TEST_PARTS]
    if unknown or len(set(args.parts)) != len(args.parts):
        parser.error(f"--parts: unknown or repeated {unknown or args.parts}; parts: {', '.join(PARTS)}")
    budget = args.budget if args.budget is not None else (DRY_BUDGET_S if args.dry_run else BUDGET_S)
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + budget
    summary: dict[str, Any] = {
        "suite": "gpu_suite", "command": shlex.join([sys.executable, *sys.argv]), "dry_run": args.dry_run,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_s": budget,
        "out": str(out)}
    print(f"occamgd GPU suite{' (dry run: CPU, tiny sizes)' if args.dry_run else ''}: {summary['command']}")
    print(f"parts: {' '.join(args.parts)}; budget {budget:.0f} s; results in {out}", flush=True)

    info, problems = preflight(args.dry_run, out, min(PREFLIGHT_LIMIT_S, budget))
    summary["environment"] = info
    if problems:
        summary["error"] = problems
        summary.update(seconds=round(time.monotonic() - started, 2), parts={}, targets=[])
        write_json(out / "summary.json", summary)
        print("\ngpu_suite: cannot run here:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 2
    print(f"preflight: torch {info.get('torch')}, CUDA {info.get('cuda_available')} ({info.get('device', 'no GPU')}), "
          f"triton {info.get('triton')}, occamgd from {info.get('occamgd_file')}", flush=True)

    records: dict[str, dict] = {}
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    part, part_started = None, started
    try:
        for part in plan(args.parts, args, out):
            part_started = time.monotonic()
            record = run_part(part, deadline, out)
            records[part.name] = record
            write_json(out / f"{part.name}.json", record)
            write_summary(out, summary, records, started)
    except (KeyboardInterrupt, SystemExit):
        # run_process has killed the part's process group; keep what it wrote.
        if part is not None and part.name not in records:
            records[part.name] = {"part": part.name, "title": part.title, "status": "interrupted",
                                  "time_limit_s": part.limit, "returncode": None,
                                  "seconds": round(time.monotonic() - part_started, 2),
                                  "command": shlex.join(part.command), "log": f"logs/{part.name}.log",
                                  "output_tail": "", "figures": read_json(part.raw)}
            write_json(out / f"{part.name}.json", records[part.name])
        write_summary(out, summary, records, started)
        print(f"\ngpu_suite: stopped; what was measured is in {out}", file=sys.stderr)
        raise
    table = write_summary(out, summary, records, started)
    print("\n## GPU suite summary\n")
    print(table, end="")
    print(f"\nfigures: {out}/<part>.json, summary: {out}/summary.json", flush=True)
    bad = [n for n, r in records.items() if r["status"] != "ok" and not r["status"].startswith("skipped: needs CUDA")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
