"""A model repository: one folder per ensemble, holding its `ensemble.yaml` and files.

The repository indexes the folders, loads and unloads ensembles (each load builds a
server backend) and tracks the requests using each one, so an unload waits for them.
Model names are folder names; a name that is not a plain folder name inside the
repository (`..`, `/`, a symlink pointing out) is refused. Every load and unload goes
through `ModelRepository._load_backend` / `_close_backend`: the seam where a memory
budget, single-flight loads and eviction plug in.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enserve.errors import EnserveError, OverloadedError
from enserve.server.errors import Code, ServerError, public_message
from enserve.spec import EnsembleSpec, MemberSpec, load_spec

if TYPE_CHECKING:
    from enserve.server.backend import Backend

SPEC_FILE = "ensemble.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_NAME_CHARS = 200
"""Longest model name (a folder name; file systems stop at 255 bytes)."""

BackendFactory = Callable[[EnsembleSpec], "Backend"]


@dataclass
class LoadedEnsemble:
    name: str
    spec: EnsembleSpec
    backend: Backend
    in_flight: int = 0
    loaded_at: float = field(default_factory=time.time)


@dataclass
class ModelEntry:
    """One ensemble's state: READY, LOADING, UNLOADING or UNAVAILABLE (with a reason)."""

    name: str
    state: str = "UNAVAILABLE"
    reason: str = ""
    loaded: LoadedEnsemble | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelRepository:
    def __init__(
        self, root: str | Path, backend_factory: BackendFactory, unload_timeout_s: float = 30.0
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise EnserveError(f"model repository '{root}' is not a folder")
        self.backend_factory = backend_factory
        self.unload_timeout_s = unload_timeout_s
        self.entries: dict[str, ModelEntry] = {}

    # --- where models live -------------------------------------------------------------
    def folder_of(self, name: str) -> Path:
        """The model's folder; refuses names that would leave the repository."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in {".", ".."}:
            raise ServerError(f"'{name[:80]}' is not a valid model name (letters, digits, '_', '.', '-')")
        if len(name) > MAX_NAME_CHARS:
            raise ServerError(f"model name of {len(name)} characters exceeds the limit {MAX_NAME_CHARS}")
        try:
            folder = (self.root / name).resolve()
            if not folder.is_relative_to(self.root) or folder == self.root:
                raise ServerError(f"model '{name}' resolves outside the repository", Code.BAD_REQUEST)
            found = (folder / SPEC_FILE).is_file()
        except OSError as exc:
            raise ServerError(f"model '{name}' cannot be looked up: {exc.strerror}") from None
        if not found:
            raise ServerError(f"model '{name}' is not in the repository", Code.NOT_FOUND)
        return folder

    def names(self) -> list[str]:
        """Folders holding an ensemble spec, plus models still loaded from removed folders."""
        found = {
            p.name for p in self.root.iterdir()
            if NAME_PATTERN.match(p.name) and (p / SPEC_FILE).is_file()
            and p.resolve().is_relative_to(self.root)
        }
        return sorted(found | {n for n, e in self.entries.items() if e.loaded is not None})

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = []
        for name in self.names():
            entry = self.entries.get(name)
            state = entry.state if entry else "UNAVAILABLE"
            if ready_only and state != "READY":
                continue
            version = entry.loaded.spec.version if entry and entry.loaded else ""
            rows.append({"name": name, "version": version, "state": state,
                         "reason": public_message(entry.reason) if entry else ""})
        return rows

    # --- load / unload -----------------------------------------------------------------
    def _entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries[name] = ModelEntry(name)
        return entry

    async def load(self, name: str) -> LoadedEnsemble:
        """Load (or reload) an ensemble; one load per model at a time."""
        folder = self.folder_of(name)
        entry = self._entry(name)
        async with entry.lock:
            previous = entry.loaded
            entry.state, entry.reason = "LOADING", ""
            try:
                spec, backend = await self._load_backend(name, folder)
            except Exception as exc:
                entry.state = "READY" if previous else "UNAVAILABLE"
                entry.reason = f"load failed: {exc}"
                raise ServerError(f"failed to load '{name}': {exc}") from None
            entry.loaded = LoadedEnsemble(name, spec, backend)
            entry.state, entry.reason = "READY", ""
            if previous is not None:
                await self._retire(previous)
            return entry.loaded

    async def unload(self, name: str) -> None:
        if name not in self.entries:
            self.folder_of(name)  # validates the name; unknown models are a 404
        entry = self._entry(name)
        async with entry.lock:
            if entry.loaded is None:
                entry.state, entry.reason = "UNAVAILABLE", "unloaded"
                return
            loaded, entry.loaded = entry.loaded, None
            entry.state = "UNLOADING"
            await self._retire(loaded)
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"

    async def load_all(self, names: list[str] | None = None) -> dict[str, str]:
        """Load the given models (all folders by default); returns failures by name."""
        failures: dict[str, str] = {}
        for name in names if names is not None else self.names():
            try:
                await self.load(name)
            except ServerError as exc:
                failures[name] = exc.message
        return failures

    async def close(self) -> None:
        for name in list(self.entries):
            await self.unload(name)

    async def _retire(self, loaded: LoadedEnsemble) -> None:
        """Wait (bounded) for requests still using `loaded`, then release it."""
        waited_until = time.monotonic() + self.unload_timeout_s
        while loaded.in_flight and time.monotonic() < waited_until:
            await asyncio.sleep(0.01)
        await self._close_backend(loaded)

    # The seam: every backend is built and released here.
    async def _load_backend(self, name: str, folder: Path) -> tuple[EnsembleSpec, Backend]:
        def build() -> tuple[EnsembleSpec, Backend]:
            spec = load_spec(folder / SPEC_FILE)
            return spec, self.backend_factory(spec)

        return await asyncio.to_thread(build)

    async def _close_backend(self, loaded: LoadedEnsemble) -> None:
        await loaded.backend.close()

    # --- lookups for requests ----------------------------------------------------------
    def resolve(self, name: str) -> tuple[LoadedEnsemble, MemberSpec | None]:
        """The loaded ensemble `name`, or the ensemble and member for `ensemble.member`."""
        entry = self.entries.get(name)
        if entry is not None and entry.loaded is not None:
            return entry.loaded, None
        for ensemble, sep, member in _splits(name):
            parent = self.entries.get(ensemble)
            if sep and parent is not None and parent.loaded is not None:
                spec = parent.loaded.spec
                if any(m.name == member for m in spec.members):
                    return parent.loaded, spec.member(member)
        if entry is not None or name in self.names():
            raise ServerError(f"model '{name}' is not ready ({self._state(name)})", Code.UNAVAILABLE)
        raise ServerError(f"unknown model '{name}'", Code.NOT_FOUND)

    def _state(self, name: str) -> str:
        entry = self.entries.get(name)
        if entry is None:
            return "not loaded"
        return f"{entry.state}{': ' + entry.reason if entry.reason else ''}"

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[tuple[LoadedEnsemble, MemberSpec | None]]:
        """Hold a model for one request (an unload waits until it is released)."""
        loaded, member = self.resolve(name)
        loaded.in_flight += 1
        try:
            yield loaded, member
        finally:
            loaded.in_flight -= 1

    def loaded(self) -> list[LoadedEnsemble]:
        return [e.loaded for e in self.entries.values() if e.loaded is not None]

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "models": self.index()}


def _splits(name: str) -> list[tuple[str, str, str]]:
    """Every way to read `name` as `ensemble.member` (a name may itself contain dots)."""
    return [(name[:i], ".", name[i + 1 :]) for i, ch in enumerate(name) if ch == "."]


class BudgetedRepository(ModelRepository):
    """A repository under a memory budget (`enserve.server.residency.ResidencyManager`).

    Ensembles load on their first request (concurrent first requests share one load),
    the least valuable idle ones are evicted when a load needs room, and ensembles idle
    for `idle_unload_s` unload by themselves. An explicit unload disables the model until
    an explicit load; an evicted one comes back on the next request.
    """

    def __init__(
        self, root: str | Path, backend_factory: BackendFactory, budget_bytes: int,
        idle_unload_s: float | None = None, unload_timeout_s: float = 30.0,
    ) -> None:
        from enserve.server.residency import ResidencyManager

        super().__init__(root, backend_factory, unload_timeout_s)
        self.residency: ResidencyManager[LoadedEnsemble] = ResidencyManager(
            budget_bytes, self._load_resident, idle_unload_s=idle_unload_s,
            wait_for_room_s=unload_timeout_s,
        )
        self.disabled: set[str] = set()
        self.failures: dict[str, str] = {}

    def _load_resident(self, name: str) -> Any:
        """Runs in a worker thread: build the backend and measure what it holds."""
        from enserve.server.residency import Loaded

        spec = load_spec(self.folder_of(name) / SPEC_FILE)
        backend = self.backend_factory(spec)
        loaded = LoadedEnsemble(name, spec, backend)
        return Loaded(loaded, {"cpu": backend.memory_bytes()}, close=backend.shutdown)

    async def _acquire(self, name: str) -> LoadedEnsemble:
        self.residency.start()
        try:
            loaded = await self.residency.acquire(name)
        except Exception as exc:
            self.failures[name] = str(exc)
            code = Code.UNAVAILABLE if isinstance(exc, OverloadedError) else Code.BAD_REQUEST
            raise ServerError(f"failed to load '{name}': {exc}", code) from None
        self.failures.pop(name, None)
        return loaded

    async def load(self, name: str) -> LoadedEnsemble:
        self.folder_of(name)
        self.disabled.discard(name)
        loaded = await self._acquire(name)
        self.residency.release(name)
        return loaded

    async def unload(self, name: str) -> None:
        if not self.residency.is_resident(name):
            self.folder_of(name)
        self.disabled.add(name)
        try:
            await self.residency.unload(name)
        except OverloadedError as exc:
            raise ServerError(f"unload '{name}': {exc}", Code.UNAVAILABLE) from None

    async def close(self) -> None:
        await self.residency.close()

    def _resident(self, name: str) -> LoadedEnsemble | None:
        entry = self.residency._entries.get(name)  # a resident's value, without taking a use
        if entry is None or entry.loaded is None:
            return None
        value: LoadedEnsemble = entry.loaded.value
        return value

    def loaded(self) -> list[LoadedEnsemble]:
        return [v for n in self.residency.resident() if (v := self._resident(n)) is not None]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = []
        for name in self.names():
            loaded = self._resident(name)
            if loaded is not None:
                row = {"name": name, "version": loaded.spec.version, "state": "READY", "reason": ""}
            elif name in self.disabled:
                row = {"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
            else:
                reason = public_message(self.failures.get(name, "not resident; loads on its next request"))
                row = {"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason}
            if not ready_only or row["state"] == "READY":
                rows.append(row)
        return rows

    def names(self) -> list[str]:
        return sorted(set(super().names()) | set(self.residency.resident()))

    def resolve(self, name: str) -> tuple[LoadedEnsemble, MemberSpec | None]:
        loaded = self._resident(name)
        if loaded is not None:
            return loaded, None
        for ensemble, _, member in _splits(name):
            parent = self._resident(ensemble)
            if parent is not None and any(m.name == member for m in parent.spec.members):
                return parent, parent.spec.member(member)
        if name in self.names():
            return_state = "unloaded" if name in self.disabled else "not resident"
            raise ServerError(f"model '{name}' is not ready ({return_state})", Code.UNAVAILABLE)
        raise ServerError(f"unknown model '{name}'", Code.NOT_FOUND)

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[tuple[LoadedEnsemble, MemberSpec | None]]:
        """Hold an ensemble for one request, loading it first if it is not resident."""
        if name in self.disabled or name not in self.names():
            # a member of a resident ensemble, an unloaded model, or a clear 404
            async with super().use(name) as held:
                yield held
            return
        loaded = await self._acquire(name)
        loaded.in_flight += 1
        try:
            yield loaded, None
        finally:
            loaded.in_flight -= 1
            self.residency.release(name)
