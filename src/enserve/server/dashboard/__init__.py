"""The operator's dashboard: a self-contained page at `/dashboard` over the JSON snapshot at
`/dashboard/state`, both assembled from the server's own `/metrics` (see docs/dashboard.md)."""

from enserve.server.dashboard.routes import add_dashboard

__all__ = ["add_dashboard"]
