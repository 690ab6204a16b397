"""The epoch tasks: images, tables and the demo, all trained by :func:`occamgd.fit`.

Every neural method of a seed trains the task's model from the same initial weights on the same
batches, and reports the epoch with the lowest hold-back loss: the test split never chooses.
(The step-based char-GPT task is in :mod:`occamgd.bench.chargpt`.)
"""

from __future__ import annotations

import functools
import math
import time

import torch
from torch import nn

from ..errors import InvalidValueError
from ..fit import fit
from ..io import atomic_save
from ..models import MLP
from ..rigl import RigL, update_interval
from ..schedules import Never
from .measure import macs_per_sample, model_size, parameter_counts, throughput_fields, training_flops
from .registry import BenchData, Context, Task, TrainSpec, register_task

#: Methods of every epoch task, in report order.
EPOCH_METHODS = ("occam-val", "occam", "occam-planned", "occam-guarded", "occam-search", "gd", "gd-wd", "gd+prune", "gd+prune+ft", "gmp",
                 "gmp-grid", "gmp-oracle", "rigl")
#: Structured methods (whole groups pruned, the live model shrunk while training), on the networks they fit.
STRUCTURED_METHODS = ("occam-structured", "occam-planned-structured", "gmp-structured")
QUICK_IMAGES = (6000, 1000)  # train / test rows of an image task with --quick


@functools.lru_cache(maxsize=4)
def _images(loader_name: str, root: str | None) -> tuple:
    from ..data import images

    return getattr(images, loader_name)(root=root)


def _image_loader(loader_name: str, dataset: str):
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


def _tabular_load(seed: int, quick: bool, options: dict) -> list[BenchData]:
    from ..data.tabular import load_table, read_manifest

    manifest = options.get("manifest")
    names = list(read_manifest(manifest))
    chosen = options.get("datasets")
    if chosen is not None:
        unknown = [n for n in chosen if n not in names]
        if unknown or not chosen:
            raise InvalidValueError(f"datasets {unknown or chosen} are not tables of the manifest; accepted: "
                                    f"one or more of {', '.join(names)}")
        names = [n for n in names if n in chosen]
    out = []
    for name in names:
        table = load_table(name, manifest, test_size=0.3, seed=seed)
        as_xy = lambda X, y: (torch.as_tensor(X), torch.as_tensor(y))  # noqa: E731
        out.append(BenchData(name, as_xy(table.X_train, table.y_train), as_xy(table.X_test, table.y_test),
                             len(table.classes)))
    return out


def _demo_load(seed: int, quick: bool, options: dict) -> list[BenchData]:
    from .demo import load_bundled

    name = options.get("dataset") or "digits"
    train, test, classes = load_bundled(name, seed)
    return [BenchData(name, train, test, classes)]


def _mlp(ctx: Context) -> nn.Module:
    return MLP(ctx.data.train[0][0].numel(), ctx.data.classes)


def _cnn(ctx: Context) -> nn.Module:
    from ..models import CNN

    channels, height, width = ctx.data.train[0].shape[1:]
    return CNN(channels, ctx.data.classes, n=32, image_size=(height, width))


def _resnet(ctx: Context) -> nn.Module:
    from ..models import ResNet

    channels, height, width = ctx.data.train[0].shape[1:]
    return ResNet(channels, ctx.data.classes, widths=(16, 32, 64), blocks=1, image_size=(height, width))


def _tabular_mlp(ctx: Context) -> nn.Module:
    from ..models import TabularMLP

    return TabularMLP(ctx.data.train[0].shape[1], ctx.data.classes, hidden=(256, 256))


def epoch_record(ctx: Context, model: nn.Module, history, selected: int | None, seconds: float,
                 holdback: float, masks=None) -> dict:
    """The record fields of an epoch run, read at the selected epoch (the last one when none).

    ``model`` is the final model (the selected epoch's, with its shapes when it shrank) and ``masks`` its
    masks. FLOPs count the dense model's MACs (:func:`~occamgd.bench.measure.training_flops`); the
    final model's parameters and its inference throughput are measured beside a dense model of the task
    (same shapes as at the start; its values do not change its speed), in this same process."""
    record = history[selected if selected is not None else -1]
    train_rows = len(ctx.data.train[1]) - round(holdback * len(ctx.data.train[1]))
    dense = ctx.task.model(ctx).to(next(model.parameters()).device)
    example = ctx.data.train[0][:1].to(next(model.parameters()).device)
    macs = macs_per_sample(dense, example)
    numel = {name: p.numel() for name, p in dense.named_parameters()}
    # A shrunk model's densities against its live shapes (the history's count the removed entries too).
    live_densities = ({n: float(m.sum()) / m.numel() for n, m in masks.items()} if masks is not None
                      else record.get("densities"))
    images = ctx.data.test[0] if ctx.data.test is not None else ctx.data.train[0]
    rows = [{**r, "seconds": r.get("train_time")} for r in history.to_list()]
    return {
        "selected_epoch": record["epoch"],
        "selection_loss": record.get("holdback_loss"),
        "test_loss": record.get("test_loss"),
        "test_acc": record.get("test_acc"),
        "density": record["density"],
        **model_size(model, live_densities),
        **parameter_counts(model, masks),
        "dense_params": sum(numel.values()),
        **training_flops(macs, history, train_rows, numel),
        **throughput_fields(model, dense, images[:256].to(example.device)),
        "train_seconds": seconds,
        "history": rows,
    }


class _RigLInFit:
    """RigL inside :func:`occamgd.fit`: attached by the optimizer factory (it knows the run's steps:
    epochs times the batches of the training part left after the hold-back), its density written into
    fit's epoch records, and the masks of the epoch fit keeps restored with that epoch's weights."""

    def __init__(self, net: nn.Module, settings: dict, ctx: Context, batch_size: int, holdback: float, base):
        rows = len(ctx.data.train[1])
        self.total_steps = ctx.budget * math.ceil((rows - int(round(holdback * rows))) / batch_size)
        self.net, self.settings, self.seed, self.base = net, settings, ctx.seed, base
        self.rigl: RigL | None = None
        self.best: dict | None = None

    def optimizer(self, params):
        opt = self.base(params)
        self.rigl = RigL(self.net, opt, total_steps=self.total_steps, seed=self.seed,
                         update_every=update_interval(self.total_steps, self.settings.get("end", 0.75)),
                         **self.settings)
        return opt

    def epoch_end(self, record: dict) -> None:
        # fit counts its own (all-kept) masks: the weights RigL keeps are what this epoch trained.
        record.update(density=self.rigl.density, kept=self.rigl.masks.kept, densities=self.rigl.densities())
        # The same choice as fit's keep_best: the first epoch with the lowest hold-back loss.
        if self.best is None or record["holdback_loss"] < self.best["loss"]:
            self.best = {"epoch": record["epoch"], "loss": record["holdback_loss"], "state": self.rigl.state_dict()}

    def finish(self, best_epoch: int | None, keep_best: bool) -> dict:
        if keep_best and best_epoch is not None:
            if self.best is None or self.best["epoch"] != best_epoch:
                raise RuntimeError(f"fit kept epoch {best_epoch}, RigL's masks were kept for "
                                   f"{self.best and self.best['epoch']}: their choices of the best epoch differ")
            self.rigl.load_state_dict(self.best["state"])
        self.rigl.detach()
        return {"rigl": repr(self.rigl), "rigl_updates": len(self.rigl.history)}


def epoch_task(name: str, description: str, load, model, *, epochs: int, quick_epochs: int, batch_size: int = 32,
               lr: float = 1e-3, holdback: float = 0.1, methods: tuple[str, ...] = EPOCH_METHODS,
               options: tuple[str, ...] = (), **fields) -> Task:
    """A task trained one epoch at a time by :func:`occamgd.fit` (Adam, ``lr``, ``batch_size``)."""

    def train(ctx: Context, spec: TrainSpec) -> dict:
        torch.manual_seed(ctx.seed)
        net = ctx.task.model(ctx)
        if spec.start is not None:
            net.load_state_dict(spec.start["model"])
        optimizer = None
        if spec.weight_decay is not None:
            optimizer = lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay)  # noqa: E731
        sparse = _RigLInFit(net, spec.rigl, ctx, batch_size, holdback, optimizer or (
            lambda params: torch.optim.Adam(params, lr=lr))) if spec.rigl is not None else None
        start = time.perf_counter()
        result = fit(net, ctx.data.train, test=ctx.data.test, epochs=ctx.budget, batch_size=batch_size, lr=lr,
                     schedule=spec.schedule or Never(), signal=spec.signal, holdback=holdback, seed=ctx.seed,
                     keep_best=spec.save_final is None, progress=False,
                     optimizer=optimizer if sparse is None else sparse.optimizer,
                     on_epoch_end=None if sparse is None else sparse.epoch_end,
                     initial_masks=None if spec.start is None else spec.start["masks"],
                     structured=spec.structured, shrink=spec.shrink, criterion=spec.criterion)
        seconds = time.perf_counter() - start
        rigl = sparse.finish(result.best_epoch, keep_best=spec.save_final is None) if sparse is not None else {}
        if spec.save_final is not None:
            # The final model is what post-training pruning starts from.
            atomic_save(net.state_dict(), spec.save_final)
        # The final model's masks: RigL's where it trained sparse (fit's own are all kept then).
        masks = sparse.rigl.masks if sparse is not None else result.occam.masks
        masks = {name: masks[name] for name in masks}
        return {**epoch_record(ctx, net, result.history, result.best_epoch, seconds, holdback, masks),
                "schedule": repr(result.occam.schedule) if spec.schedule is not None else None, **rigl}

    def settings(quick: bool, opts: dict) -> dict:
        return {"batch_size": batch_size, "lr": lr, "holdback": holdback, "optimizer": "Adam"}

    return Task(name, description, load, model, train, settings, evaluations=lambda ctx: ctx.budget,
                budget=epochs, quick_budget=quick_epochs, unit="epochs", methods=methods, options_accepted=options,
                **fields)


_images_options = ("data_root",)
register_task(epoch_task("mnist-mlp", "MNIST, the paper's MLP (784-1024-10, dropout 0.2)",
                         _image_loader("load_mnist", "mnist"), _mlp, epochs=12, quick_epochs=3,
                         options=_images_options))
register_task(epoch_task("fashion-mlp", "Fashion-MNIST, the paper's MLP (784-1024-10, dropout 0.2)",
                         _image_loader("load_fashion_mnist", "fashion-mnist"), _mlp, epochs=12, quick_epochs=3,
                         options=_images_options, methods=EPOCH_METHODS + STRUCTURED_METHODS))
register_task(epoch_task("fashion-cnn", "Fashion-MNIST, the paper's CNN (N = 32)",
                         _image_loader("load_fashion_mnist", "fashion-mnist"), _cnn, epochs=12, quick_epochs=3,
                         options=_images_options, methods=EPOCH_METHODS + STRUCTURED_METHODS))
register_task(epoch_task("fashion-resnet", "Fashion-MNIST, a residual CNN (occamgd.models.ResNet: 16-32-64 channels, "
                         "one BasicBlock a stage, BatchNorm, global average pooling)",
                         _image_loader("load_fashion_mnist", "fashion-mnist"), _resnet, epochs=12, quick_epochs=3,
                         options=_images_options, methods=EPOCH_METHODS + STRUCTURED_METHODS))
register_task(epoch_task("cifar10-cnn", "CIFAR-10, the paper's CNN (N = 32)",
                         _image_loader("load_cifar10", "cifar-10"), _cnn, epochs=12, quick_epochs=3,
                         options=_images_options))
register_task(epoch_task("tabular", "every table of a manifest (default: the 12 bundled tables), MLP 256-256 "
                         "(70/30 stratified split, 15 % hold-back)", _tabular_load, _tabular_mlp, epochs=60,
                         quick_epochs=20, holdback=0.15, options=("manifest", "datasets"),
                         methods=EPOCH_METHODS + ("random-forest", "hist-gradient-boosting")))
register_task(epoch_task("demo", "a dataset bundled with scikit-learn (digits by default), the paper's MLP "
                         "(25 % stratified test split, 10 % hold-back)", _demo_load, _mlp, epochs=20,
                         quick_epochs=5, options=("dataset",), methods=("gd", "occam", "occam-val", "occam-planned", "occam-guarded", "occam-search")))
