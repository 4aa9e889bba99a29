"""`GET /dashboard` (the page) and `GET /dashboard/state` (its JSON, for any tool) on the HTTP app."""

from __future__ import annotations

import json
import math
import time
from importlib import resources
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response

from enserve.server.dashboard.state import DashboardState
from enserve.server.errors import ServerError

if TYPE_CHECKING:
    from enserve.server.dataplane import DataPlane

# The page loads nothing from elsewhere; the policy makes the browser refuse it if it tried.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'")


def page_html() -> bytes:
    return resources.files("enserve.server.dashboard").joinpath("page.html").read_bytes()


def window_param(request: Request) -> float | None:
    """`?window=S` (seconds, 0: since start); a bad value is a 400."""
    raw = request.query_params.get("window")
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ServerError(f"window must be a number of seconds, got '{raw[:40]}'") from None
    if not math.isfinite(value) or value < 0:
        raise ServerError(f"window must be a finite number of seconds >= 0, got '{raw[:40]}'")
    return value


def add_dashboard(app: FastAPI, plane: DataPlane, window_s: float = 10.0,
                  reuse_s: float = 0.5) -> DashboardState:
    """Mount the page and its JSON. A snapshot is reused for `reuse_s` by every caller asking
    for the same window, so many open pages cost the server at most 1/reuse_s builds a second."""
    state = DashboardState(plane, window_s)
    page = page_html()
    recent: dict[float | None, tuple[float, bytes, str]] = {}

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> Response:
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff"})

    @app.get("/dashboard/state")
    async def dashboard_state(request: Request) -> Response:
        started, cpu_started = time.perf_counter(), time.thread_time()
        window = window_param(request)
        cached = recent.get(window)
        if cached is not None and started - cached[0] < reuse_s:
            _, body, timing = cached
            timing = f"{timing}, reused"
        else:
            body = json.dumps(state.snapshot(window), allow_nan=False, separators=(",", ":")).encode()
            took_ms = (time.perf_counter() - started) * 1000
            cpu_ms = (time.thread_time() - cpu_started) * 1000  # this thread's CPU: what load can't inflate
            timing = f"snapshot;dur={took_ms:.2f}, cpu;dur={cpu_ms:.2f}"
            if len(recent) > 8:  # windows are few; never let odd values pile up
                recent.clear()
            recent[window] = (started, body, timing)
        return Response(body, media_type="application/json",
                        headers={"Cache-Control": "no-store", "Server-Timing": timing})

    return state
