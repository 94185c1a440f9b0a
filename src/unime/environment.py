"""What is installed, and whether it is a combination known to break (``unime env``).

The training stages call :func:`require_compatible` before loading anything, so a known conflict
fails with what to install instead, not with an error from deep inside peft about LoRA target
modules. The rules are plain data (:data:`CONFLICTS`), each with the fix it recommends; the
tested set of versions is the lock file ``constraints.txt`` that ``scripts/setup.sh`` installs.

It also holds the one rule that picks the compute precision from the device
(:func:`compute_dtype`): bf16 where the hardware has native bf16 kernels, float32 elsewhere, and
the one reading of this process's rank and the number of processes (:func:`rank_and_world_size`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from unime.choices import BF16_SETTINGS, DTYPES

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# Distributions reported by `unime env`, in this order (distribution name, as pip spells it).
PACKAGES = ("torch", "transformers", "peft", "sentence-transformers", "accelerate", "bitsandbytes", "deepspeed",
            "flash-attn", "datasets", "huggingface-hub", "safetensors", "tokenizers", "mteb", "fastapi", "uvicorn",
            "torchvision", "timm")
TESTED_SET = "bash scripts/setup.sh (the tested versions of constraints.txt)"


class IncompatibleEnvironment(RuntimeError):
    """An installed combination of packages that is known not to work."""


@dataclass(frozen=True)
class Conflict:
    """A rule: ``applies(versions)`` says whether the installed versions break; ``message`` says why and the fix."""

    name: str
    applies: Callable[[dict[str, Version | None]], bool]
    message: Callable[[dict[str, Version | None]], str]


def _at_least(versions: dict[str, Version | None], name: str, bound: str) -> bool:
    return versions.get(name) is not None and versions[name] >= Version(bound)


def _below(versions: dict[str, Version | None], name: str, bound: str) -> bool:
    return versions.get(name) is not None and versions[name] < Version(bound)


CONFLICTS: tuple[Conflict, ...] = (
    Conflict(
        "transformers-peft",
        # transformers 5.24 refuses every peft before 0.22 ("The version of PEFT you are using is not
        # compatible, please use a version >= 0.22.0"); no such peft is released on 2026-12-01.
        lambda v: _at_least(v, "transformers", "5.24") and _below(v, "peft", "0.22"),
        lambda v: (f"transformers {v['transformers']} needs peft >= 0.22, but peft {v['peft']} is installed: every "
                   "LoRA / QLoRA path (unime distill, unime tune, unime demo) fails. Fix: "
                   "pip install 'transformers>=5.20,<5.24', or " + TESTED_SET),
    ),
    Conflict(
        "transformers-range",
        lambda v: _below(v, "transformers", "5.20") or _at_least(v, "transformers", "6"),
        lambda v: (f"unime needs transformers >= 5.20 and < 5.24, found {v['transformers']}: "
                   "pip install 'transformers>=5.20,<5.24', or " + TESTED_SET),
    ),
    Conflict(
        "sentence-transformers-range",
        lambda v: _below(v, "sentence-transformers", "6.2") or _at_least(v, "sentence-transformers", "7"),
        lambda v: (f"unime needs sentence-transformers >= 6.2 and < 7, found {v['sentence-transformers']}: "
                   "pip install 'sentence-transformers>=6.2,<7', or " + TESTED_SET),
    ),
)


def installed_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None when it is not installed."""
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _parsed(versions: dict[str, str | None]) -> dict[str, Version | None]:
    parsed: dict[str, Version | None] = {}
    for name, text in versions.items():
        try:
            # "2.13.0+cpu" compares as 2.13.0: the local build tag says nothing about compatibility.
            parsed[name] = Version(Version(text).base_version) if text else None
        except InvalidVersion:
            parsed[name] = None
    return parsed


def known_conflicts(versions: dict[str, str | None] | None = None) -> list[str]:
    """The messages of every rule of :data:`CONFLICTS` that the given (default: installed) versions break."""
    parsed = _parsed(versions if versions is not None else installed_versions())
    return [rule.message(parsed) for rule in CONFLICTS if rule.applies(parsed)]


def broken_imports() -> list[str]:
    """Packages that are installed but cannot be imported and break others that look for them.

    torchvision from PyPI beside a CPU build of torch fails with ``operator torchvision::nms does
    not exist``, and transformers' processors that have a video slot then fail to construct.
    """
    problems = []
    if installed_versions(("torchvision",))["torchvision"] is not None:
        try:
            import torchvision  # noqa: F401
        except Exception as error:  # noqa: BLE001 - any import failure is the finding
            problems.append(f"torchvision is installed but does not import ({error}); image processors that "
                            "look for it break. Uninstall it (pip uninstall torchvision) or install the build "
                            "that matches your torch")
    return problems


def require_compatible() -> None:
    """Raise :class:`IncompatibleEnvironment` naming every known conflict of the installed packages."""
    problems = known_conflicts() + broken_imports()
    if problems:
        raise IncompatibleEnvironment("incompatible packages installed:\n  - " + "\n  - ".join(problems))


# Measured on 2 cores (docs/performance.md): without native kernels oneDNN emulates bf16 matmuls.
_EMULATED_BF16 = ("matmuls run about 80x slower than float32 (measured: 2.4 GFLOPS in bf16 vs 190 in float32 "
                  "on an AVX2-only CPU)")


def default_device() -> str:
    """Where a model goes when no device is given: the GPU when torch sees one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rank_and_world_size(environment: bool = True) -> tuple[int, int]:
    """This process's rank and the number of processes: those of the initialised torch.distributed
    process group; else (with ``environment``) the ``RANK`` and ``WORLD_SIZE`` variables that torchrun
    and ``accelerate launch`` set, which are there before the group is created; else ``(0, 1)``.

    Code about to run a collective passes ``environment=False``: without a group it works alone even
    under torchrun, since it has no group to exchange with."""
    try:
        import torch.distributed as dist
    except ImportError:  # torch built without distributed support, or not installed
        dist = None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if environment:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return 0, 1


def join_torchrun_group(timeout_s: float = 7 * 24 * 3600) -> tuple[int, int]:
    """Under torchrun (``WORLD_SIZE`` > 1), join the launch's process group (gloo, so that it works beside
    any device) unless joined already; returns ``(rank, world_size)``, ``(0, 1)`` without torchrun.

    For jobs that split their work between the processes and meet only at the end (``unime judge``,
    ``unime mine``): the ranks can be far apart when they meet (a resumed rank with little left waits
    for one with much), so a collective waits up to ``timeout_s`` (default a week) instead of
    torch's default; a rank that dies makes torchrun stop the others."""
    from datetime import timedelta

    if rank_and_world_size()[1] <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def rank_device(device: str | None) -> str | None:
    """The device a process of a torchrun job computes on: ``device`` when given; under torchrun
    with GPUs ``cuda:LOCAL_RANK``, without GPUs ``cpu``; else None (the loader's own choice)."""
    if device is not None or rank_and_world_size()[1] <= 1:
        return device
    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def all_gather_rows(local: np.ndarray, total: int, per_rank: int) -> np.ndarray:
    """Concatenate every rank's ``local`` rows (rank order) and keep the first ``total`` rows: each rank
    embeds a contiguous share of at most ``per_rank`` rows (the evaluators, mining), every rank gets all."""
    import torch
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    # A rank whose shard is empty does not know d: agree on it first.
    dim = torch.tensor([local.shape[1] if local.size else 0], device=device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    padded = torch.zeros(per_rank, int(dim.item()), dtype=torch.float32, device=device)
    if local.size:
        padded[: local.shape[0]] = torch.from_numpy(local).to(device)
    shards = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, padded)
    return torch.cat(shards).cpu().numpy()[:total]


def cpu_capability() -> str:
    """The CPU kernels ATen dispatches to (``AVX2``, ``AVX512``, ``DEFAULT``...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_bf16_native() -> bool:
    """Whether oneDNN has native bf16 matmul kernels on this CPU (AMX or AVX512-BF16).

    Honours ``ONEDNN_MAX_CPU_ISA``: with ``AVX2`` it says False even on a CPU that has them."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _device_kind(device: Any) -> str:
    """``"cpu"``, ``"cuda"``, ... of ``device`` (default: :func:`default_device`)."""
    import torch

    return torch.device(device if device is not None else default_device()).type


def compute_dtype(device: Any = None) -> str:
    """The compute dtype for ``device`` (default: :func:`default_device`), as a name ``unime.load`` takes.

    ``"bfloat16"`` on a CUDA GPU with native bf16 (Ampere or later, ROCm) and on a CPU with native
    bf16 matmul kernels (AMX or AVX512-BF16); ``"float32"`` everywhere else. Emulated bf16 is the
    trap this rule avoids: on an AVX2-only CPU it is about 80x slower than float32, on a pre-Ampere
    GPU slower than float16 or float32.
    """
    import torch

    kind = _device_kind(device)
    if kind == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    elif kind == "cpu":
        native = cpu_bf16_native()
    else:
        native = False
    return "bfloat16" if native else "float32"


def _warn_if_emulated(device: Any, advice: str) -> None:
    if _device_kind(device) == "cpu" and not cpu_bf16_native():
        logger.warning("bf16 on this CPU has no native kernels (capability %s): %s; %s",
                       cpu_capability(), _EMULATED_BF16, advice)


def resolve_dtype(choice: str, device: Any = None) -> str:
    """The dtype a ``--dtype`` choice means on ``device``: ``auto`` is :func:`compute_dtype`, any other
    choice is kept, with a warning when ``bfloat16`` is asked on a CPU without native bf16 kernels."""
    if choice not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {choice!r}")
    if choice == "auto":
        return compute_dtype(device)
    if choice == "bfloat16":
        _warn_if_emulated(device, "use --dtype auto or float32")
    return choice


def check_bf16_setting(setting: Any) -> None:
    """Refuse a recipe ``bf16`` that is not ``auto``, true or false (1 == True, but 1 is refused)."""
    if setting not in BF16_SETTINGS or not isinstance(setting, (bool, str)):
        raise ValueError(f"bf16 must be auto, true or false, got {setting!r}")


def resolve_bf16(setting: bool | str, device: Any = None) -> bool:
    """Whether a recipe's ``bf16`` (``auto``, true or false) means bf16 autocast on ``device``; true on a
    CPU without native bf16 kernels is kept, with a warning."""
    check_bf16_setting(setting)
    if setting == "auto":
        return compute_dtype(device) == "bfloat16"
    if setting:
        _warn_if_emulated(device, "set bf16: auto or false in the recipe (or pass --bf16 auto / --no-bf16)")
    return bool(setting)


def device_summary() -> dict[str, Any]:
    """torch's build, the accelerators it sees, the CPU's kernels and the dtype ``auto`` picks."""
    import torch

    summary: dict[str, Any] = {"torch_cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                               "cpu_threads": torch.get_num_threads(), "cpu_capability": cpu_capability(),
                               "cpu_bf16_native": cpu_bf16_native(), "auto_dtype": compute_dtype()}
    if torch.cuda.is_available():
        summary["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        summary["bf16_supported"] = torch.cuda.is_bf16_supported(including_emulation=False)
    return summary


def report() -> dict[str, Any]:
    """Everything ``unime env`` prints, as a mapping (``unime env --json`` writes it as is)."""
    from unime import __version__

    return {"unime": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": installed_versions(), "device": device_summary(),
            "problems": known_conflicts() + broken_imports()}
