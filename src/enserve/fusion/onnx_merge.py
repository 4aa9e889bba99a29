"""Merge ONNX members into one ONNX graph run by one ONNX Runtime session.

The merged graph takes the ensemble's inputs, applies each member's preprocessing as
ONNX nodes, runs every member (names prefixed so they can't collide), stacks their
logits into `member_logits [M, B, C]` and, when asked, combines them into
`probabilities [B, C]` in the same graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper, version_converter

from enserve.errors import ModelLoadError
from enserve.spec import Preprocess, TensorSpec

LOGITS = "member_logits"
PROBS = "probabilities"
_MIN_OPSET = 13
_ELEM = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16}


@dataclass
class OnnxPart:
    """One member to merge: its model, the request input it reads, its preprocessing."""

    name: str
    model: onnx.ModelProto
    input_name: str
    preprocess: Preprocess | None = None


class _Builder:
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"merge/{hint}_{self._n}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def reduce(self, op_type: str, x: str, axis: int, keepdims: int) -> str:
        # ReduceSum takes axes as an input from opset 13, the other reductions from 18.
        takes_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if takes_input:
            axes = self.const(np.array([axis], dtype=np.int64), "axes")
            return self.op(op_type, [x, axes], op_type.lower(), keepdims=keepdims)
        return self.op(op_type, [x], op_type.lower(), axes=[axis], keepdims=keepdims)


def _real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _preprocess(b: _Builder, x: str, cfg: Preprocess | None, rank: int, where: str) -> str:
    dtype = cfg.dtype if cfg is not None else "float32"
    x = b.op("Cast", [x], "cast", to=_ELEM[dtype])
    if cfg is None:
        return x
    np_dtype = np.dtype(dtype)
    if cfg.scale is not None:
        x = b.op("Mul", [x, b.const(np.array(cfg.scale, dtype=np_dtype), "scale")], "scaled")
    if cfg.resize is not None:
        if rank != 4:
            raise ModelLoadError(f"{where}: in-graph resize needs [B, C, H, W] input, rank is {rank}")
        shape = b.op("Shape", [x], "shape")
        starts = b.const(np.array([0], np.int64), "start")
        ends = b.const(np.array([2], np.int64), "end")
        lead = b.op("Slice", [shape, starts, ends], "lead")
        size = b.op("Concat", [lead, b.const(np.array(cfg.resize, np.int64), "hw")], "size", axis=0)
        x = b.op("Resize", [x, "", "", size], "resized", mode="linear",
                 coordinate_transformation_mode="half_pixel")
    if cfg.mean is not None and cfg.std is not None:
        shape4 = (1, -1) + (1,) * (rank - 2)
        mean = b.const(np.asarray(cfg.mean, np_dtype).reshape(shape4), "mean")
        std = b.const(np.asarray(cfg.std, np_dtype).reshape(shape4), "std")
        x = b.op("Div", [b.op("Sub", [x, mean], "centered"), std], "normalized")
    return x


def _combine(b: _Builder, stacked: str, rule: str, weights: Sequence[float]) -> str:
    w = np.asarray(weights, np.float64)
    w = (w / w.sum()).astype(np.float32).reshape(-1, 1, 1)
    if rule == "mean_prob":
        w = np.full_like(w, 1.0 / w.shape[0])
    wname = b.const(w, "weights")
    if rule in ("mean_prob", "weighted_mean_prob"):
        probs = b.op("Softmax", [stacked], "probs", axis=-1)
        return b.reduce("ReduceSum", b.op("Mul", [probs, wname], "wprobs"), 0, 0)
    if rule == "mean_logits":
        mixed = b.reduce("ReduceSum", b.op("Mul", [stacked, wname], "wlogits"), 0, 0)
        return b.op("Softmax", [mixed], "probs", axis=-1)
    if rule == "geometric_mean":
        logp = b.op("LogSoftmax", [stacked], "logp", axis=-1)
        mixed = b.reduce("ReduceSum", b.op("Mul", [logp, wname], "wlogp"), 0, 0)
        return b.op("Softmax", [mixed], "probs", axis=-1)
    if rule == "max_prob":
        best = b.reduce("ReduceMax", b.op("Softmax", [stacked], "probs", axis=-1), 0, 0)
        return b.op("Div", [best, b.reduce("ReduceSum", best, -1, 1)], "renorm")
    if rule == "majority_vote":
        choice = b.op("ArgMax", [stacked], "choice", axis=-1, keepdims=0)
        shape = b.op("Shape", [stacked], "shape")
        last = [b.const(np.array([v], np.int64), "idx") for v in (-1, 3)]
        depth = b.op("Slice", [shape, *last], "depth")
        onoff = b.const(np.array([0.0, 1.0], np.float32), "onoff")
        votes = b.op("OneHot", [choice, depth, onoff], "votes", axis=-1)
        return b.reduce("ReduceSum", b.op("Mul", [votes, wname], "wvotes"), 0, 0)
    raise ValueError(f"combiner '{rule}' has no ONNX form")


def merge_onnx(
    parts: Sequence[OnnxPart],
    inputs: Sequence[TensorSpec],
    combiner: str | None = None,
    weights: Sequence[float] | None = None,
) -> onnx.ModelProto:
    """One model computing every part's logits (and the combination when `combiner`)."""
    if not parts:
        raise ValueError("nothing to merge")
    opset = max(_MIN_OPSET, *(_default_opset(p.model) for p in parts))
    b = _Builder(opset)
    graph_inputs: dict[str, onnx.ValueInfoProto] = {}
    ranks = {t.name: len(t.shape) for t in inputs}
    members_nodes: list[onnx.NodeProto] = []
    member_inits: list[onnx.TensorProto] = []
    value_info: list[onnx.ValueInfoProto] = []
    functions: list[onnx.FunctionProto] = []
    other_opsets: dict[str, int] = {}
    logits: list[str] = []
    for i, part in enumerate(parts):
        model = part.model
        if _default_opset(model) < opset:
            try:
                model = version_converter.convert_version(model, opset)
            except Exception as exc:
                raise ModelLoadError(
                    f"member '{part.name}': cannot convert to opset {opset}: {exc}"
                ) from None
        real = _real_inputs(model.graph)
        if len(real) != 1:
            raise ModelLoadError(f"member '{part.name}': ONNX model has {len(real)} inputs, expected 1")
        model = compose.add_prefix(model, f"m{i}/")
        g = model.graph
        member_input = _real_inputs(g)[0].name
        if part.input_name not in graph_inputs:
            spec = next(t for t in inputs if t.name == part.input_name)
            dims: list[int | str] = [d if d > 0 else f"{spec.name}_dim{k}" for k, d in enumerate(spec.shape)]
            graph_inputs[part.input_name] = helper.make_tensor_value_info(
                part.input_name, TensorProto.FLOAT, dims
            )
        prepared = _preprocess(b, part.input_name, part.preprocess, ranks[part.input_name], part.name)
        b.nodes.append(helper.make_node("Identity", [prepared], [member_input]))
        members_nodes.extend(g.node)
        member_inits.extend(g.initializer)
        member_inits_names = {x.name for x in g.initializer}
        value_info.extend(v for v in g.value_info if v.name not in member_inits_names)
        functions.extend(model.functions)
        for o in model.opset_import:
            if o.domain not in ("", "ai.onnx"):
                other_opsets[o.domain] = max(other_opsets.get(o.domain, 0), o.version)
        axes = b.const(np.array([0], np.int64), "axis0")
        out = b.op("Cast", [g.output[0].name], "logits", to=TensorProto.FLOAT)
        logits.append(b.op("Unsqueeze", [out, axes], "unsq"))
    tail = _Builder(opset)
    tail._n = b._n
    stacked = tail.op("Concat", logits, "stack", axis=0)
    tail.nodes.append(helper.make_node("Identity", [stacked], [LOGITS]))
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["members", "batch", "classes"])]
    if combiner is not None:
        probs = _combine(tail, stacked, combiner, weights or [1.0] * len(parts))
        tail.nodes.append(helper.make_node("Identity", [probs], [PROBS]))
        outputs.append(helper.make_tensor_value_info(PROBS, TensorProto.FLOAT, ["batch", "classes"]))
    graph = helper.make_graph(
        b.nodes + members_nodes + tail.nodes,
        "merged_ensemble",
        list(graph_inputs.values()),
        outputs,
        initializer=b.inits + member_inits + tail.inits,
        value_info=value_info,
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in other_opsets.items()]
    merged = helper.make_model(graph, opset_imports=opsets, functions=functions)
    merged.ir_version = max(p.model.ir_version for p in parts)
    return merged


def check_merged(model: onnx.ModelProto) -> None:
    """Raise ModelLoadError when the merged model is not valid ONNX."""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"merged ONNX model is invalid: {exc}") from None


def stacked_outputs(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    return outputs[LOGITS], outputs.get(PROBS)
