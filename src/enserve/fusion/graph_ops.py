"""Torch versions of per-member preprocessing and the combination rules, so both can
live inside a fused graph. They mirror `members/preprocess.py` and `combine.py`; the
tests hold them equal to those numpy versions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from enserve.spec import Preprocess

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}

# Rules whose torch form below matches `combine.combine` (all of them today).
IN_GRAPH_RULES = frozenset(
    {"mean_prob", "weighted_mean_prob", "mean_logits", "majority_vote", "max_prob", "geometric_mean"}
)


class TorchPreprocess(nn.Module):
    """A `Preprocess` block as a module: cast, scale, bilinear resize, normalize."""

    def __init__(self, config: Preprocess | None) -> None:
        super().__init__()
        self.dtype = _TORCH_DTYPES[config.dtype] if config is not None else torch.float32
        self.scale = config.scale if config is not None else None
        self.size: tuple[int, int] | None = (
            (config.resize[0], config.resize[1]) if config is not None and config.resize else None
        )
        has_norm = config is not None and config.mean is not None and config.std is not None
        mean = torch.tensor(config.mean if has_norm and config else [0.0], dtype=self.dtype)
        std = torch.tensor(config.std if has_norm and config else [1.0], dtype=self.dtype)
        self.normalize = has_norm
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.scale is not None:
            x = x * self.scale
        if self.size is not None:
            x = _resize(x, self.size)
        if self.normalize:
            x = _normalize(x, self.mean, self.std)
        return x


@torch.fx.wrap
def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean.reshape(shape)) / std.reshape(shape)


@torch.fx.wrap
def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Channels-last layout for 4-D tensors; others unchanged (rank known only at run time)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.fx.wrap
def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dim() == 3:
        return F.interpolate(x.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class TorchCombiner(nn.Module):
    """`combine.combine` on stacked logits `[members, batch, classes]` -> probabilities."""

    def __init__(self, rule: str, weights: Sequence[float]) -> None:
        super().__init__()
        if rule not in IN_GRAPH_RULES:
            raise ValueError(f"combiner '{rule}' has no in-graph form")
        self.rule = rule
        w = torch.tensor(list(weights), dtype=torch.float64)
        self.weights: torch.Tensor
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return _combine(logits, self.weights, self.rule)


@torch.fx.wrap
def _combine(logits: torch.Tensor, weights: torch.Tensor, rule: str) -> torch.Tensor:
    # float64 like the numpy oracle: the cost is negligible next to the members.
    z = logits.double()
    w = weights.reshape(-1, 1, 1)
    if rule == "mean_prob":
        out = torch.softmax(z, dim=-1).mean(dim=0)
    elif rule == "weighted_mean_prob":
        out = (torch.softmax(z, dim=-1) * w).sum(dim=0)
    elif rule == "mean_logits":
        out = torch.softmax((z * w).sum(dim=0), dim=-1)
    elif rule == "geometric_mean":
        out = torch.softmax((torch.log_softmax(z, dim=-1) * w).sum(dim=0), dim=-1)
    elif rule == "max_prob":
        best = torch.softmax(z, dim=-1).amax(dim=0)
        out = best / best.sum(dim=-1, keepdim=True)
    else:  # majority_vote: argmax picks the first maximum, as numpy does
        votes = F.one_hot(z.argmax(dim=-1), num_classes=z.shape[-1]).double()
        out = (votes * w).sum(dim=0)
    return out.float()
