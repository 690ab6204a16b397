"""compaction: a compacted transformer stays usable: it generates, classifies with its head and a loss, trains, and
saves and reloads through occamgd.export; nn.TransformerEncoder keeps its masks' behaviour with fewer heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import occamgd
from occamgd import export
from occamgd.compaction import compact, compaction_report, structured_pruning
from occamgd.compaction.handlers import CompactMultiheadAttention

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _pruned(model, example, rate=0.5):
    occam = occamgd.Occam(model, torch.optim.SGD(model.parameters(), lr=0.01), schedule=occamgd.ConstantRate(rate),
                          **structured_pruning(model, example))
    occam.step(1.0)
    return occam


def test_compacted_gpt2_generates_what_the_masked_model_generates():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(1, 40, (2, 5))
    occam = _pruned(model, {"input_ids": ids})
    small = compact(model, occam)
    assert small.transformer.h[0].attn.num_heads == 2 and small.transformer.h[0].attn.c_attn.nf == 3 * 2 * 4
    assert small.transformer.h[0].mlp.c_fc.nf == 32
    kwargs = {"max_new_tokens": 4, "do_sample": False, "min_new_tokens": 4}
    assert torch.equal(small.generate(ids, **kwargs), model.generate(ids, **kwargs))  # greedy, with the KV cache


def test_compacted_bert_classifies_with_its_head_trains_and_reloads_through_export(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg)
    batch = {"input_ids": torch.randint(0, 40, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    batch["attention_mask"][0, 5:] = 0  # padding: the mask path runs through the compacted attention too
    occam = _pruned(model, batch)
    export.save(model, occam.masks, tmp_path / "masked")  # the masked model and its masks
    small = compact(model, occam)
    attn = small.bert.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size, attn.query.out_features) == (2, 8, 8)
    assert small.bert.encoder.layer[0].attention.output.dense.in_features == 8
    assert small.classifier.out_features == 3  # every class kept
    model.eval()
    small.eval()
    with torch.no_grad():
        assert torch.allclose(small(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-6)
    report = compaction_report(model, small, batch, repeats=1, warmup=0)  # keyword inputs, ModelOutput logits
    assert report["batch"] == 4 and report["max_abs_diff"] < 1e-5
    assert report["after"]["parameters"] < report["before"]["parameters"]
    # One more training step with the classification loss, then save the compacted weights.
    small.train()
    labels = torch.tensor([0, 1, 2, 1])
    loss = small(**batch, labels=labels).loss
    loss.backward()
    torch.optim.SGD(small.parameters(), lr=0.1).step()
    export.save(small, None, tmp_path / "compacted")
    # Reload: the compacted widths come from the masks, the weights from the compacted export.
    fresh = transformers.BertForSequenceClassification(cfg)
    masks = export.load_into(fresh, tmp_path / "masked" / export.FILE_NAMES["dense"])
    skeleton = compact(fresh, masks, batch)
    export.load_into(skeleton, tmp_path / "compacted" / export.FILE_NAMES["dense"])
    skeleton.eval()
    small.eval()
    with torch.no_grad():
        assert torch.allclose(skeleton(**batch).logits, small(**batch).logits)


def test_transformer_encoder_loses_heads_and_keeps_padding_and_causal_masks():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    x = torch.randn(2, 6, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True
    example = (x, causal, padding)
    occam = _pruned(model, example)
    small = compact(model, occam)
    attn = small.layers[0].self_attn
    assert type(attn) is CompactMultiheadAttention and isinstance(attn, nn.MultiheadAttention)
    assert attn.num_heads == 2 and attn.in_proj_weight.shape == (3 * 2 * 4, 16)
    model.eval()
    small.eval()
    with torch.no_grad():
        for args in [(x, causal, padding), (x,), (x, None, padding)]:
            assert torch.allclose(small(*args), model(*args), rtol=1e-5, atol=1e-5)
    small.train()
    small(x).sum().backward()
    assert attn.in_proj_weight.grad is not None


def test_compacted_llama_keeps_grouped_query_heads_together_and_generates_the_same():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(1, 40, (2, 5))
    small = compact(model, _pruned(model, {"input_ids": ids}))
    attn = small.model.layers[0].self_attn
    # One of the 2 key/value heads is gone, with its 2 query heads and their output columns.
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (8, 4, 8)
    assert attn.num_key_value_groups == 2 and small.model.layers[0].mlp.down_proj.in_features == 16
    kwargs = {"max_new_tokens": 4, "do_sample": False, "min_new_tokens": 4}
    assert torch.equal(small.generate(ids, **kwargs), model.generate(ids, **kwargs))
