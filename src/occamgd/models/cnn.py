"""The paper's CNN (Keras' CIFAR-10 network): three valid 3x3 convolutions, two max-pools, two Linear layers."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import InvalidValueError

MIN_IMAGE_SIZE = 18  # 18 -> 16 -> 8 -> 6 -> 3 -> 1: the smallest side the three convolutions accept


def _conv_stack_side(side: int) -> int:
    """The side length after conv(3) -> pool(2) -> conv(3) -> pool(2) -> conv(3), no padding."""
    side = (side - 2) // 2
    side = (side - 2) // 2
    return side - 2


class CNN(nn.Sequential):
    """The reference CNN of the CIFAR-10 experiment, also used on 28x28 MNIST / Fashion-MNIST.

    Conv2d(in, N, 3) -> ReLU -> MaxPool(2) -> Conv2d(N, 2N, 3) -> ReLU -> MaxPool(2) ->
    Conv2d(2N, 2N, 3) -> ReLU -> Flatten -> Linear(2N * h * w, 2N) -> ReLU -> [Dropout] ->
    Linear(2N, classes), with Keras' default "valid" (no) padding; the paper uses N = 32...64.
    Its three Conv2d and two Linear weights are prunable by default; the biases are not.
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        n: int = 32,
        image_size: int | tuple[int, int] = 28,
        dropout: float = 0.0,
    ):
        for name, value in (("in_channels", in_channels), ("classes", classes), ("n", n)):
            if not (isinstance(value, int) and value >= 1):
                raise InvalidValueError(f"{name} must be an integer >= 1, got {value!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if not (
            isinstance(size, (tuple, list))
            and len(size) == 2
            and all(isinstance(s, int) and s >= 1 for s in size)
        ):
            raise InvalidValueError(
                f"image_size must be an integer >= 1 or a (height, width) pair of them, got {image_size!r}"
            )
        height, width = size
        if min(height, width) < MIN_IMAGE_SIZE:
            raise InvalidValueError(
                f"image_size {image_size!r} is too small for the three 3x3 convolutions; "
                f"accepted: height and width >= {MIN_IMAGE_SIZE}"
            )
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"dropout must be in [0, 1), got {dropout!r}")
        flat = 2 * n * _conv_stack_side(height) * _conv_stack_side(width)
        layers = OrderedDict(
            conv1=nn.Conv2d(in_channels, n, 3),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(n, 2 * n, 3),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(2 * n, 2 * n, 3),
            relu3=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(flat, 2 * n),
            relu4=nn.ReLU(),
        )
        if dropout > 0:
            layers["dropout"] = nn.Dropout(dropout)
        layers["fc2"] = nn.Linear(2 * n, classes)
        super().__init__(layers)
