"""Build a member as one execution variant (eager, channels-last, TorchScript, ONNX...).

Artifacts that are slow to produce (ONNX files, frozen TorchScript, exported
programs) are written once under the cache folder, keyed by the member's fingerprint,
so a worker process that needs the variant later loads it in milliseconds.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from enserve.errors import ModelLoadError, SpecError
from enserve.members import Member, OnnxMember, TorchMember, build_torch_module, load_member
from enserve.members.mapped import can_map, mapped_module
from enserve.members.preprocess import Preprocessor
from enserve.spec import EnsembleSpec, MemberSpec
from enserve.variants.artifacts import artifact_path as _artifact_path
from enserve.variants.fingerprint import atomic_write_target
from enserve.variants.names import runnable_member
from enserve.variants.samples import random_request

ONNX_OPSET = 18


def random_prepared_batch(
    spec: EnsembleSpec, member: MemberSpec, batch: int, seed: int = 0
) -> np.ndarray:
    """A random request batch for `member`, passed through its preprocessing."""
    return Preprocessor(member.preprocess)(random_request(spec, member, batch, seed))


class AutocastTorchMember(TorchMember):
    """Reduced precision through autocast (oneDNN bf16 on CPU, tensor cores on CUDA) with
    channels-last activations: weights stay fp32, convolutions and matmuls run in `dtype`."""

    def __init__(self, name: str, module: torch.nn.Module, preprocessor: Preprocessor,
                 variant: str, dtype: torch.dtype, device: str = "cpu") -> None:
        super().__init__(name, module, preprocessor, variant=variant, channels_last=True)
        self.dtype = dtype
        self.device = torch.device(device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), warnings.catch_warnings(), \
                torch.autocast(device_type=self.device.type, dtype=self.dtype):
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.module(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            return out.float().cpu().numpy()


def _autocast_module(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(memory_format=torch.channels_last)


class DeviceTorchMember(TorchMember):
    """A torch member whose module lives on an accelerator; batches move there and back."""

    def __init__(self, name: str, module: torch.nn.Module, preprocessor: Preprocessor,
                 variant: str, device: str, channels_last: bool = False) -> None:
        super().__init__(name, module, preprocessor, variant=variant, channels_last=channels_last)
        self.device = torch.device(device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.module(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            return out.float().cpu().numpy()




def _cached(path: Path, produce: Callable[[Path], None]) -> Path:
    """`path`, produced first (atomically) if it is not in the cache yet."""
    if not path.is_file():
        tmp = atomic_write_target(path)
        try:
            produce(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=1 << 16)


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with the TorchScript exporter (dynamic batch axis); fall back to the dynamo one.

    The TorchScript exporter is ~15x faster here (densenet121: 1.6 s vs 26.6 s on a 2-core
    EPYC) and its graphs ran as fast in ONNX Runtime; exports are most of a first profile's
    time on a new machine. The admission check compares either with the reference.
    """
    kwargs = {"input_names": ["input"], "output_names": ["logits"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              **kwargs)  # type: ignore[arg-type]
        return
    except Exception as first:
        legacy_error = first
    try:
        torch.onnx.export(module, (example,), str(path), dynamic_shapes=({0: _batch_dim()},),
                          dynamo=True, external_data=False, verbose=False,
                          opset_version=ONNX_OPSET, **kwargs)  # type: ignore[arg-type]
    except Exception as second:
        raise ModelLoadError(
            f"ONNX export failed with both exporters: legacy: {legacy_error}; dynamo: {second}"
        ) from None


def _save_frozen_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    torch.jit.save(frozen, str(path))


def _save_exported(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(path))


def _example_tensor(spec: EnsembleSpec, member: MemberSpec) -> torch.Tensor:
    return torch.from_numpy(random_prepared_batch(spec, member, batch=2, seed=7))


def _build_torch_variant(spec: EnsembleSpec, member: MemberSpec, variant: str,
                         threads: int, cache_dir: Path | None) -> Member:
    pre = Preprocessor(member.preprocess)
    torch.set_num_threads(max(1, threads))

    def fresh_module() -> torch.nn.Module:
        return build_torch_module(spec, member).eval()

    def served_module() -> torch.nn.Module:
        """For variants that run the module's own weights: mapped from one cached file
        (shared by every instance on the machine) where the member allows it."""
        if can_map(member):
            return mapped_module(spec, member, cache_dir)
        return fresh_module()

    if variant == "eager":
        return TorchMember(member.name, served_module(), pre, variant="eager")
    if variant == "channels_last":
        module = served_module().to(memory_format=torch.channels_last)
        return TorchMember(member.name, module, pre, variant="channels_last", channels_last=True)
    if variant == "bf16":
        return AutocastTorchMember(member.name, _autocast_module(fresh_module()), pre,
                                   variant="bf16", dtype=torch.bfloat16)
    if variant == "fp16":
        raise ModelLoadError(f"member '{member.name}': fp16 runs on CUDA only")
    if variant == "compile":
        compiled = torch.compile(fresh_module(), options={"freezing": True})
        return TorchMember(member.name, compiled, pre, variant="compile")  # type: ignore[arg-type]
    if variant == "onnx":
        path = _artifact_path(spec, member, "onnx", ".onnx", cache_dir)
        _cached(path, lambda tmp: export_onnx(fresh_module(), _example_tensor(spec, member), tmp))
        return OnnxMember(member.name, path, pre, threads=max(1, threads), variant="onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if variant == "torchscript":
            path = _artifact_path(spec, member, "torchscript", ".pt", cache_dir)
            _cached(path, lambda tmp: _save_frozen_torchscript(
                fresh_module(), _example_tensor(spec, member), tmp))
            loaded = torch.jit.load(str(path), map_location="cpu")
            optimized = torch.jit.optimize_for_inference(loaded)
            return TorchMember(member.name, optimized, pre, variant="torchscript")
        if variant == "export":
            path = _artifact_path(spec, member, "export", ".pt2", cache_dir)
            _cached(path, lambda tmp: _save_exported(
                fresh_module(), _example_tensor(spec, member), tmp))
            program = torch.export.load(str(path))
            return TorchMember(member.name, program.module(), pre, variant="export")
    raise AssertionError(variant)


def _build_int8(spec: EnsembleSpec, member: MemberSpec, threads: int,
                cache_dir: Path | None) -> Member:
    """ONNX Runtime QDQ int8 of the member's ONNX graph (exported first for torch members)."""
    from enserve.variants.quantize import prepared_calibration, quantize_onnx, reduce_range_needed

    pre = Preprocessor(member.preprocess)
    rows, digest = prepared_calibration(spec, member)
    reduce_range = reduce_range_needed()
    if member.kind == "onnx":
        fp32 = spec.resolve_path(member.target, f"members.{member.name}.source")
    else:
        fp32 = _artifact_path(spec, member, "onnx", ".onnx", cache_dir)
        _cached(fp32, lambda tmp: export_onnx(build_torch_module(spec, member).eval(),
                                              _example_tensor(spec, member), tmp))
    suffix = f"-{digest[:12]}{'-rr' if reduce_range else ''}.onnx"
    path = _artifact_path(spec, member, "int8", suffix, cache_dir)
    _cached(path, lambda tmp: quantize_onnx(fp32, rows, tmp, reduce_range))
    return OnnxMember(member.name, path, pre, threads=max(1, threads), variant="int8")


def _build_cuda_variant(
    spec: EnsembleSpec, member: MemberSpec, variant: str, device: str
) -> Member:
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"member '{member.name}': device '{device}' requested but CUDA is not available"
        )
    pre = Preprocessor(member.preprocess)
    module = build_torch_module(spec, member).eval().to(device)
    if variant == "eager":
        return DeviceTorchMember(member.name, module, pre, "eager", device)
    if variant == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        return DeviceTorchMember(member.name, module, pre, "channels_last", device,
                                 channels_last=True)
    if variant in ("bf16", "fp16"):
        dtype = torch.bfloat16 if variant == "bf16" else torch.float16
        return AutocastTorchMember(member.name, _autocast_module(module), pre, variant,
                                   dtype, device=device)
    if variant == "compile":
        compiled = torch.compile(module)
        return DeviceTorchMember(member.name, compiled, pre, "compile", device)  # type: ignore[arg-type]
    raise ModelLoadError(
        f"member '{member.name}': variant '{variant}' is not supported on {device} "
        "(CUDA variants: eager, channels_last, bf16, fp16, compile)"
    )


def build_variant(
    spec: EnsembleSpec,
    member: str | MemberSpec,
    variant: str,
    threads: int = 1,
    cache_dir: Path | None = None,
    device: str = "cpu",
) -> Member:
    """Build `member` of `spec` as `variant`, using `threads` intra-op threads.

    This is what a worker process calls to create one instance. Torch variants set the
    process-wide torch thread count. `cache_dir` (default: `default_cache_dir()`) holds
    exported artifacts. Admission (matching the eager output) is checked by
    `check_variant`, not here.
    """
    member_spec = runnable_member(spec, member, variant)
    if variant == "int8":
        if device != "cpu":
            raise ModelLoadError(f"member '{member_spec.name}': int8 runs on the CPU only")
        return _build_int8(spec, member_spec, threads, cache_dir)
    if member_spec.kind in ("onnx", "simulate"):
        return load_member(spec, member_spec, threads=max(1, threads))
    if device != "cpu":
        return _build_cuda_variant(spec, member_spec, variant, device)
    try:
        return _build_torch_variant(spec, member_spec, variant, threads, cache_dir)
    except (SpecError, ModelLoadError):
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"member '{member_spec.name}': building variant '{variant}' failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


# Older name: `enserve.variants.load_variant` (variants/load.py) is the entry point; it comes
# here only for variants that need PyTorch.
load_variant = build_variant
