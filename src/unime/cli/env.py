"""``unime env``: the versions that matter for a bug report, and the combinations known to break."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "env",
        help="print Python, torch (CUDA), transformers, peft, ... versions and known incompatibilities",
        description="Prints what is installed and the device, and names every installed combination known to "
        "break, with what to install instead. Exit status 1 when there is one.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unime.environment import report

    info = report()
    if args.json:
        print(json.dumps(info, indent=2))
        return 1 if info["problems"] else 0
    print(f"unime       {info['unime']}")
    print(f"python      {info['python']} ({info['platform']})")
    for name, version in info["packages"].items():
        print(f"{name:<22} {version or '-'}")
    device = info["device"]
    cuda = f"CUDA {device['torch_cuda_build']}" if device["torch_cuda_build"] else "CPU build"
    if device["cuda_available"]:
        where = ", ".join(device["devices"]) + (" (bf16)" if device.get("bf16_supported") else "")
    else:
        where = f"no GPU visible; CPU, {device['cpu_threads']} threads"
    print(f"device      torch {cuda}; {where}")
    native = "native bf16 kernels" if device["cpu_bf16_native"] else "no native bf16 kernels (bf16 emulated, slow)"
    print(f"cpu         capability {device['cpu_capability']}; {native}")
    print(f"dtype auto  {device['auto_dtype']} (what --dtype auto and bf16: auto pick on this machine)")
    if info["problems"]:
        print("\nKNOWN INCOMPATIBILITIES:")
        for problem in info["problems"]:
            print(f"  - {problem}")
        return 1
    print("\nno known incompatibility")
    return 0
