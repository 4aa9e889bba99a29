"""One torch.fx graph for several members: shared inputs, per-member preprocessing,
Conv-BN folding and (optionally) the combiner, so a call runs the whole group at once."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn

from enserve.fusion.fold import LeafTracer, fold_conv_bn, folded_copy
from enserve.fusion.graph_ops import TorchCombiner, TorchPreprocess, to_channels_last

# Opaque to the tracer here too (fx patches wrapped names per importing module).
fx.wrap("to_channels_last")


class _OpaqueTracer(LeafTracer):
    """Keeps the listed module instances opaque (members fx cannot trace)."""

    def __init__(self, opaque: set[int]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.opaque or super().is_leaf_module(m, module_qualified_name)


def _logits(out: object) -> torch.Tensor:
    """First tensor of a structured output (evaluated at trace time on real containers)."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out  # type: ignore[return-value]


class GroupModule(nn.Module):
    """Runs members on their inputs; returns stacked logits `[M, B, C]` and, with a
    combiner, also the combined probabilities."""

    def __init__(
        self,
        members: Mapping[str, nn.Module],
        preprocess: Mapping[str, TorchPreprocess],
        input_index: Mapping[str, int],
        combiner: TorchCombiner | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # Member names may hold '.', which module names can't: index them instead.
        self.names = list(members)
        self.members = nn.ModuleList(members[n] for n in self.names)
        self.preprocess = nn.ModuleList(preprocess[n] for n in self.names)
        self.input_index = [input_index[n] for n in self.names]
        self.combiner = combiner
        self.channels_last = channels_last

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        outs = []
        for i, member in enumerate(self.members):
            x = self.preprocess[i](inputs[self.input_index[i]])
            if self.channels_last:
                x = to_channels_last(x)
            outs.append(_logits(member(x)).float())
        stacked = torch.stack(outs)
        if self.combiner is None:
            return stacked
        return stacked, self.combiner(stacked)


def build_fx_group(
    modules: Mapping[str, nn.Module],
    preprocess: Mapping[str, TorchPreprocess],
    input_index: Mapping[str, int],
    combiner: TorchCombiner | None = None,
    fold: bool = True,
    channels_last: bool = False,
    consume: bool = False,
) -> tuple[fx.GraphModule, dict[str, int]]:
    """Trace the group into one GraphModule. Members fx cannot trace stay opaque calls
    inside it. Returns the graph and the number of Conv-BN pairs folded per member.

    `consume`: fold the given modules in place (`folded_copy(consume=True)`), so that
    building the graph never holds a member's unfolded and folded weights together."""
    prepared: dict[str, nn.Module] = {}
    folds: dict[str, int] = {}
    opaque: set[int] = set()
    for name, module in modules.items():
        module = module.eval()
        if fold:
            module, folds[name] = folded_copy(module, consume=consume)
        else:
            folds[name] = 0
        if not isinstance(module, fx.GraphModule):
            opaque.add(id(module))
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        prepared[name] = module
    root = GroupModule(prepared, preprocess, input_index, combiner, channels_last).eval()
    tracer = _OpaqueTracer(opaque)
    graph = tracer.trace(root)
    gm = fx.GraphModule(root, graph, "FusedEnsemble")
    if fold:
        fold_conv_bn(gm)  # pairs that only meet across the member boundary (rare)
    gm.eval()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm, folds


def freeze(gm: nn.Module, example: Sequence[torch.Tensor]) -> torch.jit.ScriptModule:
    """TorchScript-trace and freeze the graph (constant-folds weights, fuses more ops)."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer notices, expected here
        traced = torch.jit.trace(gm, tuple(example), check_trace=False, strict=False)
        return torch.jit.freeze(traced.eval())
