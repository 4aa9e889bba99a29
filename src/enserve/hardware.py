"""The hardware fingerprint: what this machine offers, and which variants it can run fast.

A fingerprint records the CPU (architecture, model, usable cores, the instruction-set
extensions that decide reduced-precision speed), the GPUs (name, compute capability,
memory) and whether Apple's MPS backend is present. Profiles and plans carry the
fingerprint they were made on (`to_dict`), the profiler's cache is keyed by its `id`,
and `enserve serve` / `bench` compare a plan's fingerprint with this machine's.

Detection reads `/proc/cpuinfo` (or `lscpu` where there is none) and asks torch about
GPUs only when torch is importable and, on Linux, a GPU driver's device is there (a server
whose members run in other processes then never maps libtorch, ~400 MiB);
`parse_cpuinfo` takes the text, so fakes of other machines are one string away (see the
tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: CPU flags that decide how fast reduced precision runs (names as in /proc/cpuinfo).
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
    "amx_bf16", "amx_int8", "amx_tile",
    # aarch64 (Features line)
    "asimd", "asimddp", "bf16", "i8mm", "sve",
)
#: On Linux a CUDA or ROCm GPU needs one of these (NVIDIA driver, AMD KFD, WSL2's GPU).
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
#: Reduced-precision variants, the precision each computes in, and where they run.
PRECISION_OF_VARIANT = {"bf16": "bf16", "int8": "int8", "fp16": "fp16"}


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "capability": f"{self.capability[0]}.{self.capability[1]}",
                "memory_bytes": self.memory_bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gpu:
        major, _, minor = str(data.get("capability", "0.0")).partition(".")
        return cls(str(data.get("name", "")), (int(major or 0), int(minor or 0)),
                   int(data.get("memory_bytes", 0)))


@dataclass(frozen=True)
class Hardware:
    """A machine's fingerprint. `id` is a short digest of every field."""

    arch: str
    cpu_model: str
    cores: int
    isa: tuple[str, ...]
    gpus: tuple[Gpu, ...] = ()
    mps: bool = False

    @property
    def id(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def has(self, *flags: str) -> bool:
        """Whether any of `flags` is present."""
        return any(f in self.isa for f in flags)

    # -- what the hardware runs fast ----------------------------------------------------
    def cpu_precisions(self) -> dict[str, str]:
        """Reduced precisions the CPU runs fast, each with the reason (the flags found)."""
        fast: dict[str, str] = {}
        bf16: list[str] = [f for f in ("amx_bf16", "avx512_bf16") if f in self.isa]
        if self.arch in ("aarch64", "arm64") and "bf16" in self.isa:
            bf16.append("bf16")
        if bf16:
            fast["bf16"] = "+".join(bf16)
        int8 = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp") if f in self.isa]
        if int8:
            fast["int8"] = "+".join(int8)
        elif "avx2" in self.isa:
            fast["int8"] = "avx2 (u8s8 kernels without VNNI)"
        return fast

    def gpu_precisions(self, index: int = 0) -> dict[str, str]:
        """Reduced precisions GPU `index` runs fast (tensor cores by compute capability)."""
        if index >= len(self.gpus):
            return {}
        cap = self.gpus[index].capability
        fast: dict[str, str] = {}
        if cap >= (7, 0):
            fast["fp16"] = f"compute capability {cap[0]}.{cap[1]} >= 7.0"
        if cap >= (8, 0):
            fast["bf16"] = f"compute capability {cap[0]}.{cap[1]} >= 8.0"
        return fast

    def runs_fast(self, variant: str, device: str = "cpu") -> bool:
        """Whether `variant` is worth profiling on `device` (fp32 variants always are)."""
        precision = PRECISION_OF_VARIANT.get(variant)
        if precision is None:
            return True
        if device.startswith("cuda"):
            index = int(device.split(":")[1]) if ":" in device else 0
            return precision in self.gpu_precisions(index)
        return precision in self.cpu_precisions()

    def skip_reason(self, variant: str, device: str = "cpu") -> str:
        precision = PRECISION_OF_VARIANT.get(variant, "fp32")
        if device.startswith("cuda"):
            return (f"{precision} needs tensor cores for it on {device} "
                    "(fp16: capability >= 7.0, bf16: >= 8.0)")
        if precision == "fp16":
            return "fp16 runs on CUDA GPUs only"
        need = {"bf16": "AVX-512-BF16 or AMX-BF16", "int8": "AVX2, VNNI or AMX-INT8"}.get(
            precision, "nothing")
        return (f"{precision} would be slower than fp32 on this CPU ({self.cpu_model}): "
                f"it needs {need}")

    def enabled_variants(self) -> dict[str, str]:
        """Reduced-precision variants this machine enables, with where and why."""
        out: dict[str, str] = {}
        for precision, why in self.cpu_precisions().items():
            out[f"{precision} (cpu)"] = why
        for i in range(len(self.gpus)):
            for precision, why in self.gpu_precisions(i).items():
                out[f"{precision} (cuda:{i})"] = why
        return out

    # -- (de)serialization --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields without the id (see `to_json_dict`)."""
        return {"arch": self.arch, "cpu_model": self.cpu_model, "cores": self.cores,
                "isa": list(self.isa), "gpus": [g.to_dict() for g in self.gpus],
                "mps": self.mps}

    def to_json_dict(self) -> dict[str, Any]:
        """`to_dict` with the id filled in (what profiles and plans store)."""
        return {"id": self.id, **self.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hardware:
        return cls(str(data.get("arch", "")), str(data.get("cpu_model", "")),
                   int(data.get("cores", 0)), tuple(sorted(str(f) for f in data.get("isa", ()))),
                   tuple(Gpu.from_dict(g) for g in data.get("gpus", ())),
                   bool(data.get("mps", False)))

    def describe(self) -> str:
        """One line: CPU model, cores, flags, GPUs."""
        flags = ", ".join(self.isa) or "none of note"
        gpus = "; ".join(f"{g.name} (sm {g.capability[0]}.{g.capability[1]}, "
                         f"{g.memory_bytes / 2**30:.0f} GiB)" for g in self.gpus) or "no GPU"
        return (f"{self.cpu_model} ({self.arch}), {self.cores} cores, ISA: {flags}; {gpus}"
                + ("; MPS" if self.mps else ""))


def hardware_from(data: Any) -> Hardware | None:
    """The fingerprint stored in a profile or plan (None when it has none or it is bad)."""
    if not isinstance(data, Mapping) or "cpu_model" not in data:
        return None
    try:
        return Hardware.from_dict(data)
    except (TypeError, ValueError):
        return None


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """(CPU model, ISA flags of interest) from `/proc/cpuinfo` or `lscpu` text."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    wanted = tuple(sorted(f for f in flags if f in ISA_FLAGS))
    return model, wanted


def _cpuinfo_text() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if "flags" in text.lower() or "features" in text.lower():
            return text
    except OSError:
        pass
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def no_gpu_driver() -> bool:
    """True when it is plain without torch that torch would see no GPU: Linux, torch not
    imported yet, and none of `GPU_DRIVER_PATHS` there."""
    return (sys.platform.startswith("linux") and "torch" not in sys.modules
            and not any(os.path.exists(p) for p in GPU_DRIVER_PATHS))


def detect_gpus() -> tuple[tuple[Gpu, ...], bool]:
    """CUDA GPUs and MPS presence through torch (none when torch or a driver is absent;
    torch is not imported for that when `no_gpu_driver()`)."""
    if no_gpu_driver():
        return (), False
    try:
        import torch
    except ImportError:
        return (), False
    gpus: list[Gpu] = []
    try:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append(Gpu(props.name, (props.major, props.minor), int(props.total_memory)))
    except Exception:  # a broken driver is "no GPU" here, not a crash
        gpus = []
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return tuple(gpus), mps


def detect_hardware(cpuinfo: str | None = None, cores: int | None = None,
                    gpus: Iterable[Gpu] | None = None, mps: bool | None = None,
                    arch: str | None = None) -> Hardware:
    """This machine's fingerprint; every argument given replaces what detection finds."""
    model, isa = parse_cpuinfo(_cpuinfo_text() if cpuinfo is None else cpuinfo)
    if gpus is None or mps is None:
        found_gpus, found_mps = detect_gpus()
        gpus = found_gpus if gpus is None else gpus
        mps = found_mps if mps is None else mps
    return Hardware(arch or platform.machine(), model or platform.processor() or "unknown CPU",
                    cores if cores is not None else usable_cores(), isa, tuple(gpus), bool(mps))


_CURRENT: Hardware | None = None


def current_hardware() -> Hardware:
    """This machine's fingerprint, detected once per process."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = detect_hardware()
    return _CURRENT


def differences(made_on: Hardware, here: Hardware) -> list[str]:
    """What differs between two fingerprints, in words (empty when they match)."""
    out = []
    if made_on.cpu_model != here.cpu_model:
        out.append(f"CPU {made_on.cpu_model!r} vs {here.cpu_model!r}")
    if made_on.cores != here.cores:
        out.append(f"{made_on.cores} vs {here.cores} cores")
    if made_on.isa != here.isa:
        gone = sorted(set(made_on.isa) - set(here.isa))
        new = sorted(set(here.isa) - set(made_on.isa))
        out.append("ISA " + ", ".join([f"-{f}" for f in gone] + [f"+{f}" for f in new]))
    if made_on.gpus != here.gpus:
        out.append(f"GPUs {[g.name for g in made_on.gpus]} vs {[g.name for g in here.gpus]}")
    if made_on.mps != here.mps:
        out.append(f"MPS {made_on.mps} vs {here.mps}")
    if made_on.arch != here.arch:
        out.append(f"{made_on.arch} vs {here.arch}")
    return out
