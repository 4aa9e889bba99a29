"""Fast loading: an ensemble's weights packed in one safetensors file, read through a
memory map with no copy, into models built on the `meta` device (no random init) and
filled with `load_state_dict(assign=True)`. Warm pre-imported worker processes that load
from such files are in `enserve.members.warm`.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from enserve.errors import ModelLoadError, SpecError
from enserve.members.loaders import build_architecture, build_torch_module, torchvision_arch
from enserve.spec import EnsembleSpec, MemberSpec

PACKABLE = ("torchvision", "safetensors", "python")
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 2**20


def packable(member: MemberSpec) -> bool:
    return member.kind in PACKABLE


def pack_ensemble(spec: EnsembleSpec, out: str | Path, members: Sequence[str] | None = None) -> Path:
    """Write the weights of `members` (default: every packable one) into one file,
    keys `<member>/<parameter>`."""
    from safetensors.torch import save_file

    chosen = [spec.member(n) for n in members] if members else [m for m in spec.members if packable(m)]
    tensors: dict[str, torch.Tensor] = {}
    for m in chosen:
        if not packable(m):
            raise SpecError(f"member '{m.name}' ({m.kind}) can't be packed; packable: {', '.join(PACKABLE)}")
        for key, t in build_torch_module(spec, m).state_dict().items():
            tensors[f"{m.name}/{key}"] = t.detach().contiguous().clone()
    meta = {"enserve": json.dumps({"ensemble": spec.name, "members": [m.name for m in chosen]})}
    out = Path(out)
    save_file(tensors, str(out), metadata=meta)
    return out


class PackedFile:
    """A safetensors file memory-mapped copy-on-write; tensors are views, not copies.

    The header is validated (sizes, offsets, dtypes) because model files are untrusted.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ModelLoadError(f"{self.path.name}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise ModelLoadError(f"{self.path.name}: header length {n} is invalid")
            try:
                header = json.loads(f.read(n))
            except ValueError as exc:
                raise ModelLoadError(f"{self.path.name}: header is not JSON: {exc}") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
        for key, info in header.items():
            self.entries[key] = self._check(key, info, size - self.data_start)
        # MAP_PRIVATE: pages come from the page cache and are copied only if written.
        self._storage = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size)

    def _check(self, key: str, info: Any, data_len: int) -> tuple[torch.dtype, list[int], int, int]:
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{self.path.name}: tensor '{key}' has a malformed entry") from None
        count = int(np.prod(shape)) if shape else 1
        itemsize = torch.empty((), dtype=dtype).element_size()
        inside = 0 <= begin <= end <= data_len
        if any(d < 0 for d in shape) or not inside or end - begin != count * itemsize:
            raise ModelLoadError(
                f"{self.path.name}: tensor '{key}' lies outside the file or has the wrong size"
            )
        return dtype, shape, begin, end

    def tensor(self, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[key]
        offset = self.data_start + begin
        itemsize = torch.empty((), dtype=dtype).element_size()
        if offset % itemsize == 0:
            view = torch.empty(0, dtype=dtype)
            view.set_(self._storage, offset // itemsize, shape)  # type: ignore[call-overload]
            return view
        raw = torch.empty(0, dtype=torch.uint8)
        raw.set_(self._storage, offset, (end - begin,))  # type: ignore[call-overload]
        return raw.clone().view(dtype).reshape(shape)  # misaligned: one copy

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: self.tensor(k) for k in self.entries if k.startswith(prefix)}


def _build(spec: EnsembleSpec, member: MemberSpec) -> nn.Module:
    if member.kind == "torchvision":
        return torchvision_arch(member.target, member.num_classes, member.seed, member.name)
    arch = member.architecture if member.kind == "safetensors" else member.source
    return build_architecture(spec, member, arch or "", "architecture")


def skeleton(spec: EnsembleSpec, member: MemberSpec) -> nn.Module:
    """The member's architecture, built on the `meta` device (no allocation, no random
    init) where its constructor allows; some compute with tensors (RegNet's widths), so
    those are built normally."""
    try:
        with torch.device("meta"):
            return _build(spec, member)
    except (NotImplementedError, RuntimeError):
        return _build(spec, member)


def assign_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> bool:
    """`load_state_dict(assign=True)` (the tensors become the module's, no copy); raises
    ModelLoadError naming `what` when they don't fit. False when a tensor outside the state
    dict (a non-persistent buffer) is still on the `meta` device."""
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{what} don't fit: {str(exc)[:300]}") from None
    return not any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))


def load_packed(
    spec: EnsembleSpec, path: str | Path, members: Sequence[str] | None = None
) -> dict[str, nn.Module]:
    """Modules for `members` (default: all in the file) with weights viewed from `path`."""
    packed = PackedFile(path)
    try:
        listed = json.loads(packed.metadata.get("enserve", "{}")).get("members", [])
    except ValueError:
        listed = []
    names = list(members) if members else list(listed)
    modules: dict[str, nn.Module] = {}
    for name in names:
        member = spec.member(name)
        state = packed.state_dict(f"{name}/")
        if not state:
            raise ModelLoadError(f"{packed.path.name}: no weights for member '{name}'")
        module = skeleton(spec, member)
        if not assign_weights(module, state, f"{packed.path.name}: weights of '{name}'"):
            # Non-persistent buffers are not in the file: build normally, then copy in.
            module = build_torch_module(spec, member)
            module.load_state_dict(state, strict=True)
        modules[name] = module.eval()
    return modules


def drop_page_cache(path: str | Path) -> None:
    """Ask the kernel to forget the file's cached pages (for cold-start measurements)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_seconds(path: str | Path, chunk: int = 16 * 2**20) -> float:
    """Seconds to read the whole file (the disk-read floor a load can't beat)."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        while f.readinto(buf):
            pass
    return time.perf_counter() - start
