"""compaction: what structured pruning cannot handle is refused when Occam is built, before any training, naming the
op and the module path and saying how to go on; excluded modules and strict=False go on without those units."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import occamgd
from occamgd.compaction import compact, structured_pruning


class LiteralView(nn.Module):
    """Flattens with a size written as a number: cannot follow removed channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).view(-1, 8 * 6 * 6))))


class Sorting(nn.Module):
    def forward(self, h):
        return torch.sort(h, dim=-1).values


class Unfollowable(nn.Module):
    """A submodule sorts the hidden units: an op the graph has no rule for."""

    def __init__(self):
        super().__init__()
        self.a, self.mix, self.b, self.c = nn.Linear(4, 6), Sorting(), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.mix(self.a(x)))))


class DataDependent(nn.Module):
    """Keeps the positive hidden values only: a shape that depends on the data."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(h * (h > 0)) + h[h > 0].sum()


def _build(model, x, **kwargs):
    return occamgd.Occam(model, torch.optim.SGD(model.parameters(), lr=0.1), **structured_pruning(model, x, **kwargs))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_size_written_as_a_number_is_refused_at_construction_with_the_line_and_what_to_exclude():
    model, x = LiteralView(), torch.randn(2, 3, 8, 8)
    before = _state(model)
    with pytest.raises(ValueError, match=r"trial compaction of LiteralView.*\['conv'\].*shape '\[-1, 288\]'.*"
                                         r"test_compaction_refusals.py:\d+ \(return self.out.*exclude=\['conv'\]"):
        _build(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained or changed
    occam = _build(model, x, exclude=["conv"])  # the conv stays whole; fc's units still go
    assert set(occam.masks) == {"fc.weight", "fc.bias", "out.weight"}
    occam.schedule = occamgd.ConstantRate(0.5)
    occam.step(1.0)
    small = compact(model, occam)
    assert small.fc.out_features == 2 and small.conv.out_channels == 8


def test_an_op_without_a_rule_is_refused_naming_it_and_its_module_path():
    model, x = Unfollowable(), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"cannot follow 1 group.*\['a'\]: sort in 'mix' reads the units.*"
                                         r"exclude=\['a'\].*strict=False.*criterion='layerwise'"):
        _build(model, x)
    for kwargs in ({"exclude": ["mix"]}, {"exclude": ["a"]}, {"strict": False}):
        occam = _build(model, x, **kwargs)
        assert "a.weight" not in occam.masks and "b.weight" in occam.masks, kwargs


def test_a_data_dependent_shape_is_refused_before_training():
    with pytest.raises(ValueError, match=r"\['a'\]: indexes with a tensor \(__getitem__ in the model's forward\)"):
        _build(DataDependent(), torch.randn(3, 4))


def test_an_example_the_model_does_not_take_is_refused_with_the_error():
    with pytest.raises(ValueError, match=r"did not run on the example input.*RuntimeError"):
        structured_pruning(LiteralView(), torch.randn(2, 3, 9, 9))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        structured_pruning(LiteralView(), [torch.randn(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="not a module of LiteralView"):
        structured_pruning(LiteralView(), torch.randn(2, 3, 8, 8), exclude=["convv"])
    with pytest.raises(ValueError, match="scope"):
        structured_pruning(LiteralView(), torch.randn(2, 3, 8, 8), scope="model")


def test_group_norm_channels_go_in_whole_groups_and_grouped_convolutions_are_refused():
    x = torch.randn(2, 3, 8, 8)
    normed = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 6, 1),
                           nn.GroupNorm(3, 6), nn.ReLU(), nn.Conv2d(6, 4, 1))
    setup = structured_pruning(normed, x)
    assert [g[0].index.shape for g in setup["criterion"].groups] == [(2, 4), (3, 2)]  # units: groups of channels
    occam = occamgd.Occam(normed, None, schedule=occamgd.ConstantRate(0.5), **setup)
    occam.step(1.0)
    small = compact(normed, occam)
    assert (small[1].num_groups, small[1].num_channels, small[4].num_groups, small[4].num_channels) == (1, 4, 2, 4)
    normed.eval(), small.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), normed(x), rtol=1e-5, atol=1e-6)
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                            nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1))
    with pytest.raises(ValueError, match=r"\['0'\].*grouped \(groups=2\) convolution"):
        structured_pruning(grouped, x)
    setup = structured_pruning(grouped, x, strict=False)
    assert [n for n in setup["include"] if n.endswith("weight")] == ["4.weight", "6.weight"]
