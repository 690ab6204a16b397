"""The ``occamgd`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__

#: Exit codes scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    from .demo import DATASETS

    parser = argparse.ArgumentParser(
        prog="occamgd",
        description="Occam Gradient Descent: train networks that prune themselves to the right size.",
    )
    parser.add_argument("--version", action="version", version=f"occamgd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="plain gradient descent vs Occam on a dataset bundled with scikit-learn (no download)",
        description="Train the paper's MLP with plain gradient descent and with Occam Gradient Descent "
        "on a bundled dataset; print a side-by-side table and write demo.md, results.json and demo.png.",
    )
    demo.add_argument("--dataset", default="digits", choices=DATASETS, help="bundled dataset (default: digits)")
    demo.add_argument("--epochs", type=int, default=20, help="epochs per run (default: 20)")
    demo.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    demo.add_argument("--out", default="occamgd-demo", help="output directory (default: ./occamgd-demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    bench = sub.add_parser(
        "bench",
        help="reproduce the paper's experiments: every method, several seeds, tables and plots",
        description="Run every method of a task for several seeds (resuming finished runs), then write "
        "results.md and PNGs under OUT/TASK.",
    )
    bench.add_argument("task", help="mnist-mlp, fashion-mlp, fashion-cnn, cifar10-cnn or tabular")
    bench.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    bench.add_argument("--quick", action="store_true", help="fewer epochs (and a subsample of image data)")
    bench.add_argument("--out", default="runs", help="output directory (default: ./runs)")
    bench.add_argument("--methods", help="comma-separated subset of the task's methods")
    bench.add_argument("--manifest", help="tabular manifest file or directory (default: ../shared/data/tabular)")
    bench.add_argument("--data-root", help="directory holding the image files (default: the search order)")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            run(dataset=args.dataset, epochs=args.epochs, seeds=args.seeds, out=args.out, progress=not args.quiet)
        elif args.command == "bench":
            from .bench.runner import run_bench

            methods = args.methods.split(",") if args.methods else None
            path = run_bench(args.task, seeds=args.seeds, quick=args.quick, out=args.out, methods=methods,
                             progress=not args.quiet, manifest=args.manifest, data_root=args.data_root)
            print(f"wrote {path}")
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"occamgd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("occamgd: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
