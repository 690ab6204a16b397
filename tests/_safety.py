"""Helpers shared by the test_safety_* modules: a small mixed CSV, fast fit flags, file checksums."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from occamgd.io import sha256_file

#: `occamgd fit` flags that keep a test run to a fraction of a second.
FAST = ["--epochs", "2", "--hidden", "8", "--quiet"]


def small_csv(path, n: int = 40, seed: int = 0):
    """A numeric and a categorical feature and a two-class label, written to ``path``."""
    rng = np.random.default_rng(seed)
    size = rng.normal(10.0, 2.0, n).round(2)
    pd.DataFrame({"size": size, "colour": rng.choice(["red", "blue"], n),
                  "label": np.where(size > 10, "big", "small")}).to_csv(path, index=False)
    return path


def checksums(root) -> dict[str, str]:
    """Every file under ``root`` (relative path) and its SHA-256."""
    return {os.path.relpath(os.path.join(d, name), root): sha256_file(os.path.join(d, name))
            for d, _, files in os.walk(root) for name in files}
