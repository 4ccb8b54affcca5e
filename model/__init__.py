"""onlinenorm's PyTorch library: Online Normalization layers, networks, learner."""

from model.functional import online_norm
from model.layers import ActivationClamp, LayerScaling, OnlineNorm, OnlineNorm1d, OnlineNorm2d

__all__ = [
    "ActivationClamp",
    "LayerScaling",
    "OnlineNorm",
    "OnlineNorm1d",
    "OnlineNorm2d",
    "online_norm",
]
