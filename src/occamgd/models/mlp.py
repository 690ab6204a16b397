"""The paper's "linear network": Flatten -> Linear(in, N) -> ReLU -> Dropout(0.2) -> Linear(N, classes)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import InvalidValueError


class MLP(nn.Sequential):
    """The reference MLP of the MNIST experiment (N = 1024 hidden units, dropout 0.2).

    Its two Linear weights are prunable by default; the biases are not.
    """

    def __init__(self, in_features: int, classes: int, hidden: int = 1024, dropout: float = 0.2):
        for name, value in (("in_features", in_features), ("classes", classes), ("hidden", hidden)):
            if not (isinstance(value, int) and value >= 1):
                raise InvalidValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"dropout must be in [0, 1), got {dropout!r}")
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(in_features, hidden),
                relu=nn.ReLU(),
                dropout=nn.Dropout(dropout),
                fc2=nn.Linear(hidden, classes),
            )
        )
