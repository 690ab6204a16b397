"""The paired yardstick: every method against GD on the same seeds, table by table.

Reads the records ``occamgd bench`` wrote (nothing is trained here) and prints markdown::

    python benchmarks/yardstick.py runs/tabular [runs/fashion-mlp ...] [--dev Sonar,Glass,...]

For each dataset and method, over the seeds both it and ``gd`` ran (each seed its own split,
initial weights and batches, the same for every method): the mean score, the mean paired
difference against GD and its standard error, and the verdict **better** / **tied** / **worse**
at two standard errors. Over the datasets: wins/ties/losses, the mean relative change against GD
(mean over datasets of ``mean(method) / mean(gd) - 1``), the mean score and the median selected
density. ``--dev`` names the tables a controller was developed on: they and the others (the
check tables, never looked at while developing) are then also reported apart.
The score is the task's own (test loss at the epoch chosen on hold-back data; char-gpt: the best
validation loss).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

from occamgd.bench import TASKS, load_records

VERDICTS = ("better", "tied", "worse")


def load(root: Path, seeds: int | None = None) -> dict[str, dict[str, dict[int, dict]]]:
    """dataset -> method -> seed -> record, seeds below ``seeds`` (all when ``None``); one configuration per
    seed is expected in a bench directory (a second one with the same seed replaces the first read)."""
    runs: dict = defaultdict(lambda: defaultdict(dict))
    for run in load_records(root):
        if seeds is None or run["seed"] < seeds:
            runs[run["dataset"]][run["method"]][run["seed"]] = run
    return runs


def paired(runs: dict[int, dict], gd: dict[int, dict], score: str) -> dict | None:
    seeds = sorted(set(runs) & set(gd))
    if not seeds:
        return None
    values = [runs[s][score] for s in seeds]
    diffs = [runs[s][score] - gd[s][score] for s in seeds]
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    verdict = "better" if mean < -2 * se else "worse" if mean > 2 * se else "tied"
    densities = [runs[s]["density"] for s in seeds if runs[s].get("density") is not None]
    return {"seeds": len(seeds), "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "diff": mean, "se": se,
            "verdict": verdict, "relative": statistics.mean(values) / statistics.mean(gd[s][score] for s in seeds) - 1,
            "density": statistics.median(densities) if densities else None}


def report(root: Path, datasets: list[str] | None = None, title: str | None = None, seeds: int | None = None) -> str:
    runs = load(root, seeds)
    if not runs:
        return f"(no records under {root})\n"
    task = TASKS[next(iter(next(iter(next(iter(runs.values())).values())).values()))["task"]]
    score = task.score[0]
    names = sorted(runs) if datasets is None else [d for d in datasets if d in runs]
    methods = sorted({m for d in names for m in runs[d]} - {"gd"})
    lines = [f"### {title or root.name}: paired against gd ({score}; verdict at two standard errors)", "",
             "| dataset | seeds | gd | " + " | ".join(methods) + " |", "|---" * (len(methods) + 3) + "|"]
    summary = {m: {"verdicts": defaultdict(int), "relative": [], "mean": [], "density": []} for m in methods}
    gd_means = []
    for d in names:
        gd = runs[d].get("gd", {})
        if not gd:
            continue
        gd_mean = statistics.mean(r[score] for r in gd.values())
        gd_means.append(gd_mean)
        cells = []
        for m in methods:
            p = paired(runs[d].get(m, {}), gd, score)
            if p is None:
                cells.append("—")
                continue
            s = summary[m]
            s["verdicts"][p["verdict"]] += 1
            s["relative"].append(p["relative"])
            s["mean"].append(p["mean"])
            if p["density"] is not None:
                s["density"].append(p["density"])
            mark = {"better": "**+**", "tied": "=", "worse": "**−**"}[p["verdict"]]
            density = "" if p["density"] is None else f" ({p['density']:.2f})"
            cells.append(f"{p['mean']:.3f} {mark} {p['diff']:+.3f}±{p['se']:.3f}{density}")
        lines.append(f"| {d} | {len(gd)} | {gd_mean:.3f} | " + " | ".join(cells) + " |")
    lines.append("| **better / tied / worse** | | | " + " | ".join(
        "/".join(str(summary[m]["verdicts"][v]) for v in VERDICTS) for m in methods) + " |")
    lines.append("| **mean relative change** | | | " + " | ".join(
        f"{100 * statistics.mean(summary[m]['relative']):+.1f} %" if summary[m]["relative"] else "—"
        for m in methods) + " |")
    lines.append(f"| **mean score** | | {statistics.mean(gd_means):.4f} | " + " | ".join(
        f"{statistics.mean(summary[m]['mean']):.4f}" if summary[m]["mean"] else "—" for m in methods) + " |")
    lines.append("| **median density** | | 1.00 | " + " | ".join(
        f"{statistics.median(summary[m]['density']):.2f}" if summary[m]["density"] else "—" for m in methods) + " |")
    lines.append("")
    lines.append("Cells: mean score, verdict (+ better, = tied, − worse), paired difference to gd ± its standard "
                 "error, (median selected density).")
    return "\n".join(lines) + "\n"


def reports(root: Path, datasets: list[str] | None = None, dev: str | None = None, seeds: int | None = None) -> str:
    """The yardstick of ``root`` (its ``datasets``, or all), then, with ``dev`` (comma-separated tables),
    the development and the other (check) tables apart."""
    texts = [report(root, datasets, seeds=seeds)]
    if dev:
        dev_tables = [d.strip() for d in dev.split(",") if d.strip()]
        check = sorted(set(load(root, seeds)) - set(dev_tables))
        check = [d for d in check if datasets is None or d in datasets]
        for group, tables in (("development", dev_tables), ("check", check)):
            if tables:  # a group with no table is left out
                texts.append(report(root, tables, f"{root.name}, {group} tables ({', '.join(tables)})", seeds))
    return "\n".join(texts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="bench directories (runs/tabular, runs/fashion-mlp, ...)")
    parser.add_argument("--dev", help="comma-separated tables the controllers were developed on: reported apart "
                                      "from the others (the check tables)")
    parser.add_argument("--seeds", type=int, help="only seeds 0 .. SEEDS-1 (default: every seed found)")
    args = parser.parse_args(argv)
    for root in args.roots:
        print(reports(root, dev=args.dev, seeds=args.seeds))


if __name__ == "__main__":
    main()
