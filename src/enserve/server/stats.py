"""Per-model counters in Triton's statistics shape; the stats endpoints and `/metrics` read them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """One model's (ensemble's or member's) cumulative statistics."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    pending: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_success(
        self, batch: int, total_s: float, queue_s: float, input_s: float, infer_s: float, output_s: float
    ) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += batch
        self.execution_count += 1
        self.success.add(total_s)
        self.queue.add(queue_s)
        self.compute_input.add(input_s)
        self.compute_infer.add(infer_s)
        self.compute_output.add(output_s)
        per_batch = self.batches.setdefault(batch, BatchStats())
        per_batch.compute_input.add(input_s)
        per_batch.compute_infer.add(infer_s)
        per_batch.compute_output.add(output_s)

    def record_failure(self, total_s: float) -> None:
        self.fail.add(total_s)

    def to_dict(self) -> dict[str, Any]:
        """The `model_stats[i]` object of Triton's statistics extension (also valid
        protobuf JSON for `inference.ModelStatistics`)."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_dict(),
                    "compute_infer": b.compute_infer.to_dict(),
                    "compute_output": b.compute_output.to_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }


class StatsBook:
    """All models' statistics, kept across unload/load."""

    def __init__(self) -> None:
        self.models: dict[str, ModelStats] = {}

    def of(self, name: str, version: str) -> ModelStats:
        stats = self.models.get(name)
        if stats is None or stats.version != version:
            stats = self.models[name] = ModelStats(name, version)
        return stats
