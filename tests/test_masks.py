"""masks.py: which tensors are prunable, mask enforcement under real optimizers, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from occamgd import ConstantRate, Occam
from occamgd.masks import DEFAULT_PRUNABLE_TYPES, Masks, select_prunable


class Zoo(nn.Module):
    """One of every layer kind the default selection must (or must not) pick."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.c1 = nn.Conv1d(2, 2, 1)
        self.c2 = nn.Conv2d(2, 2, 1)
        self.c3 = nn.Conv3d(2, 2, 1)
        self.ln = nn.LayerNorm(3)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.ones(2, 2))  # a bare parameter outside any layer


ZOO_DEFAULT = ["emb.weight", "c1.weight", "c2.weight", "c3.weight", "fc.weight"]


def names(model, include=None, exclude=None):
    return list(select_prunable(model, include, exclude))


# Default selection ---------------------------------------------------------------------------
def test_default_types_are_linear_conv_embedding_and_recurrent():
    assert set(DEFAULT_PRUNABLE_TYPES) == {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.RNNBase,
                                           nn.RNNCellBase}


def test_default_selection_is_the_weight_of_every_linear_conv_and_embedding_layer():
    assert names(Zoo()) == ZOO_DEFAULT


def test_default_selection_never_includes_biases_norm_parameters_or_loose_parameters():
    selected = names(Zoo())
    assert not any(n.endswith(".bias") for n in selected)
    assert not any(n.startswith(("ln.", "bn.")) for n in selected)
    assert "scale" not in selected


def test_default_selection_returns_the_model_parameters_themselves():
    model = Zoo()
    selected = select_prunable(model)
    params = dict(model.named_parameters())
    assert all(selected[n] is params[n] for n in selected)


def test_tied_weights_appear_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 7, bias=False)
            self.head.weight = self.emb.weight

    model = Tied()
    selected = select_prunable(model)
    assert list(selected) == ["emb.weight", "body.weight"]
    assert len({id(p) for p in selected.values()}) == len(selected)
    assert len(Masks(selected)) == 2


# User selection ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "include, expected",
    [
        ("fc.weight", ["fc.weight"]),  # one parameter name
        (["fc.bias", "ln.weight"], ["ln.weight", "fc.bias"]),  # names, in named_parameters order
        ("c2", ["c2.weight"]),  # a module name means that module's weight, not its bias
        (["emb", "fc"], ["emb.weight", "fc.weight"]),
        ("c?.weight", ["c1.weight", "c2.weight", "c3.weight"]),  # fnmatch pattern
        ("*.bias", ["c1.bias", "c2.bias", "c3.bias", "ln.bias", "bn.bias", "fc.bias"]),
        (nn.Conv2d, ["c2.weight"]),  # a module type
        ([nn.Linear, nn.LayerNorm], ["ln.weight", "fc.weight"]),
        (lambda name, p: p.dim() == 2, ["scale", "emb.weight", "fc.weight"]),  # a predicate
        ([nn.Embedding, "scale"], ["scale", "emb.weight"]),  # mixed forms
    ],
)
def test_include_selects_by_names_module_names_patterns_types_and_predicates(include, expected):
    assert names(Zoo(), include=include) == expected


@pytest.mark.parametrize(
    "exclude",
    [
        "c2.weight",
        "c2",
        "c2*",
        nn.Conv2d,
        [nn.Conv2d],
        lambda name, p: p.dim() == 4,
    ],
)
def test_exclude_accepts_the_same_forms_as_include(exclude):
    expected = [n for n in ZOO_DEFAULT if n != "c2.weight"]
    assert names(Zoo(), exclude=exclude) == expected


def test_exclude_applies_on_top_of_a_user_include():
    assert names(Zoo(), include="*.weight", exclude=[nn.LayerNorm, nn.BatchNorm1d, "emb"]) == [
        "c1.weight",
        "c2.weight",
        "c3.weight",
        "fc.weight",
    ]


def test_predicate_receives_name_and_the_parameter():
    model = Zoo()
    seen = []

    def pred(name, param):
        seen.append((name, param))
        return False

    with pytest.raises(ValueError):
        names(model, include=pred)
    params = dict(model.named_parameters())
    assert [n for n, _ in seen] == list(params)
    assert all(p is params[n] for n, p in seen)


class NormOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)


def test_model_without_prunable_tensors_raises_value_error_naming_model_and_accepted():
    with pytest.raises(ValueError, match="NormOnly") as info:
        select_prunable(NormOnly())
    message = str(info.value)
    assert "accepted" in message and "Linear" in message


def test_include_matching_nothing_raises_value_error():
    with pytest.raises(ValueError, match="no_such_layer.*matches no parameter of Zoo"):
        select_prunable(Zoo(), include="no_such_layer")


def test_excluding_everything_raises_value_error():
    with pytest.raises(ValueError, match="Zoo"):
        select_prunable(Zoo(), exclude="*")


@pytest.mark.parametrize("bad", [5, [5], int, [nn.Linear, str], 3.5])
def test_bad_selection_item_raises_type_error_with_accepted_forms(bad):
    with pytest.raises(TypeError, match="accepted"):
        select_prunable(Zoo(), include=bad)
    with pytest.raises(TypeError, match="accepted"):
        select_prunable(Zoo(), exclude=bad)


def test_non_module_model_raises_type_error():
    with pytest.raises(TypeError, match="Module"):
        select_prunable({"w": torch.zeros(2)})


# Counting -----------------------------------------------------------------------------------
def test_new_masks_keep_everything():
    model = Zoo()
    masks = Masks(select_prunable(model))
    assert list(masks) == ZOO_DEFAULT
    assert all(m.dtype == torch.bool and bool(m.all()) for m in masks.values())
    assert all(masks[n].shape == p.shape for n, p in masks.params.items())
    assert masks.density == 1.0


def test_density_kept_total_and_densities_are_correct():
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))  # weights of 20 and 10 entries
    masks = Masks(select_prunable(model))
    assert masks.total == 30 and masks.kept == 30
    first = torch.ones(5, 4, dtype=torch.bool)
    first.view(-1)[:15] = False  # keep 5 of 20
    second = torch.zeros(2, 5, dtype=torch.bool)
    second[0, 0] = True  # keep 1 of 10
    masks.update({"0.weight": first, "1.weight": second})
    assert masks.total == 30
    assert masks.kept == 6
    assert masks.density == pytest.approx(6 / 30)
    assert masks.densities() == pytest.approx({"0.weight": 0.25, "1.weight": 0.1})


# Changing and enforcing ------------------------------------------------------------------------
def test_update_zeroes_pruned_weights_in_place_and_copies_the_mask(tiny_mlp):
    model = tiny_mlp()
    w = model[0].weight
    before = w.detach().clone()
    masks = Masks(select_prunable(model))
    new = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    masks.update({"0.weight": new})
    assert model[0].weight is w
    assert torch.equal(w.detach(), torch.where(new, before, torch.zeros_like(before)))
    new.fill_(True)  # the caller's tensor is not the stored mask
    assert not bool(masks["0.weight"].all())
    assert bool(masks["2.weight"].all())  # an update may name only some tensors


def test_partial_update_with_wrong_shape_raises_and_changes_nothing(tiny_mlp):
    model = tiny_mlp()
    masks = Masks(select_prunable(model))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="2.weight"):
        masks.update({"2.weight": torch.zeros(2, 2, dtype=torch.bool)})
    assert all(bool(m.all()) for m in masks.values())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def _train(model, opt, x, y, steps, masks=None, check=None):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if masks is not None:
            masks.apply()
            masks.apply_to_optimizer_state(opt)
        if check is not None:
            check()


OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
}
STATE_KEYS = {
    "sgd-momentum-wd": {"momentum_buffer"},
    "sgd-nesterov": {"momentum_buffer"},
    "adam": {"exp_avg", "exp_avg_sq"},
    "adam-l2": {"exp_avg", "exp_avg_sq"},
    "adamw": {"exp_avg", "exp_avg_sq"},
    "adamw-amsgrad": {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
}


def _assert_pruned_entries_zero(masks, opt, keys):
    for name, p in masks.params.items():
        pruned = ~masks[name]
        assert bool((p.detach()[pruned] == 0).all()), f"pruned weight of {name} is nonzero"
        state = opt.state[p]
        assert keys <= set(state), f"optimizer state of {name} lacks {keys - set(state)}"
        for key in keys:
            assert bool((state[key][pruned] == 0).all()), f"{key} of {name} is nonzero where pruned"


def _assert_kept_weights_moved(masks, before):
    for name, p in masks.params.items():
        kept = masks[name]
        moved = (p.detach() != before[name])[kept]
        assert moved.float().mean() > 0.5, f"kept weights of {name} did not train"


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_zero_state_step_keeps_pruned_weights_and_optimizer_state_exactly_zero(kind, tiny_mlp, tiny_data):
    model = tiny_mlp()
    x, y = tiny_data()
    opt = OPTIMIZERS[kind](model.parameters())
    occam = Occam(model, opt, schedule=ConstantRate(0.5), zero_state="step")
    _train(model, opt, x, y, 5)  # optimizer state is now nonzero everywhere
    assert all(bool((opt.state[p][k] != 0).any()) for p in occam.masks.params.values() for k in STATE_KEYS[kind])
    occam.step(signal=1.0)
    assert 0 < occam.density < 1
    _assert_pruned_entries_zero(occam.masks, opt, STATE_KEYS[kind])  # step() zeroed state too
    before = {n: p.detach().clone() for n, p in occam.masks.params.items()}
    _train(model, opt, x, y, 25, check=lambda: _assert_pruned_entries_zero(occam.masks, opt, STATE_KEYS[kind]))
    _assert_kept_weights_moved(occam.masks, before)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_default_zeroes_state_at_each_prune_and_kept_weights_match_strict_mode(kind, tiny_mlp, tiny_data):
    """Default mode: weights zero after every step, state zeroed at each prune; between prunes the
    refilled state of pruned entries changes nothing: kept weights equal the strict mode's, bit
    for bit."""
    x, y = tiny_data()
    runs = {}
    for mode in ("prune", "step"):
        model = tiny_mlp()
        opt = OPTIMIZERS[kind](model.parameters())
        occam = Occam(model, opt, schedule=ConstantRate(0.5), zero_state=mode)
        check = lambda: _assert_pruned_entries_zero(occam.masks, opt, set())  # noqa: E731
        for _ in range(3):
            _train(model, opt, x, y, 5, check=check)
            occam.step(signal=1.0)
            _assert_pruned_entries_zero(occam.masks, opt, STATE_KEYS[kind])
        _train(model, opt, x, y, 5, check=check)
        runs[mode] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name in runs["prune"]:
        assert torch.equal(runs["prune"][name], runs["step"][name]), name


def test_zero_state_must_be_prune_or_step(tiny_mlp):
    with pytest.raises(ValueError, match="zero_state must be one of \\('prune', 'step'\\), got 'never'"):
        Occam(tiny_mlp(), zero_state="never")


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_masks_methods_enforce_update_under_every_optimizer(kind, tiny_mlp, tiny_data):
    model = tiny_mlp()
    x, y = tiny_data()
    opt = OPTIMIZERS[kind](model.parameters())
    masks = Masks(select_prunable(model))
    _train(model, opt, x, y, 5)
    g = torch.Generator().manual_seed(3)
    masks.update({n: torch.rand(p.shape, generator=g) > 0.4 for n, p in masks.params.items()})
    masks.apply_to_optimizer_state(opt)
    _assert_pruned_entries_zero(masks, opt, STATE_KEYS[kind])
    before = {n: p.detach().clone() for n, p in masks.params.items()}
    _train(model, opt, x, y, 25, masks=masks, check=lambda: _assert_pruned_entries_zero(masks, opt, STATE_KEYS[kind]))
    _assert_kept_weights_moved(masks, before)


def test_apply_to_optimizer_state_leaves_scalar_state_alone(tiny_mlp, tiny_data):
    model = tiny_mlp()
    x, y = tiny_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    masks = Masks(select_prunable(model))
    _train(model, opt, x, y, 3)
    masks.update({"0.weight": torch.zeros_like(masks["0.weight"])})
    masks.apply_to_optimizer_state(opt)
    assert float(opt.state[model[0].weight]["step"]) == 3.0


# Checkpointing -------------------------------------------------------------------------------
def _random_masks(masks, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in masks.params.items()}


def test_state_dict_round_trip_restores_masks_and_zeroes_weights(tiny_mlp):
    source = Masks(select_prunable(tiny_mlp(seed=0)))
    source.update(_random_masks(source, 0))
    state = source.state_dict()
    target_model = tiny_mlp(seed=1)
    target = Masks(select_prunable(target_model))
    target.load_state_dict(state)
    assert list(target) == list(source)
    for name in source:
        assert torch.equal(target[name], source[name])
        assert bool((target.params[name].detach()[~target[name]] == 0).all())
    assert target.kept == source.kept and target.densities() == source.densities()


def test_state_dict_is_a_copy(tiny_mlp):
    masks = Masks(select_prunable(tiny_mlp()))
    state = masks.state_dict()
    state["0.weight"].fill_(False)
    assert bool(masks["0.weight"].all())


def _assert_unchanged(masks, expected_masks, model, expected_weights):
    assert list(masks) == list(expected_masks)
    assert all(torch.equal(masks[n], expected_masks[n]) for n in expected_masks)
    assert all(torch.equal(v, expected_weights[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "corrupt, named",
    [
        (lambda s: {**s, "9.weight": s["0.weight"]}, "9.weight"),  # unknown tensor
        (lambda s: {"0.weight": s["0.weight"]}, "2.weight"),  # missing tensor
        (lambda s: {"first.weight": s["0.weight"], "2.weight": s["2.weight"]}, "first.weight"),  # renamed
        (lambda s: {**s, "2.weight": torch.ones(3, 9, dtype=torch.bool)}, "2.weight"),  # wrong shape
        (lambda s: {**s, "0.weight": s["0.weight"].flatten()}, "0.weight"),  # right size, wrong shape
    ],
)
def test_loading_masks_that_do_not_fit_raises_naming_the_tensor_and_changes_nothing(corrupt, named, tiny_mlp):
    model = tiny_mlp()
    masks = Masks(select_prunable(model))
    masks.update(_random_masks(masks, 5))
    current = masks.state_dict()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    bad = corrupt(Masks(select_prunable(tiny_mlp())).state_dict())  # all-True masks, corrupted
    with pytest.raises(ValueError) as info:
        masks.load_state_dict(bad)
    assert named in str(info.value)
    _assert_unchanged(masks, current, model, weights)


def test_enforcement_skips_untouched_tensors_and_still_keeps_pruned_ones(tiny_mlp, tiny_data):
    model = tiny_mlp()
    x, y = tiny_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    masks = Masks(select_prunable(model))
    partial = torch.ones_like(masks["2.weight"])
    partial[0] = False
    masks.update({"2.weight": partial})
    _train(model, opt, x, y, 5, masks=masks)
    assert bool((model[2].weight.detach()[0] == 0).all())
    assert bool((model[0].weight.detach() != 0).all())


def test_a_selection_name_that_matches_nothing_is_refused(tiny_mlp):
    with pytest.raises(ValueError, match="selection 'fc3' matches no parameter of Sequential"):
        select_prunable(tiny_mlp(), include=["0", "fc3"])
    with pytest.raises(ValueError, match="selection 'head.\\*' matches no parameter"):
        select_prunable(tiny_mlp(), exclude="head.*")


class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = nn.Linear(2, 2)  # the user's own submodule that happens to be called "module"


def test_names_leave_out_a_wrappers_prefix_but_not_a_submodule_of_the_same_name():
    assert list(select_prunable(nn.DataParallel(_Holder()))) == ["module.weight"]
    assert list(select_prunable(nn.DataParallel(_Holder()), include="module")) == ["module.weight"]
    assert list(select_prunable(_Holder())) == ["module.weight"]


# Recurrent layers -----------------------------------------------------------------------------------
class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(3, 2)
        self.head = nn.Linear(8, 2)


LSTM_WEIGHTS = [f"rnn.weight_{kind}_l{layer}{suffix}" for layer in (0, 1) for suffix in ("", "_reverse")
                for kind in ("ih", "hh")]


def test_recurrent_weight_matrices_are_prunable_by_default_and_their_biases_never():
    assert names(Recurrent()) == [*LSTM_WEIGHTS, "cell.weight_ih", "cell.weight_hh", "head.weight"]
    assert names(nn.LSTM(3, 4, proj_size=2)) == ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0"]
    for kind in (nn.RNN, nn.GRU):
        assert names(kind(3, 4)) == ["weight_ih_l0", "weight_hh_l0"]


def test_selecting_a_recurrent_type_or_module_name_selects_its_weight_matrices():
    assert names(Recurrent(), include=[nn.LSTM]) == LSTM_WEIGHTS
    assert names(Recurrent(), include="rnn") == LSTM_WEIGHTS
    assert names(Recurrent(), include=[nn.GRUCell, "head"]) == ["cell.weight_ih", "cell.weight_hh", "head.weight"]


def test_masks_hold_on_recurrent_weights_through_training_and_the_forward_pass_sees_them():
    torch.manual_seed(0)
    model = Recurrent()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    occam = Occam(model, opt, schedule=ConstantRate(0.5), include=[nn.LSTM])
    occam.step(1.0)
    x = torch.randn(2, 5, 3)
    for _ in range(2):
        opt.zero_grad()
        model.rnn(x)[0].sum().backward()
        opt.step()
    for name, param in occam.masks.params.items():
        assert bool((param.detach()[~occam.masks[name]] == 0).all()), name
    # The LSTM computes with these very tensors: masking them in place masks what it runs on.
    flat = {n: w for n, w in zip(model.rnn._flat_weights_names, model.rnn._flat_weights)}
    assert all(flat[n.removeprefix("rnn.")] is p for n, p in occam.masks.params.items())
    assert occam.density == pytest.approx(0.5, abs=0.01)
