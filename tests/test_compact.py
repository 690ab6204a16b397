"""compaction.py: compaction gives a smaller model with the masked model's outputs; selection, errors,
the report, and the 2:4 conversion's refusal without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import occamgd
from occamgd.compaction import (
    compact,
    compaction_report,
    model_size,
    structured_pruning,
    to_semi_structured,
)
from occamgd.models import CNN, GPT, MLP, GPTConfig, TabularMLP
from occamgd.models.gpt import CausalSelfAttention

ATOL = 1e-5


def _random_biases(model: nn.Module) -> nn.Module:
    """Nonzero biases everywhere, so pruned units output nonzero constants that must be folded."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def _prune(model: nn.Module, rate: float = 0.5, steps: int = 2, **setup) -> occamgd.Occam:
    setup = setup or structured_pruning(model)
    occam = occamgd.Occam(model, torch.optim.SGD(model.parameters(), lr=0.01), schedule=occamgd.ConstantRate(rate),
                          **setup)
    for _ in range(steps):
        occam.step(1.0)
    return occam


def _masked(model: nn.Module, masks: dict) -> nn.Module:
    """A copy of ``model`` with ``masks`` applied: what the pruned model computes."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    return out


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, tuple) else out


def _assert_same_function_and_smaller(model, compacted, x):
    assert type(compacted) is type(model)
    assert torch.allclose(_outputs(model, x), _outputs(compacted, x), atol=ATOL)
    assert model_size(compacted)["parameters"] < model_size(model)["parameters"]


# Chains ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, x_shape",
    [
        (lambda: MLP(12, 4, hidden=16), (5, 3, 4)),  # Flatten first, as the paper's network
        (lambda: TabularMLP(7, 3, hidden=(12, 10, 6), dropout=0.2), (5, 7)),
        (lambda: nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Sequential(nn.Linear(9, 8), nn.GELU()),
                               nn.Linear(8, 2)), (5, 6)),
        (lambda: CNN(3, 4, n=4, image_size=24, dropout=0.1), (2, 3, 24, 24)),  # 2 x 2 per channel at Flatten
        (lambda: nn.Sequential(nn.Conv1d(2, 6, 3), nn.BatchNorm1d(6), nn.ReLU(), nn.AvgPool1d(2),
                               nn.Conv1d(6, 5, 3, padding=1, padding_mode="replicate"), nn.SiLU(),
                               nn.AdaptiveMaxPool1d(2), nn.Flatten(), nn.Linear(10, 3)), (4, 2, 12)),
    ],
    ids=["mlp", "tabular", "nested-sequential", "cnn", "conv1d-batchnorm"],
)
def test_compacted_chain_matches_the_masked_model_in_eval_and_is_smaller(make, x_shape):
    torch.manual_seed(0)
    model = _random_biases(make())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    occam = _prune(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(x_shape, generator=torch.Generator().manual_seed(2))
    compacted = compact(model, occam)
    _assert_same_function_and_smaller(model, compacted, x)
    # The user's model is left exactly as it was.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_units_removed_match_the_masks_and_the_output_layer_keeps_every_class():
    torch.manual_seed(0)
    model = _random_biases(TabularMLP(5, 3, hidden=(10, 8)))
    # Occam's default selection with "structured": the output layer (the last tensor) keeps its classes.
    occam = _prune(model, rate=0.4, steps=1, criterion="structured")
    kept1 = int(occam.masks["fc1.weight"].all(1).sum())
    kept2 = int(occam.masks["fc2.weight"].all(1).sum())
    assert kept1 < 10 and kept2 < 8 and bool(occam.masks["out.weight"].all())
    compacted = compact(model, occam.masks)
    assert (compacted.fc1.out_features, compacted.fc2.in_features, compacted.fc2.out_features) == (kept1, kept1, kept2)
    assert (compacted.out.in_features, compacted.out.out_features) == (kept2, 3)
    _assert_same_function_and_smaller(model, compacted, torch.randn(6, 5))


def test_a_bias_is_created_where_the_next_layer_had_none_and_folds_are_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 3, bias=False))
    masks = {"0.weight": torch.ones(6, 4, dtype=torch.bool)}
    masks["0.weight"][[1, 4]] = False
    with torch.no_grad():
        model[0].weight.mul_(masks["0.weight"])
    compacted = compact(model, masks)
    assert compacted[2].bias is not None and compacted[2].weight.shape == (3, 4)
    _assert_same_function_and_smaller(model, compacted, torch.randn(5, 4))
    assert model[2].bias is None  # the user's layer is untouched


def test_units_whose_outgoing_weights_are_all_pruned_are_removed_too():
    torch.manual_seed(0)
    model = _random_biases(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)))
    masks = {"2.weight": torch.ones(3, 6, dtype=torch.bool)}
    masks["2.weight"][:, [0, 5]] = False  # nobody reads units 0 and 5 of the first layer
    compacted = compact(model, masks)
    assert compacted[0].out_features == 4 and compacted[2].in_features == 4
    _assert_same_function_and_smaller(_masked(model, masks), compacted, torch.randn(5, 4))


def test_zero_padding_keeps_units_with_a_nonzero_constant_and_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([1.0, -1.0, 2.0, 0.5]))
    masks = {"0.weight": torch.ones(4, 1, 3, 3, dtype=torch.bool)}
    masks["0.weight"][:2] = False  # unit 0 outputs relu(1) = 1, unit 1 outputs relu(-1) = 0
    with pytest.warns(UserWarning, match="kept a pruned unit of '0'"):
        compacted = compact(model, masks)
    assert compacted[0].out_channels == 3  # only the zero-constant unit could go
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(_outputs(_masked(model, masks), x), _outputs(compacted, x), atol=ATOL)


def test_masks_not_yet_enforced_are_applied_to_the_copy():
    torch.manual_seed(0)
    model = _random_biases(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
    masks = {"0.weight": torch.ones(5, 3, dtype=torch.bool)}
    masks["0.weight"][2] = False
    x = torch.randn(4, 3)
    assert torch.allclose(_outputs(_masked(model, masks), x), _outputs(compact(model, masks), x), atol=ATOL)
    assert model[0].weight[2].abs().sum() > 0  # still unmasked in the user's model


# GPT -------------------------------------------------------------------------------------------
def _gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=11, block_size=8, n_layer=2, n_head=4, n_embd=16, dropout=0.1)
    return _random_biases(GPT(GPTConfig(**{**config, **kwargs})))


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_loses_whole_heads_and_mlp_units_and_keeps_its_outputs(bias):
    model = _gpt(bias=bias)
    occam = _prune(model, rate=0.5, steps=1)
    compacted = compact(model, occam)
    idx = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(3))
    _assert_same_function_and_smaller(model, compacted, idx)
    for block in compacted.transformer.h:
        # Fewer heads of the same width (so the same attention scale), in the GPT's own class.
        assert type(block.attn) is CausalSelfAttention
        assert block.attn.n_head == 2 and block.attn.head_dim == 4
        assert block.attn.c_attn.weight.shape == (3 * 2 * 4, 16)
        assert block.mlp.c_fc.out_features == 32 and block.mlp.c_proj.in_features == 32
    assert model.transformer.h[0].attn.n_head == 4  # the user's model keeps its heads
    # The compacted model trains and generates like any GPT.
    _, loss = compacted.train()(idx, idx)
    loss.backward()
    assert compacted.generate(idx[:, :2], 3).shape == (3, 5)


def test_gpt_heads_go_when_their_values_or_their_projection_columns_are_pruned_even_all_of_them():
    model = _gpt()
    C, d = 16, 4
    masks = {}
    attn0 = torch.ones(3 * C, C, dtype=torch.bool)
    attn0[2 * C:] = False  # block 0: every value row pruned -> every head outputs its value bias
    masks["transformer.h.0.attn.c_attn.weight"] = attn0
    proj1 = torch.ones(C, C, dtype=torch.bool)
    proj1[:, d:2 * d] = False  # block 1: nobody reads head 1
    masks["transformer.h.1.attn.c_proj.weight"] = proj1
    compacted = compact(model, masks)
    assert compacted.transformer.h[0].attn.n_head == 0
    assert compacted.transformer.h[1].attn.n_head == 3
    idx = torch.randint(0, 11, (2, 8))
    assert torch.allclose(_outputs(_masked(model, masks), idx), _outputs(compacted, idx), atol=ATOL)
    assert compact(compacted, {}).transformer.h[1].attn.n_head == 3  # compacting again is harmless


def test_structured_pruning_selects_the_coupled_weights_of_the_layers_whose_units_can_go():
    mlp = structured_pruning(MLP(8, 3, hidden=5))
    assert mlp["include"] == ["fc1.weight", "fc1.bias", "fc2.weight"]  # fc2's columns read fc1's units
    assert len(mlp["criterion"].groups) == 1
    cnn = structured_pruning(CNN(1, 10, n=4))  # no example: the smallest image it runs on (26 x 26 here)
    assert cnn["criterion"].context["example_input"].shape == (2, 1, 26, 26)
    assert [n for n in cnn["include"] if n.endswith("weight")] == [
        "conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight", "fc2.weight"]
    gpt = structured_pruning(_gpt())
    assert [n for n in gpt["include"] if n.endswith("weight")] == [
        f"transformer.h.{i}.{layer}.weight" for i in (0, 1)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    blocked = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    assert structured_pruning(blocked)["include"] == ["2.weight", "2.bias", "4.weight"]
    with pytest.raises(ValueError, match="no group of units"):
        structured_pruning(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="example input is needed"):
        structured_pruning(nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))


def test_structured_training_with_fit_then_compact_end_to_end(tiny_data, one_thread):
    model = TabularMLP(6, 3, hidden=(16, 16))
    x, y = tiny_data(n=64, features=6)
    result = occamgd.fit(model, (x, y), epochs=3, batch_size=16, progress=False, schedule="paper",
                         keep_best=False, **structured_pruning(model))
    assert result.occam.density < 1.0
    compacted = compact(result.model, result.occam)
    _assert_same_function_and_smaller(result.model, compacted, x)


# Errors ----------------------------------------------------------------------------------------
def test_pruned_units_that_cannot_be_removed_stay_as_zeros_and_a_warning_says_why():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    masks = {"0.weight": torch.ones(4, 3, dtype=torch.bool)}
    masks["0.weight"][1] = False
    with pytest.warns(UserWarning, match=r"kept 1 pruned units of '0'.*normalised together by '1' \(LayerNorm\)"):
        compacted = compact(model, masks)
    assert compacted[0].out_features == 4
    x = torch.randn(5, 3)
    assert torch.allclose(_outputs(_masked(model, masks), x), _outputs(compacted, x), atol=ATOL)
    # Nothing pruned there: nothing to carry, so the same graph compacts (to itself).
    assert model_size(compact(model, {}))["parameters"] == model_size(model)["parameters"]


class Wrapper(nn.Module):
    """A custom module around a Linear: traced into like any module without a handler."""

    def __init__(self, features: int):
        super().__init__()
        self.inner = nn.Linear(features, features)

    def forward(self, x):
        return self.inner(x)


def test_bad_masks_and_models_are_refused_before_anything_changes():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        compact("model", {})
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="'fc9.weight'"):
        compact(model, {"fc9.weight": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        compact(model, {"0.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="masks_or_occam"):
        compact(model, [torch.ones(4, 3)])
    with pytest.raises(ValueError, match="did not run on the example input"):
        compact(model, {}, torch.randn(2, 7))


def test_pruned_rows_inside_a_custom_module_are_found_by_the_trace_and_removed():
    torch.manual_seed(0)
    model = _random_biases(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Wrapper(4), nn.Tanh(), nn.Linear(4, 2)))
    masks = {"2.inner.weight": torch.ones(4, 4, dtype=torch.bool)}
    masks["2.inner.weight"][0] = False
    compacted = compact(model, masks)
    assert compacted[2].inner.out_features == 3 and compacted[4].in_features == 3
    x = torch.randn(5, 3)
    assert torch.allclose(_outputs(_masked(model, masks), x), _outputs(compacted, x), atol=ATOL)


# Report and 2:4 --------------------------------------------------------------------------------
def test_compaction_report_measures_both_models_and_restores_their_modes():
    torch.manual_seed(0)
    model = _random_biases(MLP(20, 4, hidden=64))
    occam = _prune(model, rate=0.5, steps=2)
    compacted = compact(model, occam).train()
    model.train()
    report = compaction_report(model, compacted, torch.randn(8, 20), repeats=3, warmup=1)
    assert model.training and compacted.training
    assert report["before"]["parameters"] == model_size(model)["parameters"]
    assert report["after"]["parameters"] == model_size(compacted)["parameters"]
    assert report["ratio"]["parameters"] == pytest.approx(report["after"]["parameters"] / report["before"]["parameters"])
    assert report["ratio"]["parameters"] < 0.5 and report["max_abs_diff"] < ATOL
    for side in ("before", "after"):
        assert report[side]["latency_s"] > 0
        assert report[side]["throughput"] == pytest.approx(8 / report[side]["latency_s"])
    with pytest.raises(ValueError, match="repeats"):
        compaction_report(model, compacted, torch.randn(8, 20), repeats=0)


def test_to_semi_structured_refuses_a_model_off_cuda_with_a_clear_error():
    model = nn.Sequential(nn.Linear(64, 32)).half()
    with pytest.raises(ValueError, match="CUDA"):
        to_semi_structured(model)
    with pytest.raises(ValueError, match="no Linear layer"):
        to_semi_structured(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="min_features"):
        to_semi_structured(model, min_features=0)


def test_a_wrapped_model_is_traced_and_compacted_through_its_wrapper():
    torch.manual_seed(0)
    model = _random_biases(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    wrapped = nn.DataParallel(model)  # Occam names the masks without the wrapper's "module." prefix
    occam = _prune(wrapped, rate=0.5, steps=1, **structured_pruning(wrapped))
    assert "0.weight" in occam.masks
    compacted = compact(wrapped, occam)
    assert type(compacted) is nn.Sequential and compacted[0].out_features == 4
    _assert_same_function_and_smaller(model, compacted, torch.randn(3, 4))
