"""The paper's reference networks."""

from .cnn import CNN
from .gpt import GPT, GPTConfig
from .mlp import MLP
from .resnet import ResNet
from .tabular import TabularMLP

__all__ = ["CNN", "MLP", "ResNet", "TabularMLP"]
__all__ += ["GPT", "GPTConfig"]
