"""What every part of the GPU benchmark shares: the budget clock, the device, the results file.

The CPU benchmarks of benchmarks/ are imported from here (:func:`benchmark`), so the GPU run goes
through their code paths instead of copies of them.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import gpu_report
import torch

BENCHMARKS = Path(__file__).resolve().parents[1]
SECTIONS = ("encode", "mmeb", "serve", "stage1", "stage2")


def benchmark(name: str) -> Any:
    """One of the CPU benchmarks in benchmarks/, as a module (their code paths are reused, not copied)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


class Clock:
    """The budget: part k must end by the sum of the shares up to k; unused time carries forward."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.planned = 0.0

    def part(self, share_s: float) -> float:
        """Open the next part; returns its deadline (monotonic seconds)."""
        self.planned = min(self.planned + share_s, self.budget_s)
        return self.start + self.planned

    def left(self, deadline: float) -> float:
        return deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Run:
    """The device, the results so far, and writing them."""

    def __init__(self, preset: dict[str, Any], out: Path, smoke: bool) -> None:
        self.preset = preset
        self.out = out
        self.smoke = smoke
        self.device = preset["device"]
        self.cuda = self.device.startswith("cuda")
        self.autocast = torch.bfloat16 if self.cuda else None
        self.clock = Clock(preset["budget_s"])
        self.model_key = ""
        self.results: dict[str, Any] = {"mode": "smoke" if smoke else "gpu", "budget_s": preset["budget_s"],
                                        "environment": gpu_report.environment(self.device), "models": {},
                                        **{section: {} for section in SECTIONS}, "projection": {}, "notes": []}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        """Peak device memory since the last reset (CUDA), or the process's peak resident memory (CPU)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def allocated_gib(self) -> float:
        return torch.cuda.memory_allocated() / 2**30 if self.cuda else 0.0

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.results["notes"].append(text)

    def save(self) -> None:
        self.results["wall_s"] = self.clock.elapsed()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_results.json").write_text(json.dumps(self.results, indent=1) + "\n")
        (self.out / "gpu_results.md").write_text(gpu_report.markdown(self.results))

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def timed(run: Run, fn) -> float:
    run.sync()
    start = time.perf_counter()
    fn()
    run.sync()
    return time.perf_counter() - start
