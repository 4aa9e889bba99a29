"""What a stored folded graph may name (`enserve.fusion.graph_json`): the functions, tensor
methods, leaf modules (with the attributes that are their constructor arguments), dtypes
and memory formats that traced and folded members use. Anything else is refused on load.

The lists hold what torchvision's classifiers (ResNet, MobileNet, EfficientNet, DenseNet,
RegNet, MNASNet, ShuffleNet, GoogLeNet, Inception, ConvNeXt, VGG, ...) and small
`torch.nn` models produce once traced and folded, plus a few close relatives.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
         "groups", "bias", "padding_mode")
_NORM = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_INPLACE = ("inplace",)

# class -> the attributes that rebuild it as constructor keyword arguments (`bias`: whether
# the module has one)
LEAVES: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv1d": (nn.Conv1d, _CONV),
    "Conv2d": (nn.Conv2d, _CONV),
    "Conv3d": (nn.Conv3d, _CONV),
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, _NORM),
    "BatchNorm2d": (nn.BatchNorm2d, _NORM),
    "BatchNorm3d": (nn.BatchNorm3d, _NORM),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias")),
    "GroupNorm": (nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine")),
    "ReLU": (nn.ReLU, _INPLACE),
    "ReLU6": (nn.ReLU6, _INPLACE),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope", "inplace")),
    "Hardswish": (nn.Hardswish, _INPLACE),
    "Hardsigmoid": (nn.Hardsigmoid, _INPLACE),
    "SiLU": (nn.SiLU, _INPLACE),
    "GELU": (nn.GELU, ("approximate",)),
    "Sigmoid": (nn.Sigmoid, ()),
    "Tanh": (nn.Tanh, ()),
    "Softmax": (nn.Softmax, ("dim",)),
    "Dropout": (nn.Dropout, ("p", "inplace")),
    "Dropout2d": (nn.Dropout2d, ("p", "inplace")),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Identity": (nn.Identity, ()),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation",
                                 "return_indices", "ceil_mode")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad", "divisor_override")),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
}

# the classes above that hold tensors (all take `device=` and `dtype=`); the others hold none
WITH_TENSORS = frozenset({"Conv1d", "Conv2d", "Conv3d", "Linear", "BatchNorm1d", "BatchNorm2d",
                          "BatchNorm3d", "LayerNorm", "GroupNorm"})


def _named(prefix: str, functions: tuple[Callable[..., Any], ...]) -> dict[str, Callable[..., Any]]:
    return {f"{prefix}.{f.__name__}": f for f in functions}


FUNCTIONS: dict[str, Callable[..., Any]] = {
    **_named("operator", (operator.add, operator.sub, operator.mul, operator.truediv,
                          operator.floordiv, operator.neg, operator.getitem, operator.eq,
                          operator.matmul)),
    **_named("torch", (torch.cat, torch.stack, torch.flatten, torch.permute, torch.transpose,
                       torch.swapaxes, torch.reshape, torch.chunk, torch.split, torch.einsum,
                       torch.matmul, torch.add, torch.mul, torch.mean, torch.sigmoid,
                       torch.relu, torch.tanh, torch._assert)),
    **_named("torch.nn.functional", (F.relu, F.relu6, F.gelu, F.silu, F.hardswish,
                                     F.hardsigmoid, F.softmax, F.layer_norm, F.dropout,
                                     F.adaptive_avg_pool2d, F.max_pool2d)),
    # a builtin whose `__name__` is `avg_pool2d` but lives in torch._C._nn
    "torch.nn.functional.avg_pool2d": F.avg_pool2d,
    "getattr": getattr,  # only for the attributes below
}
GETATTR_NAMES = frozenset({"shape", "dtype", "ndim", "device"})

METHODS = frozenset({
    "view", "reshape", "permute", "transpose", "contiguous", "size", "dim", "chunk", "split",
    "unsqueeze", "squeeze", "flatten", "mean", "sum", "expand", "expand_as", "add", "mul",
    "sigmoid", "relu", "softmax", "float",
})

DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
}
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format,
}
