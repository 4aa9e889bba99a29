"""The hardware fingerprint on fakes of this project's machine kinds (and this one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from enserve import hardware
from enserve.hardware import Gpu, Hardware, detect_hardware, differences, hardware_from, parse_cpuinfo

# /proc/cpuinfo excerpts (one processor block each, flags shortened to what matters
# plus neighbours, in the kernel's order).
INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse sse2 ssse3 fma avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx512_vnni avx512_bf16 avx_vnni avx512_fp16 amx_bf16 amx_tile amx_int8 arch_perfmon
"""
AMD_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse sse2 ssse3 fma avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx512_bf16 avx512vbmi avx512_vnni avx512_bitalg
"""
AMD_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq
"""
LSCPU_GRAVITON = """Architecture:            aarch64
Model name:              Neoverse-V1
Flags:                   fp asimd aes crc32 asimddp sve bf16 i8mm
"""


def fake(text: str, cores: int = 2, arch: str = "x86_64", gpus: tuple[Gpu, ...] = ()) -> Hardware:
    return detect_hardware(cpuinfo=text, cores=cores, gpus=gpus, mps=False, arch=arch)


def test_intel_with_amx_enables_bf16_and_int8() -> None:
    hw = fake(INTEL_AMX)
    assert hw.cpu_model.startswith("Intel(R) Xeon(R) Platinum")
    assert {"amx_bf16", "amx_int8", "avx512_bf16", "avx_vnni", "avx512_vnni"} <= set(hw.isa)
    assert hw.runs_fast("bf16") and hw.runs_fast("int8")
    assert not hw.runs_fast("fp16")  # CUDA only
    assert "amx_bf16" in hw.cpu_precisions()["bf16"]


def test_amd_with_avx512_bf16_and_no_amx() -> None:
    hw = fake(AMD_ZEN4)
    assert "amx_bf16" not in hw.isa and "avx512_bf16" in hw.isa
    assert hw.runs_fast("bf16") and hw.runs_fast("int8")
    assert hw.cpu_precisions()["bf16"] == "avx512_bf16"
    assert "avx512_vnni" in hw.cpu_precisions()["int8"]


def test_avx2_only_machine_skips_bf16_but_keeps_int8() -> None:
    hw = fake(AMD_ZEN3)
    assert hw.isa == ("avx2", "fma")
    assert not hw.runs_fast("bf16")
    assert "AVX-512-BF16 or AMX-BF16" in hw.skip_reason("bf16")
    assert hw.runs_fast("int8") and "without VNNI" in hw.cpu_precisions()["int8"]
    assert hw.runs_fast("eager") and hw.runs_fast("onnx")  # fp32 variants always


def test_aarch64_from_lscpu_text() -> None:
    hw = fake(LSCPU_GRAVITON, arch="aarch64")
    assert hw.cpu_model == "Neoverse-V1"
    assert hw.runs_fast("bf16") and hw.runs_fast("int8")


def test_gpu_precisions_follow_compute_capability() -> None:
    t4 = Gpu("Tesla T4", (7, 5), 15 << 30)
    a100 = Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 80 << 30)
    hw = fake(AMD_ZEN3, gpus=(t4, a100))
    assert hw.runs_fast("fp16", "cuda:0") and not hw.runs_fast("bf16", "cuda:0")
    assert hw.runs_fast("bf16", "cuda:1") and hw.runs_fast("fp16", "cuda:1")
    assert not hw.runs_fast("int8", "cuda:1")
    assert set(hw.enabled_variants()) == {"int8 (cpu)", "fp16 (cuda:0)", "fp16 (cuda:1)",
                                          "bf16 (cuda:1)"}


def test_fingerprint_ids_differ_between_machines_and_round_trip() -> None:
    kinds = [fake(INTEL_AMX), fake(AMD_ZEN4), fake(AMD_ZEN3), fake(AMD_ZEN3, cores=16)]
    assert len({hw.id for hw in kinds}) == 4
    for hw in kinds:
        stored = json.loads(json.dumps(hw.to_json_dict()))
        assert stored["id"] == hw.id
        back = hardware_from(stored)
        assert back == hw and back is not None and back.id == hw.id
    assert hardware_from({"nothing": 1}) is None and hardware_from(None) is None


def test_differences_name_what_changed() -> None:
    text = "; ".join(differences(fake(INTEL_AMX), fake(AMD_ZEN3)))
    assert "Intel(R) Xeon(R)" in text and "AMD EPYC" in text and "-amx_bf16" in text
    assert differences(fake(AMD_ZEN3), fake(AMD_ZEN3)) == []


def test_parse_ignores_unknown_lines() -> None:
    assert parse_cpuinfo("garbage\nno colon here\n") == ("", ())


def test_this_machine_is_detected() -> None:
    hw = detect_hardware()
    assert hw.cores >= 1 and hw.cpu_model and hw.id == detect_hardware().id


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="driver paths are Linux's")


@LINUX_ONLY
def test_no_gpu_driver_detects_without_importing_torch() -> None:
    # In a fresh process, as `enserve serve` checks a plan's fingerprint: with no driver
    # device there, this machine is fingerprinted and torch stays unimported.
    code = ("import sys; from enserve import hardware as h; h.GPU_DRIVER_PATHS = ('/nonexistent/nvidiactl',); "
            "hw = h.current_hardware(); print(hw.gpus, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["()", "False"], out.stderr


@LINUX_ONLY
def test_a_driver_device_or_imported_torch_means_asking_torch(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    device = tmp_path / "nvidiactl"
    monkeypatch.setattr(hardware, "GPU_DRIVER_PATHS", (str(device),))
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # restored after the test
    assert hardware.no_gpu_driver()
    device.write_text("")
    assert not hardware.no_gpu_driver()
    device.unlink()
    monkeypatch.setitem(sys.modules, "torch", object())  # already imported: asking is free
    assert not hardware.no_gpu_driver()
