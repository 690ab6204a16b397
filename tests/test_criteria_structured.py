"""criteria.py: structured (whole units) and N:M criteria, their registry names, Occam with them."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import occamgd
from occamgd.criteria import (
    CRITERIA,
    Coupled,
    GroupCriterion,
    Units,
    get_criterion,
    group_magnitude,
    is_nm,
    nm_criterion,
    nm_magnitude,
    prune_count,
    structured_criterion,
    structured_magnitude,
    structured_rows,
)

PROPERTY = settings(
    max_examples=60, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RATES = st.one_of(st.floats(0, 1, exclude_max=True), st.sampled_from([0.0, 0.25, 0.4, 0.5, 0.9]))
VALUES = st.one_of(st.floats(-4, 4, width=32, allow_subnormal=False), st.sampled_from([0.0, 1.0, -1.0]))


def _clone(d):
    return {k: v.clone() for k, v in d.items()}


@st.composite
def row_case(draw):
    """One weight of 1-6 rows (2-D or 4-D) with a mask whose rows are whole or partly kept."""
    rows = draw(st.integers(1, 6))
    inner = draw(st.sampled_from([(3,), (2, 2, 1)]))
    shape = (rows, *inner)
    n = math.prod(shape)
    values = draw(st.lists(VALUES, min_size=n, max_size=n))
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return torch.tensor(values).view(shape), torch.tensor(keep).view(shape)


# structured_magnitude ------------------------------------------------------------------------
@given(case=row_case(), rate=RATES)
@PROPERTY
def test_structured_prunes_prune_count_of_kept_rows_with_the_smallest_norms_and_is_pure(case, rate):
    weight, mask = case
    weights, masks = {"w": weight}, {"w": mask}
    before_w, before_m = _clone(weights), _clone(masks)
    new = structured_magnitude(weights, masks, rate)["w"]
    assert torch.equal(weights["w"], before_w["w"]) and torch.equal(masks["w"], before_m["w"])  # pure
    assert not (new & ~mask).any(), "a pruned entry was revived"
    rows_before = mask.flatten(1).any(1)
    rows_after = new.flatten(1).any(1)
    pruned_rows = rows_before & ~rows_after
    assert int(pruned_rows.sum()) == prune_count(int(rows_before.sum()), rate)
    # A pruned row loses every entry; a kept row keeps exactly the entries it had.
    assert torch.equal(new.flatten(1)[rows_after], mask.flatten(1)[rows_after])
    assert not new.flatten(1)[pruned_rows].any()
    # Norms of the kept entries only: every pruned row is no larger than every kept row.
    norms = (weight * mask).flatten(1).double().square().sum(1)
    if pruned_rows.any() and rows_after.any():
        assert norms[pruned_rows].max() <= norms[rows_after].min()
    assert torch.equal(structured_magnitude(weights, masks, rate)["w"], new)  # deterministic


def test_structured_ties_go_to_the_lowest_row_and_one_row_always_stays():
    weights = {"w": torch.ones(4, 3)}
    masks = {"w": torch.ones(4, 3, dtype=torch.bool)}
    new = structured_magnitude(weights, masks, 0.5)["w"]  # ceil(0.5 * 3) = 2 of 4 rows
    assert new.all(1).tolist() == [False, False, True, True]
    last = structured_magnitude(weights, {"w": new}, 0.99)["w"]
    assert last.any(1).tolist() == [False, False, False, True]


def test_structured_counts_rows_separately_in_each_tensor():
    weights = {"a": torch.arange(1.0, 7.0).view(6, 1).expand(6, 2), "b": 100 * torch.ones(2, 5)}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    new = structured_magnitude(weights, masks, 0.4)
    assert new["a"].all(1).tolist() == [False, False, True, True, True, True]  # ceil(0.4 * 5) = 2
    assert new["b"].all(1).tolist() == [False, True]  # ceil(0.4 * 1) = 1, though b's norms are larger


def test_structured_units_keep_a_heads_query_key_and_value_rows_together():
    heads, d, width = 3, 2, 4
    weight = torch.ones(3 * heads * d, width)
    head_of_row = (torch.arange(3 * heads * d) % (heads * d)) // d
    weight[head_of_row == 1] = 0.1  # head 1 is the weakest in q, k and v
    weight[head_of_row == 2] = 5.0
    masks = {"qkv": torch.ones_like(weight, dtype=torch.bool)}
    criterion = structured_criterion({"qkv": Units(size=d, chunks=3)})
    new = criterion({"qkv": weight}, masks, 0.4)["qkv"]  # ceil(0.4 * 2) = 1 of 3 heads
    assert torch.equal(new.all(1), head_of_row != 1)
    assert torch.equal(~new.any(1), head_of_row == 1)


def test_structured_refuses_vectors_uneven_units_and_unknown_unit_names():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        structured_magnitude({"b": torch.ones(4)}, {"b": torch.ones(4, dtype=torch.bool)}, 0.5)
    with pytest.raises(ValueError, match="multiple of 6"):
        structured_magnitude({"w": torch.ones(8, 2)}, {"w": torch.ones(8, 2, dtype=torch.bool)}, 0.5,
                             {"w": Units(size=2, chunks=3)})
    with pytest.raises(ValueError, match="typo"):
        structured_magnitude({"w": torch.ones(6, 2)}, {"w": torch.ones(6, 2, dtype=torch.bool)}, 0.5,
                             {"typo": Units()})
    with pytest.raises(ValueError, match="Units.size"):
        Units(size=0)
    with pytest.raises(TypeError, match="Units"):
        structured_criterion({"w": 2})
    with pytest.raises(ValueError, match="rate"):
        structured_magnitude({"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2, dtype=torch.bool)}, 1.0)


def test_occam_with_structured_by_name_prunes_whole_rows_and_keeps_them_pruned(tiny_mlp, tiny_data):
    model = tiny_mlp(features=6, hidden=10, classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    occam = occamgd.Occam(model, opt, criterion="structured", schedule=occamgd.ConstantRate(0.4))
    occam.step(1.0)
    rows = occam.masks["0.weight"].all(1)
    assert int((~rows).sum()) == prune_count(10, 0.4)
    assert torch.equal(occam.masks["0.weight"].any(1), rows), "rows must be whole"
    x, y = tiny_data(features=6)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not model[0].weight[~rows].any(), "pruned rows stay zero after an optimizer step"


# N:M -----------------------------------------------------------------------------------------
@st.composite
def nm_case(draw):
    n, m = draw(st.sampled_from([(2, 4), (1, 4), (1, 2), (3, 8)]))
    rows, groups = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    size = rows * groups * m
    values = draw(st.lists(VALUES, min_size=size, max_size=size))
    keep = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    shape = (rows, groups * m)
    return n, m, torch.tensor(values).view(shape), torch.tensor(keep).view(shape)


@given(case=nm_case(), rate=RATES)
@PROPERTY
def test_nm_prunes_only_outside_each_groups_n_largest_and_no_more_than_the_rate(case, rate):
    n, m, weight, mask = case
    new = nm_magnitude({"w": weight}, {"w": mask}, rate, n, m)["w"]
    assert not (new & ~mask).any(), "a pruned entry was revived"
    pruned = int((mask & ~new).sum())
    excess = int((mask.view(-1, m).sum(1) - n).clamp(min=0).sum())
    assert pruned == min(prune_count(int(mask.sum()), rate), excess)
    # Every group keeps min(n, kept) entries at least, and they are its largest kept magnitudes.
    kept_before, kept_after = mask.view(-1, m).sum(1), new.view(-1, m).sum(1)
    assert torch.all(kept_after >= kept_before.clamp(max=n))
    mags, old, now = weight.abs().view(-1, m), mask.view(-1, m), new.view(-1, m)
    for g in range(mags.shape[0]):
        gone, stay = old[g] & ~now[g], now[g]
        if gone.any() and stay.any():
            assert mags[g][gone].max() <= torch.sort(mags[g][stay], descending=True).values[: n].min()


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_from_dense_reaches_the_exact_pattern_at_rate_one_minus_n_over_m(n, m):
    g = torch.Generator().manual_seed(0)
    weights = {"w": torch.randn(16, 32, generator=g), "conv": torch.randn(8, 4, 3, 3, generator=g)[:, :, :2, :2]}
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    new = nm_magnitude(weights, masks, 1 - n / m, n, m)
    for name, w in weights.items():
        groups = new[name].reshape(-1, m)
        assert torch.all(groups.sum(1) == n), name
        # Exactly the n largest of each group (distinct random values).
        top = torch.topk(w.abs().reshape(-1, m), n, dim=1).indices
        assert torch.equal(groups, torch.zeros_like(groups).scatter_(1, top, True)), name
        assert is_nm(w * new[name], n, m)
        assert not is_nm(w, n, m)


def test_nm_under_the_paper_rate_reaches_2_4_on_the_second_step_and_then_stops():
    weights = {"w": torch.randn(8, 16, generator=torch.Generator().manual_seed(1))}
    masks = {"w": torch.ones(8, 16, dtype=torch.bool)}
    densities = []
    for _ in range(4):
        masks = nm_magnitude(weights, masks, 0.4)
        densities.append(float(masks["w"].float().mean()))
    assert densities[0] == pytest.approx(1 - prune_count(128, 0.4) / 128)
    assert densities[1:] == [0.5, 0.5, 0.5]
    assert is_nm(weights["w"] * masks["w"])


def test_nm_refuses_bad_n_m_and_rows_that_do_not_split_into_groups():
    w = {"w": torch.ones(2, 6)}
    mk = {"w": torch.ones(2, 6, dtype=torch.bool)}
    with pytest.raises(ValueError, match="multiple of m=4"):
        nm_magnitude(w, mk, 0.5)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nm_magnitude({"b": torch.ones(8)}, {"b": torch.ones(8, dtype=torch.bool)}, 0.5)
    for n, m in [(4, 4), (0, 4), (2.0, 4)]:
        with pytest.raises(ValueError, match="1 <= n < m"):
            nm_criterion(n, m)


def test_nm_criterion_binds_n_and_m():
    weights = {"w": torch.arange(1.0, 17.0).view(2, 8)}
    masks = {"w": torch.ones(2, 8, dtype=torch.bool)}
    new = nm_criterion(1, 4)(weights, masks, 0.9)["w"]
    assert new.view(-1, 4).tolist() == [[False, False, False, True]] * 4
    assert torch.equal(new, functools.partial(nm_magnitude, n=1, m=4)(weights, masks, 0.9)["w"])


def test_registry_names_and_occam_with_nm_keeps_the_pattern_through_training(tiny_data):
    assert CRITERIA["structured"] is structured_rows and get_criterion("nm") is nm_magnitude
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    occam = occamgd.Occam(model, opt, criterion="nm", schedule="paper")
    x, y = tiny_data(features=8, classes=4)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        occam.step(nn.functional.cross_entropy(model(x), y).item())
    assert occam.density == pytest.approx(0.5)
    assert is_nm(model[0].weight) and is_nm(model[2].weight)


# Coupled groups ------------------------------------------------------------------------------
def _rows(n, k=1, offset=0):
    return torch.arange(n).view(n, 1) * k + torch.arange(k).view(1, k) + offset


@given(rows=st.integers(1, 6), rate=RATES, data=st.data())
@PROPERTY
def test_group_prunes_prune_count_of_kept_units_by_their_combined_norm_in_every_member(rows, rate, data):
    values = data.draw(st.lists(VALUES, min_size=rows * 5, max_size=rows * 5))
    w = torch.tensor(values[: rows * 3]).view(rows, 3)          # units are rows here ...
    v = torch.tensor(values[rows * 3:]).view(2, rows)           # ... and columns there
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    masks = {"w": keep.view(rows, 1).expand(rows, 3).clone(), "v": keep.view(1, rows).expand(2, rows).clone(),
             "b": keep.clone()}
    weights = {"w": w, "v": v, "b": 100 * torch.ones(rows)}
    group = [Coupled("w", 0, _rows(rows)), Coupled("v", 1, _rows(rows)), Coupled("b", 0, _rows(rows), score=False)]
    new = group_magnitude(weights, masks, rate, [group])
    kept_after = new["w"].any(1)
    assert torch.equal(new["v"].any(0), kept_after) and torch.equal(new["b"], kept_after)  # members go together
    assert not (kept_after & ~keep).any()
    assert int((keep & ~kept_after).sum()) == prune_count(int(keep.sum()), rate)
    norms = (w.double() ** 2).sum(1) + (v.double() ** 2).sum(0)  # the unscored bias does not count
    gone = keep & ~kept_after
    if gone.any() and kept_after.any():
        assert norms[gone].max() <= norms[kept_after].min()


def test_group_ties_go_to_the_lowest_unit_and_each_group_counts_alone():
    weights = {"a": torch.ones(4, 2), "b": torch.ones(3, 6)}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    groups = [[Coupled("a", 0, _rows(4))], [Coupled("b", 1, _rows(3, 2))]]  # b's units: pairs of columns
    new = group_magnitude(weights, masks, 0.5, groups)
    assert new["a"].all(1).tolist() == [False, False, True, True]  # ceil(0.5 * 3) = 2 of 4
    assert new["b"].all(0).tolist() == [False, False, True, True, True, True]  # ceil(0.5 * 2) = 1 of 3
    last = group_magnitude(weights, new, 0.99, groups)
    assert last["a"].any(1).tolist() == [False, False, False, True]  # never empty


def test_global_group_scope_uses_one_threshold_and_every_group_keeps_a_unit():
    weights = {"a": torch.tensor([[1.0], [2.0], [3.0]]), "b": torch.tensor([[10.0], [20.0]])}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    groups = [[Coupled("a", 0, _rows(3))], [Coupled("b", 0, _rows(2))]]
    new = group_magnitude(weights, masks, 0.6, groups, scope="global")  # ceil(0.6 * 4) = 3 of 5 units
    assert new["a"].view(-1).tolist() == [False, False, True]  # a keeps its best unit though b's are larger
    assert new["b"].view(-1).tolist() == [False, True]
    criterion = GroupCriterion(groups, scope="global")
    assert torch.equal(criterion(weights, masks, 0.6)["a"], new["a"])
    with pytest.raises(ValueError, match="scope"):
        GroupCriterion(groups, scope="model")
    with pytest.raises(ValueError, match="'c'"):
        group_magnitude(weights, masks, 0.5, [[Coupled("c", 0, _rows(1))]])


def test_structured_by_name_keeps_every_class_of_the_output_layer_however_long_it_prunes(tiny_mlp):
    model = tiny_mlp(features=6, hidden=10, classes=3)
    occam = occamgd.Occam(model, None, criterion="structured", schedule=occamgd.ConstantRate(0.5))
    for _ in range(6):
        occam.step(1.0)
    assert occam.masks["0.weight"].any(1).sum() == 1  # hidden units down to one
    assert occam.masks["2.weight"].all()  # the classifier keeps its 3 classes
    weights = {"only": torch.ones(4, 2)}
    single = structured_rows(weights, {"only": torch.ones(4, 2, dtype=torch.bool)}, 0.5)
    assert single["only"].all(1).sum() == 2  # one tensor: it is pruned as structured_magnitude does
