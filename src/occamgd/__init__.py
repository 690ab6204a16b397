"""occamgd: Occam Gradient Descent (Kausik, arXiv:2405.20194) for PyTorch.

Gradient descent on the weights interleaved with adaptive magnitude pruning, so a network
finds its own size while it trains.
"""

from .criteria import CRITERIA, global_magnitude, layerwise_magnitude, nm_magnitude, structured_magnitude
from .fit import FitResult, History, NonFiniteLossError, fit
from .masks import DEFAULT_PRUNABLE_TYPES, Masks, select_prunable
from .occam import Occam
from .schedules import GMP, PRESETS, ConstantRate, Decision, Guarded, Never, OccamRate, Schedule, Search

__version__ = "0.1.0"

# Names whose modules import optional or heavy libraries load on first use. ``compact`` is a function
# only: its module is ``occamgd.compaction``, so importing that never rebinds the name.
_LAZY = {
    "OccamMLPClassifier": "occamgd.integrations.sklearn",
    "OccamMLPRegressor": "occamgd.integrations.sklearn",
    "compact": "occamgd.compaction",
    "to_semi_structured": "occamgd.compaction",
    "DistributedOccam": "occamgd.integrations.distributed",
    "OccamCallback": "occamgd.integrations.lightning",
    "OccamTrainerCallback": "occamgd.integrations.huggingface",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'occamgd' has no attribute {name!r}")

__all__ = [
    "CRITERIA",
    "DEFAULT_PRUNABLE_TYPES",
    "DistributedOccam",
    "GMP",
    "ConstantRate",
    "Decision",
    "FitResult",
    "Guarded",
    "Search",
    "History",
    "Masks",
    "Never",
    "NonFiniteLossError",
    "Occam",
    "OccamCallback",
    "OccamMLPClassifier",
    "OccamMLPRegressor",
    "OccamRate",
    "OccamTrainerCallback",
    "PRESETS",
    "Schedule",
    "compact",
    "fit",
    "global_magnitude",
    "layerwise_magnitude",
    "nm_magnitude",
    "select_prunable",
    "structured_magnitude",
    "to_semi_structured",
]
