"""A traced, folded member's fx graph as plain JSON data, and back (on `meta`), with no
pickle: the folded-weights file (`enserve.fusion.folded`) stores graphs this way.

A stored graph is `{"format", "class", "nodes", "modules", "tensors"}`: the nodes in
order (op, name, target, args, kwargs), the leaf modules each `call_module` node calls (a
class from `graph_allow.LEAVES` and its constructor arguments), and the parameters and
buffers `get_attr` nodes read (shape, dtype). Values are JSON scalars; a JSON array is a
list; an object tags everything else: `{"node": name}`, `{"tuple": [...]}`,
`{"dict": [[key, value], ...]}`, `{"slice": [start, stop, step]}`, `{"dtype": name}`,
`{"memory_format": name}`.

Loading accepts only what the allow-lists name, checks every name that becomes Python
code (node names, attribute paths), and raises ModelLoadError on anything else; the
generated `forward` is fx's own code for a graph of allowed calls.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from enserve.errors import ModelLoadError
from enserve.fusion.graph_allow import (
    DTYPES,
    FUNCTIONS,
    GETATTR_NAMES,
    LEAVES,
    MEMORY_FORMATS,
    METHODS,
    WITH_TENSORS,
)

FORMAT = 1
_PART = re.compile(r"[A-Za-z0-9_-]+")
_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
_FUNCTION_NAMES = {id(f): name for name, f in FUNCTIONS.items()}
_DTYPE_NAMES = {d: name for name, d in DTYPES.items()}
_FORMAT_NAMES = {f: name for name, f in MEMORY_FORMATS.items()}


class NotStorable(ValueError):
    """The graph uses something the allow-lists don't name: it is not stored."""


def _identifier(name: object) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"not an identifier: {str(name)[:80]!r}")
    return name


def _path(target: object) -> str:
    """An attribute path (`features.0.conv`, `trunk_output.block1-0`): letters, digits,
    `_` and `-` between the dots (fx writes the others as `getattr(m, "block1-0")`)."""
    if not isinstance(target, str) or not all(_PART.fullmatch(p) for p in target.split(".")):
        raise ValueError(f"not an attribute path: {str(target)[:80]!r}")
    return target


# -- encoding (writer side: our own traced graphs) -----------------------------------------

def _enc(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, tuple):
        return {"tuple": [_enc(v) for v in value]}
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": [[k, _enc(v)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_enc(value.start), _enc(value.stop), _enc(value.step)]}
    if isinstance(value, torch.dtype) and value in _DTYPE_NAMES:
        return {"dtype": _DTYPE_NAMES[value]}
    if isinstance(value, torch.memory_format) and value in _FORMAT_NAMES:
        return {"memory_format": _FORMAT_NAMES[value]}
    raise NotStorable(f"a value of type {type(value).__name__}")


def _enc_target(node: fx.Node) -> str:
    if node.op == "call_function":
        name = _FUNCTION_NAMES.get(id(node.target))
        if name is None:
            raise NotStorable(f"function {getattr(node.target, '__module__', '?')}."
                              f"{getattr(node.target, '__name__', node.target)}")
        return name
    if node.op == "call_method" and node.target not in METHODS:
        raise NotStorable(f"method {node.target}")
    return str(node.target)


def _enc_module(module: nn.Module) -> dict[str, Any]:
    name = type(module).__name__
    if name not in LEAVES or LEAVES[name][0] is not type(module):
        raise NotStorable(f"module {type(module).__module__}.{name}")
    args = {a: (getattr(module, a) is not None) if a == "bias" else _enc(getattr(module, a))
            for a in LEAVES[name][1]}
    tensors = list(module.parameters()) + list(module.buffers())
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), None)
    return {"type": name, "args": args, "dtype": _DTYPE_NAMES[dtype] if dtype else None}


def encode_graph(gm: fx.GraphModule) -> dict[str, Any]:
    """The graph as JSON data; NotStorable when it uses anything outside the allow-lists."""
    nodes, modules, tensors = [], {}, {}
    for node in gm.graph.nodes:
        target = _enc_target(node)
        if node.op == "call_module":
            modules[target] = _enc_module(gm.get_submodule(target))
        elif node.op == "get_attr":
            t = gm.get_parameter(target) if _is_param(gm, target) else gm.get_buffer(target)
            if t.dtype not in _DTYPE_NAMES:
                raise NotStorable(f"tensor '{target}' of dtype {t.dtype}")
            tensors[target] = {"shape": list(t.shape), "dtype": _DTYPE_NAMES[t.dtype],
                               "parameter": isinstance(t, nn.Parameter)}
        entry = {"op": node.op, "name": node.name, "target": target,
                 "args": _enc(node.args), "kwargs": _enc(node.kwargs)}
        if node.type is torch.Tensor:  # the only annotation kept (others are dropped)
            entry["type"] = "Tensor"
        nodes.append(entry)
    return {"format": FORMAT, "class": type(gm).__name__, "nodes": nodes,
            "modules": modules, "tensors": tensors}


def _is_param(gm: nn.Module, target: str) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


# -- decoding (loader side: the file is untrusted) -----------------------------------------

def _dec(value: Any, env: dict[str, fx.Node] | None) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_dec(v, env) for v in value]
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError("malformed value")
    (tag, body), = value.items()
    if tag == "node":
        if env is None or body not in env:
            raise ValueError(f"reference to an unknown node {str(body)[:80]!r}")
        return env[body]
    if tag == "tuple" and isinstance(body, list):
        return tuple(_dec(v, env) for v in body)
    if tag == "dict" and isinstance(body, list):
        return {_identifier(k): _dec(v, env) for k, v in body}
    if tag == "slice" and isinstance(body, list) and len(body) == 3:
        return slice(*(_dec(v, env) for v in body))
    if tag == "dtype" and body in DTYPES:
        return DTYPES[body]
    if tag == "memory_format" and body in MEMORY_FORMATS:
        return MEMORY_FORMATS[body]
    raise ValueError(f"value tag {str(tag)[:40]!r} is not allowed")


def _dec_target(op: str, target: Any) -> str | Callable[..., Any]:
    if op == "call_function":
        if target not in FUNCTIONS:
            raise ValueError(f"function {str(target)[:80]!r} is not allowed")
        return FUNCTIONS[target]
    if op == "call_method":
        if target not in METHODS:
            raise ValueError(f"method {str(target)[:80]!r} is not allowed")
        return str(target)
    if op in ("get_attr", "call_module"):
        return _path(target)
    if op == "placeholder":
        return _identifier(target)
    if target != "output":
        raise ValueError("malformed output node")
    return "output"


def _dtype(name: Any) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {str(name)[:40]!r} is not allowed")
    return DTYPES[name]


def _dec_module(info: Any) -> nn.Module:
    kind, args = info["type"], info["args"]
    if not isinstance(kind, str) or kind not in LEAVES or not isinstance(args, dict):
        raise ValueError(f"module {str(kind)[:80]!r} is not allowed")
    cls, allowed = LEAVES[kind]
    if not set(args) <= set(allowed):
        raise ValueError(f"{kind}: arguments {sorted(set(args) - set(allowed))} are not allowed")
    kwargs = {k: _dec(v, None) for k, v in args.items()}
    if kind in WITH_TENSORS:  # built on `meta` by its own factory arguments (no device mode)
        dtype = info.get("dtype")
        return cls(**kwargs, device="meta", dtype=None if dtype is None else _dtype(dtype))
    return cls(**kwargs)


def _dec_tensor(info: Any) -> torch.Tensor:
    shape = info["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError("malformed tensor shape")
    t = torch.empty(shape, dtype=_dtype(info["dtype"]), device="meta")
    return nn.Parameter(t, requires_grad=False) if info["parameter"] is True else t


def _build(data: Any) -> fx.GraphModule:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a stored graph of this format")
    modules, tensors = data["modules"], data["tensors"]
    root: dict[str, Any] = {}
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for entry in data["nodes"]:
        op = entry["op"]
        if op not in _OPS:
            raise ValueError(f"node op {str(op)[:40]!r} is not allowed")
        target = _dec_target(op, entry["target"])
        if op == "call_function" and target is getattr:
            args = entry["args"]
            if not (isinstance(args, dict) and len(args.get("tuple", ())) == 2
                    and args["tuple"][1] in GETATTR_NAMES):
                raise ValueError("getattr of an attribute that is not allowed")
        if op == "call_module" and isinstance(target, str) and target not in root:
            root[target] = _dec_module(modules[target])
        elif op == "get_attr" and isinstance(target, str) and target not in root:
            root[target] = _dec_tensor(tensors[target])
        args, kwargs = _dec(entry["args"], env), _dec(entry["kwargs"], env)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise ValueError("malformed node arguments")
        name = _identifier(entry["name"])
        if name in env:
            raise ValueError(f"node '{name}' defined twice")
        if entry.get("type", "Tensor") != "Tensor":
            raise ValueError("node type annotation is not allowed")
        env[name] = graph.create_node(op, target, args, kwargs, name=name,
                                      type_expr=torch.Tensor if "type" in entry else None)
    graph.lint()
    return fx.GraphModule(root, graph, _identifier(data.get("class", "FoldedMember")))


def decode_graph(data: Any, where: str) -> fx.GraphModule:
    """The stored graph rebuilt on `meta`; ModelLoadError when anything in it is not
    allowed or not well formed (the caller builds the member from its code instead)."""
    try:
        return _build(data)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, RecursionError,
            AssertionError) as exc:
        raise ModelLoadError(f"{where}: stored graph refused: {str(exc)[:200]}") from None


def _summary(module: nn.Module) -> tuple[dict[str, tuple[Any, ...]], dict[str, str]]:
    """Tensors (shape, dtype, parameter?) and leaf modules (repr, class) by name."""
    tensors = {k: (tuple(t.shape), t.dtype, isinstance(t, nn.Parameter))
               for k, t in module.state_dict(keep_vars=True).items()}
    leaves = {k: f"{type(m).__qualname__} {m!r}" for k, m in module.named_modules()
              if not list(m.children())}
    return tensors, leaves


def storable_graph(gm: fx.GraphModule) -> dict[str, Any] | None:
    """`encode_graph(gm)` if it rebuilds the same graph (nodes, modules, tensors); else None."""
    try:
        data = encode_graph(gm)
        again = _build(data)
        same = encode_graph(again) == data and _summary(again) == _summary(gm)
    except (NotStorable, ValueError, TypeError, KeyError, AttributeError, RuntimeError):
        return None
    return data if same else None
