"""``occamgd bench TASK``: run every method for every seed and dataset, then report.

Each run writes ``<out>/<task>/<dataset>/<method>/seed<k>.json`` atomically when it finishes; a
run whose file exists is not redone, so an interrupted bench resumes where it stopped. The
report (``results.md`` and PNGs in ``<out>/<task>``) is rebuilt from those files alone.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from ..io import atomic_write_text
from .methods import METHODS, Context
from ..reporting import markdown_table, mean_std, plot_curves
from .tasks import get_task


def _order(methods: list[str]) -> list[str]:
    """Methods with what they need first (and what they need added when missing)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}")
        for need in METHODS[name].needs:
            visit(need)
        if name not in ordered:
            ordered.append(name)

    for name in methods:
        visit(name)
    return ordered


def run_bench(task_name: str, seeds: int = 3, quick: bool = False, out: str | Path = "runs",
              methods: list[str] | None = None, progress: bool = True, epochs: int | None = None,
              **options) -> Path:
    """Run (or resume) a bench; return the path of its markdown report.

    ``epochs`` overrides the task's epoch count; such runs go to their own directory
    (``<task>-e<epochs>``) so that they never mix with the default ones.
    """
    task = get_task(task_name)
    if not (isinstance(seeds, int) and seeds >= 1):
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if epochs is not None and not (isinstance(epochs, int) and epochs >= 2):
        raise ValueError(f"epochs must be an integer >= 2, got {epochs!r}")
    order = _order(list(methods or task.methods))
    default_epochs = task.quick_epochs if quick else task.epochs
    suffix = f"-e{epochs}" if epochs is not None and epochs != default_epochs else ""
    epochs = epochs or default_epochs
    root = Path(out) / (task.name + ("-quick" if quick else "") + suffix)
    first = task.load(0, quick, options)  # loads (and checks) the data before any training starts
    bar = tqdm(total=seeds * len(first) * len(order), desc=f"occamgd bench {task.name}", unit="run",
               disable=not progress)
    for seed in range(seeds):
        for data in first if seed == 0 else task.load(seed, quick, options):
            ctx = Context(task, data, seed, epochs, root / data.name)
            for name in order:
                path = ctx.run_dir / name / f"seed{seed}.json"
                bar.set_postfix(dataset=data.name, method=name, seed=seed)
                if path.exists():
                    ctx.previous[name] = json.loads(path.read_text())
                else:
                    result = {"task": task.name, "dataset": data.name, "method": name, "seed": seed,
                              "epochs": epochs, "quick": quick, **METHODS[name].run(ctx)}
                    atomic_write_text(json.dumps(result, indent=1), path)
                    ctx.previous[name] = result
                bar.update()
    bar.close()
    return report(root, order)


def _load_runs(root: Path) -> dict[str, dict[str, list[dict]]]:
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.glob("*/*/seed*.json")):
        result = json.loads(path.read_text())
        runs[result["dataset"]][result["method"]].append(result)
    return runs


def report(root: Path, order: list[str]) -> Path:
    """Tables (mean ± std over seeds) and plots from the JSON files under ``root``."""
    runs = _load_runs(root)
    colors = {name: f"C{i}" for i, name in enumerate(order)}
    header = ["method", "test loss", "test accuracy", "density", "selected epoch", "train time (s)", "seeds"]
    sections = []
    for dataset, by_method in runs.items():
        rows = []
        for name in [m for m in order if m in by_method]:
            rs = by_method[name]
            rows.append([name, mean_std([r["test_loss"] for r in rs]), mean_std([r["test_acc"] for r in rs]),
                         mean_std([r["density"] for r in rs]), mean_std([r["selected_epoch"] for r in rs], 1),
                         mean_std([r["train_seconds"] for r in rs], 1), str(len(rs))])
        png = root / f"{dataset}-curves.png"
        curves = {m: [r["history"] for r in rs] for m, rs in by_method.items() if rs[0]["history"]}
        plot_curves(curves, [("test_loss", "test loss", False), ("holdback_loss", "hold-back loss", False),
                             ("density", "density (kept fraction)", True), ("rate", "rate", False)], png,
                    title=dataset,
                    colors=colors)
        scatter = root / f"{dataset}-loss-vs-density.png"
        _plot_loss_vs_density(by_method, scatter, dataset, colors)
        sections.append(f"### {dataset}\n\n{markdown_table(header, rows)}\n\n![curves]({png.name}) "
                        f"![loss vs density]({scatter.name})\n")
    summary = _summary_table(runs) if len(runs) > 1 else ""
    legend = "\n".join(f"- `{m}`: {METHODS[m].description}" for m in order)
    text = (f"# {root.name}\n\nMean ± std over seeds; every neural method keeps its epoch with the lowest "
            f"hold-back loss (the test split never selects).\n\n{legend}\n\n{summary}" + "\n".join(sections))
    return atomic_write_text(text, root / "results.md")


def _summary_table(runs: dict[str, dict[str, list[dict]]]) -> str:
    """One row per dataset: mean test loss of the key methods, and where occam-val beats gd."""
    cols = [m for m in ("gd", "gd-wd", "occam-val", "occam", "occam-guarded", "gmp", "gmp-oracle", "random-forest",
                        "hist-gradient-boosting") if any(m in by_method for by_method in runs.values())]
    pruned = [m for m in ("occam-val", "occam-guarded") if m in cols]
    header = ["dataset"] + cols + [f"{m} density" for m in pruned]
    rows, wins = [], {m: 0 for m in pruned}
    for dataset, by_method in runs.items():
        mean = {m: statistics.mean(r["test_loss"] for r in by_method[m]) for m in cols if m in by_method}
        for m in pruned:
            wins[m] += "gd" in mean and m in mean and mean[m] < mean["gd"]
        densities = [mean_std([r["density"] for r in by_method.get(m, [])], 2) for m in pruned]
        rows.append([dataset] + [f"{mean[m]:.3f}" if m in mean else "–" for m in cols] + densities)
    counts = " ".join(f"{m} has a lower mean test loss than gd on {wins[m]} of {len(runs)} datasets."
                      for m in pruned)
    return f"## Test loss (mean over seeds) per dataset\n\n{markdown_table(header, rows)}\n\n{counts}\n\n"


def _plot_loss_vs_density(by_method: dict[str, list[dict]], path: Path, title: str, colors: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, rs in by_method.items():
        points = [(r["density"], r["test_loss"]) for r in rs if r["density"] is not None]
        if points:
            d, loss = zip(*points)
            ax.errorbar(statistics.mean(d), statistics.mean(loss),
                        yerr=statistics.stdev(loss) if len(loss) > 1 else 0, fmt="o", label=name, capsize=3,
                        color=colors.get(name))
    ax.set_xscale("log")
    ax.set_xlabel("density (kept fraction)")
    ax.set_ylabel("test loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
