"""Members run by ONNX Runtime on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from enserve.members.base import Member
from enserve.members.preprocess import Preprocessor


def session_options(threads: int = 1) -> object:
    """ORT CPU options with thread spinning off (spinning sessions starve each other)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def make_session(model: str | bytes | Path, threads: int = 1, share_weights: bool = True) -> object:
    """An ORT CPU session. A model given as a file path is loaded through its optimized,
    externally stored copy (`onnx_shared`), so its weights are mapped from the page cache
    and shared by every session of it on the machine; bytes are loaded as they are."""
    import onnxruntime as ort

    opts = session_options(threads)
    source: str | bytes = str(model) if isinstance(model, Path) else model
    if share_weights and isinstance(model, Path) and not os.environ.get("ENSERVE_ORT_PRIVATE"):
        from enserve.members.onnx_shared import shared_model

        try:
            source = str(shared_model(model, lambda: session_options(threads)))
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # type: ignore[attr-defined]
            # pre-packing would copy MatMul/Gemm weights out of the shared mapping
            opts.add_session_config_entry("session.disable_prepacking", "1")  # type: ignore[attr-defined]
        except Exception:
            source = str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxMember(Member):
    """A single-input ONNX model; its first output is taken as the logits."""

    framework = "onnxruntime"

    def __init__(
        self,
        name: str,
        model: str | bytes | Path,
        preprocessor: Preprocessor | None = None,
        threads: int = 1,
        variant: str = "onnx",
    ) -> None:
        super().__init__(name, preprocessor)
        self._model = model
        self.variant = variant
        self._threads = threads
        self._session = make_session(model, threads)
        inputs = self._session.get_inputs()  # type: ignore[attr-defined]
        if len(inputs) != 1:
            raise ValueError(f"ONNX model has {len(inputs)} inputs; members take exactly one")
        self._input_name = inputs[0].name
        self._output_name = self._session.get_outputs()[0].name  # type: ignore[attr-defined]

    def known_output_shape(self) -> tuple[int, ...] | None:
        """From the session's output declaration. The optimized copy's weights are laid out
        already and pre-packing is off, so a first run sets up nothing but page faults."""
        dims = self._session.get_outputs()[0].shape  # type: ignore[attr-defined]
        if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            return None
        return (-1, *dims[1:])

    def run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        out = self._session.run([self._output_name], feed)  # type: ignore[attr-defined]
        return np.asarray(out[0], dtype=np.float32)

    def param_bytes(self) -> int:
        import onnx
        from onnx import numpy_helper

        model = onnx.load_from_string(self._model) if isinstance(self._model, bytes) else onnx.load(
            str(self._model)
        )
        return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))

    def set_threads(self, threads: int) -> None:
        if threads != self._threads:
            self._threads = threads
            self._session = make_session(self._model, threads)
