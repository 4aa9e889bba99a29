"""Measure every member × variant × device × batch size × share; write a profile.

Each measurement setting runs in its own child process (forked from a server that has
imported torch once), so a thread count or core pinning never leaks from one setting to
the next: torch's intra-op pool cannot shrink reliably once started.

* **CPU share** = number of cores: the child pins itself to the first `share` usable
  cores (`os.sched_setaffinity`) and runs with `share` intra-op threads.
* **GPU share** = MPS active-thread percentage (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`),
  only where an MPS control daemon runs; otherwise the full device (share 100) is
  profiled and the profile's notes say so.
* **latency_s** = median wall time of `member(batch)` (preprocessing, inference and the
  copy back to a float32 array) over `repeats` runs after `warmup` runs.
* **memory_bytes** (CPU) = peak resident set size while the instance loads and runs
  batches up to this size, minus the resident size of the same process just before
  loading, minus the growth of file-backed pages (shared library code paged in on first
  use). So it is weights + working memory + allocator slack, not the interpreter and
  libraries (that baseline is each entry's `process_base_bytes`). Peak RSS is `VmHWM`
  in `/proc/self/status`, reset through `/proc/self/clear_refs`; batch sizes run in
  ascending order, so each peak covers the batch sizes up to it. (GPU) = peak bytes
  allocated by torch on the device.

Before measuring, every variant passes the admission check (`check_variant`): only
admitted variants get entries. Results are cached per entry under `cache_dir/profile/`,
keyed by the member's fingerprint (spec entry, file bytes, library versions), the
device, the variant, the batch size, the share and the repeat counts.
"""

from enserve.profiler.run import RunStats, profile_spec, profile_spec_dict
from enserve.profiler.settings import DEFAULT_BATCH_SIZES, default_cpu_shares, mps_running

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "RunStats",
    "default_cpu_shares",
    "mps_running",
    "profile_spec",
    "profile_spec_dict",
]
