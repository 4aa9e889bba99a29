"""Random request data for a member's input (variant checks, profiling, preparation)."""

from __future__ import annotations

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.spec import EnsembleSpec, MemberSpec


def random_request(spec: EnsembleSpec, member: MemberSpec, batch: int, seed: int = 0) -> np.ndarray:
    """Random request data for the member's input: normal floats, or integers in range."""
    tensor = spec.input_for(member)
    shape = (batch, *(d if d > 0 else 16 for d in tensor.shape[1:]))
    rng = np.random.default_rng(seed)
    dtype = numpy_dtype(tensor.datatype) if tensor.datatype != "BF16" else np.dtype(np.float32)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    high = 256 if dtype.itemsize == 1 else 1000
    low = 0 if dtype.kind == "u" or dtype.itemsize == 1 else -1000
    return rng.integers(low, high, shape).astype(dtype)
