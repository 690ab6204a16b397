"""The bench's report: one table per dataset, a summary over datasets, curves, loss-vs-density plots and
the cost plot (loss against training time and against inference throughput, one point per method and seed).

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
PRUNING = ("occam-val", "occam-planned", "occam-guarded", "occam-search")
#: Fields derived from a record's own: the final model's inference speed over the dense model's (same run).
DERIVED = {f"speedup_b{b}": (f"throughput_b{b}", f"dense_throughput_b{b}") for b in (1, 256)}


def value(record: dict, key: str):
    """``record[key]``, or a :data:`DERIVED` ratio (``None`` where a part is missing)."""
    if key in DERIVED:
        num, den = (record.get(k) for k in DERIVED[key])
        return num / den if num is not None and den else None
    return record.get(key)


def by_dataset(records: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """dataset -> method -> records (one per seed), in the order given."""
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        runs[record["dataset"]][record["method"]].append(record)
    return runs


def tables(task: Task, order: list[str], records: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(dataset, header, rows)`` per dataset: mean ± std over seeds of every method."""
    score, label = task.score
    has = lambda key: any(value(r, key) is not None for r in records)  # noqa: E731
    columns = [(score, label, 3)] + [(k, name, d) for k, name, d in (
        ("test_acc", "test accuracy", 3), ("density", "density", 3),
        ("selected_epoch" if task.unit == "epochs" else "best_step", "selected epoch" if task.unit == "epochs"
         else "step of best", 1), ("final_loss", "final loss", 3), ("train_seconds", "train time (s)", 1),
        ("tokens_per_s", "tokens/s", 0), ("final_params", "params", 0),
        ("throughput_b1", "samples/s b1", 0), ("speedup_b1", "b1 × dense", 2),
        ("throughput_b256", "samples/s b256", 0), ("speedup_b256", "b256 × dense", 2)) if has(k)]
    header = ["method"] + [name for _, name, _ in columns] + ["seeds"]
    out = []
    for dataset, by_method in by_dataset(records).items():
        rows = [[name] + [mean_std([value(r, key) for r in by_method[name]], digits) for key, _, digits in columns]
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
    for name, rs in by_method.items():  # a grid's candidates (each trained to its own density): its curve
        members = [r for r in rs if r.get("grid_score") and r.get("grid_density")]
        keys = [k for k in (members[0]["grid_score"] if members else {})
                if all(m["grid_score"].get(k) is not None and m["grid_density"].get(k) is not None for m in members)]
        # In the grid's own order; x is where each candidate's kept epoch was (GMP's best epoch may come
        # before its target), and a grid whose candidates all keep one density (weight decays) is no curve.
        curve = [(statistics.mean(m["grid_density"][k] for m in members),
                  statistics.mean(m["grid_score"][k] for m in members)) for k in keys]
        if len({round(x, 3) for x, _ in curve}) > 1:
            ax.plot(*zip(*curve), ls="--", lw=1, marker=".", color=colors.get(name), alpha=0.7,
                    label=f"{name}: each candidate ({len(members)} seeds)")
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


def _plot_cost(task: Task, by_method: dict[str, list[dict]], path: Path, title: str, colors: dict[str, str]) -> bool:
    """The loss against training time and against inference throughput at batch 256, a point per method and
    seed: what a user reads to choose. ``False`` (nothing written) when no record has either measurement."""
    score, label = task.score
    axes_keys = [("train_seconds", "training time (s)"), ("throughput_b256", "inference samples/s, batch 256")]
    points = {key: {name: [(r[key], r[score]) for r in rs if r.get(key) is not None and r.get(score) is not None]
                    for name, rs in by_method.items()} for key, _ in axes_keys}
    if not any(p for by_name in points.values() for p in by_name.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (key, xlabel) in zip(axes, axes_keys):
        for name, pts in points[key].items():
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, label=name, color=colors.get(name), s=22)
        dense = [r.get("dense_throughput_b256") for rs in by_method.values() for r in rs]
        dense = [d for d in dense if d is not None]
        if key == "throughput_b256" and dense:
            ax.axvline(statistics.median(dense), color="grey", ls=":", lw=1, label="dense model")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{title}: {label} vs training time", fontsize=9)
    axes[1].set_title(f"{title}: {label} vs inference speed", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return True


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
        cost = root / f"{dataset}-cost.png"
        cost_link = f" ![loss vs cost]({cost.name})" if _plot_cost(task, by_method, cost, dataset, colors) else ""
        samples = "\n".join(f"**{m}** (seed {r['seed']}, kept state):\n\n```text\n{r['sample']}\n```\n"
                            for m in order for r in by_method.get(m, []) if r.get("sample"))
        sections.append(f"### {dataset}\n\n{markdown_table(header, rows)}\n\n![curves]({png.name}) "
                        f"![loss vs density]({scatter.name}){cost_link}\n"
                        + (f"\nSamples:\n\n{samples}" if samples else ""))
    config = records[0]["config"] if records else {}
    setup = (f"{task.description}. Budget: {config.get('budget')} {task.unit}; settings: {config.get('settings')}; "
             f"options: {config.get('options')}.")
    summary = _summary(task, order, runs) if len(runs) > 1 else ""
    notes = unpruned(records)
    if notes:
        summary += "## Runs that ended without pruning\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n"
    legend = "\n".join(f"- `{m}`: {METHODS[m].description}" for m in order)
    threads = sorted({r["threads"] for r in records if r.get("threads") is not None})
    speed = (f" Inference throughput (samples/s) is the final model's in eval mode without gradients, median of "
             f"timed repetitions, measured in the same run beside a dense model of the task (× dense: the ratio); "
             f"torch threads: {', '.join(map(str, threads))}. params: the final model's parameters (a shrunk "
             f"model's live ones, a masked model's kept ones)." if threads else "")
    text = (f"# {root.name}\n\n{setup}\n\nMean ± std over seeds; every neural method keeps its evaluation with the "
            f"lowest hold-back (validation) loss — the test split never selects.{speed}\n\n{legend}\n\n{summary}"
            + "\n".join(sections))
    return atomic_write_text(text, root / "results.md")
