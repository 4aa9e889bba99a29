"""Ensembles validated before: their output shape, remembered so that the next load skips
the output-shape probe (one forward pass per member).

The key is a hash of the spec's inputs and every member's fingerprint (spec entry, the
bytes of its files, library versions), so changing a member's weights, source or
preprocessing, or upgrading a framework, validates the ensemble again. Entries live in
`<cache>/validated/<key>.json`; an unreadable entry is ignored (probed again).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from enserve.spec import EnsembleSpec
from enserve.variants.fingerprint import atomic_write_target, default_cache_dir, member_fingerprint


def ensemble_key(spec: EnsembleSpec) -> str:
    payload = {
        "inputs": [t.model_dump(mode="json") for t in spec.inputs],
        "members": [member_fingerprint(spec, m) for m in spec.members],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _entry(spec: EnsembleSpec, cache_dir: Path | None) -> Path:
    root = cache_dir if cache_dir is not None else default_cache_dir()
    return root / "validated" / f"{ensemble_key(spec)[:32]}.json"


def known_output_shape(spec: EnsembleSpec, cache_dir: Path | None = None) -> tuple[int, ...] | None:
    """The output shape `(-1, classes)` validated for this exact ensemble before, or None."""
    if os.environ.get("ENSERVE_REVALIDATE"):
        return None
    try:
        data = json.loads(_entry(spec, cache_dir).read_text())
        shape = tuple(int(d) for d in data["output_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return shape if len(shape) == 2 else None


def remember_output_shape(spec: EnsembleSpec, shape: tuple[int, ...],
                          cache_dir: Path | None = None) -> None:
    """Record that every member of `spec` answered with `shape` (best effort)."""
    try:
        path = _entry(spec, cache_dir)
        tmp = atomic_write_target(path)
        tmp.write_text(json.dumps({"ensemble": spec.name, "output_shape": list(shape)}))
        os.replace(tmp, path)
    except OSError:
        pass
