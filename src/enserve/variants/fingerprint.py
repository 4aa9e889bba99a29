"""Content hashes that identify a member's model, and where cached artifacts live.

A fingerprint changes when anything that defines the member's outputs changes: its
spec entry (source, seed, architecture, preprocessing...), the bytes of every file it
names (weights, model files, python factories) and the library versions that build it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import cache
from pathlib import Path

from enserve.spec import EnsembleSpec, MemberSpec

_FILE_KINDS = ("torchscript", "export", "onnx", "safetensors")


def default_cache_dir() -> Path:
    """`$ENSERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/enserve`, else `~/.cache/enserve`."""
    explicit = os.environ.get("ENSERVE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "enserve"


@cache
def library_versions() -> dict[str, str]:
    """Versions of the libraries whose kernels decide latency and outputs."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in ("torch", "torchvision", "onnx", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _cached_file_digest(str(path), stat.st_size, stat.st_mtime_ns)


@cache
def _cached_file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _python_module_file(spec: EnsembleSpec, reference: str) -> Path | None:
    """The file behind `python:<module or file.py>:<factory>` (None if not found)."""
    module_ref = reference.rpartition(":")[0]
    if module_ref.endswith(".py"):
        path = (spec.base_dir / module_ref).resolve()
        return path if path.is_file() else None
    try:
        found = importlib.util.find_spec(module_ref)
    except (ImportError, ValueError):
        return None
    if found is None or not found.origin or not Path(found.origin).is_file():
        return None
    return Path(found.origin)


def member_files(spec: EnsembleSpec, member: MemberSpec) -> list[Path]:
    """Every file whose bytes define the member's model."""
    files: list[Path] = []
    if member.kind in _FILE_KINDS:
        files.append((spec.base_dir / member.target).resolve())
    if member.kind == "python":
        files.append(_python_module_file(spec, member.target) or Path())
    if member.architecture and member.architecture.startswith("python:"):
        files.append(_python_module_file(spec, member.architecture.split(":", 1)[1]) or Path())
    if member.weights:
        files.append((spec.base_dir / member.weights).resolve())
    return [f for f in files if f != Path() and f.is_file()]


def member_fingerprint(spec: EnsembleSpec, member: MemberSpec | str) -> str:
    """A hex digest identifying the member's model (spec entry + file bytes + versions)."""
    if isinstance(member, str):
        member = spec.member(member)
    payload = {
        "member": member.model_dump(mode="json"),
        "files": [_file_digest(f) for f in member_files(spec, member)],
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def atomic_write_target(final: Path) -> Path:
    """A temporary sibling of `final` to write first and `os.replace` into place.

    Writers racing on the same artifact (two workers exporting the same member) each
    write their own file; whichever replaces last wins and readers never see a partial file.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f".{final.stem}.{os.getpid()}.tmp{final.suffix}")
