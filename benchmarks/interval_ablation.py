"""The ablation readers of the paper ask for first: the pruning interval and the largest rate ``r0``.

For the paper's rule (``OccamRate(r0)``) and the default controller (``Guarded(r0)``, first rate r0/2),
each with the layerwise and the global magnitude criterion, pruning every 1, 2 and 4 epochs
(``schedules.Every``; on char-gpt every 1, 2 and 4 evaluations of 50 steps: 50, 100, 200 steps)
with ``r0`` of 0.2, 0.4 and 0.6, trained by the bench (``occamgd.bench``: the same splits, initial
weights and batches as its ``gd``, records under ``OUT/<task>-quick...``, resumable). Prints one
markdown table (score and selected density per bench; for the tables, better/tied/worse against
GD at two standard errors, paired seed by seed) and writes it with one plot to
``OUT/interval-ablation.md`` and ``OUT/interval-ablation.png``.

Run from the repository root on a quiet machine::

    .venv/bin/python benchmarks/interval_ablation.py --out results/ablation --seeds 2,1  # tables (2 seeds) + fashion-mlp (1)
    .venv/bin/python benchmarks/interval_ablation.py --benches tabular --seeds 2 --datasets Glass,Sonar
    .venv/bin/python benchmarks/interval_ablation.py --benches char-gpt --criteria layerwise
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from occamgd.bench import METHODS, TASKS  # noqa: E402
from occamgd.bench.registry import Method, register_method  # noqa: E402
from occamgd.bench.runner import run_records  # noqa: E402
from occamgd.io import atomic_write, atomic_write_text  # noqa: E402
from occamgd.reporting import markdown_table  # noqa: E402
from occamgd.schedules import Every, Guarded, OccamRate, Search  # noqa: E402

INTERVALS = (1, 2, 4)
RATES = (0.2, 0.4, 0.6)
RULES = {"paper": lambda r0: OccamRate(r0=r0), "guarded": lambda r0: Guarded(r0=r0),
         "search": lambda r0: Search(r0=r0, r_start=r0 / 2)}
DEFAULT_RULES = ("paper", "guarded")  # the paper's rule and the library's default controller
CRITERIA = ("layerwise", "global")
#: What each bench runs: task, --quick, its budget (None: the task's quick default) and extra options.
BENCHES = {"tabular": ("tabular", None), "fashion-mlp": ("fashion-mlp", 10), "char-gpt": ("char-gpt", None)}


def method_name(rule: str, criterion: str, k: int, r0: float) -> str:
    return f"abl-{rule}-{criterion}-k{k}-r{r0}"


def register(rules, criteria) -> dict[str, tuple[str, str, int, float]]:
    """Register one bench method per setting; ``{method name: (rule, criterion, k, r0)}``."""
    names = {}
    for rule, criterion, k, r0 in itertools.product(rules, criteria, INTERVALS, RATES):
        name = method_name(rule, criterion, k, r0)
        if name not in METHODS:
            make = RULES[rule]
            register_method(Method(
                name, f"{rule} rule, r0={r0}, pruning every {k} step(s), {criterion} magnitude",
                schedule=lambda ctx, make=make, k=k, r0=r0: make(r0) if k == 1 else Every(make(r0), k),
                criterion=criterion))
        names[name] = (rule, criterion, k, r0)
    return names


def paired(runs: dict[int, dict], gd: dict[int, dict], score: str) -> tuple[float, str]:
    seeds = sorted(set(runs) & set(gd))
    diffs = [runs[s][score] - gd[s][score] for s in seeds]
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    return mean, "better" if mean < -2 * se else "worse" if mean > 2 * se else "tied"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs", help="bench output root (default runs)")
    parser.add_argument("--benches", default="tabular,fashion-mlp", help=f"comma-separated, of {', '.join(BENCHES)}")
    parser.add_argument("--seeds", default="2", help="seeds per bench: one number, or one per --benches entry "
                        "(e.g. 2,1; default 2)")
    parser.add_argument("--datasets", help="tables to run (default: all bundled)")
    parser.add_argument("--rules", default=",".join(DEFAULT_RULES),
                        help=f"comma-separated, of {', '.join(RULES)} (default {','.join(DEFAULT_RULES)})")
    parser.add_argument("--criteria", default=",".join(CRITERIA), help=f"comma-separated, of {', '.join(CRITERIA)}")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    benches, rules, criteria = (args.benches.split(","), args.rules.split(","), args.criteria.split(","))
    for given, known, what in ((benches, BENCHES, "bench"), (rules, RULES, "rule"), (criteria, CRITERIA, "criterion")):
        unknown = [g for g in given if g not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown}; accepted: {', '.join(known)}")
    try:
        seeds = [int(n) for n in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be integers, got {args.seeds!r}")
    seeds = seeds * len(benches) if len(seeds) == 1 else seeds
    if len(seeds) != len(benches) or min(seeds) < 1:
        parser.error(f"--seeds must be one integer >= 1 or one per bench ({len(benches)}), got {args.seeds!r}")
    names = register(rules, criteria)
    for name, (task, _) in BENCHES.items():  # the ablation's methods run on the tasks it names
        TASKS[task] = _with_methods(TASKS[task], names)

    rows, series = [], {}
    for bench, bench_seeds in zip(benches, seeds):
        task, budget = BENCHES[bench]
        options = {"datasets": args.datasets.split(",")} if bench == "tabular" and args.datasets else {}
        root, task_obj, _, records = run_records(task, bench_seeds, True, args.out, ["gd", *names],
                                                 not args.quiet, budget, **options)
        score = task_obj.score[0]
        by: dict = {}
        for r in records:
            by.setdefault((r["dataset"], r["method"]), {})[r["seed"]] = r
        datasets = sorted({d for d, _ in by})
        for name, (rule, criterion, k, r0) in names.items():
            means = [statistics.mean(r[score] for r in by[(d, name)].values()) for d in datasets]
            gd = [statistics.mean(r[score] for r in by[(d, "gd")].values()) for d in datasets]
            dens = statistics.median(r["density"] for d in datasets for r in by[(d, name)].values())
            verdicts = [paired(by[(d, name)], by[(d, "gd")], score)[1] for d in datasets]
            wtl = "/".join(str(verdicts.count(v)) for v in ("better", "tied", "worse"))
            rows.append([bench, rule, criterion, str(k), str(r0), f"{statistics.mean(means):.4f}",
                         f"{statistics.mean(gd):.4f}", wtl, f"{dens:.2f}"])
            series.setdefault((bench, rule, criterion, r0), []).append((k, statistics.mean(means)))
        print(f"{bench}: {len(datasets)} dataset(s), {bench_seeds} seed(s), records under {root}", file=sys.stderr)

    header = ["bench", "rule", "criterion", "every k", "r0", "mean score", "gd", "better/tied/worse vs gd",
              "median density"]
    table = markdown_table(header, rows)
    print(table)
    out = Path(args.out)
    atomic_write_text("# Interval x r0 ablation\n\nCommand: `" + " ".join(["python", *sys.argv]) + "`\n\n" + table,
                      out / "interval-ablation.md")
    fig, axes = plt.subplots(1, len(benches), figsize=(5 * len(benches), 4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        for (b, rule, criterion, r0), points in sorted(series.items()):
            if b == bench:
                ks, ys = zip(*sorted(points))
                # Colour: r0; line: the criterion; marker: the rule.
                ax.plot(ks, ys, color=f"C{RATES.index(r0)}", ls="-" if criterion == "layerwise" else "--",
                        marker="o" if rule == "paper" else "s", label=f"{rule} {criterion} r0={r0}")
        ax.set(title=bench, xlabel="prune every k steps", ylabel="mean score (lower is better)")
        ax.set_xticks(INTERVALS, [str(k) for k in INTERVALS])
        ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_write(out / "interval-ablation.png", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return 0


def _with_methods(task, names):
    import dataclasses
    return dataclasses.replace(task, methods=tuple(dict.fromkeys((*task.methods, *names))))


if __name__ == "__main__":
    sys.exit(main())
