"""Per-member input preparation so members with different needs share one request."""

from __future__ import annotations

import sys

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
    """Bilinear resize of the last two axes (half-pixel centres, no antialiasing: what
    `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` computes).

    Uses torch when this process has already imported it, and numpy otherwise, so a
    process that runs only ONNX Runtime members never imports torch for preprocessing.
    """
    if "torch" in sys.modules:
        return _resize_torch(batch, size)
    return resize_bilinear(batch, size)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(n_in / n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    low = src.astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    frac = (src - low).astype(np.float32)
    return low, high, frac


def resize_bilinear(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Numpy bilinear resize of the last two axes (see `_resize`)."""
    out_h, out_w = size
    in_h, in_w = batch.shape[-2:]
    top, bottom, fy = _axis_weights(in_h, out_h)
    left, right, fx = _axis_weights(in_w, out_w)
    x = np.ascontiguousarray(batch)
    rows = x[..., top, :] * (1 - fy)[:, None] + x[..., bottom, :] * fy[:, None]
    out = rows[..., left] * (1 - fx) + rows[..., right] * fx
    return np.ascontiguousarray(out, dtype=batch.dtype)


def _resize_torch(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
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
