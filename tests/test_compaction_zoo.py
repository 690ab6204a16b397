"""compaction: a zoo of common architectures is pruned in groups, compacted, and computes what the masked model computes.

For each model: structured_pruning on an example input, a training step between prunes at
several rates, compact, then the compacted copy (same class) matches the masked model in eval
mode (relative 1e-5, fp32), its pruned tensors shrink exactly as the masks say, and it trains
one more step.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import occamgd
from occamgd.compaction import compact, structured_pruning
from occamgd.criteria import _gather
from occamgd.models import CNN, GPT, MLP, GPTConfig

RATES = (0.3, 0.5)


# The zoo -----------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    def __init__(self, bottleneck=False, classes=5, norm=nn.BatchNorm2d):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), norm(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        if bottleneck:
            self.layer1 = nn.Sequential(Bottleneck(8, 4, 16), Bottleneck(16, 4, 16))
            self.layer2 = nn.Sequential(Bottleneck(16, 8, 24, stride=2))
            width = 24
        else:
            self.layer1 = nn.Sequential(BasicBlock(8, 8, norm=norm), BasicBlock(8, 8, norm=norm))
            self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2, norm=norm), BasicBlock(16, 16, norm=norm))
            width = 16
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand=4):
        super().__init__()
        hidden = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


class MobileNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(0.2), nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class DenseNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(DenseLayer(8, 6), DenseLayer(14, 6))
        self.transition = nn.Sequential(nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1), nn.AvgPool2d(2))
        self.classifier = nn.Linear(10 * 4 * 4, classes)

    def forward(self, x):
        x = self.transition(self.block(self.stem(x)))
        return self.classifier(x.flatten(1))


class VGG(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        cfg, layers, cin = [8, "M", 16, 16, "M"], [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 24), nn.ReLU(), nn.Dropout(), nn.Linear(24, classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class PreNormMLP(nn.Module):
    def __init__(self, width=16, hidden=32, depth=2, classes=3):
        super().__init__()
        self.inp = nn.Linear(10, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.ups = nn.ModuleList(nn.Linear(width, hidden) for _ in range(depth))
        self.downs = nn.ModuleList(nn.Linear(hidden, width) for _ in range(depth))
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        x = self.inp(x)
        for norm, up, down in zip(self.norms, self.ups, self.downs):
            x = x + down(F.gelu(up(norm(x))))
        return self.out(x)


class Encoder(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def _hf(name):
    transformers = pytest.importorskip("transformers")
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=32, max_position_embeddings=16, num_labels=3)
        return transformers.BertForSequenceClassification(cfg), {"input_ids": torch.randint(0, 40, (2, 8))}
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=4)
        return transformers.GPT2LMHeadModel(cfg), {"input_ids": torch.randint(0, 40, (2, 8))}
    if name in ("llama", "qwen2"):  # grouped-query attention: 4 query heads share 2 key/value heads
        config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[name]
        cfg = config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=16)
        model_class = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[name]
        return model_class(cfg), {"input_ids": torch.randint(0, 40, (2, 8))}
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=32, num_labels=3)
    return transformers.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 8, 8)}


ZOO = {
    "resnet-basic": lambda: (ResNet(), torch.randn(2, 3, 16, 16)),
    "resnet-groupnorm": lambda: (ResNet(norm=lambda c: nn.GroupNorm(c // 2, c)), torch.randn(2, 3, 16, 16)),
    "resnet-bottleneck": lambda: (ResNet(bottleneck=True), torch.randn(2, 3, 16, 16)),
    "mobilenetv2": lambda: (MobileNet(), torch.randn(2, 3, 16, 16)),
    "densenet": lambda: (DenseNet(), torch.randn(2, 3, 8, 8)),
    "vgg-bn": lambda: (VGG(), torch.randn(2, 3, 8, 8)),
    "prenorm-mlp": lambda: (PreNormMLP(), torch.randn(4, 10)),
    "transformer-encoder": lambda: (Encoder(), torch.randn(2, 5, 6)),
    "bert": lambda: _hf("bert"),
    "gpt2": lambda: _hf("gpt2"),
    "vit": lambda: _hf("vit"),
    "llama": lambda: _hf("llama"),
    "qwen2": lambda: _hf("qwen2"),
    "gpt": lambda: (GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=4, n_embd=16)),
                    torch.randint(0, 11, (2, 8))),
    "cnn": lambda: (CNN(3, 4, n=4, image_size=24, dropout=0.1), torch.randn(2, 3, 24, 24)),
    "mlp": lambda: (MLP(12, 4, hidden=16), torch.randn(4, 12)),
}


# Helpers -----------------------------------------------------------------------------------------
def _randomise(model: nn.Module) -> None:
    """Nonzero biases and batch-norm statistics, so that pruned units have constants to fold."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)


def _call(model, x):
    return model(**x) if isinstance(x, dict) else model(x)


def _main(out):
    if isinstance(out, dict) or hasattr(out, "logits"):
        return out["logits"]
    return out[0] if isinstance(out, tuple) else out


def _loss(model, x):
    return _main(_call(model, x)).float().pow(2).mean()


def _train_step(model, optimizer, x):
    model.train()
    optimizer.zero_grad()
    _loss(model, x).backward()
    optimizer.step()


@torch.no_grad()
def _eval(model, x):
    model.eval()
    return _main(_call(model, x))


def _expected_shapes(occam) -> dict[str, tuple[int, ...]]:
    """Each pruned tensor's shape once the units whose every scored entry is pruned are gone."""
    removed: dict[str, dict[int, set[int]]] = {}
    for group in occam.criterion.groups:
        scored = [m for m in group if m.score]
        kept = torch.zeros(scored[0].index.shape[0], dtype=torch.bool)
        for m in scored:
            kept |= _gather(occam.masks[m.param], m).any(1)
        if kept.all():
            continue
        if not kept.any():
            kept[0] = True
        for m in group:
            idx = m.index[~kept].reshape(-1).tolist()
            removed.setdefault(m.param, {}).setdefault(m.dim, set()).update(idx)
    shapes = {}
    for name, mask in occam.masks.items():
        shape = list(mask.shape)
        for dim, idx in removed.get(name, {}).items():
            shape[dim] -= len(idx)
        shapes[name] = tuple(shape)
    return shapes


def _prune_and_compact(make):
    torch.manual_seed(0)
    model, x = make()
    _randomise(model)
    setup = structured_pruning(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    occam = occamgd.Occam(model, optimizer, schedule=occamgd.ConstantRate(RATES[0]), **setup)
    for rate in RATES:
        occam.schedule = occamgd.ConstantRate(rate)
        _train_step(model, optimizer, x)
        occam.step(1.0)
    return model, x, occam, compact(model, occam)


# Tests -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_compacts_to_the_same_outputs_with_the_parameters_the_masks_say(name, one_thread):
    model, x, occam, small = _prune_and_compact(ZOO[name])
    assert type(small) is type(model)
    assert occam.density < 1.0
    expected, got = _eval(model, x), _eval(small, x)
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * scale), float((got - expected).abs().max())
    params = dict(small.named_parameters())
    shapes = _expected_shapes(occam)
    assert {n: tuple(params[n].shape) for n in shapes} == shapes
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    # The compacted model trains one more step.
    before = copy.deepcopy(small.state_dict())
    _train_step(small, torch.optim.SGD(small.parameters(), lr=0.01), x)
    assert any(not torch.equal(before[k], v) for k, v in small.state_dict().items())
    assert math.isfinite(float(_loss(small, x)))


def test_global_scope_ranks_every_groups_units_together_and_compacts_the_same(one_thread):
    torch.manual_seed(0)
    model, x = ZOO["resnet-basic"]()
    _randomise(model)
    setup = structured_pruning(model, x, scope="global")
    assert setup["criterion"].scope == "global"
    occam = occamgd.Occam(model, None, schedule=occamgd.ConstantRate(0.5), **setup)
    occam.step(1.0)
    kept = [int(_gather(occam.masks[g[0].param], g[0]).any(1).sum()) for g in occam.criterion.groups]
    sizes = [g[0].index.shape[0] for g in occam.criterion.groups]
    assert sum(sizes) - sum(kept) == occamgd.criteria.prune_count(sum(sizes), 0.5)
    assert min(kept) >= 1 and len({k / n for k, n in zip(kept, sizes)}) > 1  # not the same share everywhere
    small = compact(model, occam)
    expected = _eval(model, x)
    assert torch.allclose(_eval(small, x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
