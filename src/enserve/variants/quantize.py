"""int8: ONNX Runtime static quantization (QDQ, per-channel weights, u8 activations).

Activation ranges are calibrated (min-max) on the quantization part of the spec's
calibration set (`accuracy.quantization_samples` rows spread over it; the admission
measures on the other rows: `enserve.precision.calibration.split_rows`), passed through
the member's preprocessing. Without
VNNI/AMX the weights use 7 bits (`reduce_range`), which ONNX Runtime recommends against
u8s8 saturation on AVX2/AVX-512 without VNNI. The quantized model is cached by member
fingerprint, the quantization rows' digest (data and split) and that setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from enserve.errors import ModelLoadError
from enserve.members.preprocess import Preprocessor
from enserve.spec import EnsembleSpec, MemberSpec

CALIBRATION_BATCH = 8


class _Reader:
    """`CalibrationDataReader` protocol: one feed dict per call, None at the end."""

    def __init__(self, input_name: str, rows: np.ndarray) -> None:
        self._batches = iter([rows[i:i + CALIBRATION_BATCH]
                              for i in range(0, len(rows), CALIBRATION_BATCH)])
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch, np.float32)}


def reduce_range_needed() -> bool:
    from enserve.hardware import current_hardware

    return not current_hardware().has("avx512_vnni", "avx_vnni", "amx_int8")


def quantize_onnx(fp32_model: Path, rows: np.ndarray, out: Path, reduce_range: bool) -> None:
    """Write the QDQ int8 model of `fp32_model`, calibrated on `rows` (prepared inputs)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(fp32_model))
    input_name = model.graph.input[0].name
    source = fp32_model
    prepped = out.with_name(out.stem + ".pre.onnx")
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32_model), str(prepped), skip_symbolic_shape=True)
        source = prepped
    except Exception:  # pre-processing is an optimization; quantize the raw graph instead
        source = fp32_model
    quiet = [logging.getLogger("onnxruntime"), logging.getLogger()]  # ORT logs to root too
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            quantize_static(str(source), str(out), _Reader(input_name, rows),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    except Exception as exc:
        raise ModelLoadError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
        prepped.unlink(missing_ok=True)


def prepared_calibration(spec: EnsembleSpec, member: MemberSpec) -> tuple[np.ndarray, str]:
    """(prepared quantization rows, their digest: data and split); ModelLoadError without
    a set."""
    from enserve.errors import SpecError
    from enserve.precision.calibration import load_calibration, quantization_set

    try:
        subset = quantization_set(spec, load_calibration(spec))
    except SpecError as exc:
        raise ModelLoadError(f"member '{member.name}': int8 needs calibration inputs: "
                             f"{exc}") from None
    rows = Preprocessor(member.preprocess)(subset.for_member(spec, member))
    return np.asarray(rows, dtype=np.float32), subset.digest
