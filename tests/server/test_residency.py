"""ResidencyManager on fake loaders with sizes (no models needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from enserve.errors import ModelLoadError, OverloadedError
from enserve.server.residency import Loaded, ResidencyManager

MB = 2**20


class FakeLoader:
    """Loads 'models' of known sizes; records calls; can fail or be slow on demand."""

    def __init__(self, sizes: dict[str, int], delay: float = 0.0, failing: set[str] | None = None) -> None:
        self.sizes = sizes
        self.delay = delay
        self.failing = failing or set()
        self.calls: list[str] = []
        self.closed: list[str] = []
        self.lock = threading.Lock()
        self.manager: ResidencyManager[str] | None = None
        self.costs: dict[str, float] = {}

    def __call__(self, name: str) -> Loaded[str]:
        with self.lock:
            self.calls.append(name)
        if self.delay:
            time.sleep(self.delay)
        if name in self.failing:
            raise RuntimeError(f"corrupt weights in {name}")
        if name not in self.sizes:
            raise KeyError(name)
        return Loaded(f"model:{name}", {"cpu": self.sizes[name]}, close=lambda: self.closed.append(name),
                      load_cost_s=self.costs.get(name, 1.0))


def _manager(loader: FakeLoader, budget: int, **kw: object) -> ResidencyManager[str]:
    m: ResidencyManager[str] = ResidencyManager(budget, loader, estimate=lambda n: loader.sizes.get(n, 0), **kw)  # type: ignore[arg-type]
    loader.manager = m
    return m


def run(coro_fn: Callable[[], object]) -> object:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_concurrent_first_requests_trigger_one_load() -> None:
    loader = FakeLoader({"a": 10}, delay=0.2)

    async def scenario() -> list[str]:
        m = _manager(loader, 100)
        values = await asyncio.gather(*(m.acquire("a") for _ in range(8)))
        assert m.stats().models["a"]["users"] == 8
        for _ in values:
            m.release("a")
        st = m.stats()
        assert (st.loads, st.cold_starts, st.hits) == (1, 8, 0)
        await m.close()
        return list(values)

    assert run(scenario) == ["model:a"] * 8
    assert loader.calls == ["a"]


def test_budget_never_exceeded_and_lru_eviction_order() -> None:
    sizes = {n: 30 for n in "abcdef"}
    loader = FakeLoader(sizes)

    async def scenario() -> None:
        m = _manager(loader, 100)
        order = ["a", "b", "c", "a", "d", "e", "a", "f", "b"]
        for name in order:
            async with m.use(name) as value:
                assert value == f"model:{name}"
                assert sum(m.accounted_bytes().values()) <= 100  # after every load
        # a is used often so it stays; b,c went first, then d...
        assert loader.closed == ["b", "c", "d", "e", "f"][: len(loader.closed)]
        assert set(m.resident()) <= {"a", "b", "e", "f"} and "a" in m.resident()
        assert m.stats().evictions == len(loader.closed)
        await m.close()

    run(scenario)


def test_eviction_closes_off_the_event_loop() -> None:
    """Closing an evicted ensemble (an engine stopping its workers takes a while) must
    leave the event loop serving: a task standing in for a health check runs while the
    close is still in progress. (On the loop, the close would wait out its 10 s guard.)"""
    loader = FakeLoader({"a": 60, "b": 60})
    closing, answered = threading.Event(), threading.Event()
    seen: list[bool] = []

    def slow_close() -> None:
        closing.set()
        seen.append(answered.wait(10))  # ends early only if the loop ran meanwhile

    async def scenario() -> None:
        m = _manager(loader, 100)
        await m.load("a")
        m._entries["a"].loaded.close = slow_close  # type: ignore[union-attr]
        loading = asyncio.create_task(m.load("b"))  # evicts a
        while not closing.is_set():
            await asyncio.sleep(0.005)
        answered.set()  # the "health check": the loop is free while a closes
        await loading
        assert m.resident() == ["b"] and m.stats().evictions == 1
        await m.close()

    run(scenario)
    assert seen == [True]


def test_eviction_prefers_cheap_to_reload_per_byte() -> None:
    loader = FakeLoader({"slow": 40, "fast": 40, "new": 40})
    loader.costs = {"slow": 5.0, "fast": 0.1, "new": 0.1}

    async def scenario() -> None:
        m = _manager(loader, 100)
        await m.load("slow")
        await m.load("fast")  # 'slow' is now least recently used...
        await m.load("new")
        assert sorted(m.resident()) == ["new", "slow"]  # ...but costs 50x more to reload
        assert loader.closed == ["fast"]
        await m.close()

    run(scenario)


def test_failing_load_is_reported_and_others_keep_serving() -> None:
    loader = FakeLoader({"good": 10, "bad": 10}, failing={"bad"})

    async def scenario() -> None:
        m = _manager(loader, 100)
        await m.load("good")
        results = await asyncio.gather(m.acquire("bad"), m.acquire("bad"), return_exceptions=True)
        for r in results:
            assert isinstance(r, ModelLoadError)
            assert "'bad'" in str(r) and "corrupt weights" in str(r)
        assert loader.calls.count("bad") == 1
        async with m.use("good") as v:
            assert v == "model:good"
        st = m.stats()
        assert st.load_failures == 1 and "bad" in st.last_errors and m.resident() == ["good"]
        assert m.accounted_bytes() == {"cpu": 10}  # the failed reservation was given back
        await m.close()

    run(scenario)


def test_too_big_and_in_use_residents_give_clear_errors() -> None:
    loader = FakeLoader({"huge": 500, "a": 60, "b": 60})

    async def scenario() -> None:
        m = _manager(loader, 100, wait_for_room_s=0.2)
        with pytest.raises(ModelLoadError, match="more than the whole budget"):
            await m.acquire("huge")
        await m.acquire("a")  # held: can't be evicted
        with pytest.raises(OverloadedError, match="in use"):
            await m.acquire("b")
        m.release("a")
        async with m.use("b") as v:  # now 'a' can go
            assert v == "model:b"
        assert m.resident() == ["b"]
        await m.close()

    run(scenario)


def test_waiting_load_proceeds_when_a_user_releases() -> None:
    loader = FakeLoader({"a": 60, "b": 60})

    async def scenario() -> None:
        m = _manager(loader, 100, wait_for_room_s=5)
        await m.acquire("a")
        later = asyncio.create_task(m.acquire("b"))
        await asyncio.sleep(0.05)
        assert not later.done()
        m.release("a")
        assert await later == "model:b"
        m.release("b")
        assert m.resident() == ["b"]
        await m.close()

    run(scenario)


def test_idle_unload_and_comeback() -> None:
    now = [0.0]
    loader = FakeLoader({"a": 10, "b": 10})

    async def scenario() -> None:
        m = _manager(loader, 100, idle_unload_s=60, clock=lambda: now[0])
        await m.load("a")
        now[0] = 30
        await m.load("b")
        now[0] = 70
        assert await m.sweep_idle() == ["a"]
        assert m.resident() == ["b"]
        async with m.use("a"):  # comes back on the next request
            pass
        assert loader.calls == ["a", "b", "a"] and m.stats().idle_unloads == 1
        await m.close()

    run(scenario)


def test_background_sweeper_unloads_idle_models() -> None:
    loader = FakeLoader({"a": 10})

    async def scenario() -> None:
        m = _manager(loader, 100, idle_unload_s=0.1)
        m.start(interval_s=0.05)
        await m.load("a")
        for _ in range(40):
            await asyncio.sleep(0.05)
            if not m.resident() and loader.closed:  # closed in a worker thread
                break
        assert m.resident() == [] and loader.closed == ["a"]
        await m.close()

    run(scenario)


def test_unload_waits_for_users_and_per_device_budgets() -> None:
    def loader(name: str) -> Loaded[str]:
        return Loaded(name, {"cpu": 10, "cuda:0": 70})

    async def scenario() -> None:
        m: ResidencyManager[str] = ResidencyManager({"cpu": 1000, "cuda:0": 100}, loader,
                                                    estimate=lambda n: {"cpu": 10, "cuda:0": 70})
        await m.acquire("x")
        task = asyncio.create_task(m.unload("x"))
        await asyncio.sleep(0.05)
        assert not task.done() and m.resident() == ["x"]
        m.release("x")
        assert await task is True
        assert await m.unload("x") is False
        await m.load("y")
        await m.load("z")  # cuda:0 holds one at a time
        assert m.resident() == ["z"] and m.stats().evictions == 1
        assert m.accounted_bytes() == {"cpu": 10, "cuda:0": 70}
        await m.close()

    run(scenario)


def test_unknown_size_uses_measured_size_after_first_load() -> None:
    loader = FakeLoader({"a": 60, "b": 60})

    async def scenario() -> None:
        m: ResidencyManager[str] = ResidencyManager(100, loader)  # no estimate
        await m.load("a")
        await m.load("b")  # estimated 0; measured 60 -> evicts 'a' after loading
        assert m.resident() == ["b"] and sum(m.accounted_bytes().values()) <= 100
        await m.load("a")  # now known: room made before loading
        assert m.resident() == ["a"]
        await m.close()

    run(scenario)
