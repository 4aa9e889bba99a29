"""The Open Inference Protocol, written once: the HTTP and gRPC adapters only translate.

Every method takes and returns plain Python objects (dicts in the protocol's JSON shape,
`InferRequest`/`InferResponse`) and raises `ServerError` with a status for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import enserve
from enserve.datatypes import numpy_dtype, v2_datatype
from enserve.policies.parameters import RequestPolicy
from enserve.result import ValidInputs, default_outputs, validate_inputs
from enserve.server.backend import Outcome, Timing
from enserve.server.decoding import Decoder
from enserve.server.errors import Code, ServerError, as_server_error
from enserve.server.instance_metrics import BackendStats, instance_lines
from enserve.server.limits import Admission, BodyBudget, Limits
from enserve.server.metrics import Metrics
from enserve.server.policy import PolicyFiles, PolicyOutcome, run_policy
from enserve.server.protocol import InferRequest, InferResponse, tensor_from_bytes, timeout_deadline
from enserve.server.repository import LoadedEnsemble, ModelRepository
from enserve.server.stats import StatsBook
from enserve.spec import EnsembleSpec, MemberSpec

EXTENSIONS = [
    "binary_tensor_data",
    "statistics",
    "model_repository",
    "model_configuration",
    "parameters",
]
MEMBER_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
DEADLINE_GRACE_S = 1.0  # safety net: a backend's deadline answer later than this is a timeout


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        limits: Limits | None = None,
        repository_token: str | None = None,
        backend_name: str = "reference",
    ) -> None:
        self.repository = repository
        self.limits = limits or Limits()
        self.admission = Admission(self.limits.max_pending)
        self.body_budget = BodyBudget(self.limits.body_budget_bytes)
        self.decoder = Decoder()
        self.stats = StatsBook()
        residency = getattr(repository, "residency", None)  # a BudgetedRepository's
        self.metrics = Metrics(self.stats, residency.stats if residency is not None else None,
                               health=self.member_health)
        self.backend_stats = BackendStats()
        self.metrics.sources.append(
            lambda: instance_lines(((e.name, e.backend) for e in repository.loaded()), self.backend_stats))
        self.repository_token = repository_token
        self.backend_name = backend_name
        self.policies = PolicyFiles()
        self.started = False

    # --- health and metadata -----------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Serving, not draining, and every loaded ensemble has a running worker for each
        of its members (strict readiness: a member that is down makes the server not ready)."""
        return (self.started and not self.admission.draining
                and all(not unhealthy(e.backend) for e in self.repository.loaded()))

    def member_health(self) -> list[tuple[str, str, bool, int]]:
        """(ensemble, member or fused unit, has a running worker, restarts) of every loaded
        ensemble whose backend reports it (the engine; the reference backend has no workers)."""
        rows = []
        for loaded in self.repository.loaded():
            report = getattr(loaded.backend, "member_health", None)
            if report is None:
                continue
            with contextlib.suppress(Exception):
                for member, (up, restarts) in report().items():
                    rows.append((loaded.name, member, up, restarts))
        return rows

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "enserve", "version": enserve.__version__, "extensions": EXTENSIONS}

    def _lookup(self, name: str, version: str) -> tuple[LoadedEnsemble, MemberSpec | None]:
        loaded, member = self.repository.resolve(name)
        if version and version != loaded.spec.version:
            raise ServerError(
                f"model '{name}' has no version '{version}' (versions: [{loaded.spec.version}])"
            )
        return loaded, member

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            loaded, _ = self._lookup(name, version)
        except ServerError:
            return False
        return not self.admission.draining and not unhealthy(loaded.backend)

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        loaded, member = self._lookup(name, version)
        spec = loaded.spec
        classes = loaded.backend.output_classes() or -1
        if member is not None:
            tensor = spec.input_for(member)
            return {
                "name": name, "versions": [spec.version],
                "platform": MEMBER_PLATFORMS.get(member.kind, "pytorch"),
                "inputs": [{"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]}],
            }
        return {
            "name": name, "versions": [spec.version], "platform": "ensemble",
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in spec.inputs],
            "outputs": output_metadata(spec, classes),
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """A Triton-shaped model configuration (valid protobuf JSON for `inference.ModelConfig`)."""
        loaded, member = self._lookup(name, version)
        meta = self.model_metadata(name, version)
        config: dict[str, Any] = {
            "name": name,
            "platform": meta["platform"],
            "max_batch_size": self.limits.max_batch,
            "input": [_config_tensor(t) for t in meta["inputs"]],
            "output": [_config_tensor(t) for t in meta["outputs"]],
        }
        spec = loaded.spec
        if member is None:
            config["ensemble_scheduling"] = {"step": [
                {
                    "model_name": f"{name}.{m.name}",
                    "model_version": -1,
                    "input_map": {spec.input_for(m).name: spec.input_for(m).name},
                    "output_map": {"logits": f"logits_{m.name}"},
                }
                for m in spec.members
            ]}
            config["parameters"] = {
                "combiner": {"string_value": spec.combiner},
                "weights": {"string_value": ",".join(f"{w:g}" for w in spec.member_weights())},
                "top_k": {"string_value": str(spec.top_k)},
                "backend": {"string_value": self.backend_name},
            }
        else:
            config["parameters"] = {"source": {"string_value": member.source}}
        return config

    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if not name:
            return {"model_stats": [s.to_dict() for s in self.stats.models.values()]}
        loaded, _ = self._lookup(name, version)
        return {"model_stats": [self.stats.of(name, loaded.spec.version).to_dict()]}

    # --- inference ---------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        try:
            return await self._infer_request(request)
        except Exception as exc:
            self._count_failure(request.model_name, as_server_error(exc))
            raise

    @contextlib.contextmanager
    def refusals_counted(self, model: str) -> Iterator[None]:
        """Count what an adapter refuses before the request reaches `infer` (overload, bad
        headers, a body over its limit, undecodable tensors) with the data plane's failures."""
        try:
            yield
        except Exception as exc:
            self._count_failure(model, as_server_error(exc))
            raise

    def _count_failure(self, model: str, error: ServerError) -> None:
        """`enserve_request_failures{model, reason}`; names never served count as model ""."""
        label = model if model in self.stats.models else ""
        self.metrics.request_failures.labels(label, error.code.name.lower()).inc()

    async def _infer_request(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        async with self.repository.use(request.model_name) as (loaded, member):
            if member is not None:
                raise ServerError(
                    f"'{request.model_name}' is a member of '{loaded.name}'; it is visible for "
                    f"metadata and statistics, send inference requests to '{loaded.name}'"
                )
            if request.model_version and request.model_version != loaded.spec.version:
                raise ServerError(f"model '{loaded.name}' has no version '{request.model_version}'")
            stats = self.stats.of(loaded.name, loaded.spec.version)
            with self.admission.admit():
                stats.pending += 1
                try:
                    return await self._infer(loaded, request, started)
                except Exception as exc:
                    stats.record_failure(time.perf_counter() - started)
                    raise as_server_error(exc) from None
                finally:
                    stats.pending -= 1

    async def _infer(self, loaded: LoadedEnsemble, request: InferRequest, started: float) -> InferResponse:
        spec = loaded.spec
        arrived = time.monotonic()
        inputs = self._request_inputs(spec, request)
        now = time.monotonic()
        deadline = _earliest(request.deadline, timeout_deadline(request.parameters, now))
        if deadline is None and self.limits.request_timeout_s is not None:
            deadline = now + self.limits.request_timeout_s  # the server's default deadline
        policy = self.policies.request(spec, request.parameters)
        input_s = time.perf_counter() - started
        names = [o.name for o in request.outputs] if request.outputs else default_outputs(spec)
        parameters: dict[str, Any] = {}
        if policy.is_default_full:
            outcome = await self._run(loaded, inputs, names, deadline)
        else:
            ran = await self._run_policy(loaded, inputs, policy, arrived, deadline)
            outcome, parameters = ran.outcome, ran.parameters
        output_started = time.perf_counter()
        outputs = outcome.result.outputs(spec, names)
        batch = next(iter(inputs.values())).shape[0]
        total_s = time.perf_counter() - started
        self._record(loaded, batch, outcome.timing, input_s, time.perf_counter() - output_started, total_s)
        return InferResponse(loaded.name, spec.version, request.id, outputs, parameters)

    async def _run_policy(self, loaded: LoadedEnsemble, inputs: dict[str, np.ndarray],
                          policy: RequestPolicy, arrived: float,
                          deadline: float | None) -> PolicyOutcome:
        """A request with policy parameters (see `enserve.server.policy`); a deadline answer
        that does not come within `DEADLINE_GRACE_S` of `deadline_ms` is a timeout."""
        if policy.deadline_s is not None:
            due = arrived + policy.deadline_s + DEADLINE_GRACE_S
            deadline = due if deadline is None else min(deadline, due)
        work = run_policy(loaded.backend, loaded.spec, inputs, policy, arrived)
        try:
            if deadline is None:
                ran = await work
            else:
                ran = await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.metrics.observe_deadline_exceeded(loaded.name)
            raise ServerError("request timed out: no answer by its deadline", Code.TIMEOUT) from None
        except Exception as exc:
            if as_server_error(exc).code is Code.TIMEOUT:
                self.metrics.observe_deadline_exceeded(loaded.name)
            raise
        self.metrics.observe_policy(loaded.name, ran)
        return ran

    def _request_inputs(self, spec: EnsembleSpec, request: InferRequest) -> ValidInputs:
        inputs = request.inputs
        if request.raw_body is not None:
            if len(spec.inputs) != 1:
                raise ServerError("a raw binary request needs a model with exactly one input")
            tensor = spec.inputs[0]
            if any(d < 0 for d in tensor.shape[1:]):
                raise ServerError(f"a raw binary request needs fixed input dims, '{tensor.name}' "
                                  f"has shape {tensor.shape}")
            shape = (1, *tensor.shape[1:])
            inputs = {tensor.name: tensor_from_bytes(tensor.name, request.raw_body,
                                                     numpy_dtype(tensor.datatype), shape)}
        declared = {t.name: t.datatype for t in spec.inputs}
        for name, arr in inputs.items():
            want = declared.get(name)
            if want is not None and v2_datatype(arr.dtype) != want:
                raise ServerError(
                    f"input '{name}': datatype {v2_datatype(arr.dtype)} given, {want} expected"
                )
        return validate_inputs(spec, inputs, max_batch=self.limits.max_batch)

    async def _run(self, loaded: LoadedEnsemble, inputs: ValidInputs, outputs: list[str],
                   deadline: float | None) -> Outcome:
        if deadline is None:
            return await loaded.backend.infer(inputs, outputs, None)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerError("request timed out before it was scheduled", Code.TIMEOUT)
        try:
            async with asyncio.timeout(remaining):  # no extra task per request, unlike wait_for
                return await loaded.backend.infer(inputs, outputs, deadline)
        except TimeoutError:
            raise ServerError(
                f"request timed out after {remaining * 1000:.1f} ms (its deadline: parameters.timeout, "
                "the gRPC deadline or the server's default)", Code.TIMEOUT
            ) from None

    def _record(self, loaded: LoadedEnsemble, batch: int, timing: Timing, input_s: float,
                output_s: float, total_s: float) -> None:
        version = loaded.spec.version
        self.stats.of(loaded.name, version).record_success(
            batch, total_s, timing.queue_s, input_s, timing.compute_s, output_s
        )
        for member, seconds in timing.member_s.items():
            self.stats.of(f"{loaded.name}.{member}", version).record_success(
                batch, seconds, 0.0, 0.0, seconds, 0.0
            )
        self.metrics.observe(loaded.name, timing, total_s)

    # --- repository --------------------------------------------------------------------
    def authorize(self, authorization: str | None) -> None:
        """Check `Authorization: Bearer <token>` when a repository token is configured."""
        if self.repository_token is None:
            return
        expected = f"Bearer {self.repository_token}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise ServerError("the repository endpoints need 'Authorization: Bearer <token>'",
                              Code.UNAUTHORIZED)

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    async def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        if parameters and any(k == "config" or k.startswith("file:") for k in parameters):
            raise ServerError("load: 'config' and 'file:' overrides are not supported; "
                              "edit the ensemble's folder and load again")
        await self.repository.load(name)

    async def unload(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        await self.repository.unload(name)

    # --- lifecycle ---------------------------------------------------------------------
    async def drain(self) -> None:
        """Refuse new requests, then wait (bounded) for the admitted ones to finish."""
        self.admission.draining = True
        until = time.monotonic() + self.limits.drain_timeout_s
        while self.admission.pending and time.monotonic() < until:
            await asyncio.sleep(0.01)
        self.decoder.close()


def output_metadata(spec: EnsembleSpec, classes: int) -> list[dict[str, Any]]:
    k = min(spec.top_k, classes) if classes > 0 else -1
    outputs: list[dict[str, Any]] = [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
        {"name": "agreement", "datatype": v2_datatype(np.dtype(np.int32)), "shape": [-1]},
        {"name": "top_k_indices", "datatype": "INT64", "shape": [-1, k]},
        {"name": "top_k_scores", "datatype": "FP32", "shape": [-1, k]},
    ]
    outputs += [{"name": f"logits_{m.name}", "datatype": "FP32", "shape": [-1, classes]}
                for m in spec.members]
    return outputs


def _config_tensor(tensor: dict[str, Any]) -> dict[str, Any]:
    return {"name": tensor["name"], "data_type": f"TYPE_{tensor['datatype']}",
            "dims": tensor["shape"][1:]}


def unhealthy(backend: object) -> str | None:
    """Why `backend` cannot answer now (a member with no running worker), or None."""
    check = getattr(backend, "unhealthy", None)
    if check is None:
        return None
    try:
        reason: str | None = check()
    except Exception as exc:  # a broken health check is an unhealthy backend
        return f"health check failed: {exc}"
    return reason


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
