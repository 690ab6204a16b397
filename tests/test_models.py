"""models: the paper's reference networks (shapes, layer names, argument checks, prunable tensors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from occamgd import select_prunable
from occamgd.models import CNN, MLP, TabularMLP


def _conv_stack(model: CNN) -> nn.Sequential:
    """The model's layers up to and including Flatten."""
    names = list(model._modules)
    return nn.Sequential(*list(model.children())[: names.index("flatten") + 1])


# ---- MLP (the MNIST "linear network") --------------------------------------------------------


def test_mlp_shape_and_children():
    model = MLP(12, 3, hidden=8)
    assert list(model._modules) == ["flatten", "fc1", "relu", "dropout", "fc2"]
    assert model(torch.randn(2, 3, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"in_features": 0}, "in_features"),
        ({"classes": 2.0}, "classes"),
        ({"hidden": -1}, "hidden"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_mlp_bad_arguments(kwargs, needle):
    args = {"in_features": 4, "classes": 2, "hidden": 4, **kwargs}
    with pytest.raises(ValueError, match=needle) as info:
        MLP(**args)
    assert repr(kwargs[needle]) in str(info.value)


# ---- CNN (the CIFAR-10 network) ---------------------------------------------------------------


def test_cnn_children_names():
    assert list(CNN(1, 10, n=2)._modules) == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
        "flatten", "fc1", "relu4", "fc2",
    ]
    assert "dropout" in CNN(1, 10, n=2, dropout=0.5)._modules
    assert list(CNN(1, 10, n=2, dropout=0.5)._modules)[-3:] == ["relu4", "dropout", "fc2"]


@pytest.mark.parametrize(
    ("channels", "size", "side"),
    [(1, 28, (3, 3)), (3, 32, (4, 4)), (3, (28, 32), (3, 4)), (1, (40, 18), (6, 1))],
)
def test_cnn_shapes_and_flat_size(channels, size, side):
    n = 4
    model = CNN(channels, 7, n=n, image_size=size)
    hw = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, channels, *hw)
    assert model(x).shape == (2, 7)
    # The arithmetic (28 -> 26 -> 13 -> 11 -> 5 -> 3; 32 -> 30 -> 15 -> 13 -> 6 -> 4) ...
    assert model.fc1.in_features == 2 * n * side[0] * side[1]
    # ... agrees with a real forward pass through the convolutions.
    assert _conv_stack(model)(x).shape == (2, model.fc1.in_features)


def test_cnn_valid_padding():
    model = CNN(3, 10, n=2, image_size=32)
    for name in ("conv1", "conv2", "conv3"):
        conv = getattr(model, name)
        assert conv.kernel_size == (3, 3) and conv.padding == (0, 0) and conv.stride == (1, 1)


def test_cnn_minimum_image_size():
    CNN(1, 2, n=1, image_size=18)(torch.randn(2, 1, 18, 18))  # 18 -> 16 -> 8 -> 6 -> 3 -> 1
    for size in (17, (17, 32), (32, 10)):
        with pytest.raises(ValueError, match="too small") as info:
            CNN(1, 2, n=1, image_size=size)
        assert repr(size) in str(info.value) and "18" in str(info.value)


def test_cnn_parameter_count_matches_keras():
    model = CNN(3, 10, n=32, image_size=32)
    conv1 = 3 * 32 * 3 * 3 + 32  # 896
    conv2 = 32 * 64 * 3 * 3 + 64  # 18_496
    conv3 = 64 * 64 * 3 * 3 + 64  # 36_928
    fc1 = (64 * 4 * 4) * 64 + 64  # 65_600
    fc2 = 64 * 10 + 10  # 650
    expected = conv1 + conv2 + conv3 + fc1 + fc2
    assert expected == 122_570  # the Keras CIFAR-10 tutorial's "Total params"
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize(
    ("kwargs", "needle", "value"),
    [
        ({"in_channels": 0}, "in_channels", 0),
        ({"classes": "10"}, "classes", "10"),
        ({"n": 0}, "n", 0),
        ({"image_size": (28,)}, "image_size", (28,)),
        ({"image_size": 28.0}, "image_size", 28.0),
        ({"dropout": -0.1}, "dropout", -0.1),
    ],
)
def test_cnn_bad_arguments(kwargs, needle, value):
    args = {"in_channels": 1, "classes": 2, "n": 1, **kwargs}
    with pytest.raises(ValueError, match=needle) as info:
        CNN(**args)
    assert repr(value) in str(info.value)


# ---- TabularMLP (MLP 256-256) -----------------------------------------------------------------


def test_tabular_default_is_256_256():
    model = TabularMLP(5, 3)
    assert list(model._modules) == ["fc1", "relu1", "fc2", "relu2", "out"]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [
        (5, 256), (256, 256), (256, 3),
    ]
    assert model(torch.randn(4, 5)).shape == (4, 3)


def test_tabular_dropout_only_when_positive():
    assert not any(isinstance(m, nn.Dropout) for m in TabularMLP(5, 3, hidden=[4, 6, 2]))
    model = TabularMLP(5, 3, hidden=[4, 6, 2], dropout=0.25)
    assert list(model._modules) == [
        "fc1", "relu1", "dropout1", "fc2", "relu2", "dropout2", "fc3", "relu3", "dropout3", "out",
    ]
    assert all(m.p == 0.25 for m in model if isinstance(m, nn.Dropout))
    assert model(torch.randn(3, 5)).shape == (3, 3)


@pytest.mark.parametrize(
    ("kwargs", "needle", "value"),
    [
        ({"in_features": 0}, "in_features", 0),
        ({"classes": 1.5}, "classes", 1.5),
        ({"hidden": ()}, "hidden", ()),
        ({"hidden": (8, 0)}, "hidden", (8, 0)),
        ({"hidden": 256}, "hidden", 256),
        ({"hidden": "256"}, "hidden", "256"),
        ({"hidden": (8.0,)}, "hidden", (8.0,)),
        ({"dropout": 1.0}, "dropout", 1.0),
    ],
)
def test_tabular_bad_arguments(kwargs, needle, value):
    args = {"in_features": 4, "classes": 2, "hidden": (4,), **kwargs}
    with pytest.raises(ValueError, match=needle) as info:
        TabularMLP(**args)
    assert repr(value) in str(info.value)


# ---- default prunable selection ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (MLP(8, 3, hidden=4), ["fc1.weight", "fc2.weight"]),
        (CNN(1, 3, n=2, dropout=0.5), ["conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight",
                                        "fc2.weight"]),
        (TabularMLP(8, 3, hidden=(4, 4), dropout=0.1), ["fc1.weight", "fc2.weight", "out.weight"]),
    ],
    ids=["MLP", "CNN", "TabularMLP"],
)
def test_default_prunable_is_conv_and_linear_weights(model, expected):
    assert list(select_prunable(model)) == expected
    layer_weights = [
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    assert layer_weights == expected
