"""compaction.tracing: the trace's rules for ops between layers, each checked end to end (groups found, compacted,
same outputs): squeeze-excitation gating, channels-last permutes, a concatenation split at its boundaries, a layer
called twice, functional layer norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import occamgd
from occamgd.compaction import compact, structured_pruning


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc1, self.fc2, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 4), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))))
        return self.head((h * s.view(s.size(0), -1, 1, 1)).amax(dim=(2, 3)))


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.mix, self.out = nn.Conv2d(3, 8, 1), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = F.gelu(self.conv(x)).permute(0, 2, 3, 1)          # channels last: Linear reads the channels
        return self.out(F.relu(self.mix(h))).mean((1, 2))


class CatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(5, 4), nn.Linear(5, 6), nn.Linear(4, 3), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.cat([torch.tanh(self.a(x)), torch.tanh(self.b(x))], dim=-1)
        left, right = h.split([self.a.out_features, self.b.out_features], dim=-1)  # sizes that follow the cut
        return self.c(left) + self.d(right)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.hidden, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu(self.inp(x))
        return self.out(F.relu(self.hidden(F.relu(self.hidden(h)))))  # the same layer twice


class FunctionalNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.c(F.relu(self.b(F.layer_norm(self.a(x), (6,)))))


class GatedMLP(nn.Module):
    """A fused gate-and-up projection chunked apart (as in GLU / SwiGLU MLPs)."""

    def __init__(self):
        super().__init__()
        self.inp, self.proj, self.down, self.out = nn.Linear(4, 6), nn.Linear(6, 2 * 8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        gate, up = self.proj(h).chunk(2, dim=-1)
        return self.out(torch.tanh(self.down(F.silu(gate) * up)))


class BagOfWords(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.fc, self.out = nn.Embedding(20, 8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, tokens):
        return self.out(F.relu(self.fc(self.embed(tokens).mean(1))))


CASES = {
    "embedding-width": (BagOfWords, None, [["embed"], ["fc"]]),
    "fused-gate-chunk": (GatedMLP, (3, 4), [["inp"], ["proj"], ["down"]]),
    "squeeze-excite": (SqueezeExcite, (2, 3, 6, 6), [["conv", "fc2"], ["fc1"]]),
    "channels-last": (ChannelsLast, (2, 3, 4, 4), [["conv"], ["mix"]]),
    "cat-split": (CatSplit, (3, 5), [["a"], ["b"]]),
    "shared-layer": (Shared, (3, 4), [["inp", "hidden"]]),
    "functional-layer-norm": (FunctionalNorm, (3, 4), [["b"]]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rule_couples_the_right_layers_and_compacts_to_the_same_outputs(name):
    make, shape, expected = CASES[name]
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.uniform_(-1, 1)
    x = torch.randint(0, 20, (3, 5)) if shape is None else torch.randn(shape)
    setup = structured_pruning(model, x)
    assert setup["criterion"].context["names"] == expected
    occam = occamgd.Occam(model, None, schedule=occamgd.ConstantRate(0.5), **setup)
    occam.step(1.0)
    small = compact(model, occam)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    model.eval(), small.eval()
    with torch.no_grad():
        expected_out = model(x)
        assert torch.allclose(small(x), expected_out, rtol=1e-5, atol=1e-5 * float(expected_out.abs().max()))
