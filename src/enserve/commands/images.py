"""Reading a request batch from a file: a .npy batch or a .png/.jpg image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.errors import InferenceError
from enserve.spec import TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def load_image(path: Path, tensor: TensorSpec) -> np.ndarray:
    """An image as a batch of one shaped like `tensor` ([-1, C, H, W]).

    It is converted to grayscale (C=1) or RGB (C=3), resized to H x W, and scaled to
    [0, 1] for float inputs (kept 0..255 for integer inputs)."""
    from PIL import Image, UnidentifiedImageError

    if len(tensor.shape) != 4 or tensor.shape[1] not in (1, 3):
        raise InferenceError(
            f"input '{tensor.name}' has shape {tensor.shape}; images need [-1, 1 or 3, H, W]"
        )
    _, channels, height, width = tensor.shape
    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if channels == 1 else "RGB")
        if height > 0 and width > 0:
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise InferenceError(f"{path}: not a readable image: {exc}") from None
    chw = pixels[None, :, :] if channels == 1 else pixels.transpose(2, 0, 1)
    dtype = numpy_dtype(tensor.datatype)
    if dtype.kind == "f":
        return (chw[None].astype(np.float32) / 255.0).astype(dtype)
    return chw[None].astype(dtype)


def load_batch(path: str | Path, tensor: TensorSpec) -> np.ndarray:
    """The batch stored in `path` (.npy array, or one image)."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InferenceError(f"{path}: not a plain .npy array (pickles are refused): {exc}") from None
        if arr.ndim == len(tensor.shape) - 1:
            arr = arr[None]
        return arr
    if suffix in IMAGE_SUFFIXES:
        return load_image(path, tensor)
    raise InferenceError(f"{path}: unsupported input file type '{suffix}' (use .npy, .png or .jpg)")
