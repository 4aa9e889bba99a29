"""Residency: which ensembles are loaded, within a memory budget per device.

`ResidencyManager` knows nothing about HTTP or models: a `loader(name)` returns a
`Loaded` (the value and its bytes per device). Ensembles load on first `acquire`;
concurrent first requests share ONE load; when a load would exceed the budget the
least valuable idle resident is evicted first. Value follows GreedyDual-Size
(Cao & Irani): priority = L + load_seconds / bytes, refreshed on every use, where L
rises to the priority of each evicted entry — so recency, load cost and size all count,
and ties go to the least recently used. Ensembles idle for `idle_unload_s` unload by
themselves and come back on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from enserve.devices import release_freed_memory
from enserve.errors import InferenceError, ModelLoadError, OverloadedError

T = TypeVar("T")
Sizes = Mapping[str, int]
DEFAULT_DEVICE = "cpu"


@dataclass
class Loaded(Generic[T]):
    """A loaded ensemble: the object to serve with, its bytes per device, how to free it."""

    value: T
    sizes: Sizes
    close: Callable[[], None] | None = None
    # Cost of reloading it, for eviction; None: the measured load time.
    load_cost_s: float | None = None


@dataclass
class _Entry(Generic[T]):
    name: str
    sizes: dict[str, int]
    future: asyncio.Future[T]
    loaded: Loaded[T] | None = None
    users: int = 0
    last_used: float = 0.0
    load_seconds: float = 0.0
    cost_s: float = 0.0
    priority: float = 0.0

    @property
    def ready(self) -> bool:
        return self.loaded is not None


@dataclass
class SwapStats:
    """Counters for metrics; `load_seconds_total / loads` is the mean load time."""

    loads: int = 0
    load_failures: int = 0
    load_seconds_total: float = 0.0
    cold_starts: int = 0
    hits: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    unloads: int = 0
    resident_bytes: dict[str, int] = field(default_factory=dict)
    budget_bytes: dict[str, int] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_errors: dict[str, str] = field(default_factory=dict)


def _as_sizes(value: Sizes | int) -> dict[str, int]:
    return {DEFAULT_DEVICE: int(value)} if isinstance(value, int) else {k: int(v) for k, v in value.items()}


class ResidencyManager(Generic[T]):
    """Loads, shares, evicts and idles out named ensembles within `budget_bytes`.

    `budget_bytes`: bytes (the "cpu" device) or bytes per device name; devices absent
    from it are unlimited. `loader` runs in a worker thread. `estimate(name)` gives the
    bytes to make room for *before* loading (default: the size measured at the previous
    load, else 0); the measured size replaces it once loaded. A load that can't fit
    because residents are in use waits up to `wait_for_room_s`, then fails with
    OverloadedError.
    """

    def __init__(
        self,
        budget_bytes: int | Sizes,
        loader: Callable[[str], Loaded[T]],
        *,
        estimate: Callable[[str], Sizes | int] | None = None,
        idle_unload_s: float | None = None,
        wait_for_room_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = _as_sizes(budget_bytes)
        self._loader = loader
        self._estimate = estimate
        self.idle_unload_s = idle_unload_s
        self.wait_for_room_s = wait_for_room_s
        self._clock = clock
        self._entries: dict[str, _Entry[T]] = {}
        self._known_sizes: dict[str, dict[str, int]] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._inflation = 0.0
        self._stats = SwapStats()
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- serving -------------------------------------------------------------------

    async def acquire(self, name: str) -> T:
        """The loaded value for `name`, loading it first if needed. Pair with `release`."""
        async with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.ready:
                entry.users += 1
                self._touch(entry)
                self._stats.hits += 1
                assert entry.loaded is not None
                return entry.loaded.value
            if entry is None:
                entry = await self._start_load(name)
            entry.users += 1
            self._stats.cold_starts += 1
        try:
            return await asyncio.shield(entry.future)
        except BaseException:
            entry.users -= 1
            raise

    def release(self, name: str) -> None:
        """End one use started by `acquire`."""
        entry = self._entries.get(name)
        if entry is None or entry.users <= 0:
            return
        entry.users -= 1
        entry.last_used = self._clock()
        self._changed.set()

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[T]:
        value = await self.acquire(name)
        try:
            yield value
        finally:
            self.release(name)

    # ---- explicit control ----------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load `name` now (no-op when resident)."""
        await self.acquire(name)
        self.release(name)

    async def unload(self, name: str) -> bool:
        """Unload `name` once its current users are done; False when it was not resident."""
        deadline = self._clock() + self.wait_for_room_s
        while True:
            entry = self._entries.get(name)
            if entry is None:
                return False
            if not entry.ready:
                with contextlib.suppress(Exception):
                    await asyncio.shield(entry.future)
                continue
            if entry.users == 0:
                async with self._lock:
                    if self._entries.get(name) is entry and entry.users == 0:
                        await self._drop(entry)
                        self._stats.unloads += 1
                        return True
                continue
            await self._wait_change(deadline, f"'{name}' is still in use")

    async def sweep_idle(self) -> list[str]:
        """Unload every ensemble unused for `idle_unload_s`; returns their names."""
        if self.idle_unload_s is None:
            return []
        now = self._clock()
        gone = []
        async with self._lock:
            for entry in list(self._entries.values()):
                if entry.ready and entry.users == 0 and now - entry.last_used >= self.idle_unload_s:
                    await self._drop(entry)
                    self._stats.idle_unloads += 1
                    gone.append(entry.name)
        return gone

    def start(self, interval_s: float | None = None) -> None:
        """Start the background idle sweeper (needs a running event loop)."""
        if self.idle_unload_s is None or self._sweeper is not None:
            return
        period = interval_s or max(0.05, min(self.idle_unload_s / 2, 5.0))

        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                await self.sweep_idle()

        self._sweeper = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        """Stop the sweeper and unload everything (waits for loads in flight)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for entry in list(self._entries.values()):
            if not entry.ready:
                with contextlib.suppress(Exception):
                    await asyncio.shield(entry.future)
        async with self._lock:
            for entry in list(self._entries.values()):
                if entry.ready:
                    await self._drop(entry)

    # ---- inspection ----------------------------------------------------------------

    def resident(self) -> list[str]:
        return [e.name for e in self._entries.values() if e.ready]

    def is_resident(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.ready

    def accounted_bytes(self) -> dict[str, int]:
        """Bytes per device held by residents plus reservations of loads in flight."""
        total: dict[str, int] = {}
        for entry in self._entries.values():
            for device, n in entry.sizes.items():
                total[device] = total.get(device, 0) + n
        return total

    def stats(self) -> SwapStats:
        s = self._stats
        models = {
            e.name: {"state": "ready" if e.ready else "loading", "bytes": dict(e.sizes), "users": e.users,
                     "load_seconds": e.load_seconds, "idle_seconds": self._clock() - e.last_used}
            for e in self._entries.values()
        }
        return SwapStats(
            s.loads, s.load_failures, s.load_seconds_total, s.cold_starts, s.hits, s.evictions,
            s.idle_unloads, s.unloads, self.accounted_bytes(), dict(self.budget), models, dict(s.last_errors),
        )

    # ---- internals -----------------------------------------------------------------

    def _fits(self, extra: Mapping[str, int]) -> bool:
        used = self.accounted_bytes()
        return all(
            used.get(d, 0) + n <= self.budget[d] for d, n in extra.items() if d in self.budget
        )

    def _too_big(self, name: str, sizes: Mapping[str, int]) -> None:
        for d, n in sizes.items():
            if d in self.budget and n > self.budget[d]:
                raise ModelLoadError(
                    f"'{name}' needs {n} bytes on {d}, more than the whole budget ({self.budget[d]})"
                )

    async def _start_load(self, name: str) -> _Entry[T]:
        """Reserve room (evicting as needed) and launch the load. Caller holds the lock."""
        if self._estimate is not None:
            need = _as_sizes(self._estimate(name))
        else:
            need = dict(self._known_sizes.get(name, {}))
        loop = asyncio.get_running_loop()
        entry: _Entry[T] = _Entry(name, {}, loop.create_future(), last_used=self._clock())
        entry.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._entries[name] = entry  # registered first: concurrent requests join this load
        try:
            self._too_big(name, need)
            await self._make_room(name, need)
        except Exception as exc:
            self._entries.pop(name, None)
            self._fail(entry, exc)
            return entry
        entry.sizes = need
        task = loop.create_task(self._run_load(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return entry

    async def _make_room(self, name: str, need: Mapping[str, int]) -> None:
        deadline = self._clock() + self.wait_for_room_s
        while not self._fits(need):
            idle = [e for e in self._entries.values() if e.ready and e.users == 0]
            if idle:
                victim = min(idle, key=lambda e: (e.priority, e.last_used))
                self._inflation = max(self._inflation, victim.priority)
                await self._drop(victim)
                self._stats.evictions += 1
                continue
            self._lock.release()
            try:
                await self._wait_change(deadline, f"no room to load '{name}': residents are in use")
            finally:
                await self._lock.acquire()

    async def _wait_change(self, deadline: float, why: str) -> None:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise OverloadedError(f"{why} (waited {self.wait_for_room_s:g}s)")
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        except TimeoutError:
            raise OverloadedError(f"{why} (waited {self.wait_for_room_s:g}s)") from None

    async def _run_load(self, entry: _Entry[T]) -> None:
        start = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(self._loader, entry.name)
        except Exception as exc:  # the failure is this model's alone
            await self._load_failed(entry, exc)
            return
        seconds = time.perf_counter() - start
        async with self._lock:
            actual = _as_sizes(loaded.sizes)
            entry.sizes = {}
            try:
                self._too_big(entry.name, actual)
                await self._make_room(entry.name, actual)
            except Exception as exc:
                entry.sizes = {}
                _close(loaded)
                self._entries.pop(entry.name, None)
                self._fail(entry, exc)
                return
            entry.sizes = actual
            entry.loaded = loaded
            entry.load_seconds = seconds
            entry.cost_s = seconds if loaded.load_cost_s is None else loaded.load_cost_s
            self._known_sizes[entry.name] = actual
            self._stats.loads += 1
            self._stats.load_seconds_total += seconds
            self._stats.last_errors.pop(entry.name, None)
            self._touch(entry)
            entry.future.set_result(loaded.value)
            self._changed.set()

    async def _load_failed(self, entry: _Entry[T], exc: Exception) -> None:
        async with self._lock:
            self._entries.pop(entry.name, None)
            self._fail(entry, exc)

    def _fail(self, entry: _Entry[T], exc: Exception) -> None:
        self._stats.load_failures += 1
        if isinstance(exc, InferenceError):
            error: Exception = exc
        else:
            detail = str(exc) or type(exc).__name__
            error = ModelLoadError(f"ensemble '{entry.name}' failed to load: {detail}")
        self._stats.last_errors[entry.name] = str(error)
        entry.future.set_exception(error)
        self._changed.set()

    def _touch(self, entry: _Entry[T]) -> None:
        entry.last_used = self._clock()
        size = max(1, sum(entry.sizes.values()))
        # Loads under a millisecond count as equally cheap (timer noise must not decide).
        entry.priority = self._inflation + max(entry.cost_s, 1e-3) / size

    async def _drop(self, entry: _Entry[T]) -> None:
        """Forget `entry` and close what it loaded in a worker thread (stopping an engine's
        workers takes a while: the event loop keeps serving meanwhile; the lock stays held,
        so no load counts on the room before it is free)."""
        self._entries.pop(entry.name, None)
        held: list[Loaded[T]] = [] if entry.loaded is None else [entry.loaded]
        entry.loaded = None
        try:
            await asyncio.to_thread(_retire, held)
        finally:
            self._changed.set()


def _retire(held: list[Loaded[Any]]) -> None:
    """Close the one loaded value in `held` (dropping the last reference here), then give
    the freed memory back."""
    if held:
        _close(held.pop())
    release_freed_memory()


def _close(loaded: Loaded[Any]) -> None:
    if loaded.close is not None:
        with contextlib.suppress(Exception):
            loaded.close()
