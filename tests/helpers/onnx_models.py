"""Tiny ONNX members written with `onnx.helper` (no torch needed to make or run them)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np


def write_linear_onnx(path: Path, features: int, classes: int, seed: int) -> Path:
    """x [B, ...] -> Flatten -> Gemm -> logits [B, classes], random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_wide_onnx(path: Path, seed: int = 0) -> Path:
    """x [B, 3, 2, 2] -> 12 -> 2048 -> 1024 -> 5 (about 8 MiB of weights), random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [12, 2048, 1024, 5]
    nodes = [helper.make_node("Flatten", ["x"], ["h0"], axis=1)]
    inits = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        scale = np.float32(1 / np.sqrt(a))
        inits.append(numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32) * scale, f"W{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(b).astype(np.float32) * scale, f"b{i}"))
        out = "logits" if i == len(sizes) - 2 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [f"h{i}", f"W{i}", f"b{i}"], [out]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
    graph = helper.make_graph(
        nodes, "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def mapped_libraries(pid: int) -> set[str]:
    """File names of the shared libraries process `pid` has mapped."""
    names = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and ".so" in parts[-1]:
                names.add(Path(parts[-1]).name)
    return names


def imports_torch(pid: int) -> bool:
    """Whether process `pid` imported torch (its native library is mapped)."""
    return any(name.startswith("libtorch") for name in mapped_libraries(pid))
