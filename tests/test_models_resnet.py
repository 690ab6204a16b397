"""occamgd.models.ResNet: shape, refusals, and that its residual channels compact and shrink while training."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import occamgd
from occamgd import ConstantRate, Occam
from occamgd.compaction import compact, structured_pruning
from occamgd.errors import InvalidValueError
from occamgd.models import ResNet
from occamgd.schedules import Decision, Schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_and_stages():
    torch.manual_seed(0)
    model = ResNet(1, 10, widths=(8, 16, 32), blocks=2)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)  # global pooling: any side large enough
    assert model.stages[1][0].conv1.stride == (2, 2) and model.stages[1][1].conv1.stride == (1, 1)
    assert len(model.stages[0][0].shortcut) == 0 and len(model.stages[1][0].shortcut) == 2
    assert model.fc.in_features == 32


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": ()}, "widths must be a non-empty sequence"),
    ({"blocks": 0}, "blocks must be an integer >= 1, got 0"),
    ({"image_size": (3, 28)}, "too small for 2 stride-2 stages"),
    ({"image_size": "28"}, "image_size must be an integer"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(InvalidValueError, match=message):
        ResNet(1, 10, **kwargs)


def _pruned_masks(model, plan, rate=0.5):
    weights = {n: p.detach() for n, p in model.named_parameters() if n in plan["include"]}
    full = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return plan["criterion"](weights, full, rate)


def test_residual_channels_compact_with_equal_outputs():
    torch.manual_seed(0)
    model = ResNet(1, 10, widths=(8, 16), blocks=2)
    x = torch.randn(4, 1, 28, 28)
    model.train()
    model(x)  # BatchNorm statistics that are not the identity
    plan = structured_pruning(model, x)
    names = plan["criterion"].context["names"]
    # A stage's blocks are tied by their additions: the stem with stage 0's second convolutions.
    assert ["stem.0", "stages.0.0.conv2", "stages.0.1.conv2"] in names
    masks = _pruned_masks(model, plan)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    small = compact(model, masks, x)
    model.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


def test_shrinks_while_training_with_fit():
    torch.manual_seed(0)
    X = torch.randn(64, 1, 12, 12)
    y = (X.mean(dim=(1, 2, 3)) > 0).long()
    model = ResNet(1, 2, widths=(8, 16), image_size=12)
    before = sum(p.numel() for p in model.parameters())
    result = occamgd.fit(model, (X, y), epochs=3, batch_size=16, schedule=ConstantRate(0.5), structured=True,
                         shrink=True, keep_best=False, progress=False)
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.5 * before
    assert model.stem[0].weight.shape[0] < 8 and model.stages[1][0].conv2.weight.shape[0] < 16
    assert model.fc.in_features == model.fc.weight.shape[1] == model.stages[1][0].conv2.weight.shape[0]
    assert result.history[-1]["live"]["stem.0.weight"] < result.history[0]["live"]["stem.0.weight"]
    assert model(X[:3]).shape == (3, 2)


class PruneThenRollBack(Schedule):
    """Prune half the units, then undo it."""

    needs_snapshot = True

    @dataclass(frozen=True)
    class State:
        epoch: int = 0

    def decide(self, signal, density, state):
        decision = Decision("pruned", 0.5) if state.epoch == 0 else Decision("rolled back", 0.0, restore=True)
        return decision, self.State(state.epoch + 1)


def test_a_rollback_regrows_the_residual_model():
    torch.manual_seed(0)
    model = ResNet(1, 3, widths=(8, 16), image_size=12)
    x = torch.randn(4, 1, 12, 12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    occam = Occam(model, opt, schedule=PruneThenRollBack(), shrink=True, **structured_pruning(model, x))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    dense = sum(p.numel() for p in model.parameters())
    occam.step(1.0)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * dense
    occam.step(2.0)
    assert occam.history[-1]["action"] == "rolled back"
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert model(x).shape == (4, 3)
