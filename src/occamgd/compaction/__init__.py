"""Make a pruned network physically smaller and faster, and measure by how much.

Zeros left by unstructured pruning save nothing on ordinary hardware. Here:

- :func:`structured_pruning` traces a model on an example input (``tracing``), finds the groups
  of units that must be removed together (``graph``), and returns the selection and criterion
  that prune them whole (``plan``): ``Occam(model, opt, **structured_pruning(model, example_input))``.
- :func:`compact` returns a smaller dense copy of the model without the pruned units (``cut``).
- each layer type is a registered handler (``handlers``): :func:`register_handler` adds one.
- :func:`to_semi_structured` converts 2:4-sparse Linear layers (see
  :func:`occamgd.criteria.nm_magnitude`) for sparse tensor cores, on CUDA, fp16/bf16
  (``semi_structured``).
- :func:`model_size` and :func:`compaction_report` measure parameters, bytes, latency and
  throughput before and after (``report``).

See docs/compaction.md for what is supported and why.
"""

from __future__ import annotations

from .cut import compact, default_example
from .graph import Graph
from .handlers import (
    HANDLERS,
    HeadsHandler,
    handler_for,
    register_example,
    register_handler,
)
from .plan import structured_pruning
from .report import compaction_report, model_size
from .semi_structured import (
    SEMI_STRUCTURED_MIN_FEATURES,
    SEMI_STRUCTURED_MULTIPLES,
    to_semi_structured,
)
from .tracing import trace

__all__ = [
    "HANDLERS",
    "SEMI_STRUCTURED_MIN_FEATURES",
    "SEMI_STRUCTURED_MULTIPLES",
    "Graph",
    "HeadsHandler",
    "compact",
    "compaction_report",
    "default_example",
    "handler_for",
    "model_size",
    "register_example",
    "register_handler",
    "structured_pruning",
    "to_semi_structured",
    "trace",
]
