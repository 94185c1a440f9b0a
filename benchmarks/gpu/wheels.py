"""The wheels the GPU benchmark carries to the device machine, and which of them it must install.

The device image (KINDS.md, nvidia-h200) has torch 2.11, transformers 5.17, sentence-transformers
6.0.1, accelerate 1.15, huggingface_hub 1.33, tokenizers 0.23.2, pandas, pyarrow, httpx and a peft
of unknown version, but no fastapi / uvicorn / pydantic. unime needs transformers >= 5.20, < 5.24 and
sentence-transformers >= 6.2, the server the serve extra. The image's huggingface_hub, tokenizers,
safetensors and accelerate satisfy transformers 5.23, so they stay. Every wheel is pinned to the
tested version of constraints.txt.

    python benchmarks/gpu/wheels.py pins           # NAME==VERSION per wheel (fetch_wheels.sh downloads them)
    python benchmarks/gpu/wheels.py prune .whl     # drop listed wheels at other versions (one of each)
    python benchmarks/gpu/wheels.py check .whl     # sizes; fails over the device call's 64 MiB
    python benchmarks/gpu/wheels.py needed .whl    # the carried wheels whose version is not installed
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What one device call carries: the working tree (tracked and untracked-not-ignored files) and the
# carried paths together (/work/.library/device/README.md, Limits).
CARRY_LIMIT = 64 * 1024 * 1024

WHEELS = (
    # unime itself: the image's versions are below pyproject's floors (transformers' import-time check
    # also wants regex >= 2025.10.22 and peft >= 0.20).
    "transformers", "sentence-transformers", "peft", "regex",
    # the server (unime.serve, benchmarks/serve_load.py): absent from the image; anyio, annotated-doc
    # and typing_extensions are there, at versions not known to meet pydantic's and fastapi's floors.
    "fastapi", "starlette", "pydantic", "pydantic_core", "annotated-types", "annotated-doc",
    "typing-inspection", "typing_extensions", "opentelemetry-api", "uvicorn", "anyio",
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path = ROOT / "constraints.txt") -> list[str]:
    """``NAME==VERSION`` of every wheel, the version read from the lock file."""
    locked = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            locked[normalise(name)] = version.strip()
    missing = [name for name in WHEELS if normalise(name) not in locked]
    if missing:
        raise SystemExit(f"{constraints}: no pinned version of {', '.join(missing)}")
    return [f"{name}=={locked[normalise(name)]}" for name in WHEELS]


def _split(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return normalise(name), version


def needed(folder: Path) -> list[Path]:
    """The carried wheels of :data:`WHEELS` whose distribution is missing or at another version."""
    wanted = {normalise(name) for name in WHEELS}
    install = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version = _split(wheel)
        if name not in wanted:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            install.append(wheel)
    return install


def prune(folder: Path) -> None:
    """Remove wheels of :data:`WHEELS` at a version other than the pinned one: pip refuses two."""
    pinned = dict(pin.split("==") for pin in pins())
    pinned = {normalise(name): version for name, version in pinned.items()}
    for wheel in sorted(folder.glob("*.whl")):
        name, version = _split(wheel)
        if name in pinned and version != pinned[name]:
            print(f"removing {wheel} (pinned {pinned[name]})")
            wheel.unlink()


def check(folder: Path) -> bool:
    """Print the wheels and the total a device call carries; False when over :data:`CARRY_LIMIT`."""
    wanted = {normalise(name.split("==")[0]): name for name in pins()}
    found = {_split(wheel)[0]: wheel for wheel in folder.glob("*.whl")}
    missing = sorted(set(wanted) - set(found))
    wheels = sum(wheel.stat().st_size for wheel in folder.glob("*.whl"))
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    tree = sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())
    for wheel in sorted(folder.glob("*.whl")):
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"wheels {wheels / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
          f"{(wheels + tree) / 2**20:.1f} MiB of the {CARRY_LIMIT / 2**20:.0f} MiB one device call carries")
    if missing:
        print(f"missing wheels: {', '.join(wanted[name] for name in missing)}", file=sys.stderr)
    return wheels + tree <= CARRY_LIMIT and not missing


def main() -> int:
    command, *rest = sys.argv[1:] or [""]
    if command == "pins" and not rest:
        print("\n".join(pins()))
        return 0
    if command in ("needed", "prune", "check") and len(rest) == 1:
        folder = Path(rest[0])
        if command == "needed":
            for path in needed(folder):
                print(path)
        elif command == "prune":
            prune(folder)
        else:
            return 0 if check(folder) else 1
        return 0
    print(__doc__.split("\n\n")[-1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
