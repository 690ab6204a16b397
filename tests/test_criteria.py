"""criteria.py: the paper's per-tensor magnitude criterion, the global variant, and the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from occamgd.criteria import (
    CRITERIA,
    get_criterion,
    global_magnitude,
    layerwise_magnitude,
    prune_count,
    smallest_k,
)

PROPERTY = settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SHAPES = [(1,), (2,), (5,), (2, 3), (4, 4), (3, 1, 2), (17,)]
# Weights with many ties (a few repeated values, zeros, signed pairs) as well as generic floats.
VALUES = st.one_of(
    st.floats(-4, 4, width=32, allow_subnormal=False),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0]),
)
RATES = st.one_of(st.floats(0, 1, exclude_max=True), st.sampled_from([0.0, 0.1, 0.25, 0.4, 0.5, 0.9, 0.99]))


@st.composite
def weights_and_masks(draw, max_tensors=3, dtype=torch.float32):
    weights, masks = {}, {}
    for i in range(draw(st.integers(1, max_tensors))):
        shape = draw(st.sampled_from(SHAPES))
        n = math.prod(shape)
        values = draw(st.lists(VALUES, min_size=n, max_size=n))
        keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        weights[f"t{i}.weight"] = torch.tensor(values, dtype=dtype).view(shape)
        masks[f"t{i}.weight"] = torch.tensor(keep, dtype=torch.bool).view(shape)
    return weights, masks


def _clone(d):
    return {k: v.clone() for k, v in d.items()}


def _assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _check_pruned_below_kept(weights, old, new):
    """Every entry pruned now has |w| <= every entry kept; equal magnitudes go lowest index first."""
    mags = torch.cat([weights[n].detach().abs().flatten().double() for n in weights])
    was = torch.cat([old[n].flatten() for n in weights])
    now = torch.cat([new[n].flatten() for n in weights])
    pruned_now = was & ~now
    if not pruned_now.any() or not now.any():
        return
    threshold = mags[pruned_now].max()
    assert threshold <= mags[now].min()
    at = mags == threshold
    pruned_idx = torch.nonzero(at & pruned_now).flatten()
    kept_idx = torch.nonzero(at & now).flatten()
    if len(pruned_idx) and len(kept_idx):
        assert pruned_idx.max() < kept_idx.min(), "ties must be pruned lowest flat index first"


# prune_count ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, rate, expected",
    [
        (0, 0.5, 0),
        (1, 0.9, 0),  # a single kept entry is never pruned
        (2, 0.01, 1),  # the 0.01-quantile of two distinct values lies above the smaller one
        (5, 0.25, 1),
        (5, 0.5, 2),
        (10, 0.4, 4),  # ceil(3.6)
        (10, 0.0, 0),
        (31, 0.1, 3),
        (26, 0.28, 7),  # 0.28 * 25 == 7.000000000000001 in floats: float noise must not add an entry
        (51, 0.56, 28),  # 0.56 * 50 == 28.000000000000004 likewise
        (100, 0.99, 99),  # ceil(98.01) == 99: one entry is always left
    ],
)
def test_prune_count_is_ceil_of_rate_times_n_minus_one(n, rate, expected):
    assert prune_count(n, rate) == expected


@given(n=st.integers(0, 10**6), r1=RATES, r2=RATES)
@PROPERTY
def test_prune_count_never_empties_and_is_monotone_in_rate(n, r1, r2):
    lo, hi = sorted([r1, r2])
    assert 0 <= prune_count(n, lo) <= prune_count(n, hi) <= max(n - 1, 0)


# layerwise_magnitude ---------------------------------------------------------------------------
@given(case=weights_and_masks(), rate=RATES)
@PROPERTY
def test_layerwise_prunes_exactly_prune_count_per_tensor_from_the_smallest_and_is_pure(case, rate):
    weights, masks = case
    weights_before, masks_before = _clone(weights), _clone(masks)
    new = layerwise_magnitude(weights, masks, rate)
    _assert_same(weights, weights_before)  # pure: inputs unchanged
    _assert_same(masks, masks_before)
    assert list(new) == list(masks)
    for name, old in masks.items():
        mask = new[name]
        assert mask.dtype == torch.bool and mask.shape == old.shape
        assert not (mask & ~old).any(), "a pruned entry was revived"
        n_kept = int(old.sum())
        assert int((old & ~mask).sum()) == prune_count(n_kept, rate)
        if n_kept >= 1:
            assert mask.any(), "a tensor was emptied"
        _check_pruned_below_kept({name: weights[name]}, {name: old}, {name: mask})
    _assert_same(layerwise_magnitude(weights, masks, rate), new)  # deterministic


@given(case=weights_and_masks(dtype=torch.float64), rate=RATES)
@PROPERTY
def test_layerwise_orders_float64_weights_in_full_precision(case, rate):
    weights, masks = case
    weights = {n: w + 1e-12 * torch.arange(w.numel(), dtype=w.dtype).view_as(w) for n, w in weights.items()}
    new = layerwise_magnitude(weights, masks, rate)
    for name in masks:
        _check_pruned_below_kept({name: weights[name]}, {name: masks[name]}, {name: new[name]})


def test_layerwise_keeps_the_last_entry_of_a_tensor():
    weights = {"a": torch.tensor([0.1, 5.0, 0.2]), "b": torch.tensor([[3.0, -4.0]])}
    masks = {"a": torch.tensor([False, True, False]), "b": torch.tensor([[True, True]])}
    new = layerwise_magnitude(weights, masks, 0.99)
    assert new["a"].tolist() == [False, True, False]
    assert new["b"].tolist() == [[False, True]]  # |3| < |-4|: the sign does not matter


@st.composite
def distinct_magnitudes(draw):
    mags = draw(st.lists(st.integers(1, 10_000), min_size=1, max_size=40, unique=True))
    n = len(mags)
    signs = draw(st.lists(st.sampled_from([1, -1]), min_size=n, max_size=n))
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    weight = torch.tensor([m * s for m, s in zip(mags, signs)], dtype=torch.float32)
    return weight, torch.tensor(keep)


def _numpy_reference_count(weight, mask, rate):
    """The paper's rule: prune the kept |w| strictly below numpy.quantile(kept |w|, rate)."""
    kept = weight.abs()[mask].double().numpy()
    if kept.size == 0:
        return 0
    return int((kept < np.quantile(kept, rate)).sum())


@given(case=distinct_magnitudes(), rate=RATES)
@PROPERTY
def test_layerwise_prunes_exactly_the_kept_weights_below_the_numpy_rate_quantile(case, rate):
    weight, mask = case
    n_kept = int(mask.sum())
    h = rate * max(n_kept - 1, 0)
    # Where rate * (n - 1) is a hair off an integer, numpy's own float noise decides; see the
    # exact-grid test below and the (26, 0.28) case of prune_count.
    assume(h == 0 or abs(h - round(h)) > 1e-6)
    new = layerwise_magnitude({"w": weight}, {"w": mask}, rate)["w"]
    pruned_now = mask & ~new
    assert int(pruned_now.sum()) == _numpy_reference_count(weight, mask, rate)
    if pruned_now.any():  # and they are exactly those below the quantile
        q = np.quantile(weight.abs()[mask].double().numpy(), rate)
        assert torch.equal(pruned_now, mask & (weight.abs().double() < q))


@pytest.mark.parametrize("n", [5, 9, 17, 33])
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_layerwise_matches_numpy_quantile_when_the_quantile_hits_an_entry(n, rate):
    g = torch.Generator().manual_seed(n)
    weight = (torch.randperm(n, generator=g).float() + 1) * torch.where(torch.rand(n, generator=g) > 0.5, 1.0, -1.0)
    mask = torch.ones(n, dtype=torch.bool)
    new = layerwise_magnitude({"w": weight}, {"w": mask}, rate)["w"]
    assert int((~new).sum()) == _numpy_reference_count(weight, mask, rate) == round(rate * (n - 1))


def test_layerwise_ties_prune_lowest_flat_indices_first_and_repeat_exactly():
    weights = {"w": torch.full((3, 3), -0.7)}
    masks = {"w": torch.ones(3, 3, dtype=torch.bool)}
    first = layerwise_magnitude(weights, masks, 0.5)["w"]  # ceil(0.5 * 8) = 4 of 9
    assert (~first).flatten().nonzero().flatten().tolist() == [0, 1, 2, 3]
    for _ in range(3):
        assert torch.equal(layerwise_magnitude(weights, masks, 0.5)["w"], first)
    masks = {"w": torch.ones(3, 3, dtype=torch.bool)}
    masks["w"][0, 1] = False  # already pruned entries are skipped, not counted again
    second = layerwise_magnitude(weights, masks, 0.5)["w"]  # ceil(0.5 * 7) = 4 of 8
    assert (~second).flatten().nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


def test_layerwise_ties_at_the_threshold_go_lowest_index_first():
    weights = {"w": torch.tensor([2.0, 1.0, -3.0, 1.0, 1.0, 0.5])}
    new = layerwise_magnitude(weights, {"w": torch.ones(6, dtype=torch.bool)}, 0.5)["w"]  # ceil(2.5) = 3
    assert new.tolist() == [True, False, True, False, True, False]


def test_layerwise_treats_each_tensor_separately():
    weights = {"small": torch.tensor([0.01, 0.02, 0.03]), "large": torch.tensor([10.0, 20.0, 30.0])}
    masks = {k: torch.ones(3, dtype=torch.bool) for k in weights}
    new = layerwise_magnitude(weights, masks, 0.5)
    assert new["small"].tolist() == [False, True, True]
    assert new["large"].tolist() == [False, True, True]


def test_smallest_k_selects_k_entries_with_ties_to_lowest_index():
    scores = torch.tensor([3.0, 1.0, 1.0, 0.0, 1.0, math.inf])
    assert smallest_k(scores, 0).tolist() == [False] * 6
    assert smallest_k(scores, 2).tolist() == [False, True, False, True, False, False]
    assert smallest_k(scores, 4).tolist() == [False, True, True, True, True, False]


# global_magnitude ------------------------------------------------------------------------------
@given(case=weights_and_masks(), rate=RATES)
@PROPERTY
def test_global_prunes_prune_count_of_all_kept_under_one_threshold(case, rate):
    weights, masks = case
    weights_before, masks_before = _clone(weights), _clone(masks)
    new = global_magnitude(weights, masks, rate)
    _assert_same(weights, weights_before)
    _assert_same(masks, masks_before)
    assert list(new) == list(masks)
    for name, old in masks.items():
        assert new[name].dtype == torch.bool and new[name].shape == old.shape
        assert not (new[name] & ~old).any(), "a pruned entry was revived"
    kept = sum(int(m.sum()) for m in masks.values())
    pruned = sum(int((masks[n] & ~new[n]).sum()) for n in masks)
    assert pruned == prune_count(kept, rate)
    _check_pruned_below_kept(weights, masks, new)
    _assert_same(global_magnitude(weights, masks, rate), new)


@given(case=weights_and_masks(dtype=torch.float64), rate=RATES)
@PROPERTY
def test_global_orders_float64_weights_in_full_precision(case, rate):
    weights, masks = case
    weights = {n: w + 1e-12 * torch.arange(w.numel(), dtype=w.dtype).view_as(w) for n, w in weights.items()}
    _check_pruned_below_kept(weights, masks, global_magnitude(weights, masks, rate))


def test_global_compares_magnitudes_across_tensors():
    weights = {"small": torch.tensor([0.01, 0.02, 0.03]), "large": torch.tensor([10.0, 20.0, 30.0])}
    masks = {k: torch.ones(3, dtype=torch.bool) for k in weights}
    new = global_magnitude(weights, masks, 0.5)  # ceil(0.5 * 5) = 3: all of the small tensor
    assert new["small"].tolist() == [False, False, False]
    assert new["large"].tolist() == [True, True, True]


def test_global_distinguishes_float64_magnitudes_that_float32_would_merge():
    weights = {"a": torch.tensor([1.0 + 1e-12, 5.0], dtype=torch.float64), "b": torch.tensor([1.0, 6.0], dtype=torch.float64)}
    masks = {k: torch.ones(2, dtype=torch.bool) for k in weights}
    new = global_magnitude(weights, masks, 0.2)  # ceil(0.2 * 3) = 1: the smallest, b[0]
    assert new["a"].tolist() == [True, True]
    assert new["b"].tolist() == [False, True]


# Rates and the registry --------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", [layerwise_magnitude, global_magnitude])
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan, math.inf, -math.inf, "0.5", None])
def test_rate_outside_zero_one_raises_value_error(criterion, rate):
    weights = {"w": torch.tensor([1.0, 2.0, 3.0])}
    masks = {"w": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(ValueError, match="rate"):
        criterion(weights, masks, rate)
    with pytest.raises(ValueError, match="rate"):
        prune_count(3, rate)


@pytest.mark.parametrize("criterion", [layerwise_magnitude, global_magnitude])
def test_rate_zero_leaves_masks_unchanged(criterion):
    weights = {"a": torch.tensor([[0.1, -0.2], [0.3, 0.4]]), "b": torch.tensor([1.0, 0.0, 2.0])}
    masks = {"a": torch.tensor([[True, False], [True, True]]), "b": torch.ones(3, dtype=torch.bool)}
    new = criterion(weights, masks, 0.0)
    _assert_same(new, masks)
    assert all(new[k] is not masks[k] for k in masks)


def test_get_criterion_by_name_and_callable():
    assert get_criterion("layerwise") is layerwise_magnitude
    assert get_criterion("global") is global_magnitude
    assert set(CRITERIA) == {"layerwise", "global", "structured", "nm"}

    def mine(weights, masks, rate):
        return dict(masks)

    assert get_criterion(mine) is mine


@pytest.mark.parametrize("name", ["Layerwise", "magnitude", "", "random"])
def test_get_criterion_unknown_name_raises_value_error_listing_accepted(name):
    with pytest.raises(ValueError) as info:
        get_criterion(name)
    message = str(info.value)
    assert repr(name) in message and "'global'" in message and "'layerwise'" in message
