"""The paper's reference networks."""

from .cnn import CNN
from .gpt import GPT, GPTConfig
from .mlp import MLP
from .tabular import TabularMLP

__all__ = ["CNN", "MLP", "TabularMLP"]
__all__ += ["GPT", "GPTConfig"]
