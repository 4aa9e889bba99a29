"""Eval-mode folding: Conv+BatchNorm pairs become one convolution, in a torch.fx graph."""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONV_BN = (
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv3d, nn.BatchNorm3d),
)


class LeafTracer(fx.Tracer):
    """Symbolic tracer that keeps the given module types opaque (untraceable members)."""

    def __init__(self, leaves: tuple[type[nn.Module], ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, torch.jit.ScriptModule) or (self.leaves and isinstance(m, self.leaves)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(module: nn.Module, tracer: fx.Tracer | None = None) -> fx.GraphModule:
    tracer = tracer or LeafTracer()
    graph = tracer.trace(module)
    name = module.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)


def _set_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _replace_in(source: nn.Module | None, target: str, new: nn.Module) -> None:
    """Mirror a replacement into `source` (the module `gm` was traced from), if it has
    `target` at the same path, so the source stops holding the replaced module."""
    if source is None:
        return
    try:
        source.get_submodule(target)
    except AttributeError:
        return
    _set_submodule(source, target, new)


def fold_conv_bn(gm: fx.GraphModule, source: nn.Module | None = None) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution used only by it.

    Works in place on `gm`; returns how many pairs were folded. BatchNorms without running
    statistics are left alone. With `source` (the module `gm` was traced from), each
    folded convolution also replaces the original in `source` and the BatchNorm becomes an
    `nn.Identity` there: `source` stays equivalent (folded too), and each original
    convolution's weights are released as soon as its pair is folded, so a fold never
    holds the unfolded and the folded weights of a whole model at once.
    """
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        if prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv, bn = modules.get(prev.target), modules.get(node.target)
        if not any(isinstance(conv, c) and type(bn) is b for c, b in _CONV_BN):
            continue
        assert isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if bn.running_mean is None or bn.running_var is None or bn.training or conv.training:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        del conv, bn  # the last local references: the originals go with their modules
        conv_target, bn_target = str(prev.target), str(node.target)
        _set_submodule(gm, conv_target, fused)
        _replace_in(source, conv_target, fused)
        _replace_in(source, bn_target, nn.Identity())
        modules[conv_target] = fused
        del modules[bn_target]
        _set_submodule(gm, bn_target, nn.Identity())  # unused below; deleted at the end
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return folded


def drop_eval_identities(gm: fx.GraphModule) -> int:
    """Remove calls that are identities in eval mode: torchvision's `stochastic_depth` with
    `training=False` (its only library function left in a traced torchvision classifier),
    so the graph runs, and unpickles, without torchvision. Returns how many were removed."""
    dropped = 0
    for node in list(gm.graph.nodes):
        target = node.target
        if node.op != "call_function" or getattr(target, "__name__", "") != "stochastic_depth":
            continue
        if not str(getattr(target, "__module__", "")).startswith("torchvision."):
            continue
        training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
        if training is not False or not isinstance(node.args[0], fx.Node):
            continue
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        dropped += 1
    if dropped:
        gm.recompile()
    return dropped


def folded_copy(module: nn.Module, consume: bool = False) -> tuple[nn.Module, int]:
    """A traced, Conv-BN-folded copy of an eval-mode module; the module itself (and 0)
    when it cannot be traced.

    The copy shares every unfolded tensor with `module`. With `consume`, `module` is
    folded in place as well (see `fold_conv_bn`), so the original convolution weights are
    released pair by pair instead of living on beside the folded ones.
    """
    try:
        gm = trace(module)
    except Exception:  # untraceable (data-dependent control flow, ...): keep it opaque
        return module, 0
    drop_eval_identities(gm)
    return gm, fold_conv_bn(gm, module if consume else None)
