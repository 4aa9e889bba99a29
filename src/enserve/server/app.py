"""Run the whole server: HTTP, gRPC and metrics listeners over one DataPlane, one event loop.

`EnserveServer(config).run()` blocks until SIGINT/SIGTERM, then drains: the HTTP listeners
stop accepting connections, requests on open ones are refused with 503 and every answer
carries `Connection: close`, admitted ones finish (bounded by `Limits.drain_timeout_s`),
idle connections get `IDLE_GRACE_S` to send a last request, then backends are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvicorn
from fastapi import FastAPI

from enserve.errors import EnserveError
from enserve.runtime.scratch import enter_scratch
from enserve.server.connections import (
    ConnectionLimits,
    begin_drain,
    connections_closed,
    guarded_protocol,
)
from enserve.server.dashboard import add_dashboard
from enserve.server.dataplane import DataPlane
from enserve.server.grpc import build_grpc_server
from enserve.server.http import build_app, build_metrics_app
from enserve.server.limits import Limits
from enserve.server.repository import BackendFactory, BudgetedRepository, ModelRepository

log = logging.getLogger("enserve.server")
IDLE_GRACE_S = 1.0
"""Draining: how long an idle keep-alive connection may still send a request (answered 503
with `Connection: close`) before the server closes it."""


@dataclass
class ServerConfig:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    backend: str = "engine"
    models: list[str] | None = None
    """Models to load at start (None: every folder in the repository)."""
    limits: Limits = field(default_factory=Limits)
    repository_token: str | None = None
    threads: int | None = None
    memory_budget_bytes: int | None = None
    """Host memory the loaded ensembles may hold; None: no budget, load everything at start."""
    idle_unload_s: float | None = None
    """With a budget: unload ensembles unused this long (they reload on their next request)."""
    ray_address: str | None = None
    """`--backend ray`: the Ray cluster (None: the one running on this machine)."""
    port_file: Path | None = None
    """Where to write `{"http": port, "grpc": port, "metrics": port}` once serving."""
    dashboard: bool = True
    """Serve the operator's page at `/dashboard` and its JSON at `/dashboard/state` (HTTP port)."""
    plan_policy: str = "replan"
    """An ensemble's plan.json made on other hardware: reuse, replan or fail."""
    hang_timeout_s: float | None = 30.0
    """Engine backend: a worker holding work that answers nothing this long is killed and
    restarted (None: never)."""
    refine_profile: bool = False
    """Engine backend, an ensemble needing a plan made here: plan from an adaptive profile
    (about a minute), then refine it in the background and switch plans on a gain."""
    precision: str | None = None
    """Engine backend, plans made here: auto (reduced precision the accuracy check admits)
    or fp32; None: a re-plan keeps the old plan's mode, a refined first plan uses auto."""


def backend_factory(config: ServerConfig) -> BackendFactory:
    """How the server makes an ensemble's backend: `config.backend` with the settings of
    `config` that backend reads."""
    kind, limits = config.backend, config.limits
    if kind == "reference":
        from enserve.server.backend import ReferenceBackend

        return lambda spec: ReferenceBackend(spec, threads=config.threads)
    if kind == "engine":
        from enserve.server.engine_backend import EngineBackend

        return lambda spec: EngineBackend(spec, max_batch=limits.max_batch,
                                          max_queue=limits.max_pending,
                                          plan_policy=config.plan_policy,
                                          hang_timeout_s=config.hang_timeout_s,
                                          refine_profile=config.refine_profile,
                                          precision=config.precision)
    if kind == "ray":
        from enserve.runtime.ray import ray_available

        reason = ray_available()
        if reason:
            raise EnserveError(f"--backend ray: {reason}")
        from enserve.server.ray_backend import RayBackend

        return lambda spec: RayBackend(spec, address=config.ray_address,
                                       max_batch=limits.max_batch,
                                       max_queue=limits.max_pending)
    raise EnserveError(f"unknown backend '{kind}' (reference, engine, ray)")


def connection_limits(limits: Limits) -> ConnectionLimits:
    return ConnectionLimits(max_header_bytes=limits.max_header_bytes,
                            header_timeout_s=limits.header_timeout_s,
                            body_timeout_s=limits.body_timeout_s,
                            max_connections=limits.max_connections)


class _QuietSignals(uvicorn.Server):
    """uvicorn without its own signal handlers: the EnserveServer owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this: without it, a response's headers and body go out as two
    # small writes and Nagle holds the second until the client's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EnserveError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class EnserveServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        enter_scratch()  # sweep what a killed server left; our temp files go in one folder
        factory = backend_factory(config)
        self.repository: ModelRepository
        if config.memory_budget_bytes is not None:
            self.repository = BudgetedRepository(
                config.repository, factory, config.memory_budget_bytes,
                idle_unload_s=config.idle_unload_s, unload_timeout_s=config.limits.drain_timeout_s,
            )
        else:
            self.repository = ModelRepository(
                config.repository, factory, unload_timeout_s=config.limits.drain_timeout_s
            )
        self.plane = DataPlane(self.repository, config.limits, config.repository_token, config.backend)
        self.ports: dict[str, int] = {}
        self._http: list[tuple[_QuietSignals, asyncio.Task[None]]] = []
        self._grpc: grpc.aio.Server | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        on_demand = self.config.memory_budget_bytes is not None and self.config.models is None
        failures = {} if on_demand else await self.repository.load_all(self.config.models)
        for name, message in failures.items():
            log.error("model %s not loaded: %s", name, message)
        cfg = self.config
        if cfg.http_port is not None:
            app = build_app(self.plane)
            if cfg.dashboard:
                add_dashboard(app, self.plane)
            self.ports["http"] = self._serve_http(app, cfg.http_port)
        if cfg.metrics_port is not None:
            self.ports["metrics"] = self._serve_http(build_metrics_app(self.plane), cfg.metrics_port)
        if cfg.grpc_port is not None:
            self._grpc = build_grpc_server(self.plane)
            port = self._grpc.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}")
            if port == 0:
                raise EnserveError(f"cannot listen on {cfg.host}:{cfg.grpc_port} (gRPC)")
            self.ports["grpc"] = port
            await self._grpc.start()
        for server, _ in self._http:
            while not server.started:
                await asyncio.sleep(0.01)
        self.plane.started = True
        if cfg.port_file is not None:
            tmp = cfg.port_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.ports))
            tmp.replace(cfg.port_file)
        log.info("enserve serving %s on %s: %s", cfg.repository, cfg.host, self.ports)
        if cfg.dashboard and "http" in self.ports:
            host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
            log.info("dashboard: http://%s:%d/dashboard", host, self.ports["http"])

    def _serve_http(self, app: FastAPI, port: int) -> int:
        sock = _listen(self.config.host, port)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(self.config.limits.drain_timeout_s) or 1,
            limit_concurrency=None, timeout_keep_alive=15,
            http=guarded_protocol(connection_limits(self.config.limits)),
        )
        server = _QuietSignals(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._http.append((server, task))
        return int(sock.getsockname()[1])

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Drain: close listeners, refuse new requests (503 and `Connection: close`), finish
        admitted ones, let idle connections go, close backends."""
        self.plane.admission.draining = True
        servers = [server for server, _ in self._http]
        for server in servers:
            begin_drain(server)
        await self.plane.drain()
        await connections_closed(servers, IDLE_GRACE_S)
        for server in servers:
            server.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace=self.config.limits.drain_timeout_s)
        await asyncio.gather(*(task for _, task in self._http), return_exceptions=True)
        await self.repository.close()

    async def serve(self) -> None:
        """Start, wait for SIGINT/SIGTERM (or `request_stop`), then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()


def run(config: ServerConfig) -> None:
    """Serve in this process until stopped (the CLI's server: it owns the process)."""
    # Everything imported by now lives as long as the process: out of the cyclic
    # collector's full passes, which hold the GIL, so the event loop of this process. An
    # eviction's `gc.collect()` scanned ~70k import-time objects (~70 ms of blocked loop,
    # `benchmarks/evict_loop.py`); after the freeze it scans only what came later.
    gc.freeze()
    asyncio.run(EnserveServer(config).serve())
