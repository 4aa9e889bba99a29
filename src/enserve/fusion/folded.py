"""Folded members from a file: an fx group's Conv-BN-folded weights are written once per
machine to a safetensors file, and every later load builds the folded graph on the `meta`
device and maps that file, so the source weights are never materialized.

Writing streams one member at a time: the layout (names, shapes, offsets) comes from a
`meta` pass, then each member is built, folded in place (releasing each source convolution
as it goes) and written at its offsets before the next one is built. The file's pages then
live in the page cache: several instances of the group share them, as for members.

Channels-last conv weights are stored physically in NHWC order and viewed back as
channels-last `OIHW` tensors, so a channels-last group maps them without a copy. Each
traced member's folded graph is stored too, as JSON data (`graph_json`: allow-listed
functions, methods and `torch.nn` leaf modules; no pickle), so a load neither runs the
architecture code nor traces nor folds: a process that loads a fused group from the file
never imports torchvision. A stored graph the loader refuses is rebuilt from the code.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import fx, nn

from enserve.errors import ModelLoadError
from enserve.fusion.fold import folded_copy
from enserve.fusion.folded_key import folded_path
from enserve.fusion.graph_json import decode_graph, storable_graph
from enserve.members.loaders import build_torch_module
from enserve.members.packed import DTYPES, PackedFile, assign_weights, packable, skeleton
from enserve.spec import EnsembleSpec
from enserve.variants.fingerprint import atomic_write_target

log = logging.getLogger(__name__)

_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# (dtype, shape as stored, stored NHWC?) per `<member>/<state key>`
Layout = dict[str, tuple[torch.dtype, list[int], bool]]


def can_fold_from_file(spec: EnsembleSpec, members: Sequence[str]) -> bool:
    """Groups whose members are all built from an architecture plus tensors."""
    return all(packable(spec.member(n)) for n in members)


def _fold(module: nn.Module, channels_last: bool) -> nn.Module:
    folded, _ = folded_copy(module.eval(), consume=True)
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    return folded


def _nhwc(t: torch.Tensor, channels_last: bool) -> bool:
    # also when NCHW-contiguous too (one input channel, 1x1): `.to(channels_last)` would
    # still restride such a tensor, i.e. copy it
    return channels_last and t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _stored(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return t.permute(0, 2, 3, 1) if nhwc else t


def _layout(spec: EnsembleSpec, members: Sequence[str],
            channels_last: bool) -> tuple[Layout, dict[str, object]]:
    """What the file holds, from folding every member's `meta` skeleton (no weights): the
    tensors, and each traced member's folded graph as JSON data where the allow-lists
    cover it (`graph_json.storable_graph`)."""
    layout: Layout = {}
    graphs: dict[str, object] = {}
    for name in members:
        folded = _fold(skeleton(spec, spec.member(name)), channels_last)
        for key, t in folded.state_dict().items():
            nhwc = _nhwc(t, channels_last)
            layout[f"{name}/{key}"] = (t.dtype, list(_stored(t, nhwc).shape), nhwc)
        stored = storable_graph(folded) if isinstance(folded, fx.GraphModule) else None
        if stored is not None:
            graphs[name] = stored
        elif isinstance(folded, fx.GraphModule):
            log.info("member '%s': folded graph not storable; loads rebuild it from the code", name)
    return layout, graphs


def _member_graph(spec: EnsembleSpec, name: str, stored: object, where: str,
                  channels_last: bool) -> nn.Module:
    """The member's folded graph: the stored one, else (none, or refused) folded from its
    `meta` skeleton, which runs its architecture code."""
    if stored is not None:
        try:  # no architecture code, no tracing: torchvision is not imported
            return decode_graph(stored, where)
        except ModelLoadError as exc:
            log.warning("%s; building it from the member's code", exc)
    return _fold(skeleton(spec, spec.member(name)), channels_last)


def _header(layout: Layout, members: Sequence[str],
            graphs: dict[str, object]) -> tuple[bytes, dict[str, int]]:
    """The safetensors header and each tensor's data offset: widest dtypes first, no
    gaps, so every tensor is aligned for its dtype."""
    order = sorted(layout, key=lambda k: -torch.empty((), dtype=layout[k][0]).element_size())
    header: dict[str, object] = {"__metadata__": {"enserve": json.dumps(
        {"members": list(members), "folded": True,
         "nhwc": [k for k in order if layout[k][2]]}), "graphs": json.dumps(graphs)}}
    offsets: dict[str, int] = {}
    at = 0
    for key in order:
        dtype, shape, _ = layout[key]
        size = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            size *= d
        header[key] = {"dtype": _NAMES[dtype], "shape": shape, "data_offsets": [at, at + size]}
        offsets[key] = at
        at += size
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets


def write_folded(spec: EnsembleSpec, members: Sequence[str], path: Path, channels_last: bool) -> None:
    """Write the group's folded weights to `path`, holding one member's weights at a time."""
    layout, graphs = _layout(spec, members, channels_last)
    head, offsets = _header(layout, members, graphs)
    with open(path, "wb") as f:
        f.write(head)
        for name in members:
            folded = _fold(build_torch_module(spec, spec.member(name)), channels_last)
            state = folded.state_dict()
            del folded
            if {f"{name}/{k}" for k in state} != {k for k in layout if k.startswith(f"{name}/")}:
                raise ModelLoadError(f"member '{name}': its folded weights differ from its skeleton's")
            for key, t in state.items():
                full = f"{name}/{key}"
                data = _stored(t.detach(), layout[full][2]).contiguous().reshape(-1)
                if list(_stored(t, layout[full][2]).shape) != layout[full][1] or t.dtype != layout[full][0]:
                    raise ModelLoadError(f"'{full}': folded tensor differs from its skeleton's")
                f.seek(len(head) + offsets[full])
                f.write(data.view(torch.uint8).numpy().tobytes())
            del state, data
            gc.collect()
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the graphs are rebuilt: they allocate many small
    objects, and each full collection walks torch's whole heap (~0.2 s on a 2-core EPYC)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def map_folded(spec: EnsembleSpec, members: Sequence[str], path: Path,
               channels_last: bool) -> dict[str, nn.Module]:
    """Each member's folded graph (stored in the file, else traced and folded from its
    `meta` skeleton), its weights views of the mapped file."""
    packed = PackedFile(path)
    try:
        nhwc = set(json.loads(packed.metadata.get("enserve", "{}")).get("nhwc", []))
        graphs = json.loads(packed.metadata.get("graphs", "{}"))
    except (ValueError, TypeError, AttributeError, RecursionError):
        nhwc, graphs = set(), {}
    if not isinstance(graphs, dict):
        graphs = {}
    modules: dict[str, nn.Module] = {}
    for name in members:
        folded = _member_graph(spec, name, graphs.get(name), f"{path.name}: '{name}'", channels_last)
        state = {}
        for key in folded.state_dict():
            full = f"{name}/{key}"
            if full not in packed.entries:
                raise ModelLoadError(f"{path.name}: no tensor '{full}'")
            t = packed.tensor(full)
            state[key] = t.permute(0, 3, 1, 2) if full in nhwc else t
        if not assign_weights(folded, state, f"{path.name}: folded weights of '{name}'"):
            raise ModelLoadError(f"member '{name}' has buffers outside its state dict")
        for p in folded.parameters():
            p.requires_grad_(False)
        modules[name] = folded.eval()
    return modules


def folded_members(spec: EnsembleSpec, members: Sequence[str], channels_last: bool,
                   cache_dir: Path | None = None) -> dict[str, nn.Module] | None:
    """The group's members folded, weights mapped from the cache file (written first if
    missing); None when that fails (the caller folds from the sources instead)."""
    if not can_fold_from_file(spec, members):
        return None
    try:
        path = folded_path(spec, members, channels_last, cache_dir)
        if not path.is_file():
            tmp = atomic_write_target(path)
            try:
                write_folded(spec, members, tmp, channels_last)
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)  # racing writers all end up mapping one file
            finally:
                tmp.unlink(missing_ok=True)
            from enserve.devices import release_freed_memory

            release_freed_memory()  # the sources' heap pages, before mapping the file
        with _gc_paused():
            return map_folded(spec, members, path, channels_last)
    except (ModelLoadError, OSError, RuntimeError, NotImplementedError) as exc:
        log.warning("fused group %s: folding from the sources (no folded-weights file: %s)",
                    "+".join(members), exc)
        return None
