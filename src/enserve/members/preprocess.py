"""Per-member input preparation so members with different needs share one request."""

from __future__ import annotations

import numpy as np

from enserve.spec import Preprocess


class Preprocessor:
    """Applies a `Preprocess` block: dtype cast, scale, resize (bilinear), normalize."""

    def __init__(self, config: Preprocess | None) -> None:
        self.config = config

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg is None:
            if batch.dtype == np.float32:
                return batch
            return batch.astype(np.float32)
        out = batch.astype(cfg.dtype, copy=False)
        if cfg.scale is not None:
            out = out * np.asarray(cfg.scale, dtype=out.dtype)
        if cfg.resize is not None and tuple(out.shape[-2:]) != tuple(cfg.resize):
            out = _resize(out, cfg.resize)
        if cfg.mean is not None and cfg.std is not None:
            channels = out.shape[1] if out.ndim >= 3 else 1
            if len(cfg.mean) not in (1, channels):
                raise ValueError(
                    f"preprocess.mean has {len(cfg.mean)} values for {channels} channels"
                )
            shape = (1, -1) + (1,) * (out.ndim - 2)
            mean = np.asarray(cfg.mean, dtype=out.dtype).reshape(shape)
            std = np.asarray(cfg.std, dtype=out.dtype).reshape(shape)
            out = (out - mean) / std
        return np.ascontiguousarray(out)


def _resize(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(batch))
        squeeze = t.ndim == 3
        if squeeze:
            t = t.unsqueeze(1)
        r = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        if squeeze:
            r = r.squeeze(1)
        return r.numpy()
