"""The bench's report: one table per dataset, a summary over datasets, curves and loss-vs-density plots.

It reads records of the one schema (:mod:`occamgd.bench.runner`) and nothing else, so every task
is reported alike. Columns that no record of a task fills (test accuracy on char-gpt, tokens/s
on the epoch tasks) are left out.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from ..io import atomic_write, atomic_write_text
from ..reporting import markdown_table, mean_std, plot_curves
from .registry import METHODS, Task

#: Methods whose selected density is compared with gd's loss in the summary.
PRUNING = ("occam-val", "occam-planned", "occam-guarded")


def by_dataset(records: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """dataset -> method -> records (one per seed), in the order given."""
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        runs[record["dataset"]][record["method"]].append(record)
    return runs


def tables(task: Task, order: list[str], records: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(dataset, header, rows)`` per dataset: mean ± std over seeds of every method."""
    score, label = task.score
    has = lambda key: any(r.get(key) is not None for r in records)  # noqa: E731
    columns = [(score, label, 3)] + [(k, name, d) for k, name, d in (
        ("test_acc", "test accuracy", 3), ("density", "density", 3),
        ("selected_epoch" if task.unit == "epochs" else "best_step", "selected epoch" if task.unit == "epochs"
         else "step of best", 1), ("final_loss", "final loss", 3), ("train_seconds", "train time (s)", 1),
        ("tokens_per_s", "tokens/s", 0)) if has(k)]
    header = ["method"] + [name for _, name, _ in columns] + ["seeds"]
    out = []
    for dataset, by_method in by_dataset(records).items():
        rows = [[name] + [mean_std([r.get(key) for r in by_method[name]], digits) for key, _, digits in columns]
                + [str(len(by_method[name]))] for name in order if name in by_method]
        out.append((dataset, header, rows))
    return out


def unpruned(records: list[dict]) -> list[str]:
    """One line per method and dataset whose runs ended without pruning, with the first run's reason."""
    found: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r["history"] and r["history"][-1].get("warning"):
            found[(r["dataset"], r["method"])].append(r)
    return [f"{method} on {dataset}, seeds {sorted(r['seed'] for r in rs)}: {rs[0]['history'][-1]['warning']}"
            for (dataset, method), rs in found.items()]


def _summary(task: Task, order: list[str], runs: dict[str, dict[str, list[dict]]]) -> str:
    """One row per dataset: the mean score of every method, and where the pruning methods beat gd."""
    score, label = task.score
    cols = [m for m in order if any(m in by_method for by_method in runs.values())]
    pruned = [m for m in PRUNING if m in cols]
    header = ["dataset"] + cols + [f"{m} density" for m in pruned]
    rows, wins = [], {m: 0 for m in pruned}
    for dataset, by_method in runs.items():
        mean = {m: statistics.mean(r[score] for r in by_method[m]) for m in cols
                if m in by_method and all(r.get(score) is not None for r in by_method[m])}
        for m in pruned:
            wins[m] += "gd" in mean and m in mean and mean[m] < mean["gd"]
        densities = [mean_std([r["density"] for r in by_method.get(m, [])], 2) for m in pruned]
        rows.append([dataset] + [f"{mean[m]:.3f}" if m in mean else "–" for m in cols] + densities)
    counts = " ".join(f"{m} has a lower mean {label} than gd on {wins[m]} of {len(runs)} datasets." for m in pruned)
    return f"## {label.capitalize()} (mean over seeds) per dataset\n\n{markdown_table(header, rows)}\n\n{counts}\n\n"


def _plot_loss_vs_density(task: Task, by_method: dict[str, list[dict]], path: Path, title: str,
                          colors: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score, label = task.score
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, rs in by_method.items():
        points = [(r["density"], r[score]) for r in rs if r["density"] is not None and r.get(score) is not None]
        if points:
            d, loss = zip(*points)
            ax.errorbar(statistics.mean(d), statistics.mean(loss),
                        yerr=statistics.stdev(loss) if len(loss) > 1 else 0, fmt="o", label=name, capsize=3,
                        color=colors.get(name))
    ax.set_xscale("log")
    ax.set_xlabel("density (kept fraction)")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


def write_report(root: Path, task: Task, order: list[str], records: list[dict]) -> Path:
    """``results.md``, ``<dataset>-curves.png`` and ``<dataset>-loss-vs-density.png`` under ``root``."""
    runs = by_dataset(records)
    colors = {name: f"C{i}" for i, name in enumerate(order)}
    panels = [("test_loss", "test loss", False), ("holdback_loss", "hold-back (validation) loss", False),
              ("density", "density (kept fraction)", True), ("rate", "rate", False)]
    xlabel = "epoch" if task.unit == "epochs" else "evaluation"
    sections = []
    for dataset, header, rows in tables(task, order, records):
        by_method = runs[dataset]
        png = root / f"{dataset}-curves.png"
        curves = {m: [r["history"] for r in rs] for m, rs in by_method.items() if rs[0]["history"]}
        plot_curves(curves, [p for p in panels if any(h.get(p[0]) is not None for c in curves.values()
                                                     for run in c for h in run)],
                    png, title=dataset, colors=colors, xlabel=xlabel)
        scatter = root / f"{dataset}-loss-vs-density.png"
        _plot_loss_vs_density(task, by_method, scatter, dataset, colors)
        samples = "\n".join(f"**{m}** (seed {r['seed']}, kept state):\n\n```text\n{r['sample']}\n```\n"
                            for m in order for r in by_method.get(m, []) if r.get("sample"))
        sections.append(f"### {dataset}\n\n{markdown_table(header, rows)}\n\n![curves]({png.name}) "
                        f"![loss vs density]({scatter.name})\n" + (f"\nSamples:\n\n{samples}" if samples else ""))
    config = records[0]["config"] if records else {}
    setup = (f"{task.description}. Budget: {config.get('budget')} {task.unit}; settings: {config.get('settings')}; "
             f"options: {config.get('options')}.")
    summary = _summary(task, order, runs) if len(runs) > 1 else ""
    notes = unpruned(records)
    if notes:
        summary += "## Runs that ended without pruning\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n"
    legend = "\n".join(f"- `{m}`: {METHODS[m].description}" for m in order)
    text = (f"# {root.name}\n\n{setup}\n\nMean ± std over seeds; every neural method keeps its evaluation with the "
            f"lowest hold-back (validation) loss — the test split never selects.\n\n{legend}\n\n{summary}"
            + "\n".join(sections))
    return atomic_write_text(text, root / "results.md")
