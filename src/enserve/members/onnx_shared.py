"""ONNX Runtime sessions whose weights are mapped from a file, so every session of the same
model on the machine shares one copy of them.

By default ORT reads a model's initializers into private memory, then optimizes the
graph (Conv+BN fusion, layout changes) into new private tensors: each session holds its
own copy. Here a model file is optimized once per machine and saved with its
initializers in an external data file (`<cache>/ort/<model>-<key>.onnx` + `.data`); later
sessions load that optimized model with no further graph optimization, and ORT maps the
external data file instead of copying it. The optimized graph may use kernels specific to
this CPU, so the key covers the model's bytes, the ORT version and the CPU.

Hashing the model's bytes costs a read of the whole file (0.06–0.2 s per member on a
2-core EPYC), so the digest is remembered per file identity (path, device, inode, size,
modification and change times) in `<cache>/ort/digests/`; a worker that starts again only
stats the file. The optimized copy's weights are read ahead (`POSIX_FADV_WILLNEED`) while
the session is created, so a cold page cache is read in one sequential pass instead of by
page faults during the first run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
from functools import cache
from pathlib import Path

from enserve.variants.fingerprint import _file_digest, default_cache_dir

MIN_EXTERNAL_BYTES = 1024  # smaller initializers stay inside the .onnx file


@cache
def _cpu_identity() -> str:
    model = flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    return f"{platform.machine()}|{model}|{flags}"


def _memo(model: Path, root: Path) -> Path:
    st = model.stat()
    identity = "|".join(str(v) for v in (model.resolve(), st.st_dev, st.st_ino, st.st_size,
                                         st.st_mtime_ns, st.st_ctime_ns))
    return root / "digests" / hashlib.sha256(identity.encode()).hexdigest()[:32]


def _remembered(memo: Path) -> str | None:
    with contextlib.suppress(OSError):
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    return None


def model_digest(model: Path, root: Path) -> str:
    """sha256 of the model's bytes, remembered under `root/digests` per file identity."""
    memo = _memo(model, root)
    known = _remembered(memo)
    if known is not None:
        return known
    digest = _file_digest(model)
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial = memo.with_name(f".{memo.name}.{os.getpid()}")
        partial.write_text(digest)
        os.replace(partial, memo)
    return digest


@cache
def _ort_version() -> str:
    """ONNX Runtime's version from its package metadata (no import: the engine computes
    the paths too); the module's own `__version__` where the metadata is missing. Read
    once per process (2-3 ms each), and once in the lean fork server for its workers."""
    from importlib import metadata

    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        import onnxruntime as ort

        return str(ort.__version__)


def warm_keys() -> None:
    """Compute what every optimized-copy key needs (ORT's version, the CPU) now, so
    processes forked from this one find them cached (the lean fork server calls it)."""
    _ort_version()
    _cpu_identity()


def optimized_path(model: Path, cache_dir: Path | None = None) -> Path:
    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "ort"
    return _keyed(model, root, model_digest(model, root))


def known_optimized_path(model: Path, cache_dir: Path | None = None) -> Path | None:
    """`optimized_path` where the model's digest is remembered already, else None (reads
    none of the model's bytes: the engine asks this before its workers start)."""
    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "ort"
    digest = _remembered(_memo(model, root))
    return None if digest is None else _keyed(model, root, digest)


def _keyed(model: Path, root: Path, digest: str) -> Path:
    key = hashlib.sha256("|".join(
        [digest, _ort_version(), _cpu_identity()]).encode()).hexdigest()[:24]
    return root / f"{model.stem}-{key}.onnx"


def read_ahead(path: Path) -> None:
    """Ask the kernel to start reading `path` into the page cache (returns at once), unless
    the file is locked: the engine is reading its workers' files in order
    (`runtime.prefetch`) and a read here would share the disk with the file before it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def shared_model(model: Path, make_options: object, cache_dir: Path | None = None) -> Path:
    """The optimized copy of `model` with external initializers, written on first use.

    `make_options()` returns fresh `SessionOptions` (threads etc.) to optimize with."""
    import onnxruntime as ort

    final = optimized_path(model, cache_dir)
    data_name = final.with_suffix(".data").name
    if final.is_file() and final.with_suffix(".data").is_file():
        read_ahead(final.with_suffix(".data"))
        return final
    work = final.parent / f".tmp-{os.getpid()}-{final.stem}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        opts = make_options()  # type: ignore[operator]
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(work / final.name)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", data_name)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(MIN_EXTERNAL_BYTES))
        ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        # link, not replace: sessions racing to write it all end up mapping the same files
        for name in (data_name, final.name):  # the data before the model that names it
            with contextlib.suppress(FileExistsError):
                os.link(work / name, final.parent / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
