"""Where an fx group's folded-weights file lives (`enserve.fusion.folded`), importable
without torch (the engine picks a worker's fork server by whether it exists)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from enserve.spec import EnsembleSpec
from enserve.variants.fingerprint import default_cache_dir, member_fingerprint

FORMAT = 3  # 3: graphs stored as JSON data (graph_json), no pickle


def folded_path(spec: EnsembleSpec, members: Sequence[str], channels_last: bool,
                cache_dir: Path | None = None) -> Path:
    """The group's folded-weights file in the cache (keyed by its members' fingerprints)."""
    payload = {"format": FORMAT, "channels_last": channels_last,
               "members": [[n, member_fingerprint(spec, n)] for n in members]}
    key = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]
    root = cache_dir if cache_dir is not None else default_cache_dir()
    return root / "artifacts" / f"fx-folded-{len(members)}-{key}.safetensors"
