"""The networks of the four problems, built with DeepOBS's TensorFlow conventions."""

from .char_rnn import CharRNN
from .cnn import ThreeC3D, TwoC2D
from .wrn import WideResNet

__all__ = ["CharRNN", "ThreeC3D", "TwoC2D", "WideResNet"]
