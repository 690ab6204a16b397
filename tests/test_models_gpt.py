"""models.gpt: the character GPT (size, names, causality, generation) and its prunable selection."""

from __future__ import annotations

import math

import pytest
import torch

import occamgd
from occamgd.models import GPT, GPTConfig
from occamgd.models.gpt import CausalSelfAttention, prunable


def _tiny(**kwargs) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    return GPT(GPTConfig(**{**config, **kwargs}))


def _expected_params(vocab: int, block: int, layers: int, d: int, tied: bool) -> int:
    """Parameter count from the architecture, written out independently of the module."""
    block_params = (
        2 * d  # ln_1
        + d * 3 * d + 3 * d  # c_attn
        + d * d + d  # attn.c_proj
        + 2 * d  # ln_2
        + d * 4 * d + 4 * d  # c_fc
        + 4 * d * d + d  # mlp.c_proj
    )
    head = 0 if tied else vocab * d
    return vocab * d + block * d + layers * block_params + 2 * d + head


def test_standard_config_has_about_10_7_million_parameters():
    model = GPT(GPTConfig(vocab_size=65))
    assert model.num_params() == _expected_params(65, 256, 6, 384, tied=True)
    assert 10.6e6 < model.num_params() < 10.8e6
    assert model.num_params(non_embedding=True) == model.num_params() - 256 * 384


def test_untied_head_adds_its_own_matrix():
    tied, untied = _tiny(), _tiny(tie_weights=False)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == _expected_params(11, 8, 2, 16, tied=False)
    assert untied.num_params() - tied.num_params() == 11 * 16


def test_module_names_follow_nanogpt():
    names = {name for name, _ in _tiny().named_modules()}
    for i in range(2):
        for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            assert f"transformer.h.{i}.{part}" in names
    assert {"transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head"} <= names


def test_forward_shapes_and_initial_loss_near_uniform():
    model = _tiny()
    idx = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 8, 11)
    # Small initial weights give nearly uniform predictions: loss close to ln(vocab).
    assert abs(loss.item() - math.log(11)) < 0.3
    assert model(idx)[1] is None


def test_attention_is_causal():
    model = _tiny().eval()
    idx = torch.randint(0, 11, (1, 8), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 11
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_attention_splits_n_embd_into_n_head_heads_of_head_dim_features():
    # The reference, written out head by head: head h reads features [h*d, (h+1)*d) of the query,
    # key and value thirds of c_attn's output, scores them by 1/sqrt(d) under a causal mask, and
    # c_proj reads the heads' outputs side by side.
    torch.manual_seed(0)
    attn = CausalSelfAttention(GPTConfig(vocab_size=5, block_size=6, n_head=2, n_embd=8, dropout=0.0))
    assert attn.head_dim == 4
    x = torch.randn(3, 6, 8)
    q, k, v = attn.c_attn(x).split(8, dim=2)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * (h + 1))
        scores = (q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(4)).masked_fill(future, -math.inf)
        heads.append(scores.softmax(-1) @ v[..., cols])
    torch.testing.assert_close(attn(x), attn.c_proj(torch.cat(heads, dim=-1)))
    assert list(attn.state_dict()) == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]


def test_sequence_longer_than_context_is_refused():
    model = _tiny()
    with pytest.raises(ValueError, match=r"sequence length 9 .*block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"block_size": 2.5}, "block_size"),
        ({"n_embd": 15}, "multiple of n_head"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_config_is_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        GPTConfig(**{"vocab_size": 11, "n_head": 2, "n_embd": 16, **kwargs})


def test_generate_is_reproducible_crops_context_and_restores_mode():
    model = _tiny(dropout=0.1).train()
    prompt = torch.zeros(2, 12, dtype=torch.long)  # longer than the context: only the tail conditions
    out1 = model.generate(prompt, 5, generator=torch.Generator().manual_seed(3))
    out2 = model.generate(prompt, 5, generator=torch.Generator().manual_seed(3))
    assert out1.shape == (2, 17)
    assert torch.equal(out1, out2)
    assert torch.equal(out1[:, :12], prompt)
    assert model.training


def test_generate_top_k_1_is_greedy():
    model = _tiny().eval()
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    assert out[0, -1] == model(prompt)[0][0, -1].argmax()


@pytest.mark.parametrize(("kwargs", "needle"), [({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"),
                                                 ({"max_new_tokens": -1}, "max_new_tokens")])
def test_generate_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        _tiny().generate(torch.zeros(1, 1, dtype=torch.long), **{"max_new_tokens": 1, **kwargs})


def test_param_groups_decay_matrices_only_and_cover_every_parameter_once():
    model = _tiny()
    decay, no_decay = model.param_groups(0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_prunable_default_is_the_block_projections():
    model = _tiny()
    occam = occamgd.Occam(model, include=prunable(model))
    assert sorted(occam.masks) == sorted(
        f"transformer.h.{i}.{part}.weight" for i in range(2)
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )


def test_prunable_embeddings_and_head():
    tied = _tiny()
    names = set(occamgd.select_prunable(tied, prunable(tied, embeddings=True, head=True)))
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= names
    with pytest.raises(ValueError, match="ties its head"):
        prunable(tied, embeddings=False, head=True)
    untied = _tiny(tie_weights=False)
    assert "lm_head.weight" in set(occamgd.select_prunable(untied, prunable(untied, head=True)))
    assert "transformer.wte.weight" not in set(occamgd.select_prunable(untied, prunable(untied, head=True)))
    with pytest.raises(TypeError, match="GPT"):
        prunable(torch.nn.Linear(2, 2))


def test_pruned_gpt_trains_and_keeps_its_zeros():
    model = _tiny()
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=1e-2)
    occam = occamgd.Occam(model, optimizer, include=prunable(model), schedule="paper")
    idx = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(4))
    first = None
    for step in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 5:
            occam.step(loss.item())
    assert loss.item() < first
    assert occam.density == pytest.approx(0.6, abs=0.01)
    for name, mask in occam.masks.items():
        assert torch.all(occam.masks.params[name][~mask] == 0)
