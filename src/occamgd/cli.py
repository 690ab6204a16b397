"""The ``occamgd`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import InvalidValueError, NotPrunedWarning, OccamgdError

#: Exit codes scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    from .bench import METHODS, TASKS
    from .bench.demo import DATASETS

    parser = argparse.ArgumentParser(
        prog="occamgd",
        description="Occam Gradient Descent: train networks that prune themselves to the right size.",
    )
    parser.add_argument("--version", action="version", version=f"occamgd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = TASKS["demo"]
    parser_demo = sub.add_parser(
        "demo",
        help="plain gradient descent vs Occam on a dataset bundled with scikit-learn (no download)",
        description=f"The bench's demo task: {demo.description}; methods {', '.join(demo.methods)}. Prints a "
        "side-by-side table and writes results.md and PNGs under OUT/demo (finished runs are resumed).",
    )
    parser_demo.add_argument("--dataset", default="digits", choices=DATASETS, help="bundled dataset (default: digits)")
    parser_demo.add_argument("--epochs", type=int, help=f"epochs per run (default: {demo.budget})")
    parser_demo.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    parser_demo.add_argument("--out", default="occamgd-demo", help="output directory (default: ./occamgd-demo)")
    parser_demo.add_argument("--quiet", action="store_true", help="no progress bars")
    tasks = "; ".join(f"{t.name}: {t.description}" for t in TASKS.values())
    bench = sub.add_parser(
        "bench",
        help="reproduce the paper's experiments: every method, several seeds, tables and plots",
        description="Run every method of a task for several seeds (resuming finished runs of the same "
        f"configuration), then write results.md and PNGs under OUT/TASK. Tasks: {tasks}.",
    )
    bench.add_argument("task", choices=list(TASKS), help="the experiment")
    bench.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    bench.add_argument("--quick", action="store_true",
                       help="fewer epochs (and a subsample of image data); char-gpt: the small CPU model")
    bench.add_argument("--epochs", type=int, help="epochs per run instead of the task's (epoch tasks; runs go to "
                       "TASK-eN)")
    bench.add_argument("--steps", type=int, help="optimizer steps per run instead of the task's (step tasks: "
                       "char-gpt; runs go to TASK-sN)")
    bench.add_argument("--methods", help=f"comma-separated subset of the task's methods ({', '.join(METHODS)})")
    bench.add_argument("--out", default="runs", help="output directory (default: ./runs)")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    options = bench.add_argument_group("task options (each task takes its own; others are refused)")
    options.add_argument("--manifest", help="tabular: manifest file or directory (default: $OCCAMGD_TABULAR, else "
                         "the 12 tables bundled with occamgd)")
    options.add_argument("--datasets", type=_names, help="tabular: comma-separated tables of the manifest to run "
                         "(default: all)")
    options.add_argument("--data-root", help="image tasks and char-gpt: directory holding the data files "
                         "(default: the search order)")
    options.add_argument("--corpus", help="char-gpt: text file (default: Tiny Shakespeare, bundled)")
    options.add_argument("--gpu", action="store_const", const=True,
                         help="char-gpt: train on CUDA with bf16 and torch.compile")
    _add_model_commands(sub)
    return parser


def _widths(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths such as 256,256, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _add_model_commands(sub) -> None:
    from .schedules import DEFAULT_PRESET, PRESETS

    fit = sub.add_parser(
        "fit",
        help="train on a CSV file and write a model directory",
        description="Train the tabular MLP with Occam Gradient Descent on a CSV file (first row the header, an "
        "empty cell missing) and write MODEL_DIR: weights with masks (dense and sparse safetensors), "
        "preprocessing.json and report.json. The task is classification when the target has a "
        "non-numeric value or at most 20 distinct whole numbers, regression otherwise. Non-numeric "
        "feature columns are one-hot encoded, numeric ones standardised. Rows with an empty target are "
        "dropped with a warning.",
    )
    fit.add_argument("csv", help="training data (CSV with a header row)")
    fit.add_argument("--target", required=True, help="name of the column to predict")
    fit.add_argument("--task", choices=("classification", "regression"), help="override the inferred task")
    fit.add_argument("--out", help="model directory to write (default: ./<csv name>-model)")
    fit.add_argument("--epochs", type=int, default=60, help="training epochs (default: 60)")
    fit.add_argument("--holdback", type=float, default=0.15,
                     help="fraction of rows held back to drive pruning and pick the epoch (default: 0.15)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    fit.add_argument("--schedule", choices=list(PRESETS),
                     help=f"rate controller preset (default: {DEFAULT_PRESET}, the library's default)")
    fit.add_argument("--min-density", type=float, help="never prune below this kept fraction of the weights")
    fit.add_argument("--max-density", type=float,
                     help="end at most this dense: as small as the data allows, at most this (e.g. 0.2)")
    fit.add_argument("--hidden", type=_widths, default=[256, 256], help="hidden layer widths (default: 256,256)")
    fit.add_argument("--categorical", type=_names, default=[],
                     help="comma-separated columns to one-hot encode even though they look numeric")
    fit.add_argument("--drop", type=_names, default=[], help="comma-separated columns to ignore (ids, leaks)")
    fit.add_argument("--force", action="store_true",
                     help="replace MODEL_DIR if it exists and is a model directory occamgd wrote (nothing else)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    predict = sub.add_parser(
        "predict",
        help="predict with a model directory",
        description="Predict every row of a CSV file with a model written by `occamgd fit`: the target column "
        "(class labels spelled as in the training CSV) and, for classification, one proba_<label> column "
        "per class. Extra columns (the target among them) are ignored.",
    )
    predict.add_argument("model_dir", help="directory written by occamgd fit")
    predict.add_argument("csv", help="rows to predict (CSV with the training columns)")
    predict.add_argument("--out", help="predictions CSV to write (default: standard output); never the input CSV "
                         "nor a file in MODEL_DIR")
    predict.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    report = sub.add_parser(
        "report",
        help="print a model directory's training history and plot it",
        description="Print the summary and per-epoch history of a model written by `occamgd fit`, and write "
        "a plot of training loss, hold-back loss and density per epoch.",
    )
    report.add_argument("model_dir", help="directory written by occamgd fit")
    report.add_argument("--plot", help="PNG to write (default: MODEL_DIR/curves.png, which is rewritten each "
                        "time); never another file in MODEL_DIR")
    report.add_argument("--force", action="store_true", help="replace the --plot file if it exists")


class _DataWarnings:
    """Show warnings about the data (rows dropped for an empty target, unseen categories, ...) in
    the command line's own words, also when the command then fails; library warnings keep their
    usual form."""

    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always", UserWarning)
        return self

    def __exit__(self, *exc):
        import warnings

        self._catcher.__exit__(*exc)
        for w in self._caught:
            if type(w.message) is UserWarning or issubclass(w.category, NotPrunedWarning):
                print(f"occamgd: warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return False


def _run_fit(args) -> None:
    from pathlib import Path

    from .modeldir import fit_csv, summary

    out = f"{Path(args.csv).stem}-model" if args.out is None else args.out
    with _DataWarnings():
        report = fit_csv(args.csv, args.target, out, task=args.task, epochs=args.epochs,
                         holdback=args.holdback, seed=args.seed, hidden=args.hidden, schedule=args.schedule,
                         min_density=args.min_density, max_density=args.max_density,
                         categorical=args.categorical, drop=args.drop, force=args.force,
                         progress=not args.quiet)
    if not args.quiet:
        print(summary(report))
        print(f"wrote {out}")


def _print(text: str) -> None:
    """Write to standard output; a reader that stops early (``| head``) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _run_predict(args) -> None:
    from .io import atomic_write_text, check_output_file
    from .modeldir import load_model_dir, read_csv, spreadsheet_safe

    if args.out is not None:
        check_output_file(args.out, what="predictions file", reads=(args.csv,), protected=(args.model_dir,),
                          force=args.force)
    with _DataWarnings():
        model = load_model_dir(args.model_dir)
        predictions = model.predict(read_csv(args.csv), source=f"CSV file {args.csv}")
    text = spreadsheet_safe(predictions).to_csv(index=False)
    if args.out:
        atomic_write_text(text, args.out)
    else:
        _print(text)


def _run_report(args) -> None:
    from pathlib import Path

    from .io import check_output_file
    from .modeldir import PLOT_NAME, history_table, read_report, summary, write_plots

    own = Path(args.model_dir) / PLOT_NAME
    plot = check_output_file(own if args.plot is None else args.plot, what="plot", protected=(args.model_dir,),
                             own=(own,), force=args.force)
    report = read_report(args.model_dir)
    plot = write_plots(report, plot)
    _print(f"{summary(report)}\n\n{history_table(report)}\n\nwrote {plot}\n")


def _run_bench(args) -> None:
    from .bench import TASKS
    from .bench.runner import run_bench

    task = TASKS[args.task]
    for flag, unit in (("epochs", "epochs"), ("steps", "steps")):
        if getattr(args, flag) is not None and task.unit != unit:
            raise InvalidValueError(f"task {task.name!r} counts {task.unit}, not {unit}; accepted: --{task.unit}")
    budget = args.epochs if task.unit == "epochs" else args.steps
    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    options = {"manifest": args.manifest, "datasets": args.datasets, "data_root": args.data_root,
               "corpus": args.corpus, "gpu": args.gpu}
    path = run_bench(task.name, seeds=args.seeds, quick=args.quick, out=args.out, methods=methods,
                     progress=not args.quiet, budget=budget, **options)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .bench.demo import run

            run(dataset=args.dataset, epochs=args.epochs, seeds=args.seeds, out=args.out, progress=not args.quiet)
        elif args.command == "bench":
            _run_bench(args)
        elif args.command == "fit":
            _run_fit(args)
        elif args.command == "predict":
            _run_predict(args)
        elif args.command == "report":
            _run_report(args)
    except OccamgdError as exc:  # input occamgd checked and refused; anything else is a fault, with its traceback
        print(f"occamgd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a disk or permission problem, not bad input: say so without a traceback
        print(f"occamgd: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("occamgd: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
