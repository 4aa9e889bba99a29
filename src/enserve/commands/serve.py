"""`enserve serve REPOSITORY`: the Open Inference Protocol over HTTP and gRPC, plus metrics."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from enserve.server.limits import Limits


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve every ensemble of a model repository over HTTP/gRPC (KServe v2 / Triton protocol)",
        description="Serve a model repository: one folder per ensemble, each with its ensemble.yaml.",
    )
    p.add_argument("repository", type=Path, help="folder holding one sub-folder per ensemble")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (0: any free port; -1: off)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0: any free port; -1: off)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (0: any; -1: off)")
    p.add_argument("--backend", choices=("engine", "reference", "ray"), default="engine",
                   help="what runs the ensembles: the multi-process engine (default), the "
                   "in-process reference executor, or Ray actors on a cluster (needs "
                   "enserve[ray]; see docs/scale-out.md)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="--backend ray: the cluster (ray://HOST:PORT or HOST:PORT; default: "
                        "the cluster running on this machine)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="load only this model at start (repeatable; default: every folder)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="host memory the loaded ensembles may hold; ensembles then load on their "
                        "first request and the least valuable idle ones are evicted for room")
    p.add_argument("--idle-unload-s", type=float, default=None,
                   help="with a budget: unload ensembles unused this long")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per member")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (MiB)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch per request")
    p.add_argument("--max-elements", type=int, default=16 * 1024 * 1024,
                   help="largest number of elements in one input tensor")
    p.add_argument("--max-pending", type=int, default=128,
                   help="requests admitted at once; more get 503 'server overloaded'")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds shutdown waits for admitted requests")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="deadline (s) of a request that sets no 'timeout' parameter or gRPC "
                        "deadline; a request may set a longer or shorter one (0: none)")
    p.add_argument("--hang-timeout", type=float, default=30.0,
                   help="engine: a worker holding work that answers nothing this long (s) is "
                        "killed and restarted (0: never); a stopped (SIGSTOP) worker is caught "
                        "within a second regardless")
    p.add_argument("--body-budget-mb", type=float, default=256.0,
                   help="request bodies held at once (MiB); a body that does not fit gets 503 "
                        "before it is read")
    p.add_argument("--max-header-kb", type=float, default=64.0,
                   help="largest request line plus headers (KiB; else 431)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers (else 408, closed)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="longest pause (s) while a request body is read (else 408, closed)")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="open HTTP connections per listener; more get 503")
    p.add_argument("--repository-token-env", default="ENSERVE_REPOSITORY_TOKEN", metavar="VAR",
                   help="environment variable holding the bearer token the repository endpoints "
                        "require (unset: no token)")
    p.add_argument("--port-file", type=Path, default=None,
                   help="write the bound ports as JSON here once serving (for scripts and tests)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                   help="do not serve the operator's page (/dashboard) and its JSON (/dashboard/state)")
    p.add_argument("--plan-policy", choices=("reuse", "replan", "fail"), default="replan",
                   help="an ensemble's plan.json made on other hardware (its fingerprint "
                        "differs from this machine's): reuse it, re-plan for "
                        "this machine (profiles with a progress bar, cached), or refuse to "
                        "load it (default replan)")
    p.add_argument("--refine-profile", action="store_true",
                   help="engine backend, an ensemble without a plan made here: plan from an "
                        "adaptive profile (about a minute), serve it, and refine the profile "
                        "in the background (niced measurements), switching to a better plan "
                        "when it predicts >= 5%% more (off by default: it measures on the "
                        "serving machine)")
    p.add_argument("--precision", choices=("auto", "fp32"), default=None,
                   help="plans made here (--plan-policy replan, --refine-profile): auto lets "
                        "members run in a reduced precision (bf16, int8, fp16) that the "
                        "spec's accuracy check admits; fp32 forbids it (default: a re-plan "
                        "keeps the old plan's mode, --refine-profile uses auto)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def _port(value: int) -> int | None:
    return None if value < 0 else value


def run(args: argparse.Namespace) -> int:
    from enserve.server.app import ServerConfig
    from enserve.server.app import run as run_server

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_batch=args.max_batch,
        max_tensor_elements=args.max_elements, max_pending=args.max_pending,
        drain_timeout_s=args.drain_timeout,
        request_timeout_s=args.request_timeout or None,
        body_budget_bytes=int(args.body_budget_mb * 1024 * 1024),
        max_header_bytes=int(args.max_header_kb * 1024), header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout, max_connections=args.max_connections,
    )
    config = ServerConfig(
        repository=args.repository, host=args.host, http_port=_port(args.http_port),
        grpc_port=_port(args.grpc_port), metrics_port=_port(args.metrics_port),
        backend=args.backend, models=args.models, limits=limits,
        repository_token=os.environ.get(args.repository_token_env) or None,
        threads=args.threads, port_file=args.port_file, ray_address=args.ray_address,
        memory_budget_bytes=(int(args.memory_budget_mb * 1024 * 1024)
                             if args.memory_budget_mb is not None else None),
        idle_unload_s=args.idle_unload_s, dashboard=args.dashboard,
        plan_policy=args.plan_policy, hang_timeout_s=args.hang_timeout or None,
        refine_profile=args.refine_profile, precision=args.precision,
    )
    run_server(config)
    return 0
