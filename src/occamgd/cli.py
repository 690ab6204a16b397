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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            run(dataset=args.dataset, epochs=args.epochs, seeds=args.seeds, out=args.out, progress=not args.quiet)
    except (ValueError, TypeError) as exc:
        print(f"occamgd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("occamgd: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
