"""A small ResNet (He et al. 2016) for 28x28 / 32x32 images: stem, stages of BasicBlocks, global pooling.

Its residual additions tie the channels of every block in a stage to the stage's shortcut, which
is what :func:`occamgd.compaction.structured_pruning` couples (and what shrinking while training
has to follow): a stage's output channels are one group, each block's inner channels another.
"""

from __future__ import annotations

from torch import nn

from ..errors import InvalidValueError


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the input (a 1x1 conv + BN shortcut where the
    stride or the width changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-style CNN: a 3x3 stem conv + BN + ReLU of ``widths[0]`` channels, one stage per width of
    ``blocks`` BasicBlocks (every stage after the first starts with a stride-2 block and a 1x1-conv
    shortcut), global average pooling and a Linear to ``classes``.

    ``ResNet(1, 10)`` on 28x28 Fashion-MNIST: widths 16-32-64, one block a stage (about 0.18 M weights).
    ``image_size`` is checked only: the global pooling makes the network size-independent, but every
    stride-2 stage needs a side of at least 2.
    """

    def __init__(self, in_channels: int, classes: int, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1,
                 image_size: int | tuple[int, int] = (28, 28)):
        for name, value in (("in_channels", in_channels), ("classes", classes), ("blocks", blocks)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise InvalidValueError(f"{name} must be an integer >= 1, got {value!r}")
        widths = tuple(widths) if isinstance(widths, (tuple, list)) else widths
        if not (isinstance(widths, tuple) and widths and all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
            raise InvalidValueError(f"widths must be a non-empty sequence of integers >= 1, got {widths!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
            raise InvalidValueError(f"image_size must be an integer >= 1 or a (height, width) pair of them, got "
                                    f"{image_size!r}")
        smallest = 2 ** (len(widths) - 1)
        if min(size) < smallest:
            raise InvalidValueError(f"image_size {image_size!r} is too small for {len(widths) - 1} stride-2 stages; "
                                    f"accepted: height and width >= {smallest}")
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, width = [], widths[0]
        for i, w in enumerate(widths):
            layers = [BasicBlock(width if b == 0 else w, w, stride=2 if (i > 0 and b == 0) else 1)
                      for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
            width = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))
