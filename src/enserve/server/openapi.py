"""Request-body schemas for the OpenAPI document (`/openapi.json`).

The HTTP handlers read raw bodies (binary tensor extension, compression), so FastAPI
cannot infer these: they are declared here, for clients and for schema-based fuzzing
(`tests/reliability`, `benchmarks/chaos.py`)."""

from __future__ import annotations

from typing import Any

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]

_PARAMETERS: dict[str, Any] = {"type": "object", "additionalProperties": True}

INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "timeout": {"type": "number", "description": "deadline in microseconds"},
                "binary_data_output": {"type": "boolean"},
            },
            "additionalProperties": True,
        },
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string", "enum": DATATYPES},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "parameters": _PARAMETERS,
                    "data": {"type": "array", "items": {}},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
            },
        },
    },
}

REPOSITORY_INDEX_REQUEST: dict[str, Any] = {
    "type": "object", "properties": {"ready": {"type": "boolean"}},
}
REPOSITORY_LOAD_REQUEST: dict[str, Any] = {
    "type": "object", "properties": {"parameters": _PARAMETERS},
}


def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of `schema`."""
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": schema}}}}
