"""An fx group whose members run side by side: one graph per member, `lanes` threads.

On a CPU at batch 1, one member's convolutions scale poorly over intra-op threads, so a
single fused graph on 2 threads runs its members one after another at well under 2x.
Here each member is its own folded fx graph and `lanes` threads (1 intra-op thread each)
take members from a shared queue, longest first (by the member's last measured time,
parameter bytes before the first call); torch releases the GIL inside its kernels, so
the lanes compute at once. Logits are stacked in the group's member order and combined,
when asked, as the single graph would.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn


def _one_intra_op_thread() -> None:
    torch.set_num_threads(1)  # this thread's kernels; the lanes are the parallelism


class LaneRunner:
    """Runs per-member graphs (each returning `[1, B, C]`) on `lanes` threads; returns
    stacked logits `[M, B, C]` and the combiner's probabilities (or None)."""

    def __init__(self, graphs: Sequence[nn.Module], sizes: Sequence[int],
                 combiner: nn.Module | None, lanes: int) -> None:
        self.graphs = list(graphs)
        self.combiner = combiner
        self._cost = [float(s) for s in sizes]  # replaced by seconds after a first call
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one call at a time (the queue and costs are shared)
        self.lanes = 1
        self.set_lanes(lanes)

    def set_lanes(self, lanes: int) -> None:
        lanes = max(1, min(lanes, len(self.graphs)))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = None if lanes == 1 else ThreadPoolExecutor(
            lanes, thread_name_prefix="enserve-lane", initializer=_one_intra_op_thread)
        self.lanes = lanes

    def _run(self, todo: queue.SimpleQueue[int], inputs: list[torch.Tensor],
             outs: list[torch.Tensor | None], seconds: list[float]) -> None:
        with torch.inference_mode():  # grad mode is per thread
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                outs[i] = self.graphs[i](*inputs).float()
                seconds[i] = time.perf_counter() - started

    def __call__(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        inputs = [torch.from_numpy(a) for a in arrays]
        outs: list[torch.Tensor | None] = [None] * len(self.graphs)
        seconds = [0.0] * len(self.graphs)
        with self._lock:
            todo: queue.SimpleQueue[int] = queue.SimpleQueue()
            for i in sorted(range(len(self.graphs)), key=lambda i: -self._cost[i]):
                todo.put(i)
            if self._pool is None:
                self._run(todo, inputs, outs, seconds)
            else:
                lanes = [self._pool.submit(self._run, todo, inputs, outs, seconds)
                         for _ in range(self.lanes)]
                for lane in lanes:
                    lane.result()  # re-raises a lane's error
            self._cost = seconds
        with torch.inference_mode():
            stacked = torch.cat([o for o in outs if o is not None])
            probs = None if self.combiner is None else self.combiner(stacked).numpy()
        return stacked.numpy(), probs
