"""``occamgd demo``: plain gradient descent against Occam Gradient Descent on bundled data.

The demo is the bench's ``demo`` task (:mod:`occamgd.bench`) run with its four methods: the
paper's MLP trained on a dataset shipped with scikit-learn, once per method and seed, on the
same split and the same batches. Every method keeps the epoch with the lowest hold-back loss;
the test split is only reported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InvalidValueError

DATASETS = ("digits", "breast_cancer", "wine", "iris")


def load_bundled(name: str, seed: int, test_size: float = 0.25):
    """A scikit-learn bundled dataset: stratified train/test split, standardised on train only."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name not in DATASETS:
        raise InvalidValueError(f"unknown demo dataset {name!r}; accepted: {', '.join(DATASETS)}")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    as_x = lambda a: torch.tensor(scaler.transform(a), dtype=torch.float32)  # noqa: E731
    return (as_x(X_tr), torch.tensor(y_tr)), (as_x(X_te), torch.tensor(y_te)), int(y.max()) + 1


def run(dataset: str = "digits", epochs: int | None = None, seeds: int = 3, out: str | Path = "occamgd-demo",
        progress: bool = True, echo=print) -> Path:
    """Run (or resume) the demo task; print its table; return the path of its ``results.md``."""
    from ..fit import fit
    from ..models import MLP
    from ..reporting import text_table
    from .report import tables, unpruned, write_report
    from .runner import run_records

    if dataset not in DATASETS:
        raise InvalidValueError(f"unknown demo dataset {dataset!r}; accepted: {', '.join(DATASETS)}")
    # One untimed epoch first, so the first method's wall time does not carry torch's start-up.
    train, _, classes = load_bundled(dataset, 0)
    fit(MLP(train[0].shape[1], classes), train, epochs=1, progress=False)
    root, task, order, records = run_records("demo", seeds=seeds, out=out, progress=progress, budget=epochs,
                                             dataset=dataset)
    for name, header, rows in tables(task, order, records):
        echo(f"\n{name}: the paper's MLP (hidden 1024, dropout 0.2), Adam 1e-3, batch 32, "
             f"{records[0]['config']['budget']} epochs, {seeds} seed(s), mean ± std; each method keeps the epoch "
             "with the lowest loss on a 10 % hold-back of the training split; test = 25 % stratified split.\n")
        echo(text_table(header, rows))
    for note in unpruned(records):
        echo(f"\nnote: {note}")
    path = write_report(root, task, order, records)
    echo(f"\nwrote {path}")
    return path
