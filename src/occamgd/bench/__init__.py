"""The one experiment layer: tasks, methods, a resumable runner, one record schema, one report.

>>> from occamgd.bench import run_bench
>>> run_bench("tabular", seeds=1, quick=True, methods=["gd", "occam-guarded"])   # -> runs/tabular-quick/results.md

- :mod:`~occamgd.bench.registry`: :class:`Task`, :class:`Method` and their registries
  (:data:`TASKS`, :data:`METHODS`; the command line's choices come from them).
- :mod:`~occamgd.bench.tasks`: the epoch tasks (images, tables, the demo);
  :mod:`~occamgd.bench.chargpt`: the step-based character GPT.
- :mod:`~occamgd.bench.methods`: every method, registered once for every task.
- :mod:`~occamgd.bench.runner`: runs named by their configuration, resumed, one record schema.
- :mod:`~occamgd.bench.report`: tables and plots from those records.
"""

# Each module registers its tasks or methods; the order is the command line's order.
from . import tasks  # noqa: F401, I001
from . import chargpt  # noqa: F401
from . import methods  # noqa: F401
from .registry import METHODS, TASKS, BenchData, Context, Method, Task, TrainSpec, register_method, register_task
from .runner import RECORD_FIELDS, load_records, run_bench

__all__ = ["METHODS", "RECORD_FIELDS", "TASKS", "BenchData", "Context", "Method", "Task", "TrainSpec",
           "load_records", "register_method", "register_task", "run_bench"]
