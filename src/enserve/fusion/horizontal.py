"""Horizontal fusion: members with one architecture (seeds, snapshots) run as a single
vectorized forward — their weights stacked, `functional_call` under `vmap`."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.func import functional_call, vmap

from enserve.errors import ModelLoadError
from enserve.fusion.fold import folded_copy
from enserve.fusion.graph_ops import TorchPreprocess


def same_structure(modules: Sequence[nn.Module]) -> str | None:
    """None when every module has the first one's class and state shapes, else why not."""
    first = modules[0]
    kind = _kind(first)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in first.state_dict().items()}
    for i, m in enumerate(modules[1:], start=1):
        if _kind(m) != kind:
            return f"member {i} is a {type(m).__name__}, member 0 a {type(first).__name__}"
        other = {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}
        if other != shapes:
            diff = sorted(set(other.items()) ^ set(shapes.items()))[:2]
            return f"member {i} has different weights than member 0 (e.g. {diff})"
    return None


def _stack(per_module: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {k: torch.stack([d[k].detach() for d in per_module]) for k in per_module[0]}


def _kind(module: nn.Module) -> object:
    # Traced modules get a class each; their generated code tells if they compute alike.
    return module.code if isinstance(module, fx.GraphModule) else type(module)


class StackedModule(nn.Module):
    """N same-architecture modules as one: input `[B, ...]` -> stacked logits `[N, B, C]`."""

    def __init__(
        self,
        modules: Sequence[nn.Module],
        preprocess: TorchPreprocess | None = None,
        fold: bool = True,
    ) -> None:
        super().__init__()
        if len(modules) < 2:
            raise ValueError("horizontal fusion needs at least two members")
        prepared = [m.eval() for m in modules]
        if fold:
            prepared = [folded_copy(m)[0] for m in prepared]
        why = same_structure(prepared)
        if why is not None:
            raise ModelLoadError(f"cannot fuse horizontally: {why}")
        # torch.func.stack_module_state wants one Python class; traced copies have one each.
        self.count = len(prepared)
        self.stacked_params = _stack([dict(m.named_parameters()) for m in prepared])
        self.stacked_buffers = _stack([dict(m.named_buffers()) for m in prepared])
        # The skeleton whose forward runs each slice; its own tensors are never used.
        self.skeleton = copy.deepcopy(prepared[0]).to("meta")
        self.preprocess = preprocess or TorchPreprocess(None)

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
             x: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.skeleton, (params, buffers), (x,))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        run = vmap(self._one, in_dims=(0, 0, None))
        return run(self.stacked_params, self.stacked_buffers, x).float()

    def tensor_bytes(self) -> int:
        tensors = list(self.stacked_params.values()) + list(self.stacked_buffers.values())
        return sum(t.numel() * t.element_size() for t in tensors)
