"""`enserve info`: this machine's hardware fingerprint and the variants it enables."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "info", help="print this machine's hardware fingerprint and the variants it enables",
        description="The hardware fingerprint profiles and plans are keyed by (CPU model, "
                    "cores, ISA extensions, GPUs, MPS), and which reduced-precision variants "
                    "it runs fast enough to profile.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def report() -> dict[str, Any]:
    from enserve.hardware import current_hardware
    from enserve.variants.names import REDUCED_PRECISION, VARIANTS

    hw = current_hardware()
    devices = ["cpu"] + [f"cuda:{i}" for i in range(len(hw.gpus))]
    variants = {}
    for device in devices:
        fast = [v for v in VARIANTS if v not in REDUCED_PRECISION or hw.runs_fast(v, device)]
        skipped = {v: hw.skip_reason(v, device) for v in sorted(REDUCED_PRECISION)
                   if not hw.runs_fast(v, device)}
        variants[device] = {"profiled": fast, "not_profiled": skipped}
    return {"hardware": hw.to_json_dict(), "reduced_precision": hw.enabled_variants(),
            "variants": variants}


def run(args: argparse.Namespace) -> int:
    data = report()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    hw = data["hardware"]
    print(f"hardware fingerprint {hw['id']}")
    print(f"  cpu:   {hw['cpu_model']} ({hw['arch']}), {hw['cores']} usable cores")
    print(f"  isa:   {', '.join(hw['isa']) or 'none of note'}")
    for i, g in enumerate(hw["gpus"]):
        print(f"  cuda:{i}: {g['name']}, compute capability {g['capability']}, "
              f"{g['memory_bytes'] / 2**30:.1f} GiB")
    if not hw["gpus"]:
        print("  gpus:  none")
    print(f"  mps:   {'yes' if hw['mps'] else 'no'}")
    enabled = data["reduced_precision"]
    print("reduced precision this machine runs fast: "
          + (", ".join(f"{k} [{v}]" for k, v in enabled.items()) or "none"))
    for device, info in data["variants"].items():
        print(f"variants profiled on {device}: {', '.join(info['profiled'])}")
        for v, why in info["not_profiled"].items():
            print(f"  not {v}: {why}")
    return 0
