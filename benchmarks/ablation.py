"""The controllers' ablation: one table over every bench, and the guarded controller's targets.

Reads the records ``occamgd bench`` wrote (nothing is trained here) and prints markdown::

    python benchmarks/ablation.py runs

Benches read when present under the root: ``fashion-mlp`` (12 epochs) and ``fashion-mlp-e30``,
``fashion-cnn``, ``tabular`` (60 epochs) and ``tabular-e30``, ``char-gpt-quick``. Each record is
scored by its task's own score (the test loss at the epoch chosen on the hold-back loss; for
char-gpt, which has no test split, the best validation loss). The project's targets judged here
live with the benchmarks, not in the installed package.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from occamgd.bench import TASKS, load_records
from occamgd.reporting import markdown_table, mean_std

METHODS = ("gd", "gd-wd", "gmp", "gmp-oracle", "occam", "occam-val", "occam-guarded")
BENCHES = ("fashion-mlp", "fashion-mlp-e30", "fashion-cnn", "tabular", "tabular-e30", "char-gpt-quick")


def _metrics(run: dict) -> tuple[float, float | None, float]:
    """(score, density, seconds) of one record, the score being its task's."""
    return run[TASKS[run["task"]].score[0]], run["density"], run["train_seconds"]


def load(root: Path) -> dict[str, dict[str, dict[str, list[tuple]]]]:
    """bench -> dataset -> method -> [(score, density, seconds) per seed]; one configuration per seed."""
    runs: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for bench in BENCHES:
        seen: dict[tuple, str] = {}
        for run in load_records(root / bench):
            key = (run["dataset"], run["method"], run["seed"])
            if key in seen:
                raise SystemExit(f"{root / bench} holds two configurations of {'/'.join(map(str, key))} "
                                 f"(runs {seen[key]} and {run['run_id']}); accepted: one configuration per bench "
                                 "directory (move the older runs away)")
            seen[key] = run["run_id"]
            runs[bench][run["dataset"]][run["method"]].append(_metrics(run))
    return runs


def _stats(values: list[tuple], i: int) -> tuple[float, float]:
    xs = [v[i] for v in values]
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def tables(runs: dict) -> str:
    """One table per bench: loss ± std (selected density) per method, and mean wall time."""
    out = []
    for bench, datasets in runs.items():
        methods = [m for m in METHODS if any(m in d for d in datasets.values())]
        rows = []
        for dataset, by_method in datasets.items():
            rows.append([dataset] + [
                f"{mean_std([v[0] for v in by_method[m]])} ({statistics.mean(v[1] for v in by_method[m]):.2f})"
                if m in by_method else "–" for m in methods])
        if len(datasets) > 1:
            rows.append(["**mean over datasets**"] + [
                f"{statistics.mean(_stats(d[m], 0)[0] for d in datasets.values()):.3f}"
                if all(m in d for d in datasets.values()) else "–" for m in methods])
        rows.append(["train time (s), mean per run"] + [
            f"{statistics.mean(v[2] for d in datasets.values() for v in d.get(m, [])):.1f}"
            if any(m in d for d in datasets.values()) else "–" for m in methods])
        seeds = max(len(v) for d in datasets.values() for v in d.values())
        out.append(f"### {bench} ({seeds} seeds)\n\n" + markdown_table(["dataset"] + methods, rows))
    return "\n\n".join(out)


def targets(runs: dict) -> str:
    """The guarded controller's targets, each with the numbers it was judged on."""
    lines = []
    suite = [(bench, dataset, by) for bench in ("fashion-mlp", "fashion-cnn", "tabular", "char-gpt-quick")
             for dataset, by in runs.get(bench, {}).items() if "gd" in by and "occam-guarded" in by]
    worse = []
    for bench, dataset, by in suite:
        (g, _), (d, d_std) = _stats(by["occam-guarded"], 0), _stats(by["gd"], 0)
        if g - d > d_std:
            worse.append(f"{bench}/{dataset} ({g:.3f} vs {d:.3f} ± {d_std:.3f})")
    lines.append(f"- never worse than gd by more than gd's std: **{'met' if not worse else 'missed'}** on "
                 f"{len(suite) - len(worse)} of {len(suite)} datasets" + (f"; worse: {', '.join(worse)}" if worse
                                                                          else ""))
    tab = runs.get("tabular", {})
    if tab and all("gd" in by and "occam-guarded" in by for by in tab.values()):
        g = statistics.mean(_stats(by["occam-guarded"], 0)[0] for by in tab.values())
        d = statistics.mean(_stats(by["gd"], 0)[0] for by in tab.values())
        wins = sum(_stats(by["occam-guarded"], 0)[0] < _stats(by["gd"], 0)[0] for by in tab.values())
        lines.append(f"- better than gd on average over the tabular suite: **{'met' if g < d else 'missed'}** "
                     f"(mean test loss {g:.4f} vs {d:.4f}; lower on {wins} of {len(tab)} tables)")
    fashion = runs.get("fashion-mlp", {}).get("fashion-mnist", {})
    if all(m in fashion for m in ("occam-guarded", "occam", "gd-wd")):
        g, p, w = (_stats(fashion[m], 0)[0] for m in ("occam-guarded", "occam", "gd-wd"))
        lines.append(f"- fashion-mlp, <= the paper's rule and <= gd-wd: **{'met' if g <= p and g <= w else 'missed'}** "
                     f"({g:.3f} vs {p:.3f} and {w:.3f})")
    for short, long, label in (("fashion-mlp", "fashion-mlp-e30", "12 -> 30 epochs"),
                               ("tabular-e30", "tabular", "30 -> 60 epochs")):
        ratios = []
        for dataset, by in runs.get(short, {}).items():
            other = runs.get(long, {}).get(dataset, {})
            if "occam-guarded" in by and "occam-guarded" in other:
                a, b = _stats(by["occam-guarded"], 1)[0], _stats(other["occam-guarded"], 1)[0]
                ratios.append((dataset, max(a, b) / min(a, b), a, b))
        if ratios:
            worst = max(ratios, key=lambda r: r[1])
            lines.append(f"- selected density stable, {label} (factor < 1.5): "
                         f"**{'met' if worst[1] < 1.5 else 'missed'}**; largest factor {worst[1]:.2f} "
                         f"({worst[0]}: {worst[2]:.3f} -> {worst[3]:.3f}) over {len(ratios)} datasets")
    near, better = [], []
    for bench, dataset, by in suite:
        if "gmp-oracle" in by:
            (g, g_std), (o, o_std) = _stats(by["occam-guarded"], 0), _stats(by["gmp-oracle"], 0)
            near.append(g - o <= max(g_std, o_std))
            if o - g > max(g_std, o_std):
                better.append(f"{bench}/{dataset} {g:.3f} vs {o:.3f}")
    if near:
        lines.append(f"- no worse than gmp-oracle (told its density) beyond one std: **{sum(near)} of {len(near)}** "
                     f"datasets" + (f"; better by more than one std on {', '.join(better)}" if better else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the controllers' ablation from bench results.")
    parser.add_argument("root", nargs="?", default="runs", help="the benches' output directory (default: runs)")
    args = parser.parse_args(argv)
    runs = load(Path(args.root))
    if not runs:
        print(f"no bench results under {args.root}", file=sys.stderr)
        return 2
    print("Cells: loss mean ± std over seeds (mean selected density).\n")
    print(tables(runs))
    print("\n#### Targets of the guarded controller\n")
    print(targets(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
