"""Process-tree memory of TorchServe and of `enserve serve` holding the same 3-member
ensemble (resnet18 + mobilenet_v3_large + efficientnet_b0, the seeded random weights of
`memory_bench.py`), side by side in one invocation.

TorchServe runs from its own virtual environment (`--ts-venv`; never a dependency of
enserve) with one custom handler holding the three members and averaging their softmax,
one worker, every listener on 127.0.0.1, token auth and system metrics off. Its handler
loads the state dicts enserve builds for the members (written to the model archive) into
modules made on the meta device (`assign=True`): one copy of the weights, no random
init, TorchServe's lean case. enserve runs as `enserve serve` (engine backend, one
worker per member, 1 thread), once with its default plan (none given: eager PyTorch
workers) and once with a `plan.json` choosing ONNX Runtime workers.

Every server is started fresh, sent the same `--requests` batch-1 requests one at a time
(random inputs), then measured: RSS, PSS and USS summed over its process tree
(`enserve.runtime.memory`) - TorchServe's java frontend and its python backend worker
(the `torchserve --foreground` launcher, which only waits on java, is reported apart),
enserve's server, resource tracker, fork servers and workers. `peak` is the largest tree
RSS / PSS sampled while the requests ran. The answers' argmax must agree between servers.

  flock /tmp/enserve-cpu.lock .venv/bin/python benchmarks/torchserve_memory.py \\
      --ts-venv /tmp/ts-venv --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_bench import MEMBERS, _prepare, write_spec

from enserve.bench import local_server
from enserve.runtime.memory import TreeMemory, pids_memory, tree_pids
from enserve.runtime.worker import PROCESS_NAME

MODEL = "three"
BACKEND_IMPORTS = "import ts.model_service_worker, ts.model_loader, numpy, torch, torchvision"
MIB = 2**20
START_TIMEOUT_S = 420.0
local_server.START_TIMEOUT_S = START_TIMEOUT_S

HANDLER = '''"""The 3-member ensemble for TorchServe: the members' state dicts assigned to modules
made on the meta device; the answer is the mean of their softmax."""
import io
import os

import numpy as np
import torch
import torchvision

MEMBERS = {members!r}  # member name: (torchvision architecture, classes or None)
_models = []


def _load(model_dir):
    state = torch.load(os.path.join(model_dir, "members.pt"), map_location="cpu",
                       weights_only=True)
    for name, (arch, classes) in MEMBERS.items():
        extra = {{}} if classes is None else {{"num_classes": classes}}
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, weights=None, **extra)
        model.load_state_dict(state.pop(name), assign=True)
        _models.append(model.eval())


def handle(data, context):
    if not _models:
        _load(context.system_properties["model_dir"])
    if data is None:
        return None
    answers = []
    with torch.inference_mode():
        for row in data:
            body = row.get("body") or row.get("data")
            x = torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))
            probs = torch.stack([torch.softmax(m(x), dim=1) for m in _models]).mean(0)
            answers.append(probs.tolist())
    return answers
'''


# ----------------------------------------------------------------------------- helpers
def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 120.0) -> Any:
    request = urllib.request.Request(url, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def wait_until(check: Callable[[], bool], alive: Callable[[], bool], what: str,
               failed: Callable[[], str | None] = lambda: None) -> float:
    started = time.monotonic()
    while not check():
        if not alive():
            raise RuntimeError(f"{what} exited before it was ready")
        if (why := failed()) is not None:
            raise RuntimeError(f"{what} failed to load the ensemble:\n{why}")
        if time.monotonic() - started > START_TIMEOUT_S:
            raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - started


def per_process(pids: list[int]) -> list[dict[str, Any]]:
    """Each process's name and memory, biggest RSS first (where the memory goes)."""
    out = []
    for pid in pids:
        mem = pids_memory([pid])
        if not mem.processes:
            continue
        try:
            proc = psutil.Process(pid)
            cmd = "enserve worker" if proc.name() == PROCESS_NAME else short_cmd(" ".join(proc.cmdline()))
            parent = proc.parent()
            if cmd == "enserve fork server" and parent and "forkserver" in " ".join(parent.cmdline()):
                cmd = "enserve fork server's spare"
        except psutil.Error:
            cmd = "?"
        out.append({"pid": pid, "cmd": cmd, **mem.as_dict()})
    return sorted(out, key=lambda p: -int(p["rss"]))


def short_cmd(cmd: str) -> str:
    for needle, label in (("org.pytorch.serve.ModelServer", "torchserve java frontend"),
                          ("model_service_worker", "torchserve python backend worker"),
                          ("enserve.cli serve", "enserve server"),
                          ("resource_tracker", "multiprocessing resource tracker"),
                          ("forkserver", "enserve fork server")):
        if needle in cmd:
            return label
    return cmd[:90]


def listening(root: int) -> list[str]:
    """The TCP addresses the tree listens on (all should be loopback)."""
    found = set()
    for pid in tree_pids(root):
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.status == psutil.CONN_LISTEN}
    return sorted(found)


class PeakSampler:
    """Largest tree RSS and PSS seen, sampled every `every_s` seconds in a thread."""

    def __init__(self, root: int, every_s: float = 0.5) -> None:
        self.root, self.every_s = root, every_s
        self.rss = self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.take(pids_memory(tree_pids(self.root)))
            if self._stop.wait(self.every_s):
                return

    def take(self, mem: TreeMemory) -> None:
        self.rss, self.pss = max(self.rss, mem.rss), max(self.pss, mem.pss)


def measure(root: int, send: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
            extra: dict[str, Any]) -> dict[str, Any]:
    """Tree memory before and after sending `inputs` one row at a time, the peak between,
    and the answers."""
    ready = pids_memory(tree_pids(root))
    answers = []
    with PeakSampler(root) as peak:
        peak.take(ready)
        for x in inputs:
            answers.append(send(x))
    after = pids_memory(tree_pids(root))
    peak.take(after)
    return {**extra, "ready": ready.as_dict(), "tree": after.as_dict(), "listening": listening(root),
            "peak": {"rss": peak.rss, "pss": peak.pss}, "processes": per_process(tree_pids(root)),
            "answers": np.concatenate(answers).tolist(), "load": os.getloadavg()}


# ----------------------------------------------------------------------------- TorchServe
def ts_missing(venv: Path) -> str | None:
    """Why TorchServe cannot run from `venv` (None: it can)."""
    for tool in ("torchserve", "torch-model-archiver", "python"):
        if not (venv / "bin" / tool).exists():
            return f"TorchServe is not installed: {venv / 'bin' / tool} does not exist"
    if shutil.which("java") is None:
        return "TorchServe cannot run: no `java` on PATH (it needs a JDK 11+)"
    check = subprocess.run([str(venv / "bin" / "python"), "-c", BACKEND_IMPORTS],
                           capture_output=True, text=True)
    if check.returncode:
        return f"TorchServe's backend cannot import its modules in {venv}:\n{check.stderr[-1500:]}"
    return None


def ts_archive(venv: Path, spec_path: Path, folder: Path) -> Path:
    """A model store holding the ensemble's archive (unpacked): handler + members' weights."""
    import torch

    from enserve.members.loaders import torchvision_arch
    from enserve.spec import load_spec

    spec = load_spec(spec_path)
    state = {m.name: torchvision_arch(m.target, m.num_classes, m.seed, m.name).state_dict()
             for m in spec.members}
    src = folder / "archive-src"
    src.mkdir()
    torch.save(state, src / "members.pt")
    (src / "ensemble_handler.py").write_text(HANDLER.format(
        members={m.name: (m.target, m.num_classes) for m in spec.members}))
    store = folder / "model-store"
    store.mkdir()
    subprocess.run([str(venv / "bin" / "torch-model-archiver"), "--model-name", MODEL,
                    "--version", "1.0", "--handler", str(src / "ensemble_handler.py"),
                    "--extra-files", str(src / "members.pt"), "--export-path", str(store),
                    "--archive-format", "no-archive"], check=True)
    return store


def run_torchserve(venv: Path, store: Path, folder: Path, inputs: np.ndarray) -> dict[str, Any]:
    infer, manage, metrics, grpc_infer, grpc_manage = free_ports(5)
    config = folder / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://127.0.0.1:{infer}",
        f"management_address=http://127.0.0.1:{manage}",
        f"metrics_address=http://127.0.0.1:{metrics}",
        "grpc_inference_address=127.0.0.1", "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={grpc_infer}", f"grpc_management_port={grpc_manage}",
        f"model_store={store}", f"load_models={MODEL}", "default_workers_per_model=1",
        "disable_token_authorization=true", "disable_system_metrics=true",
        "install_py_dep_per_model=false", ""]))
    logs = folder / "ts-logs"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs))
    with (folder / "torchserve.out").open("wb") as out:
        launcher = subprocess.Popen(
            [str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
             "--ts-config", str(config), "--model-store", str(store)],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            try:
                workers = http(f"http://127.0.0.1:{manage}/models/{MODEL}", timeout=5)[0]["workers"]
            except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError):
                return False
            return bool(workers) and all(w.get("status") == "READY" for w in workers)

        def failed() -> str | None:  # the backend worker died (TorchServe would retry it)
            log = logs / "model_log.log"
            text = log.read_text(errors="replace") if log.is_file() else ""
            return text[-3000:] if "Traceback" in text else None

        start_s = wait_until(ready, lambda: launcher.poll() is None, "TorchServe", failed)
        java = [p for p in psutil.Process(launcher.pid).children() if "java" in p.name()]
        if len(java) != 1:
            raise RuntimeError(f"expected one java child of the launcher, found {java}")

        def send(x: np.ndarray) -> np.ndarray:
            buf = io.BytesIO()
            np.save(buf, x[None])
            answer = http(f"http://127.0.0.1:{infer}/predictions/{MODEL}", buf.getvalue(),
                          {"Content-Type": "application/octet-stream"})
            return np.asarray(answer, dtype=np.float32).reshape(1, -1)

        result = measure(java[0].pid, send, inputs, {"case": "torchserve", "start_s": start_s})
        result["launcher"] = pids_memory([launcher.pid]).as_dict()
        return result
    finally:
        for child in psutil.Process(launcher.pid).children():  # java, started by the launcher
            child.send_signal(signal.SIGTERM)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(launcher.pid).children(recursive=True):
                child.kill()
            launcher.kill()
            launcher.wait(10)


# ----------------------------------------------------------------------------- enserve
def enserve_repo(spec_path: Path, folder: Path, variant: str | None) -> Path:
    """A repository with the ensemble as `three`; a plan.json choosing `variant` for every
    member (one instance, batch 8, 1 core), none for the default plan."""
    repo = folder / f"repo-{variant or 'default'}"
    (repo / MODEL).mkdir(parents=True)
    shutil.copy(spec_path, repo / MODEL / "ensemble.yaml")
    if variant:
        from enserve.formats.plan import Plan, save_plan

        save_plan(Plan.of([{"member": name, "variant": variant, "device": "cpu", "batch_size": 8,
                            "share": 1, "memory_bytes": 0} for name, _ in MEMBERS]),
                  repo / MODEL / "plan.json")
    return repo


def run_enserve(repo: Path, case: str, folder: Path, inputs: np.ndarray) -> dict[str, Any]:
    workdir = folder / f"work-{case}"
    workdir.mkdir(exist_ok=True)
    started = time.monotonic()
    server = local_server.start_server(repo, workdir, "--backend", "engine",
                                       "--plan-policy", "reuse", models=[MODEL])
    try:
        wait_until(server.ready, lambda: server.process.poll() is None, case)
        start_s = time.monotonic() - started  # from launch: the port file, then ready

        def send(x: np.ndarray) -> np.ndarray:
            row = np.ascontiguousarray(x[None])
            header = json.dumps({
                "inputs": [{"name": "input", "datatype": "FP32", "shape": list(row.shape),
                            "parameters": {"binary_data_size": row.nbytes}}],
                "outputs": [{"name": "probabilities"}]}).encode()
            answer = http(f"http://{server.http_url}/v2/models/{MODEL}/infer", header + row.tobytes(),
                          {"Inference-Header-Content-Length": str(len(header)),
                           "Content-Type": "application/octet-stream"})
            out = next(o for o in answer["outputs"] if o["name"] == "probabilities")
            return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

        return measure(server.process.pid, send, inputs, {"case": case, "start_s": start_s})
    finally:
        server.stop(30)


# ----------------------------------------------------------------------------- report
def agreement(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Argmax agreement and largest probability difference of every case with TorchServe
    (with the first case when TorchServe did not run), per round."""
    out: dict[str, Any] = {}
    for rnd in sorted({r["round"] for r in results}):
        cases = [r for r in results if r["round"] == rnd]
        base = next((r for r in cases if r["case"] == "torchserve"), cases[0])
        ref = np.asarray(base["answers"])
        for r in cases:
            if r is base:
                continue
            got = np.asarray(r["answers"])
            out[f"round {rnd}: {r['case']} vs {base['case']}"] = {
                "argmax_agree": int((got.argmax(1) == ref.argmax(1)).sum()), "rows": len(ref),
                "max_abs_diff": float(np.abs(got - ref).max())}
    return out


def print_report(results: list[dict[str, Any]], agree: dict[str, Any]) -> None:
    print(f"\n{'round':<6}{'case':<17}{'procs':>6}{'RSS MiB':>9}{'PSS MiB':>9}{'USS MiB':>9}"
          f"{'peak RSS':>9}{'peak PSS':>9}{'ready RSS':>10}{'start s':>8}{'load':>6}")
    for r in results:
        t = r["tree"]
        print(f"{r['round']:<6}{r['case']:<17}{t['processes']:>6}{t['rss'] / MIB:>9.0f}"
              f"{t['pss'] / MIB:>9.0f}{t['uss'] / MIB:>9.0f}{r['peak']['rss'] / MIB:>9.0f}"
              f"{r['peak']['pss'] / MIB:>9.0f}{r['ready']['rss'] / MIB:>10.0f}{r['start_s']:>8.1f}"
              f"{r['load'][0]:>6.2f}")
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_case.setdefault(r["case"], []).append(r)
    if "torchserve" in by_case:
        print("\nratios to TorchServe (median over rounds of the same-round ratios):")
        for case, runs in by_case.items():
            if case == "torchserve":
                continue
            for key in ("rss", "pss"):
                ratios = [r["tree"][key] / ts["tree"][key] for r in runs for ts in by_case["torchserve"]
                          if ts["round"] == r["round"]]
                print(f"  {case:<17} tree {key.upper()}: "
                      f"{statistics.median(ratios):.2f}x  (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
        launchers = [r["launcher"]["rss"] / MIB for r in by_case["torchserve"]]
        print(f"  (the torchserve --foreground launcher, not counted: RSS "
              f"{', '.join(f'{x:.0f}' for x in launchers)} MiB)")
    print("\nwhere the memory goes (last round, after the requests):")
    last = max(r["round"] for r in results)
    for r in results:
        if r["round"] != last:
            continue
        print(f"  {r['case']}:")
        for p in r["processes"]:
            print(f"    {p['cmd']:<36} RSS {p['rss'] / MIB:7.0f}  PSS {p['pss'] / MIB:7.0f}  "
                  f"USS {p['uss'] / MIB:7.0f} MiB")
    print("\nlistening:")
    for r in results:
        print(f"  round {r['round']} {r['case']}: {', '.join(r['listening'])}")
    print("\nanswers:")
    for pair, a in agree.items():
        print(f"  {pair}: argmax agrees on {a['argmax_agree']}/{a['rows']}, "
              f"max |p diff| {a['max_abs_diff']:.2e}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ts-venv", type=Path, required=True, help="virtual environment with torchserve")
    p.add_argument("--cases", default="torchserve,enserve-onnx,enserve-default")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--requests", type=int, default=16, help="batch-1 requests sent to each server")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    cases = args.cases.split(",")
    missing = ts_missing(args.ts_venv.resolve()) if "torchserve" in cases else None
    if missing:
        print(missing, file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="torchserve_memory_"))
    spec_path = write_spec(folder)
    _prepare(spec_path)  # ONNX exports and weight files, cached and untimed
    inputs = np.random.default_rng(0).standard_normal((args.requests, 3, 224, 224)).astype(np.float32)
    store = ts_archive(args.ts_venv.resolve(), spec_path, folder) if "torchserve" in cases else None
    repos = {"enserve-onnx": enserve_repo(spec_path, folder, "onnx"),
             "enserve-default": enserve_repo(spec_path, folder, None)}
    results: list[dict[str, Any]] = []
    for rnd in range(1, args.rounds + 1):
        for case in cases if rnd % 2 else cases[::-1]:
            print(f"round {rnd}: {case} (load {os.getloadavg()[0]:.2f})", flush=True)
            if case == "torchserve" and store is not None:
                res = run_torchserve(args.ts_venv.resolve(), store, folder, inputs)
            elif case in repos:
                res = run_enserve(repos[case], case, folder, inputs)
            else:
                raise SystemExit(f"unknown case {case}")
            res["round"] = rnd
            results.append(res)
    agree = agreement(results)
    print_report(results, agree)
    if args.json:
        for r in results:
            r.pop("answers")
        args.json.write_text(json.dumps({"results": results, "agreement": agree,
                                         "requests": args.requests}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
