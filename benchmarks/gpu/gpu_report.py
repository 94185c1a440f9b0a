"""The GPU benchmark's environment record, its projection of the paper's recipes, and its Markdown.

The projection multiplies measured step times and rates by the work of the paper's recipes: stage 1
over the NLI file, stage 2 for the recipe's steps at its global batch, the MMEB evaluation of 36 sets
(docs/method.md, "Recipe settings and their sources"; the recipes in src/unime/recipes). It is for
one GPU of the kind measured, random weights of the real sizes; data loading and checkpointing
are not counted.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# docs/method.md, "Stage 1 data": about 273k NLI sentence pairs (nli_for_simcse.csv: sent0, sent1,
# hard_neg). Stage 1 trains on the file's unique sentences (unime.training.text_data.read_sentences),
# at most 3 a row; the exact count needs the file, so the projection takes that upper bound.
NLI_ROWS = 273_000
NLI_SENTENCES_PER_ROW = 3
MMEB_TRAIN_PAIRS = 662_000
# 36 sets of 1000 queries; each distinct candidate is encoded once. As in the synthetic set, 1000
# distinct candidates a set: a lower bound, the retrieval and VQA sets list candidates per query.
MMEB_SETS, MMEB_QUERIES, MMEB_CANDIDATES = 36, 1000, 1000
# The paper's reported compute (docs/method.md, "Stage 1 student and teacher": 8 A100).
PAPER = {
    ("llava-1.6-7b", "stage1"): "about 2 h on 8 A100 (16 A100-hours)",
}
NOT_REPORTED = "not reported"


def environment(device: str) -> dict[str, Any]:
    """Date, machine, device and the versions that decide the numbers."""
    import torch

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
    }
    for name in ("transformers", "sentence-transformers", "peft", "accelerate", "tokenizers", "fastapi"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    from unime import __version__
    from unime.environment import known_conflicts

    env["unime"] = __version__
    env["problems"] = known_conflicts()
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(0)
        env["device"] = properties.name
        env["device_memory_gib"] = properties.total_memory / 2**30
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["device"] = f"CPU ({platform.machine()}, {torch.get_num_threads()} torch thread(s))"
    return env


def _stage2_basis(settings: list[dict[str, Any]], target: int, role: str | None) -> tuple[float, str] | None:
    """Step time at the global batch ``target``: measured there (the fastest GradCache setting), or
    scaled linearly from the largest batch measured (GradCache's cost grows with the rows)."""
    done = [s for s in settings if s.get("step_s") and s.get("mini_batch") and (role is None or s["role"] == role)]
    if not done:
        return None
    largest = max(s["batch"] for s in done)
    chosen = min((s for s in done if s["batch"] == largest), key=lambda s: s["step_s"])
    seconds = chosen["step_s"] * target / largest
    how = "measured" if largest == target else f"scaled x{target / largest:g} from batch {largest}"
    return seconds, f"{chosen['step_s']:.2f} s a step at batch {largest}, mini-batch {chosen['mini_batch']} ({how})"


def project(results: dict[str, Any]) -> dict[str, Any]:
    """GPU-hours of the paper's recipes on one GPU, from the measured step times and rates."""
    projection: dict[str, Any] = {}
    for key, model in results.get("models", {}).items():
        rows: dict[str, Any] = {}
        stage1 = results.get("stage1", {}).get(key, {})
        if stage1.get("step_s"):
            sentences = NLI_ROWS * NLI_SENTENCES_PER_ROW
            steps = math.ceil(sentences / stage1["batch"]) * math.ceil(model.get("stage1_epochs", 1))
            rows["stage1"] = {
                "label": f"stage 1 ({model.get('distill_recipe', 'distill')})",
                "work": f"{steps} steps of {stage1['batch']} sentences: one epoch over at most {sentences:,} unique "
                        f"sentences ({NLI_ROWS:,} NLI rows x {NLI_SENTENCES_PER_ROW})",
                "basis": f"{stage1['step_s']:.2f} s a step at batch {stage1['batch']}, mini-batch "
                         f"{stage1['mini_batch']} (measured)",
                "gpu_hours": steps * stage1["step_s"] / 3600, "upper_bound": True,
            }
        settings = results.get("stage2", {}).get(key, {}).get("settings", [])
        target, steps = model.get("stage2_batch", 1024), model.get("stage2_steps", 2000)
        recipe = model.get("tune_recipe", "tune")
        for name, role, label in (("stage2", None, f"stage 2 ({recipe}), fastest GradCache setting"),
                                  ("stage2_recipe_mini_batch", "recipe", f"stage 2 ({recipe}), its own mini-batch")):
            basis = _stage2_basis(settings, target, role)
            if basis:
                rows[name] = {
                    "label": label,
                    "work": f"{steps} steps of {target} pairs ({steps * target / MMEB_TRAIN_PAIRS:.1f} passes over "
                            f"the {MMEB_TRAIN_PAIRS:,} MMEB-train pairs)",
                    "basis": basis[1], "gpu_hours": steps * basis[0] / 3600,
                }
        mmeb = results.get("mmeb", {}).get(key, {})
        if mmeb.get("items_per_s"):
            inputs = MMEB_SETS * (MMEB_QUERIES + MMEB_CANDIDATES)
            rows["mmeb"] = {
                "label": "MMEB evaluation",
                "work": f"{MMEB_SETS} sets x ({MMEB_QUERIES} queries + {MMEB_CANDIDATES} distinct candidates) = "
                        f"{inputs:,} inputs",
                "basis": f"{mmeb['items_per_s']:.1f} inputs/s of the evaluator (measured)",
                "gpu_hours": inputs / mmeb["items_per_s"] / 3600, "lower_bound": True,
            }
        for name, row in rows.items():
            row["paper"] = PAPER.get((key, name.split("_")[0]), NOT_REPORTED)
        projection[key] = rows
    return projection


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _seconds(value: Any) -> str:
    return f"{value:.2f}" if value else "n/a"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["(not measured)", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(cell) if not isinstance(cell, str) else cell for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _label(results: dict[str, Any], key: str) -> str:
    return results["models"].get(key, {}).get("label", key)


def _stage2_note(setting: dict[str, Any]) -> str:
    if setting.get("skipped"):
        return f"not run: {setting['skipped']}"
    if setting.get("oom"):
        return "out of memory"
    return "the recipe's mini-batch" if setting.get("role") == "recipe" else ""


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables, one per part, then the projection and the notes."""
    env = results["environment"]
    lines = [f"# unime on {env['device']}, {env['date']}", ""]
    if results["mode"] == "smoke":
        lines += ["Smoke run: tiny random models on the CPU. The figures check the code path and mean nothing.", ""]
    lines += [f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, sentence-transformers "
              f"{env['sentence-transformers']}, peft {env['peft']}, unime {env['unime']}, Python {env['python']}; "
              f"wall {results.get('wall_s', 0):.0f} s of a {results['budget_s']:.0f} s budget.", ""]
    if env.get("problems"):
        lines += ["Environment problems: " + "; ".join(env["problems"]), ""]
    models = results["models"]
    lines += ["## Models", ""] + _table(
        ["model", "parameters", "dtype", "image px", "built (s)", "loaded (s)", "weights (GiB)", "image processor"],
        [[m["label"], f"{m['parameters'] / 1e9:.2f}B" if m["parameters"] >= 1e8 else f"{m['parameters'] / 1e6:.2f}M",
          m["dtype"], m["image_size"], m["build_s"], m["load_s"],
          m["weights_gib"], m["image_processor"]] for m in models.values()])
    rows = [[_label(results, key), kind, r["items"], r["batch_size"], r["tokens_per_item"], r["bare_items_per_s"],
             r["encode_items_per_s"], f"{r['encode_over_bare']:.2f}"]
            for key, kinds in results["encode"].items() for kind, r in kinds.items() if isinstance(r, dict)]
    lines += ["## Encoding: `encode` vs the bare forward on the same batches", ""] + _table(
        ["model", "input", "items", "batch", "tokens / item", "bare forward (items/s)", "unime encode (items/s)",
         "encode / bare"], rows)
    rows = [[_label(results, key), r["queries"], r["candidates"], r["inputs_encoded"], _seconds(r["seconds"]),
             r["items_per_s"]]
            for key, r in results["mmeb"].items()]
    lines += ["## MMEB evaluator (synthetic set, shared candidates, each distinct input once)", ""] + _table(
        ["model", "queries", "distinct candidates", "inputs encoded", "seconds", "inputs/s"], rows)
    rows = []
    for key, workloads in results["serve"].items():
        for workload, r in workloads.items():
            if not isinstance(r, dict) or "dynamic" not in r:
                continue
            for name in ("dynamic", "single"):
                s = r[name]
                serving = f"dynamic batching (max {r['max_batch_size']})" if name == "dynamic" else "batch size 1"
                rows.append([_label(results, key), workload, r["clients"], serving, s["requests_per_s"],
                             s["items_per_s"], s["p50_ms"], s["p99_ms"], s["mean_batch"], s["errors"]])
    lines += ["## Server on loopback: dynamic batching vs batch size 1", ""] + _table(
        ["model", "workload", "clients", "serving", "requests/s", "items/s", "p50 ms", "p99 ms", "mean batch",
         "errors"], rows)
    rows = [[_label(results, key), r["batch"], r["mini_batch"], f"random, {r['teacher_dim']}-d", r["tokens_per_item"],
             _seconds(r.get("step_s")), r.get("peak_gib"), r.get("allocated_before_gib"),
             "out of memory" if r.get("oom") else ""]
            for key, r in results["stage1"].items()]
    lines += ["## Stage 1 step (teacher cache, LoRA on the LLM)", ""] + _table(
        ["model", "batch", "GradCache mini-batch", "teacher cache", "tokens / item", "step (s)", "peak (GiB)",
         "allocated before (GiB)", "note"], rows)
    rows = [[_label(results, key), s["batch"], s["mini_batch"] or "none", _seconds(s.get("step_s")),
             s["batch"] / s["step_s"] if s.get("step_s") else None, s.get("peak_gib"), s.get("allocated_before_gib"),
             _stage2_note(s)]
            for key, r in results["stage2"].items() for s in r["settings"]]
    lines += ["## Stage 2 step (hard negatives, LoRA on the whole MLLM, image queries and text positives)", ""]
    lines += _table(["model", "global batch", "GradCache mini-batch", "step (s)", "pairs/s", "peak (GiB)",
                     "allocated before (GiB)", "note"], rows)
    rows = [[_label(results, key), r["label"], r["work"], r["basis"],
             ("<= " if r.get("upper_bound") else ">= " if r.get("lower_bound") else "")
             + (f"{r['gpu_hours']:.2f}" if r["gpu_hours"] < 10 else f"{r['gpu_hours']:.1f}"), r["paper"]]
            for key, stages in results["projection"].items() for r in stages.values()]
    lines += [f"## Projected GPU-hours of the paper's recipes on one {env['device']}", ""] + _table(
        ["model", "recipe", "work", "basis", "GPU-hours", "paper"], rows)
    dtypes = {m["dtype"] for m in models.values()}
    lines += ["Peak memory: torch.cuda.max_memory_allocated over the timed step (on a CPU: the process's peak "
              "resident memory); allocated before: weights, optimiser state and the batch on the device."
              + (" Weights in bf16 with bf16 autocast; unime tune and distill load float32 weights and autocast, "
                 "about twice the weights' memory." if dtypes == {"bfloat16"} else ""), ""]
    if results["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in results["notes"]] + [""]
    return "\n".join(lines)
