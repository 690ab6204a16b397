"""``occamgd demo``: plain gradient descent against Occam Gradient Descent on bundled data.

The same network (the paper's MLP) is trained on a dataset shipped with scikit-learn, once per
method and seed, on the same split and the same batches. Every method keeps the epoch with the
lowest hold-back loss; the test split is only reported.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .reporting import markdown_table, mean_std, plot_curves, text_table
from .fit import fit
from .io import atomic_write_text
from .models import MLP
from .schedules import Guarded, Never, OccamRate

DATASETS = ("digits", "breast_cancer", "wine", "iris")

#: name -> (schedule factory, signal, what it is)
METHODS = {
    "gd": (Never, "holdback", "plain gradient descent"),
    "occam": (OccamRate, "train", "the paper's rule: r0 = 0.4, training-loss signal"),
    "occam-val": (OccamRate, "holdback", "the paper's rule on the hold-back loss"),
    "occam-guarded": (Guarded, "holdback", "the guarded controller on the hold-back loss"),
}


def load_bundled(name: str, seed: int, test_size: float = 0.25):
    """A scikit-learn bundled dataset: stratified train/test split, standardised on train only."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name not in DATASETS:
        raise ValueError(f"unknown demo dataset {name!r}; accepted: {', '.join(DATASETS)}")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    as_x = lambda a: torch.tensor(scaler.transform(a), dtype=torch.float32)  # noqa: E731
    return (as_x(X_tr), torch.tensor(y_tr)), (as_x(X_te), torch.tensor(y_te)), int(y.max()) + 1


def run(
    dataset: str = "digits",
    epochs: int = 20,
    seeds: int = 3,
    out: str | Path = "occamgd-demo",
    progress: bool = True,
    echo=print,
) -> dict:
    """Train every method for every seed; print the table; write table, JSON and PNG to ``out``."""
    if not (isinstance(seeds, int) and seeds >= 1):
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown demo dataset {dataset!r}; accepted: {', '.join(DATASETS)}")
    out = Path(out)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    # One untimed epoch first, so the first method's wall time does not carry torch's start-up.
    train, _, classes = load_bundled(dataset, 0)
    fit(MLP(train[0].shape[1], classes), train, epochs=1, progress=False)
    bar = tqdm(total=seeds * len(METHODS), desc="occamgd demo", unit="run", disable=not progress, leave=False)
    for seed in range(seeds):
        train, test, classes = load_bundled(dataset, seed)
        for method, (schedule, signal, _) in METHODS.items():
            bar.set_postfix(method=method, seed=seed)
            torch.manual_seed(seed)
            model = MLP(train[0].shape[1], classes)
            start = time.perf_counter()
            result = fit(model, train, test=test, epochs=epochs, schedule=schedule(), signal=signal,
                         seed=seed, progress=False)
            wall = time.perf_counter() - start
            best = result.history[result.best_epoch]
            runs[method].append({"seed": seed, "best_epoch": result.best_epoch, "test_loss": best["test_loss"],
                                 "test_acc": best["test_acc"], "density": best["density"], "wall_time": wall,
                                 "history": result.history.to_list()})
            bar.update()
    bar.close()

    header = ["method", "test loss", "test accuracy", "density", "best epoch", "wall time (s)"]
    rows = [
        [method, mean_std([r["test_loss"] for r in rs]), mean_std([r["test_acc"] for r in rs]),
         mean_std([r["density"] for r in rs]), mean_std([r["best_epoch"] for r in rs], 1),
         mean_std([r["wall_time"] for r in rs], 2)]
        for method, rs in runs.items()
    ]
    caption = (f"{dataset}: paper MLP (hidden 1024, dropout 0.2), Adam 1e-3, batch 32, {epochs} epochs, "
               f"{seeds} seed(s), mean ± std; each method keeps the epoch with the lowest loss on a "
               "10 % hold-back of the training split; test = 25 % stratified split.")
    echo("\n" + caption + "\n")
    echo(text_table(header, rows))
    legend = "\n".join(f"- `{m}`: {desc}" for m, (_, _, desc) in METHODS.items())

    png = out / "demo.png"
    plot_curves({m: [r["history"] for r in rs] for m, rs in runs.items()},
                [("test_loss", "test loss", False), ("holdback_loss", "hold-back loss", False),
                 ("density", "density (kept fraction)", True)],
                png, title=f"{dataset}, {seeds} seed(s): mean ± std")
    atomic_write_text(f"{caption}\n\n{markdown_table(header, rows)}\n\n{legend}\n\n![curves](demo.png)\n",
                      out / "demo.md")
    atomic_write_text(json.dumps({"dataset": dataset, "epochs": epochs, "seeds": seeds, "runs": runs},
                                 indent=1, default=float), out / "results.json")
    echo(f"\nwrote {out / 'demo.md'}, {out / 'results.json'} and {png}")
    return {"runs": runs, "rows": rows, "header": header}

