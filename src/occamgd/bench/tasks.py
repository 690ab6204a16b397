"""Bench tasks: which data, which model, how long. One registry entry per task."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models import MLP


@dataclass
class BenchData:
    """One dataset of a task for one seed: the training split (``fit`` holds back from it) and
    the test split (only ever reported)."""

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: int


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    load: Callable[[int, bool, dict], list[BenchData]]  # (seed, quick, options) -> datasets
    model: Callable[[BenchData], nn.Module]
    epochs: int
    quick_epochs: int
    batch_size: int = 32
    lr: float = 1e-3
    holdback: float = 0.1
    methods: tuple[str, ...] = ("occam-val", "occam", "occam-guarded", "gd", "gd-wd", "gd+prune", "gd+prune+ft",
                                "gmp", "gmp-oracle")
    gmp_density: float = 0.25  # the density gmp is told in advance


QUICK_IMAGES = (6000, 1000)  # train / test rows of an image task with --quick


@functools.lru_cache(maxsize=4)
def _images(loader_name: str, root: str | None) -> tuple:
    from ..data import images

    return getattr(images, loader_name)(root=root)


def _image_task_loader(loader_name: str, dataset: str):
    def load(seed: int, quick: bool, options: dict) -> list[BenchData]:
        (X, y), (Xt, yt) = _images(loader_name, options.get("data_root"))
        if quick:
            # The same fixed subsample for every seed: seeds vary the training, not the data.
            g = torch.Generator().manual_seed(0)
            tr = torch.randperm(len(X), generator=g)[: QUICK_IMAGES[0]]
            te = torch.randperm(len(Xt), generator=g)[: QUICK_IMAGES[1]]
            X, y, Xt, yt = X[tr], y[tr], Xt[te], yt[te]
        return [BenchData(dataset, (X, y), (Xt, yt), int(y.max()) + 1)]

    return load


def _mlp(data: BenchData) -> nn.Module:
    return MLP(data.train[0][0].numel(), data.classes)


def _cnn(data: BenchData) -> nn.Module:
    from ..models import CNN

    channels, height, width = data.train[0].shape[1:]
    return CNN(channels, data.classes, n=32, image_size=(height, width))


def _tabular_load(seed: int, quick: bool, options: dict) -> list[BenchData]:
    from ..data.tabular import load_table, read_manifest

    manifest = options.get("manifest")
    out = []
    for name in read_manifest(manifest):
        table = load_table(name, manifest, test_size=0.3, seed=seed)
        as_xy = lambda X, y: (torch.as_tensor(X), torch.as_tensor(y))  # noqa: E731
        out.append(BenchData(name, as_xy(table.X_train, table.y_train), as_xy(table.X_test, table.y_test),
                             len(table.classes)))
    return out


def _tabular_mlp(data: BenchData) -> nn.Module:
    from ..models import TabularMLP

    return TabularMLP(data.train[0].shape[1], data.classes, hidden=(256, 256))


TASKS: dict[str, Task] = {
    "mnist-mlp": Task("mnist-mlp", "MNIST, the paper's MLP (784-1024-10, dropout 0.2)",
                      _image_task_loader("load_mnist", "mnist"), _mlp, epochs=12, quick_epochs=3),
    "fashion-mlp": Task("fashion-mlp", "Fashion-MNIST, the paper's MLP (784-1024-10, dropout 0.2)",
                        _image_task_loader("load_fashion_mnist", "fashion-mnist"), _mlp, epochs=12, quick_epochs=3),
    "fashion-cnn": Task("fashion-cnn", "Fashion-MNIST, the paper's CNN (N = 32)",
                        _image_task_loader("load_fashion_mnist", "fashion-mnist"), _cnn, epochs=12, quick_epochs=3),
    "cifar10-cnn": Task("cifar10-cnn", "CIFAR-10, the paper's CNN (N = 32)",
                        _image_task_loader("load_cifar10", "cifar-10"), _cnn, epochs=12, quick_epochs=3),
    "tabular": Task("tabular", "every table of a manifest, MLP 256-256 (70/30 stratified split, 15 % hold-back)",
                    _tabular_load, _tabular_mlp, epochs=60, quick_epochs=20, holdback=0.15,
                    methods=("occam-val", "occam", "occam-guarded", "gd", "gd-wd", "gd+prune", "gd+prune+ft",
                             "gmp", "gmp-oracle", "random-forest", "hist-gradient-boosting")),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown bench task {name!r}; accepted: {', '.join(TASKS)}") from None
