"""The paper's reference networks."""

from .cnn import CNN
from .mlp import MLP
from .tabular import TabularMLP

__all__ = ["CNN", "MLP", "TabularMLP"]
