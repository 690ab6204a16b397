"""compaction.handlers: a new layer type is one registered handler; built-in layers and the GPT are handlers too, and
the walk imports no model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import occamgd
from occamgd.compaction import (
    HANDLERS,
    compact,
    handler_for,
    register_handler,
    structured_pruning,
)
from occamgd.compaction.graph import Feature
from occamgd.compaction.handlers import set_param, take
from occamgd.models.gpt import CausalSelfAttention


class Scale(nn.Module):
    """A learned per-channel scale: a layer the graph knows nothing about until a handler is registered."""

    def __init__(self, channels):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x):
        return x * self.gain


class ScaleHandler:
    def trace(self, tracer, call, args, kwargs, output):
        f = tracer.feat(args[0])
        if f is not None and f.dim == args[0].dim() - 1:
            call.in_feat = call.out_feat = f  # per channel: the channel in is the channel out
            tracer.set(output, Feature(f.dim, f.segs))
        else:
            tracer.graph.block(f, f"{call.name!r} scales another dimension", unfollowable=True)

    def cut(self, call, keep_in, keep_out, inner):
        if keep_out is not None:
            set_param(call.module, "gain", take(call.module.gain, 0, keep_out))


def test_a_new_layer_type_is_one_registered_handler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Scale(8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="no group of units"):  # traced into: x * gain ties them to a fixed tensor
        structured_pruning(model, x)
    register_handler(Scale, ScaleHandler())
    try:
        setup = structured_pruning(model, x)
        assert "0.weight" in setup["include"]
        occam = occamgd.Occam(model, None, schedule=occamgd.ConstantRate(0.5), **setup)
        occam.step(1.0)
        small = compact(model, occam)
        assert small[1].gain.shape == (4,) and small[3].in_features == 4
        model.eval()
        with torch.no_grad():
            assert torch.allclose(small(x), model(x), atol=1e-6)
    finally:
        del HANDLERS[Scale]


def test_handlers_are_found_by_class_and_by_qualified_name_and_checked():
    assert handler_for(nn.Conv2d(1, 1, 1)) is handler_for(nn.Conv1d(1, 1, 1))  # one handler for _ConvNd
    assert handler_for(nn.ReLU()) is None  # traced through, no handler needed
    assert isinstance(HANDLERS["transformers.models.bert.modeling_bert.BertSelfAttention"], object)
    with pytest.raises(TypeError, match="trace"):
        register_handler(Scale, object())
    with pytest.raises(TypeError, match="torch.nn.Module subclass"):
        register_handler(int, ScaleHandler())


def test_the_gpt_registers_its_own_handler_and_the_compaction_walk_imports_no_model():
    assert CausalSelfAttention in HANDLERS
    package = Path(occamgd.__file__).parent / "compaction"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "models" not in (node.module or ""), f"{path.name} imports {node.module}"
