"""Scale-out on Ray: a plan's instances as Ray actors across a cluster (optional extra:
`pip install enserve[ray]`). See docs/scale-out.md."""

from __future__ import annotations


def ray_available() -> str | None:
    """None when Ray can be imported, else why not (with the install hint)."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        return f"the Ray backend needs Ray: pip install 'enserve[ray]' ({exc})"
    return None
