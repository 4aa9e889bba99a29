"""Members run by PyTorch: eager modules, TorchScript and `torch.export` programs."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from enserve.members.base import Member
from enserve.members.preprocess import Preprocessor


def first_tensor(output: Any) -> torch.Tensor:
    """The logits of a model output (a tensor, or the first tensor of a tuple/list/dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"model returned {type(output).__name__}, expected a tensor of logits")


class TorchMember(Member):
    """Any callable `nn.Module`-like object (eager, scripted or exported) on the CPU."""

    framework = "torch"

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        preprocessor: Preprocessor | None = None,
        variant: str = "eager",
        channels_last: bool = False,
    ) -> None:
        super().__init__(name, preprocessor)
        self.module = module
        self.variant = variant
        self.channels_last = channels_last

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), warnings.catch_warnings():
            # Shared-memory request batches are read-only views; the model never writes them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(batch))
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = first_tensor(self.module(x))
            return out.float().numpy()

    def param_bytes(self) -> int:
        seen: set[int] = set()
        total = 0
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        for t in tensors:
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
        return total

    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
