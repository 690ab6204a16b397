"""Shared, generic test helpers: tiny models and data (keep everything small and CPU-only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def _tiny_mlp(features: int = 6, hidden: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _tiny_data(n: int = 32, features: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


@pytest.fixture
def tiny_mlp():
    """Factory: ``tiny_mlp(features=6, hidden=8, classes=3, seed=0)`` -> Linear/ReLU/Linear."""
    return _tiny_mlp


@pytest.fixture
def tiny_data():
    """Factory: ``tiny_data(n=32, features=6, classes=3, seed=0)`` -> (x, y) for classification."""
    return _tiny_data


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (the test machine is shared), then restore the count.

    Use it for a whole file with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
