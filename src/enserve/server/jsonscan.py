"""JSON `/infer` bodies without a Python object per number.

`json.loads` of a 60 MB list of numbers builds ~0.5 GB of Python floats and holds the GIL
for seconds. Here flat numeric arrays of at least `RUN_BYTES` (outside strings) are cut out
by a scanner that works in C-speed steps of at most `CHUNK` bytes, the remaining JSON is
parsed as usual with a random marker string in each array's place, and each array becomes
a `Numbers` span of the body: tensor data is parsed from it chunk by chunk straight into a
typed array (`numbers`); anything else gets its list back (`materialize`, bounded).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from enserve.server.errors import Code, ServerError

RUN_BYTES = 1024
"""Flat numeric arrays at least this long are kept as spans of the body."""
CHUNK = 16 * 1024
"""Largest step of scanning or number parsing done in one call (one hold of the GIL)."""
STRUCTURE_LIMIT = 4 * 1024 * 1024
"""Largest JSON left once the big numeric arrays are cut out (else 413)."""
OTHER_NUMBERS_LIMIT = 1024 * 1024
"""Bytes of big numeric arrays outside the inputs' `data` turned back into lists (else 413)."""

_SPECIAL = re.compile(rb'["\[]')
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_NUMBER_CHARS = re.compile(rb"[0-9.eE+\-, \t\n\r]*+")


@dataclass(frozen=True)
class Numbers:
    """A flat JSON array of numbers: `body[start:end]` is what lies between its brackets."""

    body: bytes | bytearray
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def loads(body: bytes | bytearray, end: int | None = None) -> Any:
    """Parse `body[:end]` as JSON, with `Numbers` in place of each flat numeric array of
    at least RUN_BYTES."""
    structure, spans, marker = _cut(body, len(body) if end is None else end)
    if len(structure) > STRUCTURE_LIMIT:
        raise ServerError(
            f"request JSON of {len(structure)} bytes outside flat numeric arrays exceeds the limit "
            f"{STRUCTURE_LIMIT}: send big tensors as flat 'data' arrays or as binary data", Code.TOO_LARGE)
    try:
        value = json.loads(structure)
    except (ValueError, RecursionError) as exc:  # incl. ints over 4300 digits
        raise ServerError(f"request body is not valid JSON: {exc}") from None
    if not spans:
        return value
    found = [0]
    try:
        value = _restore(value, body, spans, marker, found)
    except RecursionError:
        raise ServerError("request body is not valid JSON: nested too deeply") from None
    if found[0] != len(spans):
        raise ServerError("request body is not valid JSON")
    return value


def _restore(v: Any, body: bytes | bytearray, spans: list[tuple[int, int]], marker: str,
             found: list[int]) -> Any:
    """`v` with each marker string replaced by its `Numbers` span of `body`. A plain
    function, not a closure: a recursive closure is a reference cycle (the function, its
    cell, the function), and it would keep `body` until the cyclic GC ran."""
    if isinstance(v, str) and v.startswith(marker):
        found[0] += 1
        start, end = spans[int(v[len(marker):])]
        return Numbers(body, start, end)
    if isinstance(v, list):
        return [_restore(x, body, spans, marker, found) for x in v]
    if isinstance(v, dict):
        if any(isinstance(k, str) and k.startswith(marker) for k in v):
            raise ServerError("request body is not valid JSON: an array used as an object key")
        return {k: _restore(x, body, spans, marker, found) for k, x in v.items()}
    return v


def _cut(body: bytes | bytearray, end: int) -> tuple[bytes, list[tuple[int, int]], str]:
    """`body[:end]` with each big flat numeric array replaced by `"<marker><index>"`."""
    marker = f"\x00{secrets.token_hex(8)}:"
    parts: list[bytes | bytearray | memoryview] = []
    spans: list[tuple[int, int]] = []
    view = memoryview(body)
    last = pos = 0
    while pos < end:
        m = _SPECIAL.search(body, pos, min(end, pos + CHUNK))
        if m is None:
            pos = min(end, pos + CHUNK)
            continue
        at = m.start()
        if body[at] == 0x22:  # a string: skip it whole
            pos = _string_end(body, at + 1, end)
            continue
        stop = _run_end(body, at + 1, end)
        if stop < end and body[stop] == 0x5D and stop - at > RUN_BYTES:  # "[numbers]"
            parts += [view[last:at], b'"', marker.encode("ascii").replace(b"\x00", b"\\u0000"),
                      str(len(spans)).encode(), b'"']
            spans.append((at + 1, stop))
            last = pos = stop + 1
        else:
            pos = stop if stop > at + 1 else at + 1
    if not spans:
        return bytes(view[:end]), spans, marker
    parts.append(view[last:end])
    return b"".join(parts), spans, marker


def _string_end(body: bytes | bytearray, pos: int, end: int) -> int:
    """Just past the closing quote of the string whose content starts at `pos` (or `end`)."""
    while pos < end:
        m = _STRING_BODY.match(body, pos, min(end, pos + CHUNK))
        assert m is not None  # the pattern matches the empty string
        if m.end() == pos and body[pos] != 0x22:
            if pos + 1 >= end:  # a lone backslash at the very end
                return end
            m_end = pos + 2  # an escape cut by the step's end
        else:
            m_end = m.end()
        if m_end < end and body[m_end] == 0x22:
            return m_end + 1
        pos = m_end
    return end


def _run_end(body: bytes | bytearray, pos: int, end: int) -> int:
    """The end of the run of number characters (digits, sign, point, exponent, comma,
    whitespace) that starts at `pos`."""
    while pos < end:
        step = min(end, pos + CHUNK)
        m = _NUMBER_CHARS.match(body, pos, step)
        assert m is not None
        pos = m.end()
        if pos < step:
            return pos
    return end


def numbers(name: str, span: Numbers, to_array: Callable[[list[Any]], np.ndarray],
            out: np.ndarray | None = None) -> np.ndarray:
    """The span's numbers as one 1-D array, parsed `CHUNK` bytes at a time; `to_array`
    checks and converts each piece (a list of Python numbers). With `out`, they are written
    into it and must fill it exactly (else 400)."""
    view = memoryview(span.body)
    pieces: list[np.ndarray] = []
    filled = 0
    pos = span.start
    while pos < span.end:
        cut = _find_comma(span, pos)
        try:
            values = json.loads(b"".join((b"[", view[pos:cut], b"]")))
        except (ValueError, RecursionError) as exc:
            raise ServerError(f"input '{name}': 'data' is not a valid JSON list of numbers: {exc}") from None
        piece = to_array(values)
        if out is None:
            pieces.append(piece)
        elif filled + len(piece) <= len(out):
            out[filled:filled + len(piece)] = piece
        filled += len(piece)
        pos = cut + 1
    if out is not None:
        if filled != len(out):
            raise ServerError(f"input '{name}': {filled} values given, {len(out)} expected for its shape")
        return out
    if not pieces:
        return to_array([])
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _find_comma(span: Numbers, pos: int) -> int:
    """Where the piece starting at `pos` ends: the first comma at least CHUNK bytes on."""
    if pos + CHUNK >= span.end:
        return span.end
    cut = span.body.find(b",", pos + CHUNK, span.end)
    return span.end if cut < 0 else cut


def materialize(value: Any, budget: list[int] | None = None) -> Any:
    """`value` with every `Numbers` turned back into a list (at most OTHER_NUMBERS_LIMIT
    bytes of them in all, else 413)."""
    budget = [OTHER_NUMBERS_LIMIT] if budget is None else budget
    if isinstance(value, Numbers):
        budget[0] -= value.nbytes
        if budget[0] < 0:
            raise ServerError(f"request JSON holds more than {OTHER_NUMBERS_LIMIT} bytes of numbers "
                              "outside the inputs' 'data'", Code.TOO_LARGE)
        try:
            return json.loads(b"".join((b"[", memoryview(value.body)[value.start:value.end], b"]")))
        except (ValueError, RecursionError) as exc:
            raise ServerError(f"request body is not valid JSON: {exc}") from None
    if isinstance(value, list):
        return [materialize(v, budget) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v, budget) for k, v in value.items()}
    return value


def has_numbers(value: Any) -> bool:
    if isinstance(value, Numbers):
        return True
    if isinstance(value, list):
        return any(has_numbers(v) for v in value)
    return False
