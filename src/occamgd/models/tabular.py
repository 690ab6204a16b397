"""The paper's dense network for tabular classification: (Linear -> ReLU [-> Dropout]) per hidden layer -> Linear."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..errors import InvalidValueError


class TabularMLP(nn.Sequential):
    """The reference MLP of the tabular experiments (256-256 hidden units, no dropout, by default).

    Children: fc1, relu1, [dropout1], fc2, relu2, [dropout2], ..., out.
    Its Linear weights are prunable by default; the biases are not.
    """

    def __init__(
        self,
        in_features: int,
        classes: int,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ):
        for name, value in (("in_features", in_features), ("classes", classes)):
            if not (isinstance(value, int) and value >= 1):
                raise InvalidValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (
            isinstance(hidden, Sequence)
            and not isinstance(hidden, (str, bytes))
            and len(hidden) >= 1
            and all(isinstance(h, int) and h >= 1 for h in hidden)
        ):
            raise InvalidValueError(f"hidden must be a non-empty sequence of integers >= 1, got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"dropout{i}"] = nn.Dropout(dropout)
            width = h
        layers["out"] = nn.Linear(width, classes)
        super().__init__(layers)
