"""The two small CNNs: ``2c2d`` (Fashion-MNIST) and ``3c3d`` (CIFAR-10), after DeepOBS.

Layer for layer as DeepOBS's ``_2c2d.py`` and ``_3c3d.py``, with TF's SAME padding and its
initialisers. The flatten order is NCHW here and NHWC in TF; with random initial weights
this is a fixed permutation of the dense layer's inputs and changes nothing.
"""

from __future__ import annotations

from torch import nn

from .layers import Conv2dSame, MaxPoolSame, glorot_normal_, glorot_uniform_


class TwoC2D(nn.Module):
    """conv5x5-32, pool, conv5x5-64, pool, dense 1024, dense 10 (3,274,634 parameters).

    ``pool_size`` 3 (stride 2, SAME) follows the paper's supplement as recalled; DeepOBS
    uses 2. Either way 28 -> 14 -> 7, so the parameter count is the same.
    """

    def __init__(self, num_outputs: int = 10, pool_size: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            Conv2dSame(1, 32, 5),
            nn.ReLU(),
            MaxPoolSame(pool_size, 2),
            Conv2dSame(32, 64, 5),
            nn.ReLU(),
            MaxPoolSame(pool_size, 2),
            nn.Flatten(),  # (B, 64 * 7 * 7)
        )
        self.classifier = nn.Sequential(
            nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), nn.Linear(1024, num_outputs)
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # TF truncated_normal_initializer(stddev=0.05): redrawn beyond 2 std.
                nn.init.trunc_normal_(m.weight, 0.0, 0.05, -0.1, 0.1)
                nn.init.constant_(m.bias, 0.05)

    def forward(self, x):
        return self.classifier(self.features(x))


class ThreeC3D(nn.Module):
    """conv5x5-64 VALID, conv3x3-96 VALID, conv3x3-128 SAME, each ReLU + pool 3x3/2 SAME;
    dense 512, 256, 10 (895,210 parameters). Conv kernels Glorot normal, dense kernels
    Glorot uniform, biases zero."""

    def __init__(self, num_outputs: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 5),  # 32 -> 28
            nn.ReLU(),
            MaxPoolSame(3, 2),  # -> 14
            nn.Conv2d(64, 96, 3),  # -> 12
            nn.ReLU(),
            MaxPoolSame(3, 2),  # -> 6
            Conv2dSame(96, 128, 3),  # -> 6
            nn.ReLU(),
            MaxPoolSame(3, 2),  # -> 3
            nn.Flatten(),  # (B, 128 * 3 * 3)
        )
        self.classifier = nn.Sequential(
            nn.Linear(3 * 3 * 128, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, num_outputs),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                glorot_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                glorot_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x))
