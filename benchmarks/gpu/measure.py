"""unime on one GPU, within minutes: encode, the MMEB evaluator, stage-1 and stage-2 steps, the server,
and the GPU-hours the paper's recipes would take, on random-weight models of the paper's real sizes.

Qwen2-VL-2B and LLaVA-1.6-Mistral-7B (benchmarks/gpu/gpu_models.py) are built on the GPU in bf16
with sdpa attention, saved and loaded with ``unime.load``, and measured through the code paths of the
CPU benchmarks (encode_throughput, eval_mmeb, gradcache_memory, serve_load). Every part has a share
of the time budget (``--budget-s``, 8 minutes); a measurement predicted to overrun its share is
skipped with a note, and the results are rewritten after every part, so a run stopped early still
leaves what it measured: ``gpu_results.json`` and ``gpu_results.md`` in ``--out``.

    python benchmarks/gpu/measure.py --out OUT              # on a CUDA machine (run.sh installs first)
    python benchmarks/gpu/measure.py --out OUT --smoke      # tiny models on the CPU, about a minute
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import gpu_models
import gpu_report
import numpy as np
import torch
from gpu_run import SECTIONS, Run, benchmark, timed
from gpu_training import measure_stage1, measure_stage2

# Per part: its share of the budget in seconds (the parts run in this order; time one leaves unused
# goes to the next) and its sizes. GPU: 480 s in all, inside the device's 10-minute command.
GPU = {
    "size": "full", "device": "cuda", "dtype": torch.bfloat16, "image_size": 336, "budget_s": 480, "setup_s": 25,
    "mmeb": {"queries": 1000, "labels": 1000},
    "models": {
        "qwen2-vl-2b": {
            "build": 30,
            "encode": {"share": 30, "text": 1024, "image": 256, "batch_size": 32, "repeats": 1},
            "mmeb": {"share": 35, "batch_size": 32},
            "serve": {"share": 30, "clients": 64, "duration": 5.0, "warmup": 1.5, "max_batch_size": 64,
                      "workloads": ["text", "image"]},
            "stage1": {"share": 20, "steps": 2},
            "stage2": {"share": 95, "batches": [256, 1024], "mini_batches": [32, 64], "recipe_batch": 128},
        },
        "llava-1.6-7b": {
            "build": 60,
            "encode": {"share": 30, "text": 512, "image": 64, "batch_size": 32, "repeats": 1},
            "mmeb": {"share": 25, "batch_size": 32},
            "stage1": {"share": 25, "steps": 2},
            "stage2": {"share": 75, "batches": [256, 1024], "mini_batches": [32, 64], "recipe_batch": 64},
        },
    },
}

# The same parts at tiny sizes on the CPU (CI); the budget does not bind.
SMOKE = {
    "size": "smoke", "device": "cpu", "dtype": torch.float32, "image_size": 56, "budget_s": 900, "setup_s": 60,
    "mmeb": {"queries": 48, "labels": 48},
    "stage1_batch": 16, "stage1_mini_batch": 8,
    "models": {
        "qwen2-vl-2b": {
            "build": 60,
            "encode": {"share": 60, "text": 32, "image": 16, "batch_size": 8, "repeats": 1},
            "mmeb": {"share": 60, "batch_size": 16},
            "serve": {"share": 90, "clients": 8, "duration": 1.0, "warmup": 0.5, "max_batch_size": 8,
                      "workloads": ["text", "image"]},
            "stage1": {"share": 60, "steps": 1},
            "stage2": {"share": 120, "batches": [8, 16], "mini_batches": [4, 8], "recipe_batch": 8},
        },
        "llava-1.6-7b": {
            "build": 60,
            "encode": {"share": 60, "text": 32, "image": 16, "batch_size": 8, "repeats": 1},
            "mmeb": {"share": 60, "batch_size": 16},
            "stage1": {"share": 60, "steps": 1},
            "stage2": {"share": 120, "batches": [8, 16], "mini_batches": [4, 8], "recipe_batch": 8},
        },
    },
}


def measure_encode(run: Run, model: Any, cfg: dict[str, Any], deadline: float) -> dict[str, Any]:
    """encode vs the bare forward on the same batches, texts and images (encode_throughput.py)."""
    encode_throughput = benchmark("encode_throughput")
    sampled = encode_throughput.sample_inputs(cfg["text"], cfg["image"], run.preset["image_size"])
    result = {}
    for kind in ("text", "image"):
        if run.clock.left(deadline) <= 0:
            run.note(f"encode {run.model_key} {kind}: skipped, the part's budget is spent")
            continue
        inputs = sampled[kind]
        timing = encode_throughput.time_encode(model, inputs, cfg["batch_size"], cfg["repeats"], kind)
        result[kind] = {**timing, "batch_size": cfg["batch_size"], "bare_items_per_s": len(inputs) / timing["bare_s"],
                        "encode_items_per_s": len(inputs) / timing["encode_s"],
                        "encode_over_bare": timing["bare_s"] / timing["encode_s"]}
    return result


def measure_mmeb(run: Run, model: Any, cfg: dict[str, Any], dataset: Any, rates: dict[str, Any],
                 deadline: float) -> dict[str, Any]:
    """The MMEB evaluator (each distinct input once) on the synthetic set of eval_mmeb.py."""
    from unime.evaluation.mmeb import MMEBDataset, score_mmeb_dataset

    queries = len(dataset.queries)
    image_rate = rates.get("image", {}).get("encode_items_per_s")
    text_rate = rates.get("text", {}).get("encode_items_per_s")
    if image_rate and text_rate:
        left = run.clock.left(deadline) - len(dataset.pool) / text_rate
        fit = int(0.8 * left * image_rate)
        if fit < queries:
            if fit < 16:
                run.note(f"mmeb: skipped, predicted {queries / image_rate:.0f} s for the queries alone")
                return {}
            run.note(f"mmeb: {fit} of the {queries} queries, to fit the part's budget")
            queries = fit
    subset = MMEBDataset(dataset.name, dataset.queries[:queries], dataset.pool, dataset.targets[:queries])
    recorder = benchmark("eval_mmeb").Recorder(model)
    holder = {}
    seconds = timed(run, lambda: holder.update(p1=score_mmeb_dataset(recorder, subset, cfg["batch_size"])))
    return {"queries": queries, "candidates": len(dataset.pool), "inputs_encoded": recorder.encoded,
            "seconds": seconds, "items_per_s": recorder.encoded / seconds, "precision@1": holder["p1"],
            "batch_size": cfg["batch_size"]}


def measure_serve(run: Run, model: Any, cfg: dict[str, Any], deadline: float) -> dict[str, Any]:
    """The server on loopback, dynamic batching vs batch size 1, with the same clients (serve_load.py)."""
    serve_load = benchmark("serve_load")
    from unime.serve import ServeSettings

    args = argparse.Namespace(clients=cfg["clients"], duration=cfg["duration"], warmup=cfg["warmup"])
    common = {"model_name": "bench", "max_queued_items": 1 << 20, "max_items_per_request": 1}
    result = {}
    for workload in cfg["workloads"]:
        if run.clock.left(deadline) < 2 * (cfg["duration"] + cfg["warmup"]) + 2:
            run.note(f"serve {workload}: skipped, the part's budget is spent")
            continue
        payloads = serve_load.make_payloads(workload, 8 * cfg["clients"], 1)
        rows = {}
        for name, settings in (
            ("dynamic", ServeSettings(max_batch_size=cfg["max_batch_size"], batch_wait_ms=5.0, **common)),
            ("single", ServeSettings(max_batch_size=1, batch_wait_ms=0.0, **common)),
        ):
            done = serve_load.run(name, model, settings, payloads, args)
            p50, p99 = np.percentile(done.latencies_ms, [50, 99]) if done.latencies_ms else (math.nan, math.nan)
            rows[name] = {"requests": done.requests, "requests_per_s": done.requests / done.seconds,
                          "items_per_s": done.throughput, "p50_ms": float(p50), "p99_ms": float(p99),
                          "mean_batch": done.mean_batch, "errors": done.errors}
        result[workload] = {**rows, "clients": cfg["clients"], "max_batch_size": cfg["max_batch_size"],
                            "throughput_ratio": rows["dynamic"]["items_per_s"] / rows["single"]["items_per_s"]}
    return result


def load_backbone(run: Run, backbone: Any) -> tuple[Any, Any, Any]:
    """Build, save and load ``backbone`` as a unime model on the device; its two recipes."""
    import unime
    from unime.training.recipes import DistillRecipe, TuneRecipe

    tune = TuneRecipe.from_yaml(backbone.tune_recipe).override(image_size=run.preset["image_size"])
    distill = DistillRecipe.from_yaml(backbone.distill_recipe)
    dtype_name = str(run.preset["dtype"]).removeprefix("torch.")
    with tempfile.TemporaryDirectory(dir=gpu_models.scratch_root(16 * 2**30 if not run.smoke else 0)) as scratch:
        built = gpu_models.write_model(backbone, run.preset["size"], Path(scratch), run.preset["image_size"],
                                       run.device, run.preset["dtype"])
        start = time.perf_counter()
        model = unime.load(scratch, dtype=dtype_name, device=run.device,
                           model_kwargs={"attn_implementation": "sdpa"})
        built["load_s"] = time.perf_counter() - start
    # One sequence for an image with its instruction, as the released UniME checkpoints (and MMEB).
    model.set_mode("joint")
    run.results["models"][backbone.key] = {
        "label": backbone.label, "family": backbone.family, **built, "dtype": dtype_name,
        "image_size": run.preset["image_size"], "weights_gib": run.allocated_gib(),
        "image_processor": type(model[0].processor.image_processor).__name__,
        "input_format": getattr(getattr(model[0], "input_format", None), "style", "prompted"),
        "distill_recipe": backbone.distill_recipe, "tune_recipe": backbone.tune_recipe,
        "stage1_batch": distill.batch_size, "stage1_epochs": distill.epochs,
        "stage2_batch": tune.batch_size, "stage2_steps": tune.max_steps,
    }
    print(f"{backbone.key}: {built['parameters'] / 1e9:.2f}B parameters, built in {built['build_s']:.0f} s, "
          f"loaded in {built['load_s']:.0f} s", flush=True)
    return model, distill, tune


def measure_part(run: Run, name: str, model: Any, recipes: tuple[Any, Any], cfg: dict[str, Any], deadline: float,
                 mmeb_set: Any) -> dict[str, Any]:
    rates = run.results["encode"].get(run.model_key, {})
    if name == "encode":
        return measure_encode(run, model, cfg, deadline)
    if name == "mmeb":
        return measure_mmeb(run, model, cfg, mmeb_set, rates, deadline)
    if name == "serve":
        return measure_serve(run, model, cfg, deadline)
    if name == "stage1":
        return measure_stage1(run, model, recipes[0], cfg, deadline)
    return measure_stage2(run, model, recipes[1], cfg, rates, deadline)


def measure_model(run: Run, backbone: Any, cfg: dict[str, Any], mmeb_set: Any) -> None:
    """Every part for one backbone, each within its share of the budget; the model is freed after."""
    run.model_key = backbone.key
    deadline = run.clock.part(cfg["build"])
    if run.clock.left(deadline) < 0.5 * cfg["build"]:
        run.note(f"{backbone.key}: skipped, {max(run.clock.left(deadline), 0):.0f} s left to build it")
        for name in SECTIONS:
            if name in cfg:
                run.clock.part(cfg[name]["share"])
        return
    try:
        model, *recipes = load_backbone(run, backbone)
    except Exception as error:  # noqa: BLE001 - the other backbone may still run
        traceback.print_exc()
        run.note(f"{backbone.key}: could not be built or loaded: {type(error).__name__}: {str(error)[:300]}")
        run.free()
        model = None
    run.save()
    if model is None:
        for name in SECTIONS:
            if name in cfg:
                run.clock.part(cfg[name]["share"])
        return
    for name in SECTIONS:
        if name not in cfg:
            continue
        deadline = run.clock.part(cfg[name]["share"])
        if run.clock.left(deadline) <= 0:
            run.note(f"{name} {backbone.key}: skipped, the budget is spent")
            continue
        started = time.perf_counter()
        try:
            result = measure_part(run, name, model, tuple(recipes), cfg[name], deadline, mmeb_set)
        except Exception as error:  # noqa: BLE001 - one part failing must not cost the others
            traceback.print_exc()
            run.note(f"{name} {backbone.key}: failed: {type(error).__name__}: {str(error)[:300]}")
            result = {}
        if result:
            run.results[name][backbone.key] = {**result, "part_s": time.perf_counter() - started}
        print(f"{name} {backbone.key}: {time.perf_counter() - started:.1f} s", flush=True)
        run.save()
    del model
    run.free()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_results.json and gpu_results.md")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (CI)")
    parser.add_argument("--budget-s", type=float, help="total seconds (default 480; smoke: not binding)")
    parser.add_argument("--models", nargs="+", choices=list(gpu_models.BACKBONES), help="a subset of the models")
    args = parser.parse_args()
    preset = dict(SMOKE if args.smoke else GPU)
    if args.budget_s:
        preset["budget_s"] = args.budget_s
    if not args.smoke and not torch.cuda.is_available():
        print("measure.py: no CUDA device; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # tiny models gain nothing from threads; spinning ones slow shared cores
    run = Run(preset, Path(args.out), args.smoke)
    problems = run.results["environment"]["problems"]
    if problems and not args.smoke:
        # Fail in seconds, not minutes in: the device time is short (run.sh installs from .whl/).
        print("measure.py: incompatible packages (carry .whl, see docs/performance.md):\n  " + "\n  ".join(problems),
              file=sys.stderr)
        run.save()
        return 3
    models = [key for key in preset["models"] if not args.models or key in args.models]
    try:
        run.clock.part(preset["setup_s"])
        with tempfile.TemporaryDirectory() as scratch:
            eval_mmeb = benchmark("eval_mmeb")
            from unime.evaluation.mmeb import load_mmeb_dataset

            folder, image_dir = eval_mmeb.write_dataset(Path(scratch), **preset["mmeb"],
                                                        image_size=preset["image_size"])
            mmeb_set = load_mmeb_dataset(folder, image_dir)
            for key in models:
                measure_model(run, gpu_models.BACKBONES[key], preset["models"][key], mmeb_set)
    except KeyboardInterrupt:
        run.note(f"stopped after {run.clock.elapsed():.0f} s (interrupted); the results are partial")
    finally:
        run.results["projection"] = gpu_report.project(run.results)
        run.save()
    print(gpu_report.markdown(run.results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
