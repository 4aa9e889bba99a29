"""One short run of every GPU-side measurement (run by scripts/gpu_check.sh).

    python benchmarks/gpu_check.py [--spec examples/imagenet6] [--batch 32] [--out DIR]

Without CUDA it prints "no GPU here: ..." and exits 0. With a GPU (each part prints a
table and lands in DIR/gpu_check.json; part 3 runs first, while this process holds no CUDA
context):

1. precision: the ensemble (every member one after another, one batch) in fp32, fp16 and
   bf16 on the GPU: median time per batch, speed-up over fp32, and outputs against the
   in-process reference executor on the CPU (fp32: max |prob diff|; fp16/bf16: max |prob
   diff| and top-1 agreement).
2. streams: one host-to-device copy per batch (pinned memory), then every member on its
   own CUDA stream, against the members one after another on the default stream; outputs
   must match the sequential run exactly (same kernels, same inputs).
3. MPS shares (ESEN's setting): with an MPS control daemon started by this script where
   the driver allows (`nvidia-cuda-mps-control -d`, private pipe and log folders), each
   member's latency at MPS shares 25/50/75/100 % (one process per share:
   CUDA_MPS_ACTIVE_THREAD_PERCENTAGE is read when CUDA starts), a plan from the share
   search (`enserve plan --algorithm shares`, and greedy with hard shares, latency
   objective), then the ensemble completion time measured with one process per member:
   planned shares against the default (every member on the device, no share limit).
   The daemon is stopped at the end. Without MPS this part says why and is skipped.

`--device cpu` runs parts 1 and 3's process harness on the CPU (no fp16, no streams, no
MPS): a dry run of the code paths, for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MPS_SHARES = (10, 20, 30, 50, 100)  # six members must fit in 100 %


def cuda_state() -> tuple[bool, str]:
    """(available, GPU name or why not), asked in a child process so that this one holds
    no CUDA context while the MPS daemon starts."""
    probe = ("import torch; ok = torch.cuda.is_available(); "
             "print(torch.cuda.get_device_name(0) if ok else "
             "f'torch {torch.__version__} sees no CUDA device')")
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot ask torch about CUDA ({exc})"
    if result.returncode != 0:
        return False, f"torch cannot start ({result.stderr.strip().splitlines()[-1:]})"
    answer = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "no answer"
    return not answer.startswith("torch "), answer


# -- helpers -------------------------------------------------------------------------------


def load_modules(spec_path: Path, device: str, dtype_name: str) -> tuple[Any, dict[str, Any]]:
    import torch

    from enserve.members import build_torch_module
    from enserve.members.preprocess import Preprocessor
    from enserve.spec import load_spec

    spec = load_spec(spec_path)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    modules = {}
    for m in spec.members:
        module = build_torch_module(spec, m).eval().to(device=device, dtype=dtype)
        modules[m.name] = (module, Preprocessor(m.preprocess), dtype)
    return spec, modules


def random_batch(spec: Any, batch: int, seed: int = 0) -> np.ndarray:
    shape = [batch if d == -1 else d for d in spec.inputs[0].shape]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def timed(run: Callable[[], Any], sync: Callable[[], None], repeats: int,
          warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probabilities(spec: Any, logits: dict[str, np.ndarray]) -> np.ndarray:
    from enserve.combine import combine

    stacked = np.stack([logits[m.name] for m in spec.members]).astype(np.float32)
    return np.asarray(combine(stacked, spec.combiner, spec.member_weights()))


def forward_all(modules: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Every member on its own (preprocessed, on-device) input, one after another."""
    import torch

    with torch.inference_mode():
        out = {}
        for name, (module, _, dtype) in modules.items():
            y = module(inputs[name].to(dtype))
            out[name] = y[0] if isinstance(y, (tuple, list)) else y
        return out


def host_inputs(modules: dict[str, Any], batch: np.ndarray, pin: bool = False) -> dict[str, Any]:
    """Each member's preprocessed batch on the host (one tensor per distinct preprocessing,
    in pinned memory if `pin`)."""
    import torch

    by_config: dict[str, Any] = {}
    out = {}
    for name, (_, pre, _) in modules.items():
        key = repr(pre.config)
        if key not in by_config:
            host = torch.from_numpy(np.ascontiguousarray(pre(batch)))
            by_config[key] = host.pin_memory() if pin else host
        out[name] = by_config[key]
    return out


def to_device(hosts: dict[str, Any], device: str) -> dict[str, Any]:
    """One host-to-device copy per distinct host tensor (one per batch when members share
    their preprocessing)."""
    copies: dict[int, Any] = {}
    for host in hosts.values():
        if id(host) not in copies:
            copies[id(host)] = host.to(device, non_blocking=host.is_pinned())
    return {name: copies[id(host)] for name, host in hosts.items()}


def device_inputs(modules: dict[str, Any], batch: np.ndarray, device: str) -> dict[str, Any]:
    return to_device(host_inputs(modules, batch), device)


# -- 1. precision --------------------------------------------------------------------------


def precision(spec_path: Path, device: str, batch: int, repeats: int) -> dict[str, Any]:
    import torch

    from enserve.reference import ReferenceExecutor
    from enserve.spec import load_spec

    spec = load_spec(spec_path)
    check_batch = min(batch, 8)
    sample = random_batch(spec, check_batch, seed=1)
    reference = ReferenceExecutor(spec).infer(sample).probabilities
    timing_batch = random_batch(spec, batch, seed=2)
    dtypes = ["fp32", "bf16"] + (["fp16"] if device.startswith("cuda") else [])
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (
        lambda: None)
    rows: dict[str, Any] = {}
    for name in dtypes:
        _, modules = load_modules(spec_path, device, name)
        x = device_inputs(modules, timing_batch, device)
        seconds = timed(lambda m=modules, x=x: forward_all(m, x), sync, repeats)
        small = device_inputs(modules, sample, device)
        logits = {k: v.float().cpu().numpy() for k, v in forward_all(modules, small).items()}
        probs = probabilities(spec, logits)
        rows[name] = {"seconds_per_batch": seconds, "images_per_s": batch / seconds,
                      "max_abs_prob_diff": float(np.abs(probs - reference).max()),
                      "top1_agreement": float((probs.argmax(1) == reference.argmax(1)).mean())}
        del modules
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    for row in rows.values():
        row["speedup_vs_fp32"] = rows["fp32"]["seconds_per_batch"] / row["seconds_per_batch"]
    print(f"\n## 1. precision ({device}, batch {batch}, {repeats} timed runs)\n")
    print("| dtype | ms per batch | images/s | x fp32 | max abs prob diff vs CPU reference "
          "| top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {1e3 * r['seconds_per_batch']:.2f} | {r['images_per_s']:.0f} | "
              f"{r['speedup_vs_fp32']:.2f}x | {r['max_abs_prob_diff']:.2e} | "
              f"{100 * r['top1_agreement']:.1f}% |")
    return rows


# -- 2. streams ----------------------------------------------------------------------------


def streams(spec_path: Path, device: str, batch: int, repeats: int) -> dict[str, Any]:
    import torch

    spec, modules = load_modules(spec_path, device, "fp32")
    pinned = host_inputs(modules, random_batch(spec, batch, 3), pin=True)
    names = list(modules)
    side = {n: torch.cuda.Stream(device) for n in names}
    outputs: dict[str, dict[str, Any]] = {}

    def sequential() -> None:
        outputs["sequential"] = forward_all(modules, to_device(pinned, device))

    def concurrent() -> None:
        x = to_device(pinned, device)  # copied on the default stream
        copied = torch.cuda.current_stream(device)
        out = {}
        with torch.inference_mode():
            for n in names:
                s = side[n]
                s.wait_stream(copied)
                with torch.cuda.stream(s):
                    y = modules[n][0](x[n])
                    out[n] = y[0] if isinstance(y, (tuple, list)) else y
        for n in names:
            copied.wait_stream(side[n])
        outputs["streams"] = out

    def sync() -> None:
        torch.cuda.synchronize(device)

    t_seq = timed(sequential, sync, repeats)
    t_str = timed(concurrent, sync, repeats)
    diff = max(float((outputs["sequential"][n] - outputs["streams"][n]).abs().max())
               for n in names)
    print(f"\n## 2. CUDA streams (fp32, batch {batch}, one host-to-device copy per batch)\n")
    print("| run | ms per batch | x sequential |\n|---|---|---|")
    print(f"| members one after another | {1e3 * t_seq:.2f} | 1.00x |")
    print(f"| a stream per member | {1e3 * t_str:.2f} | {t_seq / t_str:.2f}x |")
    print(f"\nmax |streams - sequential| over all logits: {diff:.2e}")
    return {"sequential_s": t_seq, "streams_s": t_str, "speedup": t_seq / t_str,
            "max_abs_logit_diff": diff}


# -- 3. MPS shares -------------------------------------------------------------------------


class Mps:
    """An MPS control daemon of our own (private pipe and log folders), if allowed."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="enserve-mps-"))
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(self.dir / "pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(self.dir / "log")}
        self.started = False
        self.why = ""

    def start(self) -> bool:
        control = shutil.which("nvidia-cuda-mps-control")
        if control is None:
            self.why = "nvidia-cuda-mps-control is not installed"
            return False
        for d in self.env.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        result = subprocess.run([control, "-d"], env=env, capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode != 0:
            self.why = f"nvidia-cuda-mps-control -d failed: {result.stderr.strip()[:200]}"
            return False
        time.sleep(1.0)
        self.started = True
        return True

    def stop(self) -> None:
        if self.started:
            control = shutil.which("nvidia-cuda-mps-control") or "nvidia-cuda-mps-control"
            subprocess.run([control], input="quit\n", env={**os.environ, **self.env},
                           capture_output=True, text=True, timeout=30, check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


def _worker(args: argparse.Namespace) -> None:
    """Child process: members given, at the share given by the environment. Mode 'latency':
    time each member alone. Mode 'jobs': run `--jobs` batches, each after a start signal
    from the parent on stdin, printing start and end times (CLOCK_MONOTONIC is shared by
    all processes)."""
    import torch

    device = args.device
    spec, modules = load_modules(Path(args.spec), device, "fp32")
    modules = {n: modules[n] for n in args.members.split(",")}
    x = device_inputs(modules, random_batch(spec, args.batch, 4), device)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if args.worker == "latency":
        out = {n: timed(lambda n=n: forward_all({n: modules[n]}, {n: x[n]}), sync, args.repeats)
               for n in modules}
        print(json.dumps(out), flush=True)
        return
    for _ in range(2):  # warm up before the first signal
        forward_all(modules, x)
    sync()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        start = time.monotonic()
        forward_all(modules, x)
        sync()
        print(json.dumps([start, time.monotonic()]), flush=True)


def _child(args: argparse.Namespace, mode: str, members: list[str], share: int | None,
           env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT / "src")}
    env.pop("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None)
    if share is not None:
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(share)
    command = [sys.executable, __file__, "--worker", mode, "--members", ",".join(members),
               "--spec", str(args.spec), "--batch", str(args.batch), "--repeats",
               str(args.repeats), "--device", args.device]
    return subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def completion_times(args: argparse.Namespace, shares: dict[str, int | None],
                     env_extra: dict[str, str], jobs: int) -> list[float]:
    """One process per member at its share; `jobs` ensemble jobs released together."""
    procs = {n: _child(args, "jobs", [n], s, env_extra) for n, s in shares.items()}
    try:
        for p in procs.values():
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a member process failed to start")
        times = []
        for _ in range(jobs):
            for p in procs.values():
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            spans = []
            for p in procs.values():
                assert p.stdout is not None
                spans.append(json.loads(p.stdout.readline()))
            times.append(max(e for _, e in spans) - min(s for s, _ in spans))
        return times
    finally:
        for p in procs.values():
            if p.stdin is not None:
                p.stdin.close()
            p.wait(timeout=60)


def share_profile(args: argparse.Namespace, names: list[str], shares: tuple[int, ...],
                  env_extra: dict[str, str]) -> dict[str, Any]:
    """Profile dict: each member alone at each share (one process per share)."""
    from enserve.profile_format import profile_from_dict

    entries = []
    for share in shares:
        proc = _child(args, "latency", names, share, env_extra)
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"latency worker at share {share} failed")
        for name, seconds in json.loads(out.strip().splitlines()[-1]).items():
            entries.append({"member": name, "device": "gpu", "batch_size": args.batch,
                            "share": share, "latency_s": seconds, "memory_bytes": 1})
    return profile_from_dict({"devices": [{"id": "gpu", "kind": "cuda",
                                           "memory_bytes": 2**40, "compute_units": 100}],
                              "members": [{"name": n} for n in names], "entries": entries})


def mps_shares(args: argparse.Namespace) -> dict[str, Any]:
    from enserve.errors import PlanError
    from enserve.plan import Constraints, plan
    from enserve.spec import load_spec

    names = [m.name for m in load_spec(args.spec).members]
    mps = Mps()
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not mps.start():
        print(f"\n## 3. MPS shares: skipped ({mps.why})")
        mps.stop()
        return {"skipped": mps.why}
    try:
        env = mps.env if on_gpu else {}
        shares = MPS_SHARES  # on the CPU (dry run) the percentage is set but means nothing
        profile = share_profile(args, names, shares, env)
        hard = Constraints(time_sharing=False)
        plans = {}
        for label, algorithm in (("shares", "shares"), ("greedy, hard shares", "greedy")):
            try:
                plans[label] = plan(profile, algorithm, "latency", hard)
            except PlanError as exc:
                print(f"{label}: no plan ({exc})")
        if not plans:
            return {"skipped": "no plan with hard shares", "profile": profile.to_json_dict()}
        best_name = min(plans, key=lambda k: plans[k].predicted.latency_s)
        chosen = {i.member: int(i.share) for i in plans[best_name].instances}
        default = completion_times(args, {n: None for n in names}, env, args.jobs)
        planned = completion_times(args, {n: (s if s < 100 else None) for n, s in
                                          chosen.items()}, env, args.jobs)
    finally:
        mps.stop()
    d_mean, p_mean = statistics.mean(default), statistics.mean(planned)
    print(f"\n## 3. MPS shares (batch {args.batch}, {args.jobs} ensemble jobs each)\n")
    print("| member | " + " | ".join(f"{s}% ms" for s in shares) + " | planned share |")
    print("|---|" + "---|" * (len(shares) + 1))
    for n in names:
        cells = [f"{1e3 * e.latency_s:.2f}" for s in shares for e in profile.entries
                 if e.member == n and e.share == s]
        print(f"| {n} | " + " | ".join(cells) + f" | {chosen[n]}% |")
    print("\nplans (latency objective): " + "; ".join(
        f"{k}: predicted {1e3 * p.predicted.latency_s:.2f} ms" for k, p in plans.items()))
    print("\n| run | mean completion ms | p50 ms | improvement |\n|---|---|---|---|")
    print(f"| default (no MPS shares, all members at once) | {1e3 * d_mean:.2f} | "
          f"{1e3 * statistics.median(default):.2f} | — |")
    print(f"| share search ({best_name}) | {1e3 * p_mean:.2f} | "
          f"{1e3 * statistics.median(planned):.2f} | {100 * (1 - p_mean / d_mean):.1f}% |")
    return {"shares": chosen, "plan": best_name, "profile": profile.to_json_dict(),
            "default_s": default, "planned_s": planned,
            "improvement": 1 - p_mean / d_mean}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "imagenet6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=30, help="ensemble jobs per MPS run")
    parser.add_argument("--device", default=None, help="default cuda:0; 'cpu' = dry run")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json")
    parser.add_argument("--parts", default="precision,streams,mps")
    parser.add_argument("--worker", choices=("latency", "jobs"), help=argparse.SUPPRESS)
    parser.add_argument("--members", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return 0
    if args.device is None:
        ok, what = cuda_state()
        if not ok:
            print(f"no GPU here: {what}; nothing measured (scripts/gpu_check.sh needs CUDA)")
            return 0
        args.device = "cuda:0"
        print(f"# GPU check on {what}")
    else:
        print(f"# GPU check, dry run on {args.device}")
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {"device": args.device, "spec": str(args.spec),
                               "batch": args.batch}
    started = time.monotonic()
    if "mps" in parts:  # first: this process must not hold a CUDA context while MPS starts
        results["mps"] = mps_shares(args)
    if "precision" in parts:
        results["precision"] = precision(args.spec, args.device, args.batch, args.repeats)
    if "streams" in parts and args.device.startswith("cuda"):
        results["streams"] = streams(args.spec, args.device, args.batch, args.repeats)
    results["wall_s"] = time.monotonic() - started
    print(f"\ntotal {results['wall_s']:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
