"""Model registry: small nets that adapt to a dataset's input shape and class count."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def _spatial_after(side: int, steps: list[tuple[int, int]]) -> int:
    """Side length after a list of (conv kernel, pool) steps with no padding."""
    for kernel, pool in steps:
        side = (side - kernel + 1) // pool
    return side


def _conv_kernel(side: int) -> int:
    # 5x5 kernels as in the seed nets; small inputs (8x8 digits) need 3x3 with padding.
    return 5 if side >= 20 else 3


class LeNet(nn.Module):
    """conv6-conv16-fc120-fc84, the small CNN of LeCun et al. 1998 used in seed 000."""

    def __init__(self, input_shape: tuple[int, ...], classes: int) -> None:
        super().__init__()
        channels, side = input_shape[0], input_shape[-1]
        k = _conv_kernel(side)
        pad = 0 if k == 5 else 1
        self.conv1 = nn.Conv2d(channels, 6, k, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, k, padding=pad)
        self.pool = nn.MaxPool2d(2)
        side = _spatial_after(side + 2 * pad, [(k, 2)])
        side = _spatial_after(side + 2 * pad, [(k, 2)])
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pool(self.conv1(x)))  # pooling first: same values, less work
        x = torch.relu(self.pool(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)

    def layers(self) -> list[nn.Module]:
        """The forward pass as a chain of pieces (see SPLIT_POINTS): conv, conv, fc, fc, fc."""
        return [
            nn.Sequential(self.conv1, self.pool, nn.ReLU()),
            nn.Sequential(self.conv2, self.pool, nn.ReLU(), nn.Flatten()),
            nn.Sequential(self.fc1, nn.ReLU()),
            nn.Sequential(self.fc2, nn.ReLU()),
            self.fc3,
        ]


class CnnDropout(nn.Module):
    """conv16-conv32-dropout-fc512-fc256: the MNIST CNN of seed 002."""

    def __init__(self, input_shape: tuple[int, ...], classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        channels, side = input_shape[0], input_shape[-1]
        k = _conv_kernel(side)
        pad = 0 if k == 5 else 1
        self.conv1 = nn.Conv2d(channels, 16, k, padding=pad)
        self.conv2 = nn.Conv2d(16, 32, k, padding=pad)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout)
        side = _spatial_after(side + 2 * pad, [(k, 2)])
        side = _spatial_after(side + 2 * pad, [(k, 2)])
        self.fc1 = nn.Linear(32 * side * side, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pool(self.conv1(x)))
        x = self.drop(torch.relu(self.pool(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)

    def layers(self) -> list[nn.Module]:
        """The forward pass as a chain of pieces (see SPLIT_POINTS): conv, conv, fc, fc, fc."""
        return [
            nn.Sequential(self.conv1, self.pool, nn.ReLU()),
            nn.Sequential(self.conv2, self.pool, nn.ReLU(), self.drop, nn.Flatten()),
            nn.Sequential(self.fc1, nn.ReLU()),
            nn.Sequential(self.fc2, nn.ReLU()),
            self.fc3,
        ]


class Mlp(nn.Module):
    """Two hidden layers of 200 units (the MNIST 2NN of McMahan et al. 2017)."""

    def __init__(self, input_shape: tuple[int, ...], classes: int, hidden: int = 200) -> None:
        super().__init__()
        features = math.prod(input_shape)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def layers(self) -> list[nn.Module]:
        """The forward pass as a chain of pieces (see SPLIT_POINTS): fc, fc, fc."""
        net = self.net
        return [nn.Sequential(net[0], net[1], net[2]), nn.Sequential(net[3], net[4]), net[5]]


class LogReg(nn.Module):
    """Multinomial logistic regression: one linear layer. With two classes it is binary
    logistic regression with one logit z = w.x + b, the model an edge board trains
    (distlab.edge): the outputs are (0, z), so softmax cross-entropy is the logistic loss
    -log sigmoid(+-z) and the predicted class is z > 0."""

    def __init__(self, input_shape: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.binary = classes == 2
        outputs = 1 if self.binary else classes
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.binary else z

    def layers(self) -> list[nn.Module]:
        """One piece: a single linear layer cannot be cut (see SPLIT_POINTS)."""
        return [self] if self.binary else [self.net]


class VggSmall(nn.Module):
    """A small VGG-style net (Simonyan and Zisserman 2015: stacks of 3x3 convolutions, each
    stack closed by 2x2 max pooling): conv16x2-conv32x2-conv64x2-fc128. A stack pools only
    while the side is >= 4, so 8x8 digits (8 -> 4 -> 2 -> 2), 28x28 MNIST (28 -> 14 -> 7 -> 3)
    and 32x32 CIFAR (32 -> 16 -> 8 -> 4) all fit. About 3x LeNet's parameters and 25x its
    compute on MNIST: the larger target of the distill strategy."""

    widths = (16, 32, 64)

    def __init__(self, input_shape: tuple[int, ...], classes: int, hidden: int = 128) -> None:
        super().__init__()
        channels, side = input_shape[0], input_shape[-1]
        stacks = []
        for width in self.widths:
            stacks.append(self._stack(channels, width, pool=side >= 4))
            channels, side = width, side // 2 if side >= 4 else side
        self.features = nn.ModuleList(stacks)
        self.fc1 = nn.Linear(channels * side * side, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self._init_weights()

    @staticmethod
    def _stack(inputs: int, width: int, pool: bool) -> nn.Sequential:
        layers = [nn.Conv2d(inputs, width, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

    def _init_weights(self) -> None:
        # He initialization (He et al. 2015) for every layer, as torchvision's VGG does for its
        # convolutions (its linear layers draw N(0, 0.01), which starts with smaller logits):
        # with torch's default (variance 1/3 of He's) eight ReLU layers start with vanishing
        # signals and SGD stalls.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stack in self.features:
            x = stack(x)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

    def layers(self) -> list[nn.Module]:
        """The forward pass as a chain of pieces (see SPLIT_POINTS): 3 conv stacks, fc, fc."""
        last = nn.Sequential(self.features[2], nn.Flatten())
        return [
            self.features[0],
            self.features[1],
            last,
            nn.Sequential(self.fc1, nn.ReLU()),
            self.fc2,
        ]


def _needs_image(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    def build(input_shape: tuple[int, ...], classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(
                f"model {cls.__name__} needs image input (C, H, W); got shape {input_shape}"
            )
        # The layer sizes follow the width alone, and two 2x2 poolings need a side of 4.
        if input_shape[1] != input_shape[2] or input_shape[2] < 4:
            raise ValueError(
                f"model {cls.__name__} needs square images of side >= 4; got shape {input_shape}"
            )
        return cls(input_shape, classes)

    return build


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "lenet": _needs_image(LeNet),
    "cnn-dropout": _needs_image(CnnDropout),
    "mlp": Mlp,
    "logreg": LogReg,
    "vgg-small": _needs_image(VggSmall),
}


@dataclass(frozen=True)
class SplitPoints:
    """Where a model may be cut into pipeline stages (model parallelism, GPipe: Huang et al.
    2019). `layers`: how many pieces `model.layers()` returns, whose chained application is
    `model(x)`; a cut at i sits between piece i-1 and piece i. `declared`: the cuts the
    model's author marks as natural, most natural first (LeNet: between the convolutions and
    the fully connected layers, as in the course's seed 003, then between the fc layers)."""

    layers: int
    declared: tuple[int, ...]

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Every place a cut may go when stages are balanced rather than declared."""
        return tuple(range(1, self.layers))


SPLIT_POINTS: dict[str, SplitPoints] = {
    "lenet": SplitPoints(5, (2, 3, 4)),
    "cnn-dropout": SplitPoints(5, (2, 3, 4)),
    "mlp": SplitPoints(3, (1, 2)),
    "logreg": SplitPoints(1, ()),
    "vgg-small": SplitPoints(5, (3, 4, 2)),
}


def model_layers(model: nn.Module) -> list[nn.Module]:
    """The model's forward pass as a chain of pieces that share its parameters."""
    if not hasattr(model, "layers"):
        raise ValueError(f"model {type(model).__name__} declares no layers to cut into stages")
    return model.layers()


def build_model(name: str, input_shape: tuple[int, ...], classes: int, seed: int) -> nn.Module:
    """Build a registered model with weights drawn from `seed` (global RNG left untouched)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (allowed: {', '.join(sorted(MODELS))})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](tuple(input_shape), classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
