"""Masks never silently stop holding, and the Python API refuses what it cannot honour.

Masks follow the parameters by name: a replaced ``Parameter`` (``load_state_dict(assign=True)``)
is masked in its place, or, while the optimizer still updates the old one, the step is refused —
never a density that the live weights contradict. Float masks are refused; frozen parameters are
not pruned unless asked.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import occamgd
from occamgd.errors import InvalidTypeError, InvalidValueError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _pruned():
    model = _net()
    dense = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    occam = occamgd.Occam(model, optimizer, schedule=occamgd.ConstantRate(0.5))
    occam.step(1.0)
    occam.step(1.0)
    return model, optimizer, occam, dense


def _live_density(occam):
    kept = sum(int((occam.model.get_parameter(n) != 0).sum()) for n in occam.masks)
    return kept / occam.masks.total


def test_replaced_parameters_are_masked_in_their_place():
    model, optimizer, occam, dense = _pruned()
    pruned = occam.masks.density
    model.load_state_dict(dense, assign=True)  # new Parameter objects, every weight non-zero
    occam.attach(torch.optim.SGD(model.parameters(), lr=0.1))  # the optimizer the new ones need
    assert occam.density == pruned == pytest.approx(_live_density(occam), abs=0.01)
    x = torch.randn(4, 6)
    for _ in range(3):  # and the masks hold on them through training
        occam.optimizer.zero_grad()
        model(x).sum().backward()
        occam.optimizer.step()
    for name, mask in occam.masks.items():
        assert (model.get_parameter(name)[~mask] == 0).all(), name


def test_a_density_the_live_weights_contradict_is_never_returned():
    model, optimizer, occam, dense = _pruned()
    model.load_state_dict(dense, assign=True)  # the attached optimizer still holds the old objects
    for read in (lambda: occam.density, lambda: occam.densities, lambda: occam.step(1.0)):
        with pytest.raises(InvalidValueError, match=r"\['0.weight', '2.weight'\] were replaced .* occam.attach"):
            read()


def test_float_masks_are_refused():
    model, optimizer, occam, _ = _pruned()
    floats = {name: mask.float() for name, mask in occam.masks.items()}
    with pytest.raises(InvalidTypeError, match=r"mask for '0.weight' is torch.float32; accepted: a torch.bool"):
        occam.masks.update(floats)
    with pytest.raises(InvalidTypeError, match="torch.bool"):
        occamgd.fit(_net(), (torch.randn(20, 6), torch.randint(0, 3, (20,))), epochs=1, progress=False,
                    initial_masks=floats)


def test_frozen_parameters_are_not_pruned_unless_asked():
    model = _net()
    model[0].weight.requires_grad_(False)
    assert list(occamgd.select_prunable(model)) == ["2.weight"]
    assert list(occamgd.select_prunable(model, include=["0.weight", "2.weight"])) == ["0.weight", "2.weight"]
    occam = occamgd.Occam(model, torch.optim.SGD(model[2].parameters(), lr=0.1), schedule=occamgd.ConstantRate(0.5))
    occam.step(1.0)
    assert (model[0].weight != 0).all()
