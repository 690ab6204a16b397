"""A run that ends without pruning says so, and why: the controller's phase and what to change.

Short runs are where a controller that waits for the dense network's gains to slow can still be
waiting at the end (a 5-epoch demo, a small table on the command line); then ``fit`` warns, the
history records it, and ``occamgd fit`` prints it in its summary.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import occamgd
from occamgd.cli import EXIT_OK, main
from occamgd.errors import NotPrunedWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, 0] > 0).long()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def test_fit_that_ends_in_the_warm_up_warns_and_records_why():
    with pytest.warns(NotPrunedWarning, match=r"after 3 steps the Guarded controller was still in its warm-up "
                                               r"phase .* schedule='paper'"):
        result = occamgd.fit(_net(), _data(), epochs=4, schedule=occamgd.Guarded(warmup=10), progress=False)
    assert result.occam.density == 1.0
    assert "warm-up" in result.history[-1]["warning"]


def test_every_prune_rolled_back_is_named():
    occam = occamgd.Occam(_net(), schedule=occamgd.Guarded(warmup=0, start_tol=0.9, tol=0.0, max_rollbacks=1))
    for signal in (1.0, 1.0, 2.0):  # no gain: it prunes; then the signal rises: rolled back, then stopped
        occam.step(signal)
    assert occam.density == 1.0 and "rolled back" in [r["action"] for r in occam.history]
    assert "every prune of the Guarded controller was rolled back" in occam.unpruned_reason()


def test_no_warning_once_something_is_pruned_or_for_plain_training():
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotPrunedWarning)
        occamgd.fit(_net(), _data(), epochs=4, schedule="paper", keep_best=False, progress=False)  # returns a pruned model
        occamgd.fit(_net(), _data(), epochs=4, schedule=occamgd.Never(), progress=False)
    with pytest.warns(NotPrunedWarning, match="epochs=1 never prunes"):
        occamgd.fit(_net(), _data(), epochs=1, progress=False)


def test_the_command_line_prints_it_in_its_summary(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    pd.DataFrame({"x": x, "z": rng.normal(size=80), "y": np.where(x > 0, "a", "b")}).to_csv(tmp_path / "t.csv",
                                                                                          index=False)
    assert main(["fit", str(tmp_path / "t.csv"), "--target", "y", "--epochs", "2", "--hidden", "8",
                 "--schedule", "guarded", "--out", str(tmp_path / "m")]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "warning: Occam ended without pruning" in out  # the summary
    assert "occamgd: warning: Occam ended without pruning" in err  # said as it happened


def test_a_wrapped_controller_is_named_with_its_phase():
    occam = occamgd.Occam(_net(), schedule=occamgd.schedules.Every(occamgd.Guarded(warmup=10), 2))
    for signal in (1.0, 0.9, 0.8, 0.7):
        occam.step(signal)
    reason = occam.unpruned_reason()
    assert "the Guarded controller was still in its warm-up phase" in reason and "Every" not in reason


def test_a_fit_that_pruned_but_kept_a_dense_epoch_says_so():
    # The hold-back loss is lowest at epoch 0, before the first prune; every later epoch is pruned.
    scale = [0.1, 10.0, 10.0, 10.0, 10.0, 10.0]
    seen = []

    def loss(out, target):
        return F.cross_entropy(out, target) * scale[min(len(seen), len(scale) - 1)]

    with pytest.warns(NotPrunedWarning, match=r"fit kept epoch 0, a dense one: it pruned later"):
        result = occamgd.fit(_net(), _data(), epochs=6, loss=loss, schedule=occamgd.ConstantRate(0.3),
                             on_epoch_end=seen.append, progress=False)
    assert result.best_epoch == 0 and result.occam.density == 1.0 and "dense one" in result.history[-1]["warning"]
