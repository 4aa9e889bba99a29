"""Turn a member's `source` into a loaded `Member`, refusing unsafe files.

Model files are untrusted: weights load with `torch.load(weights_only=True)` or
safetensors, never plain pickle, and every path stays inside the spec's folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from enserve.errors import ModelLoadError, SpecError
from enserve.members.base import Member
from enserve.members.paths import member_path, member_where
from enserve.members.preprocess import Preprocessor
from enserve.members.torch_member import TorchMember
from enserve.members.trust import require_trusted
from enserve.spec import EnsembleSpec, MemberSpec

_where = member_where
_member_path = member_path
__all__ = ["build_architecture", "build_torch_module", "load_torch_member", "read_state_dict",
           "torchvision_arch"]


def torchvision_arch(arch: str, num_classes: int | None, seed: int, where: str) -> torch.nn.Module:
    """A torchvision classifier with seeded random weights."""
    import torchvision

    available = set(torchvision.models.list_models(module=torchvision.models))
    if arch not in available:
        close = sorted(a for a in available if arch.split("_")[0] in a)[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise SpecError(f"{where}: unknown torchvision architecture '{arch}'{hint}")
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.get_model(arch, **kwargs).eval()


def _python_factory(spec: EnsembleSpec, target: str, where: str) -> torch.nn.Module:
    module_ref, sep, factory_name = target.rpartition(":")
    if not sep or not module_ref or not factory_name:
        raise SpecError(f"{where}: expected python:<module or file.py>:<factory>, got '{target}'")
    if module_ref.endswith(".py"):
        path = spec.resolve_path(module_ref, where.split(": ", 1)[-1])
        require_trusted(module_ref, where, path.resolve())
        mod_name = f"enserve_user_{abs(hash(str(path)))}"
        module = sys.modules.get(mod_name)
        if module is None:
            file_spec = importlib.util.spec_from_file_location(mod_name, path)
            if file_spec is None or file_spec.loader is None:
                raise SpecError(f"{where}: cannot import '{module_ref}'")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[mod_name] = module
            file_spec.loader.exec_module(module)
    else:
        require_trusted(module_ref, where)
        try:
            module = importlib.import_module(module_ref)
        except ImportError as exc:
            raise SpecError(f"{where}: cannot import module '{module_ref}': {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise SpecError(f"{where}: '{module_ref}' has no callable '{factory_name}'")
    built = factory()
    if not isinstance(built, torch.nn.Module):
        raise SpecError(f"{where}: factory '{factory_name}' returned {type(built).__name__}, not nn.Module")
    return built.eval()


def build_architecture(spec: EnsembleSpec, member: MemberSpec, arch: str, field: str) -> torch.nn.Module:
    """Construct `torchvision:<arch>` or `python:<module>:<factory>` (random weights)."""
    where = _where(spec, member, field)
    kind, _, target = arch.partition(":")
    if kind == "torchvision":
        return torchvision_arch(target, member.num_classes, member.seed, where)
    if kind == "python":
        return _python_factory(spec, target, where)
    raise SpecError(
        f"{where}: architecture must be torchvision:<arch> or python:<module>:<factory>, got '{arch}'"
    )


def read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a .pt/.pth file loaded with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{where}: '{path.name}' is not a valid safetensors file: {exc}") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: refused '{path.name}': it is not a plain tensor file "
            f"(loaded with weights_only=True; pickled objects are never executed): {exc}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{where}: '{path.name}' does not hold a state dict of tensors")
    return state


def _load_weights(module: torch.nn.Module, path: Path, where: str) -> None:
    state = read_state_dict(path, where)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).splitlines()[0:3])
        raise ModelLoadError(
            f"{where}: weights in '{path.name}' don't match the architecture: {detail}"
        ) from None


def build_torch_module(spec: EnsembleSpec, member: MemberSpec) -> torch.nn.Module:
    """The member's model as a torch module (for torch-based sources only)."""
    where = _where(spec, member)
    kind, target = member.kind, member.target
    if kind == "torchvision":
        module = torchvision_arch(target, member.num_classes, member.seed, where)
        if member.weights:
            _load_weights(module, _member_path(spec, member, member.weights, "weights"), where)
        return module
    if kind == "python":
        module = _python_factory(spec, target, where)
        if member.weights:
            _load_weights(module, _member_path(spec, member, member.weights, "weights"), where)
        return module
    if kind == "safetensors":
        path = _member_path(spec, member, target, "source")
        if path.suffix != ".safetensors":
            raise SpecError(f"{where}: '{target}' must be a .safetensors file")
        module = build_architecture(spec, member, member.architecture or "", "architecture")
        _load_weights(module, path, where)
        return module
    if kind == "torchscript":
        path = _member_path(spec, member, target, "source")
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{where}: '{target}' is not a TorchScript archive")
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"{where}: cannot load TorchScript '{target}': {exc}") from None
        return scripted.eval()
    if kind == "export":
        path = _member_path(spec, member, target, "source")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{where}: cannot load exported program '{target}': {exc}") from None
        return program.module()
    raise SpecError(f"{where}: source kind '{kind}' is not a PyTorch model")


def load_torch_member(spec: EnsembleSpec, member: MemberSpec, threads: int | None = None) -> Member:
    """Load a PyTorch-backed member (eager) in this process."""
    pre = Preprocessor(member.preprocess)
    loaded = TorchMember(member.name, build_torch_module(spec, member), pre, variant="eager")
    if threads:
        loaded.set_threads(threads)
    return loaded
