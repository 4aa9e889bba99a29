"""Which members can be fused, and loading a fused group as a `FusedMember`.

A fused group is one more execution variant for the planner: it is profiled like any
member and chosen where it is faster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from enserve.errors import ModelLoadError, SpecError
from enserve.fusion.candidates import (
    FUSION_KINDS,
    FusionGroup,
    FusionKind,
    architecture_key,
    fusion_candidates,
)
from enserve.fusion.folded import folded_members
from enserve.fusion.fx import build_fx_group, freeze
from enserve.fusion.graph_ops import TorchCombiner, TorchPreprocess
from enserve.fusion.horizontal import StackedModule
from enserve.fusion.lanes import LaneRunner
from enserve.fusion.member import FusedMember, Runner
from enserve.members.loaders import build_torch_module
from enserve.members.onnx_member import make_session
from enserve.spec import EnsembleSpec, MemberSpec

__all__ = [  # the candidate helpers are re-exported for existing importers
    "FUSION_KINDS",
    "FusionGroup",
    "FusionKind",
    "architecture_key",
    "fusion_candidates",
    "load_fused",
]


def _torch_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _torch_runner(module: nn.Module) -> Runner:
    def run(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(a) for a in arrays))
        if isinstance(out, (tuple, list)):
            return out[0].numpy(), out[1].numpy()
        return out.numpy(), None

    return run


def _sources(spec: EnsembleSpec, specs: Sequence[MemberSpec],
             modules: Mapping[str, nn.Module] | None) -> dict[str, nn.Module]:
    return {m.name: (modules[m.name] if modules and m.name in modules else build_torch_module(spec, m))
            for m in specs}


def _module_bytes(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta" and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class _HorizontalGroup(nn.Module):
    def __init__(self, stacked: StackedModule, combiner: TorchCombiner | None) -> None:
        super().__init__()
        self.stacked = stacked
        self.combiner = combiner

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.stacked(x)
        return logits if self.combiner is None else (logits, self.combiner(logits))


def load_fused(
    spec: EnsembleSpec,
    members: Sequence[str],
    kind: FusionKind,
    threads: int | None = None,
    *,
    fold: bool = True,
    channels_last: bool = False,
    frozen: bool = False,
    combine_in_graph: bool | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    mapped: bool = True,
    lanes: bool = False,
    cache_dir: Path | None = None,
) -> FusedMember:
    """Load `members` of `spec` fused as `kind`.

    `combine_in_graph` (default: when the group is the whole ensemble) puts the combiner
    in the graph. `modules` supplies already built torch modules (e.g. from
    `members.packed.load_packed`) instead of building them from the spec; an `fx` group folds
    them in place (they stay equivalent), releasing each original convolution as it is
    folded. `frozen` (fx only) additionally TorchScript-freezes the graph.

    `mapped` (fx, folding, no `modules`, every member built from an architecture plus
    tensors): the folded weights are written once to a file in `cache_dir` (default: the
    enserve cache) and mapped from it, so later loads never build the sources
    (`enserve.fusion.folded`).

    `lanes` (fx, not frozen): one graph per member, run side by side on `threads` threads
    of one intra-op thread each (`enserve.fusion.lanes`).
    """
    if kind not in FUSION_KINDS:
        raise SpecError(f"unknown fusion kind '{kind}' (expected one of {', '.join(FUSION_KINDS)})")
    specs = [spec.member(n) for n in members]
    if len(specs) < 1:
        raise SpecError("a fused group needs at least one member")
    whole = {m.name for m in specs} == {m.name for m in spec.members}
    in_graph = whole if combine_in_graph is None else combine_in_graph and whole
    weights = [spec.member_weights()[spec.members.index(m)] for m in specs]
    combiner = TorchCombiner(spec.combiner, weights) if in_graph else None
    name = FusionGroup(kind, tuple(members), whole).name
    used = {spec.input_for(m).name for m in specs}
    used_names = [t.name for t in spec.inputs if t.name in used]  # FusedMember's input order
    input_index = {m.name: used_names.index(spec.input_for(m).name) for m in specs}
    if threads:
        _torch_threads(threads)

    if kind == "onnx":
        return _load_onnx(spec, specs, name, threads or 1, spec.combiner if in_graph else None, weights)

    if any(m.kind == "onnx" for m in specs):
        raise SpecError(f"{name}: ONNX members can't join a '{kind}' group")
    variant = f"fused-{kind}"
    if kind == "fx" and lanes:
        if frozen:
            raise SpecError(f"{name}: lanes run fx graphs, not a frozen one")
        return _fx_lanes(spec, specs, name, input_index, combiner, threads or 1, fold=fold,
                         channels_last=channels_last, modules=modules, mapped=mapped,
                         cache_dir=cache_dir)
    if kind == "fx":
        pre = {m.name: TorchPreprocess(m.preprocess) for m in specs}
        folded = (folded_members(spec, list(members), channels_last, cache_dir)
                  if fold and mapped and not modules else None)
        if folded is not None:  # folded weights mapped from the cache: no source built
            gm, _ = build_fx_group(folded, pre, input_index, combiner, fold=False,
                                   channels_last=channels_last)
            del folded
        else:
            gm, _ = build_fx_group(_sources(spec, specs, modules), pre, input_index, combiner,
                                   fold=fold, channels_last=channels_last, consume=True)
        module: nn.Module = gm
        if frozen:
            module = _frozen(spec, gm, used_names)
            variant += "-frozen"
        size = _module_bytes(gm)
    else:
        if len({input_index[m.name] for m in specs}) != 1 or len(
            {m.preprocess.model_dump_json() if m.preprocess else "" for m in specs}
        ) != 1:
            raise SpecError(f"{name}: horizontal fusion needs one input and one preprocessing")
        built = _sources(spec, specs, modules)
        stacked = StackedModule([built[m.name] for m in specs], TorchPreprocess(specs[0].preprocess), fold)
        module = _HorizontalGroup(stacked, combiner).eval()
        size = stacked.tensor_bytes()
    return FusedMember(name, kind, spec, members, _torch_runner(module), size, _torch_threads, variant)


def _fx_lanes(spec: EnsembleSpec, specs: list[MemberSpec], name: str, input_index: dict[str, int],
              combiner: TorchCombiner | None, lanes: int, *, fold: bool, channels_last: bool,
              modules: Mapping[str, nn.Module] | None, mapped: bool,
              cache_dir: Path | None) -> FusedMember:
    """One folded fx graph per member (weights mapped from the group's folded file, as for
    the single graph), run side by side by a `LaneRunner`."""
    names = [m.name for m in specs]
    from_file = fold and mapped and not modules
    folded = folded_members(spec, names, channels_last, cache_dir) if from_file else None
    sources = folded if folded is not None else _sources(spec, specs, modules)
    graphs: list[nn.Module] = []
    for m in specs:  # each source is folded and released before the next one
        gm, _ = build_fx_group({m.name: sources.pop(m.name)}, {m.name: TorchPreprocess(m.preprocess)},
                               {m.name: input_index[m.name]}, None, fold=fold and folded is None,
                               channels_last=channels_last, consume=True)
        graphs.append(gm)
    sizes = [_module_bytes(g) for g in graphs]
    runner = LaneRunner(graphs, sizes, combiner, lanes)
    variant = "fused-fx" + ("-cl" if channels_last else "") + "-lanes"
    return FusedMember(name, "fx", spec, names, runner, sum(sizes), runner.set_lanes, variant)


def _frozen(spec: EnsembleSpec, gm: nn.Module, used_inputs: list[str]) -> nn.Module:
    example = []
    for t in spec.inputs:
        if t.name in used_inputs:
            example.append(torch.randn([d if d > 0 else 2 for d in t.shape]))
    return freeze(gm, example)


def _load_onnx(
    spec: EnsembleSpec,
    specs: list[MemberSpec],
    name: str,
    threads: int,
    combiner: str | None,
    weights: list[float],
) -> FusedMember:
    import onnx

    from enserve.fusion.onnx_merge import OnnxPart, merge_onnx  # onnx only where used

    parts = []
    for m in specs:
        if m.kind != "onnx":
            raise SpecError(f"{name}: member '{m.name}' is not an ONNX model")
        path = spec.resolve_path(m.target, f"members.{spec.members.index(m)}.source")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"member '{m.name}': cannot read ONNX file: {exc}") from None
        parts.append(OnnxPart(m.name, model, spec.input_for(m).name, m.preprocess))
    merged = merge_onnx(parts, spec.inputs, combiner, weights)
    blob = merged.SerializeToString()
    size = int(sum(np.prod(t.dims) * 4 for t in merged.graph.initializer))
    state: dict[str, object] = {"session": make_session(blob, threads)}
    used = {spec.input_for(m).name for m in specs}

    def run(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        names = [t.name for t in spec.inputs if t.name in used]
        feed = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(names, arrays, strict=True)}
        session = state["session"]
        outs = session.run(None, feed)  # type: ignore[attr-defined]
        return outs[0], (outs[1] if len(outs) > 1 else None)

    def set_threads(n: int) -> None:
        state["session"] = make_session(blob, n)

    return FusedMember(name, "onnx", spec, [m.name for m in specs], run, size, set_threads, "fused-onnx")
