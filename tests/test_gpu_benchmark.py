"""The GPU benchmark's smoke run: every part of benchmarks/gpu/measure.py, end to end on tiny models on
the CPU, so the script a GPU session runs once cannot rot between the sessions that get a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("qwen2-vl-2b", "llava-1.6-7b")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_gpu_benchmark_smoke_run_writes_every_part_with_positive_figures(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "measure.py"), "--smoke", "--out",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    assert results["mode"] == "smoke" and not results["notes"], results["notes"]
    for key in ("date", "device", "torch", "transformers", "sentence-transformers", "peft"):
        assert results["environment"][key], key
    for model in MODELS:
        assert _positive(results["models"][model]["parameters"])
        for kind in ("text", "image"):
            encode = results["encode"][model][kind]
            assert all(_positive(encode[k]) for k in ("bare_items_per_s", "encode_items_per_s", "tokens_per_item"))
        mmeb = results["mmeb"][model]
        assert _positive(mmeb["items_per_s"]) and mmeb["inputs_encoded"] == mmeb["queries"] + mmeb["candidates"]
        stage1 = results["stage1"][model]
        assert _positive(stage1["step_s"]) and _positive(stage1["peak_gib"]) and stage1["teacher_dim"] == 4096
        settings = results["stage2"][model]["settings"]
        # The recipe's mini-batch, then each global batch without GradCache and at every mini-batch.
        assert len(settings) == 1 + 2 * 3 and all(_positive(s.get("step_s")) for s in settings), settings
        assert {s["mini_batch"] for s in settings} >= {None, 4, 8}
        stages = results["projection"][model]
        assert {"stage1", "stage2", "stage2_recipe_mini_batch", "mmeb"} <= set(stages)
        assert all(_positive(stage["gpu_hours"]) and stage["paper"] for stage in stages.values())
    serve = results["serve"]["qwen2-vl-2b"]
    for workload in ("text", "image"):
        for name in ("dynamic", "single"):
            row = serve[workload][name]
            assert _positive(row["items_per_s"]) and row["errors"] == 0, row
    table = (tmp_path / "gpu_results.md").read_text()
    for heading in ("## Encoding", "## MMEB evaluator", "## Server", "## Stage 1", "## Stage 2", "## Projected"):
        assert heading in table
    assert "(not measured)" not in table
