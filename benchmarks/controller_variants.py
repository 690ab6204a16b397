"""Variants of a controller on the tables, paired against GD: how a setting was chosen, and what else was tried.

Each ``NAME=SETTINGS`` registers one bench method running ``CONTROLLER(**SETTINGS)`` (a class of
``occamgd.schedules``) on the hold-back loss, trained by the bench (``occamgd bench tabular
--quick``: the same splits, initial weights and batches as its ``gd``; records under
``OUT/tabular-quick/<table>/<NAME>/``, resumable), then prints the paired yardstick
(``benchmarks/yardstick.py``) of every method found under ``OUT/tabular-quick``, with the
development and check tables apart when ``--dev`` names them. Copy ``results/tabular-quick`` into
``OUT`` first to pair against the published gd, gmp-grid and default runs without retraining them.

Run from the repository root (a variant on 15 tables x 20 seeds: about 5 minutes here)::

    mkdir -p runs && cp -r results/tabular-quick runs/
    .venv/bin/python benchmarks/controller_variants.py --seeds 20 --datasets Sonar,Glass,Vehicle \\
        guarded-tol0.1="tol=0.1" guarded-rb2="max_rollbacks=2"
    .venv/bin/python benchmarks/controller_variants.py --controller Search --seeds 5 search-end0.75="end=0.75"
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yardstick  # noqa: E402

from occamgd import schedules  # noqa: E402
from occamgd.bench import METHODS, TASKS  # noqa: E402
from occamgd.bench.methods import _guard_actions  # noqa: E402
from occamgd.bench.registry import Method, register_method  # noqa: E402
from occamgd.bench.runner import run_records  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name=k=v,k2=v2"`` -> ``("name", {"k": v, "k2": v2})``; values are Python literals (numbers, None)."""
    name, sep, settings = text.partition("=")
    if not sep or not name or not name.replace("-", "").replace(".", "").replace("_", "").isalnum():
        raise ValueError(f"a variant is NAME=SETTINGS with NAME of letters, digits, '-', '.', '_', got {text!r}")
    kwargs = {}
    for item in filter(None, (s.strip() for s in settings.split(","))):
        key, sep, value = item.partition("=")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"variant {name!r}: {item!r} is not KEY=VALUE with a literal value") from None
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"variant {name!r}: {item!r} is not KEY=VALUE")
    return name, kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=KEY=VALUE,KEY=VALUE (e.g. guarded-tol0.1=tol=0.1)")
    parser.add_argument("--controller", default="Guarded", help="a controller class of occamgd.schedules (default "
                                                                "Guarded)")
    parser.add_argument("--out", default="runs", help="bench output root (default runs)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. SEEDS-1 (default 5)")
    parser.add_argument("--datasets", help="tables to run (default: all bundled)")
    parser.add_argument("--dev", help="comma-separated development tables, reported apart from the others")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    cls = getattr(schedules, args.controller, None)
    if not (isinstance(cls, type) and issubclass(cls, schedules.Schedule)):
        parser.error(f"--controller must name a controller class of occamgd.schedules, got {args.controller!r}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    try:
        variants = dict(parse_variant(v) for v in args.variants)
        for name, kwargs in variants.items():
            cls(**kwargs)  # bad settings fail here, before any training
            if name in METHODS:
                raise ValueError(f"variant name {name!r} is a bench method already; choose another")
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    for name, kwargs in variants.items():
        register_method(Method(name, f"{args.controller}({kwargs}) on the hold-back loss",
                               schedule=lambda ctx, kwargs=kwargs: cls(**kwargs), extra=_guard_actions))
    task = TASKS["tabular"]
    TASKS["tabular"] = dataclasses.replace(task, methods=(*task.methods, *variants))
    options = {"datasets": args.datasets.split(",")} if args.datasets else {}
    root, *_ = run_records("tabular", args.seeds, True, args.out, ["gd", *variants], not args.quiet, None, **options)
    print(yardstick.reports(root, options.get("datasets"), args.dev, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
